"""What the daemon asks of the kernel, and that the contracts hold with it.

The daemon never answers OPENDIR (the kernel caches directory listings and sends READDIR by
inode), asks for no FLUSH on read-only opens, and takes over clearing set-user-ID bits and
``security.capability`` on writes (FUSE_HANDLE_KILLPRIV_V2). Each test checks one of those
through the request counts of ``ctl stats`` or against the native disk, and checks that
listings still change when the tree changes behind the kernel's back. File locks are not
negotiated, so the kernel keeps them: two processes exclude each other as on ext4.
"""

from __future__ import annotations

import errno
import fcntl
import json
import mmap
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from ctlclient import requests
from fusecheck import needs_fuse

import branchfs

if TYPE_CHECKING:
    from conftest import Mounted  # tests/fuse/conftest.py

pytestmark = needs_fuse


@pytest.fixture
def mnt(module_mount: Mounted) -> Path:
    return module_mount.path


@pytest.fixture
def store(module_mount: Mounted) -> branchfs.Store:
    return module_mount.store


def _diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}


def delta(mnt: Path, before: dict[str, int]) -> dict[str, int]:
    """Requests since ``before``, less those of asking (measured by asking twice more)."""
    after = requests(mnt)
    own = _diff(after, requests(mnt))
    got = _diff(before, after)
    return {k: v for k in got if (v := got[k] - own.get(k, 0))}


def test_unchanged_directory_is_listed_by_the_kernel_alone(mnt: Path) -> None:
    d = mnt / "listed"
    d.mkdir()
    for i in range(50):
        (d / f"f{i:02}").write_bytes(b"x")
    first = sorted(os.listdir(d))
    before = requests(mnt)
    for _ in range(5):
        assert sorted(os.listdir(d)) == first
    got = delta(mnt, before)
    assert "opendir" not in got and "readdir" not in got, got


def test_listing_follows_changes_through_the_mount_and_from_another_process(
    mnt: Path, store: branchfs.Store
) -> None:
    d = mnt / "changing"
    d.mkdir()
    (d / "a").write_bytes(b"1")
    assert os.listdir(d) == ["a"]
    (d / "b").write_bytes(b"2")  # through the mount: the kernel drops its listing
    assert sorted(os.listdir(d)) == ["a", "b"]
    store.branch("main").write_bytes("changing/c", b"3")  # the API, another process
    assert sorted(os.listdir(d)) == ["a", "b", "c"]
    store.branch("main").remove("changing/a")
    assert sorted(os.listdir(d)) == ["b", "c"]


def test_large_directory_lists_whole_across_many_replies_and_rewinds(mnt: Path) -> None:
    d = mnt / "large"
    d.mkdir()
    names = {f"{'n' * 200}{i:05}" for i in range(1500)}  # ~1500 * 360 bytes: many replies
    for n in names:
        (d / n).touch()
    assert set(os.listdir(d)) == names
    with os.scandir(d) as it:  # partly read, then a new listing from the start
        seen = [next(it).name for _ in range(10)]
    assert len(set(seen)) == 10
    assert set(os.listdir(d)) == names


def test_branch_and_snapshot_lists_follow_changes_made_elsewhere(
    mnt: Path, store: branchfs.Store
) -> None:
    branches = mnt / ".branchfs" / "branches"
    assert "elsewhere" not in os.listdir(branches)
    store.branch("main").fork("elsewhere")
    assert "elsewhere" in os.listdir(branches)
    store.branch("main").snapshot("snap-elsewhere")
    assert "snap-elsewhere" in os.listdir(mnt / ".branchfs" / "snapshots")
    store.branch("elsewhere").discard()
    assert "elsewhere" not in os.listdir(branches)


def test_other_branch_listing_follows_api_writes(mnt: Path, store: branchfs.Store) -> None:
    other = store.branch("main").fork("other-list")
    view = mnt / ".branchfs" / "branches" / "other-list"
    before = set(os.listdir(view))
    other.write_bytes("new-in-other", b"x")  # no daemon serves this branch: no notice
    assert set(os.listdir(view)) == before | {"new-in-other"}
    other.discard()


def test_read_only_open_sends_no_flush(mnt: Path) -> None:
    f = mnt / "ro.txt"
    f.write_bytes(b"data")
    before = requests(mnt)
    for _ in range(5):
        with open(f, "rb") as fh:
            assert fh.read() == b"data"
    got = delta(mnt, before)
    assert got.get("flush", 0) == 0, got
    with open(f, "ab") as fh:  # a written file still flushes at close
        fh.write(b"more")
    assert requests(mnt).get("flush", 0) > before.get("flush", 0)
    assert f.read_bytes() == b"datamore"


def _write_only_then_look(d: Path) -> list[object]:
    """Write through write-only descriptors while a reader and a shared mapping look on."""
    f = d / "wo.bin"
    f.write_bytes(b"a" * 10_000)
    seen: list[object] = []
    reader = os.open(f, os.O_RDONLY)
    rw = os.open(f, os.O_RDWR)
    mapped = mmap.mmap(rw, 10_000)
    try:
        seen.append(os.pread(reader, 8, 0))  # both now have the old pages cached
        seen.append(mapped[:8])
        wo = os.open(f, os.O_WRONLY)
        os.pwrite(wo, b"BBBB", 2)
        seen += [os.pread(reader, 8, 0), mapped[:8]]
        os.pwrite(wo, b"C" * 5000, 8000)  # past the end: the size follows at once
        seen += [os.fstat(reader).st_size, os.pread(reader, 8, 9_996), mapped[9_996:10_000]]
        os.close(wo)
        app = os.open(f, os.O_WRONLY | os.O_APPEND)
        os.write(app, b"END")
        os.close(app)
        seen += [os.fstat(reader).st_size, os.pread(reader, 8, 12_995)]
    finally:
        mapped.close()
        os.close(rw)
        os.close(reader)
    seen.append(f.read_bytes()[-8:])
    return seen


def test_write_only_opens_bypass_the_page_cache_and_stay_coherent(
    mnt: Path, tmp_path: Path
) -> None:
    # Write-only opens get FOPEN_DIRECT_IO: the written bytes go straight from the writer's
    # memory to the daemon. Readers and mappings of the same file must still see them at once.
    assert _write_only_then_look(mnt) == _write_only_then_look(tmp_path)


def _dirty_mapping_and_write_only_write(d: Path) -> bytes:
    """A shared mapping dirties a page; a write-only descriptor writes into the same page."""
    f = d / "mm.bin"
    f.write_bytes(b"a" * 8192)
    rw = os.open(f, os.O_RDWR)
    mapped = mmap.mmap(rw, 8192)
    try:
        mapped[0:4] = b"MMAP"
        wo = os.open(f, os.O_WRONLY)
        os.pwrite(wo, b"DIRECT", 100)
        os.close(wo)
        mapped.flush()
    finally:
        mapped.close()
        os.close(rw)
    return f.read_bytes()


def test_a_dirty_mapping_and_a_write_only_write_both_land(mnt: Path, tmp_path: Path) -> None:
    # The write-only write goes around the page cache; the mapping's dirty page must not
    # be written back over it later.
    assert _dirty_mapping_and_write_only_write(mnt) == _dirty_mapping_and_write_only_write(tmp_path)


def _tty_probe(d: Path) -> tuple[int | None, bool]:
    f = d / "tty.txt"
    f.write_text("not a terminal\n")
    fd = os.open(f, os.O_RDONLY)
    try:
        try:
            fcntl.ioctl(fd, termios.TCGETS, bytes(64))
            code = None
        except OSError as exc:
            code = exc.errno
        return code, os.isatty(fd)
    finally:
        os.close(fd)


def test_tty_ioctls_fail_as_on_the_native_disk_and_are_counted(mnt: Path, tmp_path: Path) -> None:
    assert _tty_probe(mnt) == _tty_probe(tmp_path) == (errno.ENOTTY, False)
    # Each one is still a round trip (the kernel never remembers the answer), and Python's
    # open() asks isatty() of every file before 3.14: `ctl stats` shows them.
    (mnt / "t.txt").write_text("x")
    before = requests(mnt)
    with open(mnt / "t.txt") as fh:
        assert fh.read() == "x"
    assert delta(mnt, before).get("ioctl") == 1


def _capability() -> bytes:
    """A valid ``security.capability`` value (revision 2, effective, CAP_NET_RAW)."""
    return struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


def _without_fsetid(code: str) -> None:
    """Run Python ``code`` as root without CAP_FSETID."""
    subprocess.run(
        ["setpriv", "--bounding-set=-fsetid", "--inh-caps=-fsetid", sys.executable, "-c", code],
        check=True,
    )


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is missing")
def test_write_truncate_chown_clear_setuid_and_capability_as_the_native_disk_does(
    mnt: Path, tmp_path: Path
) -> None:
    results = {}
    for where, root in (("native", tmp_path), ("mount", mnt)):
        setuid = root / "setuid-file"
        setuid.write_bytes(b"#!/bin/sh\n")
        os.chmod(setuid, 0o6755)
        _without_fsetid(f"open({str(setuid)!r}, 'ab').write(b'x')")
        truncated = root / "truncated"
        truncated.write_bytes(b"x")
        os.chmod(truncated, 0o6755)
        _without_fsetid(f"import os; os.truncate({str(truncated)!r}, 0)")
        chowned = root / "chowned"
        chowned.write_bytes(b"x")
        os.chmod(chowned, 0o6755)
        os.chown(chowned, 0, 0)  # chown clears them even for root
        root_truncated = root / "root-truncated"
        root_truncated.write_bytes(b"x")
        os.chmod(root_truncated, 0o6755)
        os.truncate(root_truncated, 0)
        root_write = root / "root-write"
        root_write.write_bytes(b"x")
        os.chmod(root_write, 0o4755)
        with open(root_write, "ab") as fh:  # root keeps CAP_FSETID: the bits stay
            fh.write(b"y")
        capped = root / "capped"
        capped.write_bytes(b"x")
        os.setxattr(capped, "security.capability", _capability())
        with open(capped, "ab") as fh:
            fh.write(b"y")
        try:
            os.getxattr(capped, "security.capability")
            cap_left = True
        except OSError as exc:
            assert exc.errno == errno.ENODATA
            cap_left = False
        results[where] = (
            *(stat.S_IMODE(f.stat().st_mode) for f in (setuid, truncated, chowned)),
            stat.S_IMODE(root_truncated.stat().st_mode),
            stat.S_IMODE(root_write.stat().st_mode),
            cap_left,
        )
    assert results["mount"] == results["native"]
    assert results["native"][:3] == (0o755, 0o755, 0o755)  # set-user/group-ID went


def test_sigterm_unmounts_and_keeps_the_data(tmp_path: Path) -> None:
    path = tmp_path / "store.bfs"
    with branchfs.Store.open(path, create=True) as s:
        s.create_branch("main")
    mp = tmp_path / "mnt"
    mp.mkdir()
    bfs = [sys.executable, "-m", "branchfs.cli", "--store", str(path)]
    subprocess.run([*bfs, "mount", str(mp)], check=True, capture_output=True)
    (mp / "kept").write_bytes(b"before the signal")
    regs = list((path / "mounts").glob("*.json"))
    assert len(regs) == 1
    pid = json.loads(regs[0].read_text())["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while regs[0].exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not regs[0].exists(), "the daemon did not stop on SIGTERM"
    assert not os.path.ismount(mp)
    with branchfs.Store.open(path) as s:
        assert s.branch("main").read_bytes("kept") == b"before the signal"
        assert s.fsck().ok


_LOCKER = """
import fcntl, os, sys, time
path, kind = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR)
if kind == "flock":
    fcntl.flock(fd, fcntl.LOCK_EX)
else:
    fcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)
print("locked", flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("kind", ["flock", "posix"])
def test_file_locks_exclude_another_process_as_on_the_native_disk(
    mnt: Path, tmp_path: Path, kind: str
) -> None:
    import fcntl

    outcomes = {}
    for where, root in (("native", tmp_path), ("mount", mnt)):
        path = root / f"locked-{kind}"
        path.write_bytes(b"0123456789")
        holder = subprocess.Popen(
            [sys.executable, "-c", _LOCKER, str(path), kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdin is not None
            assert holder.stdout.readline().strip() == "locked"
            fd = os.open(path, os.O_RDWR)
            try:
                try:
                    if kind == "flock":
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    else:
                        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
                    while_held = "taken"
                except OSError as exc:
                    while_held = errno.errorcode[exc.errno]
                holder.stdin.write("\n")
                holder.stdin.flush()
                holder.wait(10)
                if kind == "flock":
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
                outcomes[where] = (while_held, "taken after release")
            finally:
                os.close(fd)
        finally:
            holder.kill()
            holder.wait()
    assert outcomes["mount"] == outcomes["native"]
    assert outcomes["native"][0] in ("EAGAIN", "EACCES")
