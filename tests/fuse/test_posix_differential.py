"""The same random syscalls on a native directory and through the mount give the same results.

Hypothesis generates a list of operations (open with flag combinations, write, pwrite past
EOF, read, ftruncate, rename and renameat2, link, unlink, mkdir, rmdir, symlink, readlink,
chmod, user.* xattrs, stat, listdir); each is applied to a directory on the native disk and
to the same directory inside a branchfs mount. Every result and errno must match, and so must
the final trees (names, types, sizes, contents, modes, hard-link groups, xattrs; not times,
not directory sizes or link counts).
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import randomized
from fusecheck import needs_fuse
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import branchfs

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


pytestmark = needs_fuse


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A native directory and a mounted fresh branch, both on the same disk."""
    base = tmp_path_factory.mktemp("differential")
    store = base / "store.bfs"
    with branchfs.Store.open(store, create=True) as s:
        s.create_branch("main")
    native, mnt = base / "native", base / "mnt"
    native.mkdir()
    mnt.mkdir()
    with branchfs.mounted(store, mnt) as m:
        yield native, m


def renameat2(src: str, dst: str, flags: int) -> None:
    """Linux renameat2(2), raising OSError like the os module."""
    if _libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), src)


# ----------------------------------------------------------------------------- operations

# Names that exist in the seed tree come up more often, so that most calls do something.
PATHS = ["a", "a", "b", "d", "d/a", "d/b", "d/b", "d/e", "d/e/a", "a/x", "d/e/d", "s", "s"]
SLOTS = 3
ACCESS = [os.O_RDONLY, os.O_WRONLY, os.O_RDWR]
EXTRA = [os.O_CREAT, os.O_EXCL, os.O_TRUNC, os.O_APPEND, os.O_DIRECTORY, os.O_NOFOLLOW]

paths = st.sampled_from(PATHS)
slots = st.integers(0, SLOTS - 1)
data = st.binary(min_size=0, max_size=300) | st.integers(1, 140_000).map(
    lambda n: bytes(i % 251 for i in range(n))
)
offsets = st.sampled_from([0, 1, 100, 4095, 65535, 65536, 65537, 131_072, 200_000])
flag_sets = st.tuples(
    st.sampled_from(ACCESS), st.lists(st.sampled_from(EXTRA), unique=True, max_size=3)
).map(lambda t: t[0] | sum(t[1]))
modes = st.sampled_from([0o644, 0o600, 0o755, 0o777, 0o400, 0o000, 0o4755, 0o2775, 0o1777])
xnames = st.sampled_from(["user.a", "user.b", "user.long." + "x" * 40])
xvalues = st.binary(max_size=64)
links = st.sampled_from(["a", "b", "d", "d/a", "../a", "e/a", "nowhere", "s"])

ops = st.one_of(
    st.tuples(st.just("open"), slots, paths, flag_sets, modes),
    st.tuples(st.just("write"), slots, data),
    st.tuples(st.just("pwrite"), slots, data, offsets),
    st.tuples(st.just("read"), slots, st.integers(0, 150_000)),
    st.tuples(st.just("pread"), slots, st.integers(0, 150_000), offsets),
    st.tuples(st.just("ftruncate"), slots, st.sampled_from([0, 5, 70_000, 200_000])),
    st.tuples(st.just("fstat"), slots),
    st.tuples(st.just("lseek"), slots, offsets, st.sampled_from([os.SEEK_SET, os.SEEK_CUR, 2])),
    st.tuples(st.just("fsync"), slots),
    st.tuples(st.just("close"), slots),
    st.tuples(st.just("rename"), paths, paths, st.sampled_from([0, 0, RENAME_NOREPLACE])),
    st.tuples(st.just("exchange"), paths, paths),
    st.tuples(st.just("link"), paths, paths),
    st.tuples(st.just("unlink"), paths),
    st.tuples(st.just("mkdir"), paths, st.sampled_from([0o755, 0o700])),
    st.tuples(st.just("rmdir"), paths),
    st.tuples(st.just("symlink"), links, paths),
    st.tuples(st.just("readlink"), paths),
    st.tuples(st.just("chmod"), paths, modes),
    st.tuples(st.just("chown"), paths, st.sampled_from([0, 1000]), st.sampled_from([0, 1000])),
    st.tuples(st.just("truncate"), paths, st.sampled_from([0, 3, 100_000])),
    st.tuples(st.just("setxattr"), paths, xnames, xvalues, st.sampled_from([0, 1, 2])),
    st.tuples(st.just("getxattr"), paths, xnames),
    st.tuples(st.just("removexattr"), paths, xnames),
    st.tuples(st.just("listxattr"), paths),
    st.tuples(st.just("stat"), paths),
    st.tuples(st.just("lstat"), paths),
    st.tuples(st.just("listdir"), paths),
)


def stat_view(st_: os.stat_result) -> tuple[Any, ...]:
    """What a stat must agree on: type, mode bits, owner, and for non-directories size, nlink."""
    owner = (st_.st_uid, st_.st_gid)
    if stat.S_ISDIR(st_.st_mode):
        return ("dir", stat.S_IMODE(st_.st_mode), owner)
    return (stat.S_IFMT(st_.st_mode), stat.S_IMODE(st_.st_mode), owner, st_.st_size, st_.st_nlink)


class Side:
    """One of the two directories, with its table of open file descriptors."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fds: dict[int, int] = {}

    def p(self, rel: str) -> str:
        return str(self.root / rel)

    def close_all(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def apply(self, op: tuple[Any, ...]) -> Any:
        """Run one operation; return a comparable result (raises OSError on failure)."""
        name, *a = op
        if name == "open":
            slot, rel, flags, mode = a
            fd = os.open(self.p(rel), flags, mode)
            if slot in self.fds:
                os.close(self.fds.pop(slot))
            self.fds[slot] = fd
            return "fd"
        if name in ("write", "pwrite", "read", "pread", "ftruncate", "fstat", "lseek", "fsync"):
            slot = a[0]
            if slot not in self.fds:
                return "no fd"
            fd = self.fds[slot]
            if name == "write":
                return os.write(fd, a[1])
            if name == "pwrite":
                return os.pwrite(fd, a[1], a[2])
            if name == "read":
                return os.read(fd, a[1])
            if name == "pread":
                return os.pread(fd, a[1], a[2])
            if name == "ftruncate":
                return os.ftruncate(fd, a[1])
            if name == "fstat":
                return stat_view(os.fstat(fd))
            if name == "lseek":
                return os.lseek(fd, a[1], a[2])
            return os.fsync(fd)
        if name == "close":
            if a[0] not in self.fds:
                return "no fd"
            return os.close(self.fds.pop(a[0]))
        if name == "rename":
            return renameat2(self.p(a[0]), self.p(a[1]), a[2])
        if name == "exchange":
            return renameat2(self.p(a[0]), self.p(a[1]), RENAME_EXCHANGE)
        if name == "link":
            return os.link(self.p(a[0]), self.p(a[1]), follow_symlinks=False)
        if name == "unlink":
            return os.unlink(self.p(a[0]))
        if name == "mkdir":
            return os.mkdir(self.p(a[0]), a[1])
        if name == "rmdir":
            return os.rmdir(self.p(a[0]))
        if name == "symlink":
            return os.symlink(a[0], self.p(a[1]))
        if name == "readlink":
            return os.readlink(self.p(a[0]))
        if name == "chmod":
            return os.chmod(self.p(a[0]), a[1])
        if name == "chown":
            return os.chown(self.p(a[0]), a[1], a[2])
        if name == "truncate":
            return os.truncate(self.p(a[0]), a[1])
        if name == "setxattr":
            return os.setxattr(self.p(a[0]), a[1], a[2], a[3])
        if name == "getxattr":
            return os.getxattr(self.p(a[0]), a[1])
        if name == "removexattr":
            return os.removexattr(self.p(a[0]), a[1])
        if name == "listxattr":
            return sorted(os.listxattr(self.p(a[0])))
        if name == "stat":
            return stat_view(os.stat(self.p(a[0])))
        if name == "lstat":
            return stat_view(os.lstat(self.p(a[0])))
        if name == "listdir":
            return sorted(os.listdir(self.p(a[0])))
        raise AssertionError(name)


def outcome(side: Side, op: tuple[Any, ...]) -> tuple[str, Any]:
    """("ok", result) or ("err", errno name) of one operation on one side."""
    try:
        return "ok", side.apply(op)
    except OSError as exc:
        return "err", errno.errorcode.get(exc.errno or 0, exc.errno)


def seed(root: Path) -> None:
    """The starting tree of every example: a small file, a two-chunk file, dirs, a symlink."""
    (root / "d" / "e").mkdir(parents=True)
    (root / "a").write_bytes(b"0123456789")
    (root / "d" / "b").write_bytes(bytes(range(256)) * 300)
    os.symlink("a", root / "s")


def snapshot_tree(root: Path) -> dict[str, Any]:
    """Everything the final trees must agree on, keyed by relative path."""
    out: dict[str, Any] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            st_ = os.lstat(p)
            entry: dict[str, Any] = {"stat": stat_view(st_)}
            if stat.S_ISREG(st_.st_mode):
                entry["data"] = p.read_bytes()
                inodes.setdefault(st_.st_ino, []).append(rel)
            elif stat.S_ISLNK(st_.st_mode):
                entry["target"] = os.readlink(p)
            if not stat.S_ISLNK(st_.st_mode):
                entry["xattrs"] = {
                    x: os.getxattr(p, x, follow_symlinks=False)
                    for x in sorted(os.listxattr(p, follow_symlinks=False))
                }
            out[rel] = entry
    out["<hard links>"] = sorted(sorted(group) for group in inodes.values() if len(group) > 1)
    return out


_counter = itertools.count()


def fs_specific(side: Side, op: tuple[Any, ...]) -> bool:
    """Whether ``op`` has no one right answer, so that the two sides may differ.

    ``lseek(fd, off, SEEK_END)`` on a directory: POSIX leaves a directory's offsets to the
    filesystem, and Linux filesystems disagree (ext4 answers LLONG_MAX for a hashed
    directory, tmpfs EINVAL, FUSE and btrfs the directory's size). Nothing reads a
    directory by byte offset, and no operation here reads a directory through the fd, so
    the offset it leaves matters to no later step.
    """
    if op[0] != "lseek" or op[3] != os.SEEK_END or op[1] not in side.fds:
        return False
    return stat.S_ISDIR(os.fstat(side.fds[op[1]]).st_mode)


@settings(
    max_examples=int(os.environ.get("BRANCHFS_DIFF_EXAMPLES", randomized.examples(80))),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@pytest.mark.parametrize("where", ["mounted branch", "other branch through .branchfs"])
@given(program=st.lists(ops, min_size=1, max_size=30))
# Failures found by random runs, kept (see tests/randomized.py):
# ext4 gives LLONG_MAX for SEEK_END on a directory, the mount 0 (see fs_specific).
@example(program=[("open", 0, "d", os.O_RDONLY | os.O_DIRECTORY, 0o644), ("lseek", 0, 0, 2)])
def test_same_results_and_errno(
    roots: tuple[Path, Path], where: str, program: list[tuple[Any, ...]]
) -> None:
    native_root, mount_root = roots
    if where != "mounted branch":
        mount_root = mount_root / ".branchfs" / "branches" / "differential"
        if not mount_root.exists():
            os.mkdir(mount_root)
    n = next(_counter)
    native, mount = Side(native_root / f"ex{n}"), Side(mount_root / f"ex{n}")
    for side in (native, mount):
        side.root.mkdir()
        seed(side.root)
    try:
        for i, op in enumerate(program):
            if fs_specific(native, op):
                continue
            got = outcome(mount, op)
            if op[0] == "exchange" and got == ("err", "EINVAL"):
                continue  # the issue allows RENAME_EXCHANGE to be unsupported (EINVAL)
            want = outcome(native, op)
            assert got == want, f"step {i} {op[0]}{op[1:]}: mount {got!r}, native {want!r}"
    finally:
        native.close_all()
        mount.close_all()
    assert snapshot_tree(mount.root) == snapshot_tree(native.root)
    for side in (native, mount):
        for dirpath, dirnames, _ in os.walk(side.root):
            for d in dirnames:
                os.chmod(Path(dirpath, d), 0o755)
        shutil.rmtree(side.root)
    assert not os.path.exists(mount.root)


def test_open_rdonly_trunc_truncates(roots: tuple[Path, Path]) -> None:
    sizes = []
    for root in roots:
        (root / "trunc-ro").write_bytes(b"0123456789")
        os.close(os.open(root / "trunc-ro", os.O_RDONLY | os.O_TRUNC))
        sizes.append(os.stat(root / "trunc-ro").st_size)
    assert sizes == [0, 0]
