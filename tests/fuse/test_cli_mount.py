"""The command line with real mounts: ``mount``/``umount``, ``.branchfs/ctl`` answering the
same JSON as the CLI, and branches that cannot be discarded from under a mount."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from clirun import bfs, entry_point, no_api_names, one_line_error
from fusecheck import needs_fuse

import branchfs
from branchfs.errors import MountError
from branchfs.mount import ctl, find_mount, mount_type

pytestmark = needs_fuse


def mount(store: Path, mp: Path, branch: str = "main", *extra: str) -> None:
    mp.mkdir(exist_ok=True)
    r = bfs("mount", str(mp), "--branch", branch, *extra, store=store)
    assert r.code == 0, r
    assert mount_type(str(mp)) == "fuse.branchfs"


def umount(mp: Path) -> None:
    if mount_type(str(mp)) is not None:
        r = bfs("umount", str(mp))
        assert r.code == 0, r


@pytest.fixture
def world(tmp_path: Path) -> Any:
    """A store with main holding two files, main mounted at tmp/mnt; everything unmounted
    afterwards."""
    store = tmp_path / "s.bfs"
    assert bfs("init", str(store)).code == 0
    with branchfs.Store.open(store) as s:
        s.branch("main").write_bytes("a.txt", b"one\ntwo\n")
        s.branch("main").write_bytes("bin", b"\0\1")
    mps: list[Path] = []

    def mnt(name: str, branch: str = "main", *extra: str) -> Path:
        mp = tmp_path / name
        mount(store, mp, branch, *extra)
        mps.append(mp)
        return mp

    try:
        yield store, mnt
    finally:
        for mp in reversed(mps):
            umount(mp)


def strip(answer: dict[str, Any], *names: tuple[str, str]) -> str:
    text = json.dumps(answer, sort_keys=True)
    for old, new in names:
        text = text.replace(old, new)
    return text


def test_ctl_and_cli_answer_the_same_json(world: Any) -> None:
    store, mnt = world
    mp = mnt("mnt")
    # Read-only verbs: identical answers (the CLI run inside the mount, whose branch is
    # then the current one, as ctl's is).
    for line in ("branches", "snapshots", "diff main main", "status main"):
        cli = bfs(*line.split(), "--json", cwd=mp)
        assert cli.code == 0, cli
        assert ctl(mp, line) == cli.json, line
    # Verbs that change things: the same answer for the same request on twin names.
    (mp / "a.txt").write_text("one\ntwo\nthree\n")  # left in the mount's write buffer
    pairs = [
        ("fork main c1", "fork main c2"),
        ("snapshot main s1", "snapshot main s2"),
        ("diff @s1 c1", "diff @s2 c2"),
        ("status c1 --patch", "status c2 --patch"),
        ("merge c1 --into main", "merge c2 --into main"),
        ("reset c1 @s1", "reset c2 @s2"),
        ("discard c1", "discard c2"),
    ]
    for via_ctl, via_cli in pairs:
        a = ctl(mp, via_ctl)
        b = bfs(*via_cli.split(), "--json", cwd=mp)
        assert b.code == 0, b
        assert strip(a, ("c1", "cX"), ("s1", "sX")) == strip(b.json, ("c2", "cX"), ("s2", "sX"))
    # The fork through ctl captured the buffered write.
    with branchfs.Store.open(store) as s:
        assert s.snapshot_tree("s1").read_bytes("a.txt") == b"one\ntwo\nthree\n"
    # Errors: the same kind and message on both.
    # Errors: the same kind and message on both, except that a hint naming a command is
    # worded for each (`branchfs branches` in a shell, `branches` on ctl).
    for line in ("fork nope x", "diff main v9", "fork main bad name", "merge", "fork @v9 x"):
        a = ctl(mp, line)
        b = bfs(*line.split(), "--json", cwd=mp)
        assert a["ok"] is False and b.json["ok"] is False, line
        no_api_names(a["message"])
        assert "`branchfs " not in a["message"], a
        ctl_words = b.json["message"].replace("`branchfs branches`", "`branches`")
        ctl_words = ctl_words.replace("`branchfs snapshots`", "`snapshots`")
        assert {**b.json, "message": ctl_words} == a, line
    helped = ctl(mp, "help")
    names = {c["name"] for c in helped["commands"]}
    assert {"merge", "fork", "diff", "status", "discard", "help", "stats"} <= names
    assert "mount" not in names
    assert ctl(mp, "help merge")["commands"][0]["usage"].startswith("merge SOURCE")
    bad = ctl(mp, "gc")
    assert bad["error"] == "usage" and "branchfs gc" in bad["message"]


def test_discard_of_a_mounted_branch_is_refused_then_forced(world: Any) -> None:
    store, mnt = world
    assert bfs("fork", "main", "work", store=store).code == 0
    main_mp = mnt("mnt")
    work_mp = mnt("work", "work")
    # Refused everywhere, naming the mountpoint.
    line = one_line_error(bfs("discard", "work", store=store), 2, "mounted at", str(work_mp))
    assert "--force" in line
    answer = ctl(main_mp, "discard work")
    assert answer["ok"] is False and answer["error"] == "BranchBusy"
    assert "--force" in answer["message"]
    no_api_names(answer["message"])
    assert answer["mountpoints"] == [str(work_mp)]
    # Under another mount, a branch served elsewhere is a symlink to its mountpoint
    # (one file, one kernel identity): rmdir cannot remove it either.
    alias = main_mp / ".branchfs" / "branches" / "work"
    assert os.readlink(alias) == str(work_mp)
    with pytest.raises(OSError) as info:
        os.rmdir(alias)
    assert info.value.errno in (errno.EBUSY, errno.ENOTDIR)
    with branchfs.Store.open(store) as s, pytest.raises(branchfs.BranchBusy):
        s.discard("work")
    answer = ctl(work_mp, "discard work --force")  # its own mount cannot unmount itself
    assert answer["error"] == "BranchBusy"
    # Forced while a file is open in it: refused (unmounting would lose what is buffered).
    fd = os.open(work_mp / "late.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"acknowledged")
        r = bfs("discard", "work", "--force", store=store)
        one_line_error(r, 2, "could not be unmounted", "busy")
    finally:
        os.close(fd)
    with branchfs.Store.open(store) as s:
        assert s.branch("work").read_bytes("late.txt") == b"acknowledged"
    # Forced: the mount is flushed and unmounted cleanly (its daemon exits), then discarded.
    found = find_mount(str(work_mp))
    assert found is not None
    pid = found[1].pid
    r = bfs("discard", "work", "--force", "--json", store=store)
    assert r.code == 0, r
    assert r.json == {"ok": True, "branch": "work", "unmounted": [str(work_mp)]}
    assert mount_type(str(work_mp)) is None
    assert not os.path.exists(f"/proc/{pid}") or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert os.listdir(work_mp) == []
    assert bfs("branches", "--json", store=store).json["branches"] == ["main"]


def test_discard_of_a_branch_a_run_uses_names_the_run(world: Any, tmp_path: Path) -> None:
    store, _mnt = world
    assert bfs("fork", "main", "work", store=store).code == 0
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    script = f"touch {ready}; while [ ! -e {stop} ]; do sleep 0.05; done"
    env = {**os.environ, "BRANCHFS_STORE": str(store)}
    run = subprocess.Popen(
        [sys.executable, "-m", "branchfs.cli", "run", "work", "--", "sh", "-c", script], env=env
    )
    try:
        for _ in range(600):
            if ready.exists() or run.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists(), "the run did not start"
        line = one_line_error(bfs("discard", "work", store=store), 2, "a `branchfs run`")
        assert "umount" not in line and "--force" in line
    finally:
        stop.touch()
        assert run.wait(timeout=60) == 0
    assert bfs("discard", "work", store=store).code == 0


def test_inside_a_branch_view_the_default_branch_is_that_branch(world: Any) -> None:
    """In ``.branchfs/branches/NAME`` the tree at hand is NAME's: verbs that default to the
    current branch act on NAME, not on the mount's branch; in a snapshot's, on none."""
    store, mnt = world
    main_mp = mnt("mnt")
    assert bfs("fork", "main", "side", store=store).code == 0
    view = main_mp / ".branchfs" / "branches" / "side"
    (view / "only-side.txt").write_text("side\n")
    r = bfs("status", "--json", cwd=view)
    assert r.code == 0 and r.json["branch"] == "side", r
    assert [c["path"] for c in r.json["changes"]] == ["only-side.txt"]
    r = bfs("snapshot", "snap-of-side", cwd=view)
    assert r.code == 0 and "side" in r.out, r
    with branchfs.Store.open(store) as s:
        assert s.snapshot_tree("snap-of-side").exists("only-side.txt")
    r = bfs("status", "--json", cwd=main_mp)
    assert r.json["branch"] == "main", r
    snap_view = main_mp / ".branchfs" / "snapshots" / "snap-of-side"
    one_line_error(bfs("status", cwd=snap_view), 2, "BRANCH", "snapshot @snap-of-side")
    # No verb falls back to a branch of its own choosing there (import and best-of took main).
    src = main_mp.parent / "src"
    src.mkdir()
    (src / "f").write_text("f\n")
    one_line_error(bfs("import", str(src), "--to", "t", cwd=snap_view), 2, "--branch")
    one_line_error(bfs("best-of", "1", "--run", "true", cwd=snap_view), 2, "--from")
    one_line_error(bfs("snapshot", "s2", cwd=snap_view), 2, "snapshot @snap-of-side")


def test_discard_of_a_mounted_root_branch_warns_before_force(world: Any) -> None:
    store, mnt = world
    assert bfs("fork", "main", "x", store=store).code == 0
    mnt("mnt")
    line = one_line_error(bfs("discard", "main", store=store), 2, "root branch", "--force")
    assert "lose" in line
    no_api_names(line)


def test_umount_of_a_daemon_that_does_not_answer_says_so(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopped or hung daemon made `branchfs umount` wait forever, silently: the kernel
    waits for the daemon's reply to the probe's lookup."""
    import branchfs.mount as m

    _store, mnt = world
    mp = mnt("mnt")
    found = find_mount(str(mp))
    assert found is not None
    pid = found[1].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        line = one_line_error(bfs("umount", str(mp)), 2, "stopped", f"kill -CONT {pid}")
        assert "fusermount3 -uz" in line and time.monotonic() - started < 30
        link = mp.parent.parent / f"{mp.parent.name}-link"  # named through a symlink
        link.symlink_to(mp.parent)
        one_line_error(bfs("umount", str(link / mp.name)), 2, "stopped", f"kill -CONT {pid}")
        # Not seen stopped (a zygote's daemon has another command line): the probe times out.
        monkeypatch.setattr(m, "_daemon_pids", lambda _mp: [])
        monkeypatch.setattr(m, "ANSWER_TIMEOUT", 1.0)
        with pytest.raises(MountError, match="has not answered for 1 s"):
            m.unmount(str(mp))
    finally:
        os.kill(pid, signal.SIGCONT)
    assert bfs("umount", str(mp)).code == 0
    assert mount_type(str(mp)) is None


def test_discard_of_main_is_refused_unless_forced(world: Any) -> None:
    store, _mnt = world
    one_line_error(bfs("discard", "main", store=store), 2, "last branch", "--force")
    assert bfs("fork", "main", "x", store=store).code == 0
    line = one_line_error(bfs("discard", "main", store=store), 2, "root branch", "--force")
    no_api_names(line)
    assert bfs("discard", "main", "--force", store=store).code == 0
    assert bfs("branches", "--json", store=store).json["branches"] == ["x"]


def test_umount_whatever_the_root_answers(world: Any, tmp_path: Path) -> None:
    store, mnt = world
    assert bfs("fork", "main", "gone", store=store).code == 0
    mp = mnt("gone", "gone")
    # The branch disappears under the mount by a path that skips the check (an older
    # branchfs): its root then answers ENOENT, and umount still removes the mount.
    with branchfs.Store.open(store) as s:
        s.meta.write(lambda txn: s.refs.discard(txn, "gone"))
    r = bfs("umount", str(mp))
    assert r.code == 0, r
    assert mount_type(str(mp)) is None
    # A killed daemon leaves a dead mount: umount detaches it.
    mp2 = mnt("dead")
    assert "allow_other" not in _options(mp2)  # private unless asked
    found = find_mount(str(mp2))
    assert found is not None
    os.kill(found[1].pid, signal.SIGKILL)
    r = bfs("umount", str(mp2))
    assert (r.code, r.out.strip()) == (0, f"cleaned dead mount {mp2}"), r
    assert mount_type(str(mp2)) is None
    one_line_error(bfs("umount", str(mp2)), 2, "is not mounted")
    # A busy mountpoint: mounting over it again is one line. --allow-other reaches the
    # kernel's mount options.
    mp3 = mnt("busy", "main", "--allow-other")
    one_line_error(bfs("mount", str(mp3), store=store), 2, "already a mountpoint")
    assert "allow_other" in _options(mp3)


def test_mount_from_a_directory_holding_a_folder_named_like_the_package(
    tmp_path: Path, world: Any
) -> None:
    """The daemon never imports from the caller's directory: a clone of branchfs (or any
    folder called ``branchfs``) there broke every mount with an ImportError."""
    store, _ = world
    cwd = tmp_path / "work"
    (cwd / "branchfs").mkdir(parents=True)
    (cwd / "branchfs_fuse").mkdir()
    mp = tmp_path / "mp-cwd"
    mp.mkdir()
    script = Path(sys.executable).with_name("branchfs")  # as a user runs it, not ``-m``
    if not script.exists():
        pytest.skip(f"no console script {script} (branchfs is not installed in this venv)")
    r = subprocess.run(
        [str(script), "--store", str(store), "mount", str(mp)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        assert r.returncode == 0, r.stderr
        assert (mp / "a.txt").read_bytes() == b"one\ntwo\n"
    finally:
        umount(mp)


def _options(mp: Path) -> str:
    """The mount options of ``mp`` in /proc/self/mounts."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == str(mp):
            return fields[3]
    raise AssertionError(f"{mp} is not mounted")


def daemons_for(mp: Path) -> list[int]:
    """Live (not zombie) processes serving ``mp``: a daemon's command line names it."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"branchfs_fuse" in argv and str(mp).encode() in argv and state != "Z":
            pids.append(int(entry.name))
    return pids


def test_ctrl_c_during_mount_leaves_no_mount_and_no_daemon(tmp_path: Path) -> None:
    """SIGINT to `branchfs mount`'s process group (a terminal's Ctrl-C) at several points of
    its start: either it exits 0 with the mount complete, or it leaves no mount and no
    daemon (so nothing can appear later) and the next mount works."""
    store = tmp_path / "s.bfs"
    assert bfs("init", str(store)).code == 0
    mp = tmp_path / "mnt"
    mp.mkdir()
    cmd = [sys.executable, *entry_point(), "--store", str(store), "mount", str(mp)]

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,  # its own group, as a shell job: the SIGINT goes to it
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip

    began = time.monotonic()
    full = start()
    assert full.wait(timeout=60) == 0, full.communicate()
    whole = time.monotonic() - began  # a mount from the interpreter's start to "mounted"
    umount(mp)
    outcomes = []
    for fraction in (0.3, 0.6, 0.8, 0.9, 0.97):
        p = start()
        time.sleep(whole * fraction)
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=60)
        outcomes.append(p.returncode)
        if p.returncode == 0:
            assert mount_type(str(mp)) == "fuse.branchfs", err
            umount(mp)
        else:
            # -2: killed before the interpreter set its handler, nothing started yet
            assert p.returncode in (130, -signal.SIGINT), (p.returncode, out, err)
            assert p.returncode < 0 or "interrupted" in err, err
            assert "Traceback" not in err, err
            assert mount_type(str(mp)) is None, err
            assert daemons_for(mp) == [], err
        assert daemons_for(mp) == []
    mount(store, mp)  # the mountpoint is usable again
    umount(mp)
    assert set(outcomes) - {0}, outcomes  # at least one Ctrl-C cut the start short


def test_umount_of_a_mount_with_another_inside_names_the_inner_one(world: Any) -> None:
    store, mnt = world
    assert bfs("fork", "main", "inner", store=store).code == 0
    outer = mnt("outer")
    inner = mnt("outer/inner", "inner")
    r = bfs("umount", str(outer))
    one_line_error(r, 2, f"{inner} is mounted inside it", f"branchfs umount {inner}")
    assert mount_type(str(outer)) == "fuse.branchfs"  # nothing was undone
