"""Consistency across processes (contract 3 of docs/architecture.md) with real mounts.

Two daemons serve two branches of one store at once; a merge, reset or write made through the
API by another process shows in the mount on the next syscall (no stale kernel cache); a fork
through the mount captures every ``write()`` that returned before it; fsync'ed data is in the
store for any other process to read.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from fusecheck import needs_fuse

import branchfs

pytestmark = needs_fuse


@pytest.fixture
def mnt(store_path: Path, tmp_path: Path) -> Iterator[Path]:
    """Branch ``main`` mounted for one test."""
    (tmp_path / "mnt").mkdir()
    with branchfs.mounted(store_path, tmp_path / "mnt") as m:
        yield m


def elsewhere(store_path: Path, code: str) -> str:
    """Run ``code`` in a fresh Python process with ``store`` open; return what it printed."""
    prog = "import sys, branchfs\nstore = branchfs.Store.open(sys.argv[1])\n"
    prog += textwrap.dedent(code)
    res = subprocess.run(
        [sys.executable, "-c", prog, str(store_path)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_two_daemons_serve_two_branches_of_one_store(store_path: Path, tmp_path: Path) -> None:
    with branchfs.Store.open(store_path) as s:
        s.branch("main").write_bytes("common.txt", b"before the fork\n")
        s.fork("main", "feature")
    (tmp_path / "m1").mkdir()
    (tmp_path / "m2").mkdir()
    with (
        branchfs.mounted(store_path, tmp_path / "m1", branch="main") as m1,
        branchfs.mounted(store_path, tmp_path / "m2", branch="feature") as m2,
    ):
        assert (m1 / "common.txt").read_text() == (m2 / "common.txt").read_text()
        (m1 / "common.txt").write_text("main side\n")
        (m2 / "common.txt").write_text("feature side\n")
        (m2 / "feature-only.txt").write_text("f\n")
        assert (m1 / "common.txt").read_text() == "main side\n"
        assert (m2 / "common.txt").read_text() == "feature side\n"
        assert not (m1 / "feature-only.txt").exists()
        # Written and closed in one daemon, seen by the other through its control directory.
        other = m1 / ".branchfs" / "branches" / "feature"
        assert (other / "common.txt").read_text() == "feature side\n"
        assert (other / "feature-only.txt").read_text() == "f\n"
        out = elsewhere(
            store_path,
            """
            print(store.branch("main").read_text("common.txt"), end="")
            print(store.branch("feature").read_text("common.txt"), end="")
            """,
        )
        assert out == "main side\nfeature side\n"


def test_api_merge_from_another_process_shows_at_once(store_path: Path, mnt: Path) -> None:
    (mnt / "f.txt").write_text("one\ntwo\nthree\n")
    (mnt / "keep.txt").write_text("keep\n")
    # Let the kernel cache the entries, attributes and pages.
    assert (mnt / "f.txt").read_text() == "one\ntwo\nthree\n"
    assert sorted(os.listdir(mnt)) == ["f.txt", "keep.txt"]
    size_before = os.stat(mnt / "f.txt").st_size

    elsewhere(
        store_path,
        """
        side = store.fork("main", "side")
        side.write_text("f.txt", "one\\ntwo, changed on side, and longer\\nthree\\n")
        side.write_text("g.txt", "new on side\\n")
        side.remove("keep.txt")
        store.merge("main", "side")
        """,
    )
    assert (mnt / "f.txt").read_text() == "one\ntwo, changed on side, and longer\nthree\n"
    assert os.stat(mnt / "f.txt").st_size != size_before
    assert sorted(os.listdir(mnt)) == ["f.txt", "g.txt"]
    assert not (mnt / "keep.txt").exists()
    assert (mnt / "g.txt").read_text() == "new on side\n"


def test_api_reset_and_write_from_another_process_show_at_once(store_path: Path, mnt: Path) -> None:
    (mnt / "data.bin").write_bytes(b"A" * 200_000)
    (mnt / "dir").mkdir()
    (mnt / "dir" / "x").write_text("x\n")
    elsewhere(store_path, 'store.snapshot("main", "s0")')
    (mnt / "data.bin").write_bytes(b"B" * 100)
    (mnt / "dir" / "y").write_text("y\n")
    assert (mnt / "data.bin").read_bytes() == b"B" * 100
    assert sorted(os.listdir(mnt / "dir")) == ["x", "y"]

    elsewhere(store_path, 'store.reset("main", "s0")')
    assert (mnt / "data.bin").read_bytes() == b"A" * 200_000
    assert sorted(os.listdir(mnt / "dir")) == ["x"]

    # A plain API write from another process replaces cached pages of an open-able file.
    assert (mnt / "dir" / "x").read_text() == "x\n"
    elsewhere(
        store_path,
        """
        b = store.branch("main")
        b.write_bytes("dir/x", b"rewritten elsewhere\\n")
        b.chmod("dir/x", 0o600)
        b.mkdir("dir/sub")
        """,
    )
    assert (mnt / "dir" / "x").read_text() == "rewritten elsewhere\n"
    assert os.stat(mnt / "dir" / "x").st_mode & 0o777 == 0o600
    assert os.path.isdir(mnt / "dir" / "sub")


def test_fork_through_mount_captures_every_returned_write(store_path: Path, mnt: Path) -> None:
    chunk = bytes(range(256)) * 1024  # 256 KiB
    fd = os.open(mnt / "open.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for _ in range(12):  # 3 MiB, never closed nor fsynced before the fork
            assert os.write(fd, chunk) == len(chunk)
        os.pwrite(fd, b"tail", 5 * 2**20)
        for i in range(50):
            (mnt / f"small{i}.txt").write_text(f"small {i}\n")
        os.mkdir(mnt / ".branchfs" / "branches" / "captured")
        os.write(fd, b"after the fork")  # must not show in the fork
    finally:
        os.close(fd)

    with branchfs.Store.open(store_path) as s:
        fork = s.branch("captured")
        data = fork.read_bytes("open.bin")
        assert len(data) == 5 * 2**20 + 4
        assert data[: 12 * len(chunk)] == chunk * 12
        assert data[12 * len(chunk) : 5 * 2**20] == bytes(5 * 2**20 - 12 * len(chunk))
        assert data[-4:] == b"tail"
        for i in range(50):
            assert fork.read_text(f"small{i}.txt") == f"small {i}\n"
        main = s.branch("main").read_bytes("open.bin")
        assert main[12 * len(chunk) : 12 * len(chunk) + 14] == b"after the fork"


def test_writes_committed_behind_the_writer_are_seen_by_everything_else(
    store_path: Path, mnt: Path
) -> None:
    # Every 8 MiB a file's buffer is committed by the flush thread while the writer goes
    # on. Two files written in turn keep a commit in flight at nearly every step; reads,
    # stats and a fork in between must all see every write that returned.
    mib = 2**20
    blocks = {name: [os.urandom(mib) for _ in range(20)] for name in ("a.bin", "b.bin")}
    fds = {name: os.open(mnt / name, os.O_WRONLY | os.O_CREAT, 0o644) for name in blocks}
    readers = {name: os.open(mnt / name, os.O_RDONLY) for name in blocks}
    try:
        for i in range(20):
            for name, fd in fds.items():
                assert os.write(fd, blocks[name][i]) == mib
                assert os.fstat(readers[name]).st_size == (i + 1) * mib
                if i % 3 == 2:
                    assert os.pread(readers[name], 100, i * mib - 50) == (
                        blocks[name][i - 1][-50:] + blocks[name][i][:50]
                    )
        os.mkdir(mnt / ".branchfs" / "branches" / "behind")
        os.write(fds["a.bin"], b"after the fork")
    finally:
        for fd in (*fds.values(), *readers.values()):
            os.close(fd)
    with branchfs.Store.open(store_path) as s:
        fork = s.branch("behind")
        for name, data in blocks.items():
            assert fork.read_bytes(name) == b"".join(data)
        assert s.branch("main").read_bytes("a.bin")[20 * mib :] == b"after the fork"


def test_fsynced_data_is_in_the_store(store_path: Path, mnt: Path) -> None:
    payload = os.urandom(3 * 2**20 + 123)
    fd = os.open(mnt / "synced.bin", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        os.write(fd, payload)
        os.fsync(fd)
        # Still open: another process reads the fsync'ed bytes from the store itself.
        out = elsewhere(
            store_path,
            """
            import hashlib
            b = store.branch("main")
            print(hashlib.sha256(b.read_bytes("synced.bin")).hexdigest())
            print(oct(b.stat("synced.bin").st_mode & 0o777))
            """,
        )
    finally:
        os.close(fd)
    import hashlib

    assert out.split() == [hashlib.sha256(payload).hexdigest(), "0o640"]

    d = mnt / "made"
    d.mkdir()
    fd = os.open(d / "n.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"durable name\n")
        os.fsync(fd)
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)
        out = elsewhere(store_path, 'print(store.branch("main").read_text("made/n.txt"), end="")')
    finally:
        os.close(fd)
    assert out == "durable name\n"


def test_attributes_and_xattrs_changed_elsewhere_show_at_once(store_path: Path, mnt: Path) -> None:
    """The daemon's own record cache (getattr, getxattr) never hides a change from outside.

    Checked on a file descriptor held open: a path would make the kernel look the name up
    again after an invalidation, which refreshes the record anyway.
    """
    p = mnt / "f.txt"
    p.write_text("x\n")
    os.chmod(p, 0o644)
    fd = os.open(p, os.O_RDONLY)
    try:
        with pytest.raises(OSError):
            os.getxattr(fd, "user.k")  # a cached miss
        assert os.fstat(fd).st_mode & 0o777 == 0o644
        elsewhere(
            store_path,
            """
            b = store.branch("main")
            b.setxattr("f.txt", "user.k", b"from elsewhere")
            b.chmod("f.txt", 0o600)
            """,
        )
        assert os.getxattr(fd, "user.k") == b"from elsewhere"
        assert os.fstat(fd).st_mode & 0o777 == 0o600
        # The same file through the control directory's alias of the mounted branch.
        alias = mnt / ".branchfs" / "branches" / "main" / "f.txt"
        os.setxattr(alias, "user.k", b"via alias")
        os.chmod(alias, 0o640)
        assert os.getxattr(fd, "user.k") == b"via alias"
        assert os.fstat(fd).st_mode & 0o777 == 0o640
        os.removexattr(alias, "user.k")
        with pytest.raises(OSError):
            os.getxattr(fd, "user.k")
        # A write through the alias changes size and mtime of the mounted view's file.
        with open(alias, "a") as fh:
            fh.write("more\n")
        assert os.fstat(fd).st_size == len("x\nmore\n")
        assert os.read(fd, 100) == b"x\nmore\n"
    finally:
        os.close(fd)


def test_directory_attributes_changed_elsewhere_show_at_once(store_path: Path, mnt: Path) -> None:
    """A directory's record, cached after creates in it, follows a change made elsewhere."""
    d = mnt / "d"
    d.mkdir()
    (d / "a").write_text("a\n")
    (d / "sub").mkdir()
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        before = os.fstat(fd)
        elsewhere(
            store_path,
            """
            b = store.branch("main")
            b.mkdir("d/sub2")
            b.chmod("d", 0o700)
            """,
        )
        after = os.fstat(fd)
        assert after.st_mtime_ns > before.st_mtime_ns
        assert after.st_mode & 0o777 == 0o700
    finally:
        os.close(fd)


def test_notices_from_outside_while_the_mount_is_busy_neither_deadlock_nor_go_stale(
    store_path: Path, mnt: Path
) -> None:
    # Writers inside the mount keep the request loop busy while another process writes the
    # same branch through the API 200 times: each write waits for the daemon's notice
    # thread to drop the kernel's caches, which must not wait for the loop, nor it for them.
    writer = textwrap.dedent(
        """
        import os, sys, time
        root, tag = sys.argv[1], sys.argv[2]
        end = time.monotonic() + 4
        i = 0
        while time.monotonic() < end:
            p = os.path.join(root, f"{tag}-{i % 50}")
            with open(p, "w") as fh:
                fh.write(str(i))
            os.listdir(root)
            os.stat(p)
            i += 1
        print(i)
        """
    )
    (mnt / "busy").mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", writer, str(mnt / "busy"), tag],
            stdout=subprocess.PIPE,
            text=True,
        )
        for tag in ("a", "b")
    ]
    out = elsewhere(
        store_path,
        """
        main = store.branch("main")
        for i in range(200):
            main.write_bytes(f"busy/api-{i % 20}", str(i).encode())
        print("done")
        """,
    )
    assert out.strip() == "done"
    for p in procs:
        stdout, _ = p.communicate(timeout=60)
        assert p.returncode == 0 and int(stdout) > 0
    # What the API wrote last is what the mount shows, names and bytes.
    names = set(os.listdir(mnt / "busy"))
    assert {f"api-{i}" for i in range(20)} <= names
    assert (mnt / "busy" / "api-19").read_text() == "199"


#: Appends ``argv[2]`` lines to ``log`` of branch main of the store ``argv[1]`` through the
#: API, each in its own open and close.
API_APPENDS = textwrap.dedent(
    """
    import sys, branchfs
    with branchfs.Store.open(sys.argv[1]) as store:
        main = store.branch("main")
        for i in range(int(sys.argv[2])):
            with main.open("log", "ab") as f:
                f.write(b"api %d\\n" % i)
    """
)
#: Appends ``argv[2]`` lines to the file ``argv[1]`` (in a mount), each in its own open.
MOUNT_APPENDS = textwrap.dedent(
    """
    import sys
    for i in range(int(sys.argv[2])):
        with open(sys.argv[1], "ab") as f:
            f.write(b"mnt %d\\n" % i)
    """
)


def test_appends_through_the_api_and_the_mount_at_once_all_land(
    store_path: Path, mnt: Path
) -> None:
    # One file is one file whatever path reaches it: an O_APPEND write through the mount
    # took the file's end from the daemon's cache, which another process's append may have
    # moved a moment before its change notice arrived; the write then landed on those
    # bytes (up to 27 of 200 API lines lost).
    (mnt / "log").write_bytes(b"")
    procs = [
        subprocess.Popen([sys.executable, "-c", API_APPENDS, str(store_path), "400"]),
        subprocess.Popen([sys.executable, "-c", MOUNT_APPENDS, str(mnt / "log"), "400"]),
        subprocess.Popen([sys.executable, "-c", MOUNT_APPENDS, str(mnt / "log"), "400"]),
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    lines = (mnt / "log").read_bytes().splitlines()
    assert sum(line.startswith(b"api ") for line in lines) == 400
    assert sum(line.startswith(b"mnt ") for line in lines) == 800
    assert len(lines) == 1200


def test_a_change_from_elsewhere_keeps_working_directories_inside_the_mount(
    store_path: Path, mnt: Path
) -> None:
    # The change notice dropped every name the kernel cached; the working directory of a
    # process inside the mount went with them (getcwd: ENOENT, so git and make failed).
    # Names now only expire: the next path walk asks again, the directory stays.
    (mnt / "repo" / "sub").mkdir(parents=True)
    (mnt / "repo" / "sub" / "f").write_bytes(b"before")
    here = os.getcwd()
    os.chdir(mnt / "repo" / "sub")
    try:
        elsewhere(store_path, "store.branch('main').write_bytes('repo/sub/f', b'after')")
        elsewhere(store_path, "store.branch('main').write_bytes('other', b'x')")
        assert os.getcwd() == str(mnt / "repo" / "sub")
        assert Path("f").read_bytes() == b"after"  # the change shows at once
        elsewhere(store_path, "store.branch('main').remove('repo/sub/f')")
        assert not Path("f").exists()
        assert os.getcwd() == str(mnt / "repo" / "sub")
    finally:
        os.chdir(here)
