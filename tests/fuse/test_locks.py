"""Locks exclude across every path to one file, as on the native disk.

A file of the mounted branch is reachable as ``x``, as ``.branchfs/branches/MAIN/x`` and,
from another daemon's mount, as ``.branchfs/branches/MAIN/x`` there. Each of those paths
leads to one kernel inode (the branch's own entry is a symlink to the mount root, another
daemon's entry a symlink to this mountpoint), so the kernel's lock table covers them all.
On the native disk the second path is a symlink to the directory, which is what the mount
now shows too; results must agree.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from clirun import bfs, one_line_error
from fusecheck import needs_fuse

import branchfs
from branchfs import notices
from branchfs.errors import BranchMounted
from branchfs.mount import daemon_command, unmount
from branchfs.run import run

if TYPE_CHECKING:
    from conftest import Mounted

pytestmark = needs_fuse

HOLD = """
import fcntl, os, sys, time
kind, path = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR)
if kind == "flock":
    fcntl.flock(fd, fcntl.LOCK_EX)
else:
    fcntl.lockf(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def attempts(first: Path, second: Path) -> dict[str, str]:
    """With a lock of each kind held on ``first`` by another process (or, for OFD locks,
    another open file description), what a non-blocking lock through ``second`` gets."""
    first.write_bytes(b"data")
    out = {}
    for kind in ("flock", "posix"):
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD, kind, str(first)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
            fd = os.open(second, os.O_RDWR)
            try:
                if kind == "flock":
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                out[kind] = "granted"
            except OSError as exc:
                out[kind] = f"errno {exc.errno}"
            finally:
                os.close(fd)
        finally:
            holder.communicate("")
    a, b = os.open(first, os.O_RDWR), os.open(second, os.O_RDWR)
    try:
        fcntl.fcntl(a, fcntl.F_OFD_SETLK, ofd_lock(fcntl.F_WRLCK))
        try:
            fcntl.fcntl(b, fcntl.F_OFD_SETLK, ofd_lock(fcntl.F_WRLCK))
            out["ofd"] = "granted"
        except OSError as exc:
            out["ofd"] = f"errno {exc.errno}"
    finally:
        os.close(a)
        os.close(b)
    return out


def ofd_lock(kind: int) -> bytes:
    """A ``struct flock`` for the whole file (type, whence, start, len, pid 0)."""
    import struct

    return struct.pack("hhqqi4x", kind, os.SEEK_SET, 0, 0, 0)


@pytest.fixture
def native(tmp_path: Path) -> tuple[Path, Path]:
    """A native directory and a second path to it (a symlink, as the mount shows)."""
    d = tmp_path / "native"
    d.mkdir()
    (tmp_path / "alias").symlink_to(d)
    return d, tmp_path / "alias"


def test_locks_exclude_across_the_branch_entry_of_the_mounted_branch(
    module_mount: Mounted, native: tuple[Path, Path]
) -> None:
    expected = attempts(native[0] / "x", native[1] / "x")
    assert set(expected.values()) == {"errno 11"}
    mnt = module_mount.path
    assert os.readlink(mnt / ".branchfs" / "branches" / "main") == "../.."
    assert attempts(mnt / "x", mnt / ".branchfs" / "branches" / "main" / "x") == expected


WRITER = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=120, isolation_level=None)
c.execute("pragma journal_mode=delete")
c.execute("pragma synchronous=off")
for i in range(300):
    c.execute("insert into t values (?, ?)", (int(sys.argv[2]), i))
c.close()
"""


def four_writers(first: Path, second: Path) -> tuple[int, str, list[str]]:
    """Four SQLite writers, two through each path, 300 autocommitted inserts each (journal
    mode DELETE; synchronous off, since durability is not what this measures): rows,
    integrity check, and every writer's error."""
    with sqlite3.connect(first / "t.db") as c:
        c.execute("pragma journal_mode=delete")
        c.execute("create table t(w int, i int)")
    paths = [first, second, first, second]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(p / "t.db"), str(w)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for w, p in enumerate(paths)
    ]
    errors = [p.communicate(timeout=600)[1].strip() for p in procs]
    c = sqlite3.connect(first / "t.db")
    try:
        rows = c.execute("select count(*) from t").fetchone()[0]
        check = c.execute("pragma integrity_check").fetchone()[0]
    finally:
        c.close()
    return rows, check, errors


def test_sqlite_writers_on_two_paths_lose_nothing(
    module_mount: Mounted, native: tuple[Path, Path]
) -> None:
    assert four_writers(*native) == (1200, "ok", ["", "", "", ""])
    mnt = module_mount.path
    alias = mnt / ".branchfs" / "branches" / "main"
    assert four_writers(mnt, alias) == (1200, "ok", ["", "", "", ""])


@pytest.fixture
def second_daemon(module_mount: Mounted, tmp_path: Path) -> Iterator[Path]:
    """Another daemon on the same store, serving branch ``other``."""
    store = module_mount.store
    if "other" not in store.branches():
        store.fork("main", "other")
    (tmp_path / "mnt2").mkdir()
    with branchfs.mounted(module_mount.store_path, tmp_path / "mnt2", "other") as m:
        yield m


def test_locks_exclude_across_daemons_serving_the_same_branch(
    module_mount: Mounted, second_daemon: Path, native: tuple[Path, Path]
) -> None:
    expected = attempts(native[0] / "y", native[1] / "y")
    via_other = second_daemon / ".branchfs" / "branches" / "main"
    assert os.readlink(via_other) == str(module_mount.path)
    assert attempts(module_mount.path / "y", via_other / "y") == expected
    # And the first mount leads to the second daemon's mount for the branch it serves.
    assert os.readlink(module_mount.path / ".branchfs" / "branches" / "other") == str(second_daemon)


def flock_pairs(paths: list[Path]) -> dict[tuple[int, int], int]:
    """``flock -n`` (util-linux) through each path while ``flock`` holds each other path:
    the exit status of every ordered pair (1: refused, as on the native disk)."""
    out = {}
    for i, held in enumerate(paths):
        holder = subprocess.Popen(
            ["flock", str(held), "sh", "-c", "echo held; read _"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
            for j, other in enumerate(paths):
                if i != j:
                    out[i, j] = subprocess.run(["flock", "-n", str(other), "true"]).returncode
        finally:
            holder.communicate("")
    return out


def test_flock_command_and_sqlite_writers_across_two_daemons(
    module_mount: Mounted, second_daemon: Path, native: tuple[Path, Path]
) -> None:
    (native[0] / "lockme").write_bytes(b"")
    native_paths = [native[0] / "lockme", native[1] / "lockme"]
    assert set(flock_pairs(native_paths).values()) == {1}
    mnt = module_mount.path
    (mnt / "lockme").write_bytes(b"")
    paths = [
        mnt / "lockme",
        mnt / ".branchfs" / "branches" / "main" / "lockme",
        second_daemon / ".branchfs" / "branches" / "main" / "lockme",
    ]
    assert set(flock_pairs(paths).values()) == {1}
    first, second = tmp_dir(mnt, "sq"), second_daemon / ".branchfs" / "branches" / "main" / "sq"
    assert four_writers(first, second) == (1200, "ok", ["", "", "", ""])


def tmp_dir(root: Path, name: str) -> Path:
    """A new directory ``name`` under ``root``."""
    (root / name).mkdir()
    return root / name


def test_a_second_mount_of_a_mounted_branch_is_refused(
    module_mount: Mounted, tmp_path: Path
) -> None:
    (tmp_path / "again").mkdir()
    with (
        pytest.raises(BranchMounted, match=f"already mounted at {module_mount.path} ") as info,
        branchfs.mounted(module_mount.store_path, tmp_path / "again", "main"),
    ):
        pass
    assert info.value.mountpoint == str(module_mount.path)
    assert not os.path.ismount(tmp_path / "again")
    cli = bfs("mount", str(tmp_path / "again"), "--branch", "main", store=module_mount.store_path)
    one_line_error(cli, cli.code, f"already mounted at {module_mount.path}", "branchfs umount")
    assert cli.code != 0


def test_two_daemons_started_at_once_for_one_branch_one_wins(
    module_mount: Mounted, tmp_path: Path
) -> None:
    """The check in the daemon, under the claim lock: both pass the caller's check."""
    store = module_mount.store
    store.fork("main", "race")
    procs = []
    for n in range(2):
        (tmp_path / f"r{n}").mkdir()
        cmd = daemon_command(str(module_mount.store_path), str(tmp_path / f"r{n}"), "race")
        procs.append(subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and all(p.poll() is None for p in procs):
            time.sleep(0.02)
        loser = next(p for p in procs if p.poll() is not None)
        assert loser.returncode == 2
        assert loser.stderr is not None and "already mounted at" in loser.stderr.read()
        winner = next(p for p in procs if p is not loser)
        assert winner.poll() is None
        mp = next(str(tmp_path / f"r{n}") for n in range(2) if procs[n] is winner)
        while not os.path.isdir(os.path.join(mp, ".branchfs")):
            assert winner.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        for n, p in enumerate(procs):
            if p.poll() is None:
                unmount(str(tmp_path / f"r{n}"))
            p.wait(timeout=60)
            if p.stderr is not None:
                p.stderr.close()


@pytest.fixture
def hidden_daemon(module_mount: Mounted, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A daemon serving branch ``hidden`` in a private mount namespace of its own (its mount
    is not visible here): its pid and mountpoint."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a private mount namespace needs root and util-linux's unshare")
    store = module_mount.store
    if "hidden" not in store.branches():
        store.fork("main", "hidden")
    mp = tmp_path / "hidden"
    mp.mkdir()
    cmd = daemon_command(str(module_mount.store_path), str(mp), "hidden")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", *cmd])
    try:
        deadline = time.monotonic() + 30
        while not any(notices.mount_root(r) for r in notices.serving(str(store.path), "hidden")):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        assert not os.path.ismount(mp)
        yield proc.pid, mp
    finally:
        proc.terminate()  # the daemon detaches its mount in its namespace and exits
        proc.wait(timeout=60)


def test_a_branch_served_in_another_mount_namespace_is_reached_through_proc(
    module_mount: Mounted, hidden_daemon: tuple[int, Path], tmp_path: Path
) -> None:
    pid, mp = hidden_daemon
    root = f"/proc/{pid}/root{mp}"
    entry = module_mount.path / ".branchfs" / "branches" / "hidden"
    assert os.readlink(entry) == root
    (entry / "lockme").write_bytes(b"")
    paths = [Path(root) / "lockme", entry / "lockme"]
    assert set(flock_pairs(paths).values()) == {1}
    # A run of the branch uses that mount too; one at --at PATH cannot bind it from here.
    res = run(module_mount.store_path, "hidden", "stat -c %d:%i lockme", capture_output=True)
    seen = os.stat(entry / "lockme")
    assert res.stdout.decode().split() == [f"{seen.st_dev}:{seen.st_ino}"], res
    with pytest.raises(BranchMounted, match=r"in another mount namespace \(run it without --at\)"):
        run(module_mount.store_path, "hidden", "true", at=tmp_path / "at")
