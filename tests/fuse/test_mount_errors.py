"""Bad input to ``branchfs mount`` / ``umount``: a clear message, a non-zero exit, no traceback.

Mountpoint missing, not a directory, not empty, already mounted; unknown branch; no
fusermount3 on PATH and no /dev/fuse (the message names the Debian package fuse3).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fusecheck import needs_fuse

import branchfs

pytestmark = needs_fuse

CLI = Path(sys.executable).parent / "branchfs"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``branchfs`` command line."""
    cmd = [str(CLI), *args] if CLI.exists() else [sys.executable, "-m", "branchfs.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)


def assert_user_error(res: subprocess.CompletedProcess[str], *words: str) -> str:
    """A refused command: exit 2 (bad input), no traceback, a message with ``words``."""
    out = res.stdout + res.stderr
    assert "Traceback" not in out, out
    assert res.returncode == 2, (res.returncode, out)
    for w in words:
        assert w.lower() in out.lower(), (w, out)
    return out


@pytest.fixture
def unmount_after(tmp_path: Path) -> Iterator[list[Path]]:
    """Mountpoints to unmount at the end of the test even if it fails."""
    paths: list[Path] = []
    yield paths
    for p in paths:
        if os.path.ismount(p):
            subprocess.run(["fusermount3", "-u", str(p)], capture_output=True)


def test_mountpoint_missing(store_path: Path, tmp_path: Path) -> None:
    mp = tmp_path / "nope"
    res = cli("--store", str(store_path), "mount", str(mp))
    assert_user_error(res, str(mp), "does not exist")
    with (
        pytest.raises(branchfs.BranchFSError, match="does not exist"),
        branchfs.mounted(store_path, mp),
    ):
        pass


def test_mountpoint_not_a_directory(store_path: Path, tmp_path: Path) -> None:
    mp = tmp_path / "file"
    mp.write_text("x")
    res = cli("--store", str(store_path), "mount", str(mp))
    assert_user_error(res, str(mp), "not a directory")


def test_mountpoint_not_empty(store_path: Path, tmp_path: Path) -> None:
    mp = tmp_path / "full"
    mp.mkdir()
    (mp / "something").write_text("x")
    res = cli("--store", str(store_path), "mount", str(mp))
    assert_user_error(res, str(mp), "not empty")
    assert not os.path.ismount(mp)


def test_mountpoint_already_mounted(
    store_path: Path, tmp_path: Path, unmount_after: list[Path]
) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    with branchfs.mounted(store_path, mp):
        unmount_after.append(mp)
        res = cli("--store", str(store_path), "mount", str(mp))
        assert_user_error(res, str(mp), "already")
        # The existing mount still works.
        (mp / "still.txt").write_text("ok")
        assert (mp / "still.txt").read_text() == "ok"


def test_unknown_branch(store_path: Path, tmp_path: Path, unmount_after: list[Path]) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    unmount_after.append(mp)
    res = cli("--store", str(store_path), "mount", str(mp), "--branch", "no-such-branch")
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "Traceback" not in out, out
    assert "no-such-branch" in out
    assert not os.path.ismount(mp)
    assert os.listdir(mp) == []


def test_no_fusermount3_on_path_names_the_debian_package(store_path: Path, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    bare = tmp_path / "bin"
    bare.mkdir()
    env = {**os.environ, "PATH": str(bare)}
    res = cli("--store", str(store_path), "mount", str(mp), env=env)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "Traceback" not in out, out
    assert "fusermount3" in out
    assert "fuse3" in out.replace("fusermount3", "")  # the package name, not just the tool
    assert not os.path.ismount(mp)


def test_no_dev_fuse_names_the_debian_package(store_path: Path, tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("hiding /dev/fuse needs root and unshare(1)")
    mp = tmp_path / "mnt"
    mp.mkdir()
    # A private mount namespace in which /dev is an empty tmpfs: no /dev/fuse.
    script = 'mount -t tmpfs none /dev && exec "$@"'
    cmd = [str(CLI), "--store", str(store_path), "mount", str(mp)]
    res = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "sh", "-c", script, "sh", *cmd],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = res.stdout + res.stderr
    if "unshare failed" in out or "mount: " in out:
        pytest.skip(f"cannot make a private /dev here: {out.strip()}")
    assert res.returncode != 0, out
    assert "Traceback" not in out, out
    assert "/dev/fuse" in out
    assert "fuse3" in out


def test_umount_of_a_plain_directory(tmp_path: Path) -> None:
    d = tmp_path / "plain"
    d.mkdir()
    res = cli("umount", str(d))
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "Traceback" not in out, out
    assert "not mounted" in out.lower()


def test_unknown_store(tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    res = cli("--store", str(tmp_path / "missing.bfs"), "mount", str(mp))
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "Traceback" not in out, out
    assert "missing.bfs" in out
    assert not os.path.ismount(mp)


def _write_until_error(path: Path, total: int) -> int | None:
    """Write ``total`` bytes of random data in 1 MiB writes, fsync, close: the first errno."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    first = None
    try:
        for _ in range(total >> 20):
            os.write(fd, os.urandom(1 << 20))
        os.fsync(fd)
    except OSError as exc:
        first = exc.errno
    try:
        os.close(fd)
    except OSError as exc:
        first = first or exc.errno
    return first


def _store_on(disk: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A store with branch ``main`` on ``disk``, and an empty mount point for it."""
    store_path = disk / "store.bfs"
    with branchfs.Store.open(store_path, create=True) as s:
        s.create_branch("main")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    return store_path, mnt


def test_full_disk_is_enospc_through_the_mount_and_the_store_stays_usable(
    small_disk: Path, tmp_path: Path
) -> None:
    # Large writes are committed by a flush thread while the writer goes on (write-behind):
    # a failed commit must still reach the writer, as ENOSPC on a later write or the fsync.
    store_path, mnt = _store_on(small_disk, tmp_path)
    with branchfs.Store.open(store_path) as store, branchfs.mounted(store, mnt) as m:
        assert _write_until_error(m / "big", 96 << 20) == errno.ENOSPC
        (m / "big").unlink()
        (m / "after.txt").write_bytes(b"still usable\n")
        assert (m / "after.txt").read_bytes() == b"still usable\n"
    with branchfs.Store.open(store_path) as store:
        assert store.fsck().ok
        assert store.branch("main").read_bytes("after.txt") == b"still usable\n"
        assert not store.branch("main").exists("big")


def test_a_full_disk_fails_the_write_itself_and_keeps_what_came_before(
    small_disk: Path, tmp_path: Path
) -> None:
    # dd, cp and tar never fsync: the write that does not fit must fail, as on ext4, and
    # every file written without an error must be whole. Before, 1 MiB writes were held
    # back and lost at the close, silently, and files read back empty or with zeros.
    store_path, mnt = _store_on(small_disk, tmp_path)
    whole: dict[str, bytes] = {}
    with branchfs.Store.open(store_path) as store, branchfs.mounted(store, mnt) as m:
        failed = None
        for i in range(12):
            pieces = [os.urandom(1 << 20) for _ in range(8)]  # new bytes: nothing shared
            fd = os.open(m / f"f{i}", os.O_WRONLY | os.O_CREAT, 0o644)
            done = 0  # pieces written
            try:
                for piece in pieces:
                    os.write(fd, piece)
                    done += 1
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                failed = (f"f{i}", done)
            finally:
                os.close(fd)
            if failed:
                break
            whole[f"f{i}"] = b"".join(pieces)
        assert failed is not None, "the disk never filled up"
        for name, data in whole.items():
            assert (m / name).read_bytes() == data, name
        name, k = failed
        assert (m / name).read_bytes() in {b"".join(pieces[:j]) for j in range(k + 1)}
        for name in [*whole, failed[0]]:
            (m / name).unlink()
        again = os.urandom(8 << 20)
        (m / "again").write_bytes(again)  # the space is there again
        assert (m / "again").read_bytes() == again
    with branchfs.Store.open(store_path) as store:
        assert store.fsck().ok
        assert store.branch("main").read_bytes("again") == again


def test_closed_files_lost_to_a_full_disk_are_reported_by_the_next_fsync(
    small_disk: Path, tmp_path: Path
) -> None:
    # A closed file's buffer reaches the store after close() returned (with the batch); if
    # the disk is full by then its data is lost, and, as the kernel does for a failed
    # writeback, the next fsync must say so: never lost without a word to anyone.
    store_path, mnt = _store_on(small_disk, tmp_path)
    closed: list[tuple[str, bytes]] = []
    with branchfs.Store.open(store_path) as store, branchfs.mounted(store, mnt) as m:
        try:
            for i in range(4000):
                data = os.urandom(1500 if i % 2 else 40000)
                (m / f"f{i}").write_bytes(data)
                closed.append((f"f{i}", data))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        else:
            pytest.fail("the disk never filled up")
        fd = os.open(m, os.O_RDONLY)
        try:
            os.fsync(fd)
            reported = False
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            reported = True
        finally:
            os.close(fd)
        lost = [name for name, data in closed if (m / name).read_bytes() != data]
        assert reported or not lost, f"{len(lost)} closed files lost, fsync said nothing"
    with branchfs.Store.open(store_path) as store:
        assert store.fsck().ok


#: Appends lines of ``argv[3]`` bytes to ``argv[1]`` (a file in a mount), tagged ``argv[2]``,
#: until a write fails; prints how many were acknowledged.
MOUNT_APPENDER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
n = 0
while True:
    try:
        os.write(fd, b"%s %d %s\\n" % (sys.argv[2].encode(), n, b"x" * int(sys.argv[3])))
    except OSError:
        break
    n += 1
print(n)
"""
#: The same through the API of the store ``argv[1]`` (file ``log`` of branch main).
API_APPENDER = """
import sys, branchfs
main = branchfs.Store.open(sys.argv[1]).branch("main")
n = 0
while True:
    try:
        with main.open("log", "ab") as f:
            f.write(b"%s %d %s\\n" % (sys.argv[2].encode(), n, b"y" * int(sys.argv[3])))
    except OSError:
        break
    n += 1
print(n)
"""


def test_appends_from_the_api_and_the_mount_on_a_filling_disk_all_land(
    small_disk: Path, tmp_path: Path
) -> None:
    # Near a full disk the loop's calls commit alone, so the batch no longer kept other
    # appenders out between reading the file's end and writing there: 40-55 % of the API's
    # acknowledged appends were overwritten by the mount's.
    store_path, mnt = _store_on(small_disk, tmp_path)
    with branchfs.Store.open(store_path) as store, branchfs.mounted(store, mnt) as m:
        (m / "pad").write_bytes(os.urandom(24 << 20))
        (m / "log").write_bytes(b"")
        procs = {
            **{
                f"m{i}": subprocess.Popen(
                    [sys.executable, "-c", MOUNT_APPENDER, str(m / "log"), f"m{i}", "3000"],
                    stdout=subprocess.PIPE,
                )
                for i in range(2)
            },
            **{
                f"a{i}": subprocess.Popen(
                    [sys.executable, "-c", API_APPENDER, str(store_path), f"a{i}", "2000"],
                    stdout=subprocess.PIPE,
                )
                for i in range(2)
            },
        }
        acked = {tag: int(p.communicate(timeout=300)[0]) for tag, p in procs.items()}
        lines = (m / "log").read_bytes().splitlines()
        for tag, n in acked.items():
            mine = [line.split()[1] for line in lines if line.startswith(tag.encode() + b" ")]
            assert mine[:n] == [b"%d" % i for i in range(n)], tag  # every acknowledged one
    with branchfs.Store.open(store_path) as store:
        assert store.fsck().ok
