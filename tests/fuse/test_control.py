"""The control directory ``MOUNT/.branchfs``: fork, merge, discard and snapshot with a syscall.

``mkdir .branchfs/branches/X`` forks the mounted branch, ``rmdir`` discards, ``mkdir
.branchfs/snapshots/S`` snapshots (read-only: EROFS), and ``.branchfs/ctl`` takes one command
line and answers in JSON on the same file descriptor. Results are checked through the mount
and through the Python API of the same store.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fusecheck import needs_fuse

import branchfs
from branchfs import notices
from branchfs.errors import BranchMounted
from branchfs.mount import ctl, find_mount

if TYPE_CHECKING:
    from conftest import Mounted  # tests/fuse/conftest.py

pytestmark = needs_fuse


@pytest.fixture
def mnt(module_mount: Mounted) -> Path:
    return module_mount.path


@pytest.fixture
def store(module_mount: Mounted) -> branchfs.Store:
    return module_mount.store


def test_control_dir_hidden_from_listing_but_reachable(mnt: Path) -> None:
    (mnt / "visible.txt").write_text("x")
    assert ".branchfs" not in os.listdir(mnt)
    ls = subprocess.run(["ls", "-a", str(mnt)], capture_output=True, text=True, check=True)
    assert ".branchfs" not in ls.stdout.split()
    assert "visible.txt" in ls.stdout.split()
    assert os.path.isdir(mnt / ".branchfs")
    inside = set(os.listdir(mnt / ".branchfs"))
    assert {"branches", "snapshots", "ctl"} <= inside
    assert "main" in os.listdir(mnt / ".branchfs" / "branches")


def test_fork_via_mkdir_then_both_sides_isolated(mnt: Path, store: branchfs.Store) -> None:
    (mnt / "iso").mkdir()
    (mnt / "iso" / "shared.txt").write_text("base\n")
    fork = mnt / ".branchfs" / "branches" / "iso-fork"
    os.mkdir(fork)
    assert "iso-fork" in store.branches()
    assert "iso-fork" in os.listdir(mnt / ".branchfs" / "branches")
    assert (fork / "iso" / "shared.txt").read_text() == "base\n"

    (mnt / "iso" / "shared.txt").write_text("main edit\n")
    (fork / "iso" / "shared.txt").write_text("fork edit\n")
    (fork / "iso" / "only-fork.txt").write_text("f\n")
    (mnt / "iso" / "only-main.txt").write_text("m\n")

    assert (mnt / "iso" / "shared.txt").read_text() == "main edit\n"
    assert (fork / "iso" / "shared.txt").read_text() == "fork edit\n"
    assert sorted(os.listdir(mnt / "iso")) == ["only-main.txt", "shared.txt"]
    assert sorted(os.listdir(fork / "iso")) == ["only-fork.txt", "shared.txt"]
    # The store agrees with what the mount shows.
    assert store.branch("iso-fork").read_bytes("iso/shared.txt") == b"fork edit\n"
    assert store.branch("main").read_bytes("iso/shared.txt") == b"main edit\n"
    assert not store.branch("main").exists("iso/only-fork.txt")


def test_fork_of_existing_name_is_eexist(mnt: Path) -> None:
    os.mkdir(mnt / ".branchfs" / "branches" / "twice")
    with pytest.raises(FileExistsError):
        os.mkdir(mnt / ".branchfs" / "branches" / "twice")
    with pytest.raises(FileExistsError):
        os.mkdir(mnt / ".branchfs" / "branches" / "main")


def test_merge_via_ctl_without_conflicts(mnt: Path, store: branchfs.Store) -> None:
    d = mnt / "clean"
    d.mkdir()
    (d / "a.txt").write_text("a1\na2\na3\n")
    (d / "b.txt").write_text("b1\n")
    os.mkdir(mnt / ".branchfs" / "branches" / "clean-x")
    x = mnt / ".branchfs" / "branches" / "clean-x" / "clean"
    (x / "a.txt").write_text("a1\na2 from x\na3\n")
    (x / "new.txt").write_text("added on x\n")
    (d / "b.txt").write_text("b1 from main\n")
    (d / "a.txt").stat()  # the kernel has this entry and its attributes cached

    answer = ctl(mnt, "merge clean-x")
    assert answer["ok"] is True, answer
    assert answer["conflicts"] == []
    paths = {c["path"] for c in answer["changes"]}
    assert {"clean/a.txt", "clean/new.txt"} <= {p.lstrip("/") for p in paths}
    # The merge shows in the mount at once, and the main side's own edit is kept.
    assert (d / "a.txt").read_text() == "a1\na2 from x\na3\n"
    assert (d / "new.txt").read_text() == "added on x\n"
    assert (d / "b.txt").read_text() == "b1 from main\n"


def test_merge_via_ctl_with_conflicts_lists_them_and_changes_nothing(
    mnt: Path, store: branchfs.Store
) -> None:
    d = mnt / "conf"
    d.mkdir()
    (d / "f.txt").write_text("line\n")
    (d / "g.txt").write_text("g\n")
    os.mkdir(mnt / ".branchfs" / "branches" / "conf-x")
    x = mnt / ".branchfs" / "branches" / "conf-x" / "conf"
    (x / "f.txt").write_text("theirs\n")
    (x / "g.txt").write_text("g changed on x\n")
    os.unlink(x / "g.txt")
    (x / "h.txt").write_text("h\n")
    (d / "f.txt").write_text("ours\n")
    (d / "g.txt").write_text("g changed on main\n")

    answer = ctl(mnt, "merge conf-x")
    assert answer["ok"] is False, answer
    got = {(c["path"].lstrip("/"), c["kind"]) for c in answer["conflicts"]}
    assert {p for p, _ in got} == {"conf/f.txt", "conf/g.txt"}, answer
    # All or nothing: the mounted branch is exactly as it was.
    assert (d / "f.txt").read_text() == "ours\n"
    assert (d / "g.txt").read_text() == "g changed on main\n"
    assert not (d / "h.txt").exists()

    answer = ctl(mnt, "merge conf-x --strategy theirs")
    assert answer["ok"] is True, answer
    assert (d / "f.txt").read_text() == "theirs\n"
    assert not (d / "g.txt").exists()
    assert (d / "h.txt").read_text() == "h\n"


def test_ctl_bad_command_answers_with_an_error(mnt: Path, store: branchfs.Store) -> None:
    answer = ctl(mnt, "frobnicate now")
    assert answer["ok"] is False
    assert answer["error"] == "usage", answer
    assert answer["message"].startswith("unknown command 'frobnicate'; commands: branches,")
    assert "try `help`" in answer["message"], answer
    answer = ctl(mnt, "fork main")
    assert (answer["ok"], answer["error"]) == (False, "usage"), answer
    assert answer["message"].startswith("fork takes SOURCE NEW, got 1 word(s);"), answer
    answer = ctl(mnt, "merge no-such-branch")
    assert (answer["ok"], answer["error"]) == (False, "BranchNotFound"), answer
    assert "'no-such-branch'" in answer["message"], answer
    assert "no-such-branch" not in store.branches()


def test_discard_via_rmdir(mnt: Path, store: branchfs.Store) -> None:
    branches = mnt / ".branchfs" / "branches"
    os.mkdir(branches / "gone")
    (branches / "gone" / "file.txt").write_text("soon gone\n")
    os.rmdir(branches / "gone")
    assert "gone" not in os.listdir(branches)
    assert "gone" not in store.branches()
    assert not os.path.exists(branches / "gone")
    with pytest.raises(branchfs.BranchNotFound):
        store.branch("gone").read_bytes("file.txt")
    # The mounted branch itself cannot be discarded from inside its own mount: its entry
    # is a symlink to the mount root (one kernel identity per file), which rmdir refuses
    # as any symlink, and rm as busy (contract 3 of docs/architecture.md: a served branch
    # is busy).
    with pytest.raises(OSError) as exc:
        os.rmdir(branches / "main")
    assert exc.value.errno == errno.ENOTDIR
    with pytest.raises(OSError) as exc:
        os.unlink(branches / "main")
    assert exc.value.errno == errno.EBUSY
    assert "main" in store.branches()


def test_a_branch_with_a_file_open_through_its_view_is_busy(
    module_mount: Mounted, tmp_path: Path
) -> None:
    """A branch reached as ``.branchfs/branches/NAME`` with a file open there is served by
    this mount: neither discarded (by rmdir here or by another process) nor mounted a
    second time until the file is closed, so its writes never go nowhere."""
    mnt, store = module_mount.path, module_mount.store
    store.branch(module_mount.branch).fork("viewed")
    view = mnt / ".branchfs" / "branches" / "viewed"
    with open(view / "work.txt", "a") as f:
        f.write("a\n")
        f.flush()
        with pytest.raises(OSError) as exc:
            os.rmdir(view)
        assert exc.value.errno == errno.EBUSY
        with pytest.raises(branchfs.BranchBusy, match=r"open through .*branches/viewed"):
            store.discard("viewed")
        other = tmp_path / "other"
        other.mkdir()
        with (
            pytest.raises(BranchMounted, match="in use through"),
            branchfs.mounted(module_mount.store_path, other, "viewed"),
        ):
            pass
        f.write("b\n")
    assert (view / "work.txt").read_text() == "a\nb\n"
    store.discard("viewed")
    assert "viewed" not in store.branches()


def test_a_view_of_a_root_branch_or_of_a_silent_daemon_is_busy(
    mounted_store: Mounted, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal of a root branch open in a view says that --force loses its files; a
    daemon showing the branch that does not answer (stopped) counts as having it open."""
    mnt, store = mounted_store.path, mounted_store.store
    store.create_branch("r2").write_bytes("precious", b"p")
    view = mnt / ".branchfs" / "branches" / "r2"
    with open(view / "precious", "rb"), pytest.raises(branchfs.BranchBusy, match="would lose them"):
        store.discard("r2")
    found = find_mount(str(mnt))
    assert found is not None
    monkeypatch.setattr(notices, "NOTIFY_TIMEOUT", 1.0)
    os.kill(found[1].pid, signal.SIGSTOP)
    try:
        with pytest.raises(branchfs.BranchBusy, match="does not answer"):
            store.discard("r2")
    finally:
        os.kill(found[1].pid, signal.SIGCONT)
    store.discard("r2", force=True)
    assert "r2" not in store.branches()


def test_snapshot_via_mkdir_is_read_only_and_frozen(mnt: Path, store: branchfs.Store) -> None:
    d = mnt / "snap"
    d.mkdir()
    (d / "kept.txt").write_text("v1\n")
    snap = mnt / ".branchfs" / "snapshots" / "s1"
    os.mkdir(snap)
    assert "s1" in store.snapshots()
    assert (snap / "snap" / "kept.txt").read_text() == "v1\n"

    for attempt in (
        lambda: os.open(snap / "snap" / "kept.txt", os.O_WRONLY),
        lambda: os.open(snap / "snap" / "new.txt", os.O_WRONLY | os.O_CREAT, 0o644),
        lambda: os.mkdir(snap / "snap" / "dir"),
        lambda: os.unlink(snap / "snap" / "kept.txt"),
        lambda: os.rename(snap / "snap" / "kept.txt", snap / "snap" / "moved.txt"),
        lambda: os.chmod(snap / "snap" / "kept.txt", 0o600),
        lambda: os.truncate(snap / "snap" / "kept.txt", 0),
        lambda: os.setxattr(snap / "snap" / "kept.txt", "user.x", b"1"),
    ):
        with pytest.raises(OSError) as exc:
            attempt()
        assert exc.value.errno == errno.EROFS, exc.value

    (d / "kept.txt").write_text("v2\n")
    assert (snap / "snap" / "kept.txt").read_text() == "v1\n"
    # And reset through ctl brings the mounted branch back to the snapshot, visibly.
    answer = ctl(mnt, "reset s1")
    assert answer["ok"] is True, answer
    assert (d / "kept.txt").read_text() == "v1\n"
    # ctl speaks the CLI's discard, which takes a snapshot by its @NAME too.
    assert ctl(mnt, "discard @s1") == {"ok": True, "snapshot": "s1"}
    assert "s1" not in store.snapshots()
    assert (d / "kept.txt").read_text() == "v1\n"


def _hold_unflushed_write(path: Path, data: bytes) -> int:
    """Write ``data`` to ``path`` through the mount and keep the file open: the write
    returned, but no close, fsync or read has made the daemon flush its buffer yet."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    assert os.write(fd, data) == len(data)
    return fd


@pytest.mark.parametrize("verb", ["fork", "snapshot", "merge", "diff", "reset"])
def test_ctl_commands_capture_writes_still_buffered_in_the_daemon(
    mnt: Path, store: branchfs.Store, verb: str
) -> None:
    """A command sent to ``ctl`` captures every write to the mount that returned before it
    (contract 3 of docs/architecture.md), even one still sitting in the daemon's write
    buffer."""
    d = mnt / f"held-{verb}"
    d.mkdir()
    (d / "f").write_bytes(b"before\n")
    os.mkdir(mnt / ".branchfs" / "snapshots" / f"held-{verb}-before")
    other = f"held-{verb}-other"
    os.mkdir(mnt / ".branchfs" / "branches" / other)
    fd = _hold_unflushed_write(d / "f", b"written, not closed\n")
    try:
        if verb == "fork":
            assert ctl(mnt, f"fork main held-{verb}-new")["ok"]
            got = store.branch(f"held-{verb}-new").read_bytes(f"held-{verb}/f")
            assert got == b"written, not closed\n"
        elif verb == "snapshot":
            assert ctl(mnt, f"snapshot held-{verb}-after")["ok"]
            got = store.snapshot_tree(f"held-{verb}-after").read_bytes(f"held-{verb}/f")
            assert got == b"written, not closed\n"
        elif verb == "merge":
            answer = ctl(mnt, f"merge main --into {other}")
            assert answer["ok"] and answer["conflicts"] == [], answer
            got = store.branch(other).read_bytes(f"held-{verb}/f")
            assert got == b"written, not closed\n"
        elif verb == "diff":
            answer = ctl(mnt, f"diff {other} main")
            assert answer["ok"], answer
            changed = {(c["path"].lstrip("/"), c["kind"]) for c in answer["changes"]}
            assert changed == {(f"held-{verb}/f", "modified")}, answer
        else:
            assert ctl(mnt, f"reset held-{verb}-before")["ok"]
    finally:
        os.close(fd)
    # The write was made before the command: a reset undoes it, nothing else loses it.
    expected = b"before\n" if verb == "reset" else b"written, not closed\n"
    assert (d / "f").read_bytes() == expected
    assert store.branch("main").read_bytes(f"held-{verb}/f") == expected
