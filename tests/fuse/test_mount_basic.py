"""A branch mounted through FUSE behaves like a directory on a native disk.

Real mounts (the ``mounted_store`` fixture in conftest.py): file I/O, names, links, xattrs,
the control directory, coherence with writers in other processes, git inside the mount, and
the ``branchfs mount`` / ``umount`` commands run as subprocesses.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import branchfs
import branchfs.mount
from branchfs.mount import ctl

BRANCHFS = [sys.executable, "-m", "branchfs.cli"]


def in_other_process(code: str) -> None:
    """Run Python ``code`` in a fresh interpreter (a different process than the test's)."""
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=True, timeout=60)


# -- files and names -------------------------------------------------------------------------------


def test_write_read_stat_listdir(mnt: Path) -> None:
    data = os.urandom(300_000)
    (mnt / "big.bin").write_bytes(data)
    (mnt / "small.txt").write_text("hello\n")
    (mnt / "dir").mkdir()
    assert (mnt / "big.bin").read_bytes() == data
    assert (mnt / "small.txt").read_text() == "hello\n"
    assert sorted(os.listdir(mnt)) == ["big.bin", "dir", "small.txt"]
    s = os.stat(mnt / "big.bin")
    assert s.st_size == len(data) and s.st_nlink == 1
    assert os.path.isdir(mnt / "dir")
    # A sparse write past the end reads back zeros in the hole.
    with open(mnt / "sparse", "wb") as fh:
        fh.seek(1_000_000)
        fh.write(b"end")
    got = (mnt / "sparse").read_bytes()
    assert len(got) == 1_000_003 and got[:1_000_000] == bytes(1_000_000) and got[-3:] == b"end"


def test_reads_see_unflushed_writes_and_open_flags(mnt: Path) -> None:
    p = mnt / "f"
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b"abc" * 1000)
        assert os.pread(fd, 6, 0) == b"abcabc"
        assert os.fstat(fd).st_size == 3000
    finally:
        os.close(fd)
    with pytest.raises(FileExistsError):
        os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"END")
    os.close(fd)
    assert p.read_bytes().endswith(b"cEND") and p.stat().st_size == 3003
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert p.stat().st_size == 0
    os.truncate(p, 10)
    assert p.read_bytes() == bytes(10)


def test_rename_unlink_and_open_unlinked_file(mnt: Path) -> None:
    (mnt / "a").write_text("A")
    (mnt / "b").write_text("B")
    os.rename(mnt / "a", mnt / "b")
    assert (mnt / "b").read_text() == "A" and not (mnt / "a").exists()
    (mnt / "d1").mkdir()
    os.rename(mnt / "b", mnt / "d1" / "c")
    assert os.listdir(mnt / "d1") == ["c"]
    with pytest.raises(OSError) as exc:
        os.rmdir(mnt / "d1")
    assert exc.value.errno == errno.ENOTEMPTY
    # An unlinked file stays readable and writable while it is open.
    fh = open(mnt / "d1" / "c", "r+b")  # noqa: SIM115
    os.unlink(mnt / "d1" / "c")
    assert os.listdir(mnt / "d1") == []
    fh.seek(0, 2)
    fh.write(b"more")
    fh.flush()
    fh.seek(0)
    assert fh.read() == b"Amore"
    fh.close()
    os.rmdir(mnt / "d1")
    with pytest.raises(FileNotFoundError):
        os.unlink(mnt / "nothing")


def _unlinked_through_o_path(d: Path) -> list[object]:
    """What fstat (and readlinkat) of O_PATH descriptors show after their names went: a
    file's last name, one of two hard links, a symlink (O_NOFOLLOW), one renamed over."""
    (d / "f").write_text("hello")
    os.setxattr(d / "f", "user.k", b"v")
    (d / "h").write_text("hi")
    os.link(d / "h", d / "h2")
    os.symlink("target", d / "l")
    (d / "r").write_text("replaced")
    (d / "s").write_text("s")
    fds = {n: os.open(d / n, os.O_PATH | os.O_NOFOLLOW) for n in ("f", "h", "l", "r")}
    before = time.time_ns() - 10_000_000  # clocks of the kernel and the daemon's
    for n in ("f", "h", "l"):
        os.unlink(d / n)
    os.rename(d / "s", d / "r")
    seen: list[object] = []
    for n, fd in fds.items():
        st = os.fstat(fd)
        seen.append(
            (n, stat.filemode(st.st_mode), st.st_size, st.st_nlink, st.st_ctime_ns > before)
        )
    seen.append(os.readlink("", dir_fd=fds["l"]))
    seen.append(os.getxattr(f"/proc/self/fd/{fds['f']}", "user.k"))  # reaches GETXATTR
    for fd in fds.values():
        os.close(fd)
    return seen


def test_o_path_descriptors_of_unlinked_files_fstat_as_on_a_native_disk(
    mnt: Path, tmp_path: Path
) -> None:
    # The daemon deletes a file nobody has open at its unlink; the kernel still holds the
    # inode for an O_PATH descriptor until its FORGET, and GETATTR must answer (nlink 0).
    native = _unlinked_through_o_path(tmp_path)
    assert native[0] == ("f", "-rw-r--r--", 5, 0, True)
    assert _unlinked_through_o_path(mnt) == native


def test_symlink_hardlink_chmod_utime(mnt: Path) -> None:
    (mnt / "t").write_text("target")
    os.symlink("t", mnt / "l")
    assert os.readlink(mnt / "l") == "t" and (mnt / "l").read_text() == "target"
    assert os.path.islink(mnt / "l")
    os.link(mnt / "t", mnt / "h")
    assert os.stat(mnt / "t").st_nlink == 2
    assert os.stat(mnt / "h").st_ino == os.stat(mnt / "t").st_ino
    (mnt / "h").write_text("changed")
    assert (mnt / "t").read_text() == "changed"
    os.chmod(mnt / "t", 0o600)
    assert os.stat(mnt / "h").st_mode & 0o777 == 0o600
    os.utime(mnt / "t", ns=(1_000_000_000, 2_000_000_000))
    assert os.stat(mnt / "t").st_mtime_ns == 2_000_000_000
    with pytest.raises(FileExistsError):
        os.symlink("x", mnt / "t")


def test_xattrs(mnt: Path) -> None:
    p = mnt / "x"
    p.write_text("x")
    os.setxattr(p, "user.k", b"v1")
    assert os.getxattr(p, "user.k") == b"v1"
    assert "user.k" in os.listxattr(p)
    with pytest.raises(OSError) as exc:
        os.setxattr(p, "user.k", b"v2", os.XATTR_CREATE)
    assert exc.value.errno == errno.EEXIST
    os.removexattr(p, "user.k")
    with pytest.raises(OSError) as exc:
        os.getxattr(p, "user.k")
    assert exc.value.errno == errno.ENODATA


def test_readdir_snapshot_while_directory_changes(mnt: Path) -> None:
    d = mnt / "many"
    d.mkdir()
    for i in range(300):
        (d / f"f{i:03}").write_text("x")
    seen = []
    with os.scandir(d) as it:
        for entry in it:
            seen.append(entry.name)
            if len(seen) == 10:
                for i in range(300, 320):
                    (d / f"f{i:03}").write_text("x")
    assert len(seen) == len(set(seen)) >= 300
    assert len(os.listdir(d)) == 320


def test_statfs_and_mmap(mnt: Path) -> None:
    import mmap

    s = os.statvfs(mnt)
    assert s.f_namemax == 255 and s.f_blocks > 0
    p = mnt / "m"
    p.write_bytes(bytes(8192))
    with open(p, "r+b") as fh, mmap.mmap(fh.fileno(), 8192) as mm:
        mm[0:5] = b"hello"
        mm.flush()
    assert p.read_bytes()[:5] == b"hello"


# -- the control directory -------------------------------------------------------------------------


def test_fork_by_mkdir_is_isolated(mounted_store: Any) -> None:
    mnt, store = mounted_store.path, mounted_store.store
    fd = os.open(mnt / "shared", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"written before the fork")  # not closed: the fork must still see it
    os.mkdir(mnt / ".branchfs" / "branches" / "f1")
    os.close(fd)
    fork = mnt / ".branchfs" / "branches" / "f1"
    assert (fork / "shared").read_bytes() == b"written before the fork"
    (fork / "shared").write_text("fork side")
    (mnt / "shared").write_text("main side")
    assert (fork / "shared").read_text() == "fork side"
    assert store.branch("f1").read_text("shared") == "fork side"
    assert store.branch("main").read_text("shared") == "main side"
    assert ".branchfs" not in os.listdir(mnt)
    os.rmdir(fork)
    assert "f1" not in store.branches()


def test_ctl_merge_and_snapshot_is_read_only(mounted_store: Any) -> None:
    mnt, store = mounted_store.path, mounted_store.store
    (mnt / "base.txt").write_text("one\ntwo\n")
    os.mkdir(mnt / ".branchfs" / "branches" / "work")
    (mnt / ".branchfs" / "branches" / "work" / "new.txt").write_text("from work\n")
    answer = ctl(mnt, "merge work")
    assert answer["ok"], answer
    assert (mnt / "new.txt").read_text() == "from work\n"
    os.mkdir(mnt / ".branchfs" / "snapshots" / "s1")
    snap = mnt / ".branchfs" / "snapshots" / "s1"
    assert (snap / "new.txt").read_text() == "from work\n"
    with pytest.raises(OSError) as exc:
        (snap / "new.txt").write_text("no")
    assert exc.value.errno == errno.EROFS
    with pytest.raises(OSError) as exc:
        os.mkdir(snap / "d")
    assert exc.value.errno == errno.EROFS
    assert store.snapshots() == ["s1"]


def test_ctl_conflict_lists_every_conflict(mounted_store: Any) -> None:
    mnt = mounted_store.path
    (mnt / "c1").write_text("base\n")
    (mnt / "c2").write_text("base\n")
    os.mkdir(mnt / ".branchfs" / "branches" / "side")
    side = mnt / ".branchfs" / "branches" / "side"
    (side / "c1").write_text("side\n")
    (side / "c2").write_text("side\n")
    (mnt / "c1").write_text("main\n")
    (mnt / "c2").write_text("main\n")
    answer = ctl(mnt, "merge side")
    assert not answer["ok"] and answer["error"] == "conflict"
    assert sorted(c["path"] for c in answer["conflicts"]) == ["c1", "c2"]
    assert (mnt / "c1").read_text() == "main\n"
    assert ctl(mnt, "nonsense")["error"] == "usage"


# -- coherence with other processes ----------------------------------------------------------------


def test_api_write_and_merge_from_another_process_show_at_once(mounted_store: Any) -> None:
    mnt, sp = mounted_store.path, mounted_store.store_path
    (mnt / "doc.txt").write_text("v1\n")
    assert (mnt / "doc.txt").read_text() == "v1\n"  # now cached by the kernel
    assert not (mnt / "later.txt").exists()  # a cached negative lookup
    in_other_process(f"""
        import branchfs
        with branchfs.Store.open({str(sp)!r}) as s:
            main = s.branch("main")
            main.write_text("doc.txt", "v2 from the API\\n")
            main.write_text("later.txt", "new\\n")
    """)
    assert (mnt / "doc.txt").read_text() == "v2 from the API\n"
    assert (mnt / "later.txt").read_text() == "new\n"
    in_other_process(f"""
        import branchfs
        with branchfs.Store.open({str(sp)!r}) as s:
            side = s.fork("main", "side")
            side.write_text("doc.txt", "v3 merged\\n")
            side.remove("later.txt")
            s.merge("main", "side")
    """)
    assert (mnt / "doc.txt").read_text() == "v3 merged\n"
    assert not (mnt / "later.txt").exists()


# -- real programs ---------------------------------------------------------------------------------


def test_git_init_add_commit(mnt: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_CONFIG_GLOBAL": "/dev/null",
    }
    repo = mnt / "repo"
    repo.mkdir()
    for i in range(20):
        (repo / f"m{i}.py").write_text(f"x = {i}\n")

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True
        ).stdout

    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-q", "-m", "first")
    (repo / "m0.py").write_text("x = 100\n")
    assert git("status", "--porcelain").split() == ["M", "m0.py"]
    git("commit", "-qam", "second")
    assert len(git("log", "--oneline").splitlines()) == 2
    assert git("fsck", "--no-progress") == ""


# -- the command line ------------------------------------------------------------------------------


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BRANCHFS, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


def test_cli_mount_umount_and_bad_input(tmp_path: Path, need_fuse: None) -> None:
    store = tmp_path / "s"
    assert _cli("init", str(store)).returncode == 0
    mnt = tmp_path / "m"
    mnt.mkdir()
    r = _cli("--store", str(store), "mount", str(mnt))
    assert r.returncode == 0, r.stderr
    try:
        assert os.path.ismount(mnt)
        (mnt / "f").write_text("through the CLI mount\n")
        # Bad input: already mounted, missing, not a directory, not empty, unknown branch.
        r = _cli("--store", str(store), "mount", str(mnt))
        assert r.returncode == 2 and "already" in r.stderr and "Traceback" not in r.stderr
        r = _cli("--store", str(store), "mount", str(tmp_path / "missing"))
        assert r.returncode == 2 and "does not exist" in r.stderr
        (tmp_path / "file").write_text("")
        r = _cli("--store", str(store), "mount", str(tmp_path / "file"))
        assert r.returncode == 2 and "not a directory" in r.stderr
        full = tmp_path / "full"
        full.mkdir()
        (full / "x").write_text("")
        r = _cli("--store", str(store), "mount", str(full))
        assert r.returncode == 2 and "not empty" in r.stderr
        other = tmp_path / "other"
        other.mkdir()
        r = _cli("--store", str(store), "mount", str(other), "--branch", "nope")
        assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
    finally:
        r = _cli("umount", str(mnt))
    assert r.returncode == 0, r.stderr
    assert not os.path.ismount(mnt)
    with branchfs.Store.open(store) as s:
        assert s.branch("main").read_text("f") == "through the CLI mount\n"


def test_killed_daemon_leaves_a_mount_that_umount_cleans(tmp_path: Path, need_fuse: None) -> None:
    store = tmp_path / "s"
    _cli("init", str(store))
    mnt = tmp_path / "m"
    mnt.mkdir()
    assert _cli("--store", str(store), "mount", str(mnt)).returncode == 0
    fd = os.open(mnt / "synced", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"durable")
    os.fsync(fd)
    os.close(fd)
    reg = next((store / "mounts").glob("*.json"))
    pid = json.loads(reg.read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    try:
        _remount_after_kill(store, mnt)
    finally:
        if branchfs.mount.is_stale(str(mnt)):
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)


def _remount_after_kill(store: Path, mnt: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.stat(mnt)
        except OSError as exc:
            assert exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
            break
        time.sleep(0.05)
    # mount on the dead mountpoint cleans it first; then umount works as usual.
    r = _cli("--store", str(store), "mount", str(mnt))
    assert r.returncode == 0, r.stderr
    assert (mnt / "synced").read_bytes() == b"durable"
    assert _cli("umount", str(mnt)).returncode == 0


def test_missing_fusermount3_names_the_debian_package(tmp_path: Path) -> None:
    store = tmp_path / "s"
    assert _cli("init", str(store)).returncode == 0
    mnt = tmp_path / "m"
    mnt.mkdir()
    # A PATH without fusermount3 (the interpreter is called by its full path).
    env = {**os.environ, "PATH": str(tmp_path)}
    r = subprocess.run(
        [*BRANCHFS, "--store", str(store), "mount", str(mnt)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert r.returncode == 2
    assert "fusermount3" in r.stderr and "fuse3" in r.stderr and "Traceback" not in r.stderr
    assert not os.path.ismount(mnt)


def test_missing_dev_fuse_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: p != "/dev/fuse" and real_exists(p))
    with pytest.raises(branchfs.mount.MountError, match="fuse3"):
        branchfs.mount.check_fuse()


def test_open_file_sees_a_change_from_another_process(mounted_store: Any) -> None:
    mnt, sp = mounted_store.path, mounted_store.store_path
    (mnt / "held.txt").write_text("short\n")
    with open(mnt / "held.txt", "rb") as fh:  # held open across the outside change
        assert fh.read() == b"short\n"
        in_other_process(f"""
            import branchfs
            with branchfs.Store.open({str(sp)!r}) as s:
                s.branch("main").write_text("held.txt", "a much longer text\\n")
        """)
        assert os.fstat(fh.fileno()).st_size == 19
        fh.seek(0)
        assert fh.read() == b"a much longer text\n"
    assert (mnt / "held.txt").read_text() == "a much longer text\n"


def test_writes_through_the_alias_of_the_mounted_branch_show_at_once(mnt: Path) -> None:
    (mnt / "f").write_text("one")
    assert (mnt / "f").read_text() == "one"
    alias = mnt / ".branchfs" / "branches" / "main"
    (alias / "f").write_text("two!")
    assert (mnt / "f").read_text() == "two!"
    os.chmod(alias / "f", 0o600)
    assert os.stat(mnt / "f").st_mode & 0o777 == 0o600
    os.rename(alias / "f", alias / "g")
    assert not (mnt / "f").exists() and (mnt / "g").read_text() == "two!"


def test_store_files_stay_private_while_mounted(mounted_store) -> None:
    """Contract 4 of docs/architecture.md: every file of a store is 0600 and every
    directory 0700, the mount's registration and log included."""
    (mounted_store.path / "f").write_bytes(b"x")
    mounted_store.store.fork("main", "other")
    seen = 0
    for dirpath, _dirnames, filenames in os.walk(mounted_store.store_path):
        assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o700, dirpath
        for name in filenames:
            path = os.path.join(dirpath, name)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
            seen += 1
    assert seen >= 4  # data.mdb, lock.mdb, a registration, the daemon log
