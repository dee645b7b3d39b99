"""import_dir / export_dir: a real tree in and out with everything a tree can hold.

The oracle is the real source tree: its ``os.lstat`` fields, contents and xattrs are taken
before the import (by path, so that no directory read moves an atime) and compared with the
branch and with the exported copy.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import branchfs
from branchfs import transfer, tree
from branchfs.layers import View
from branchfs.records import CHUNK_SIZE, ROOT_INO

IS_ROOT = os.geteuid() == 0
T0 = 1_600_000_000_123_456_789


def _set_times(path: Path, k: int) -> None:
    os.utime(path, ns=(T0 + k * 1_000_003, T0 + k * 2_000_011), follow_symlinks=False)


def build_everything(root: Path) -> list[str]:
    """A tree with every kind of thing; returns its paths (relative), parents first."""
    root.mkdir()
    (root / "dir").mkdir()
    (root / "dir" / "deeper" / "deepest").mkdir(parents=True)
    (root / "sticky").mkdir(mode=0o777)
    os.chmod(root / "sticky", 0o1777)
    (root / "sgid").mkdir()
    os.chmod(root / "sgid", 0o2750)
    (root / "empty").write_bytes(b"")
    (root / "small.txt").write_bytes(b"hello\n")
    (root / "dir" / "medium.bin").write_bytes(bytes(range(256)) * 40)  # past INLINE_MAX
    (root / "dir" / "deeper" / "big.bin").write_bytes(os.urandom(3 * CHUNK_SIZE + 17))
    (root / "exact.bin").write_bytes(b"\x07" * CHUNK_SIZE)
    (root / "setuid").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "setuid", 0o4755)
    (root / "sgid" / "setgid").write_bytes(b"g")
    os.chmod(root / "sgid" / "setgid", 0o2711)
    (root / "private").write_bytes(b"p")
    os.chmod(root / "private", 0o600)
    os.symlink("small.txt", root / "rel-link")
    os.symlink("/etc/hostname", root / "abs-link")
    os.symlink("does/not/exist", root / "dir" / "dangling")
    os.symlink("deeper", root / "dir" / "dir-link")
    os.link(root / "small.txt", root / "dir" / "hard1")
    os.link(root / "small.txt", root / "sgid" / "hard2")
    os.mkfifo(root / "dir" / "fifo", 0o640)
    (root / "name with spaces & ünïcode").write_bytes(b"u")
    (root / os.fsdecode(b"raw-\xff-bytes")).write_bytes(b"r")
    os.setxattr(root / "small.txt", "user.color", b"blue")
    os.setxattr(root / "dir", "user.dirattr", b"\x00\x01binary")
    os.setxattr(root / "dir" / "deeper" / "big.bin", "user.empty", b"")
    if IS_ROOT:
        os.chown(root / "private", 1234, 5678)
        os.chown(root / "dir", 4321, 8765)
        os.chown(root / "rel-link", 111, 222, follow_symlinks=False)
        os.chown(root / "dir" / "fifo", 333, 444)
    rels = listing(root)
    stamp(root, rels)
    return sorted(rels, key=lambda r: (r.count("/"), r))


def stamp(root: Path, rels: list[str]) -> None:
    """Give every path its own atime and mtime, deepest first so nothing else changes them."""
    for k, rel in enumerate(sorted(rels, key=lambda r: (-r.count("/"), r))):
        _set_times(root / rel, k)
    _set_times(root, 999)


def _fields(s: os.stat_result | branchfs.Stat) -> tuple:
    """The lstat fields a copy keeps (a directory's size and link count are the disk's own)."""
    if stat.S_ISDIR(s.st_mode):
        return (s.st_mode, s.st_uid, s.st_gid, s.st_mtime_ns, s.st_atime_ns)
    return (s.st_mode, s.st_uid, s.st_gid, s.st_size, s.st_mtime_ns, s.st_atime_ns, s.st_nlink)


def manifest(root: Path, rels: list[str]) -> dict[str, tuple]:
    """lstat fields (without directory reads), contents, link targets and xattrs per path."""
    out = {rel: _fields(os.lstat(root / rel)) for rel in ["", *rels]}
    for rel in ["", *rels]:
        p = os.path.join(root, rel) if rel else str(root)
        s = os.lstat(p)
        extra: tuple = ()
        if stat.S_ISREG(s.st_mode):
            fd = os.open(p, os.O_RDONLY | os.O_NOATIME)  # reading must not move the atime
            with open(fd, "rb") as fh:
                extra = (fh.read(),)
        elif stat.S_ISLNK(s.st_mode):
            extra = (os.readlink(p),)
        if not stat.S_ISLNK(s.st_mode):
            names = sorted(os.listxattr(p, follow_symlinks=False))
            extra += (tuple((n, os.getxattr(p, n, follow_symlinks=False)) for n in names),)
        out[rel] += extra
    return out


def branch_manifest(b: branchfs.Branch, rels: list[str]) -> dict[str, tuple]:
    """The same fields, read through the branch (all stats before any read moves an atime)."""
    out = {rel: _fields(b.lstat(rel)) for rel in ["", *rels]}
    for rel in ["", *rels]:
        mode = b.lstat(rel).st_mode
        extra: tuple = ()
        if stat.S_ISREG(mode):
            extra = (b.read_bytes(rel),)
        elif stat.S_ISLNK(mode):
            extra = (b.readlink(rel),)
        if not stat.S_ISLNK(mode):
            names = sorted(b.listxattr(rel, follow_symlinks=False))
            extra += (tuple((n, b.getxattr(rel, n, follow_symlinks=False)) for n in names),)
        out[rel] += extra
    return out


def listing(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)


@pytest.mark.parametrize("batch", [3, transfer.BATCH_ENTRIES])
def test_round_trip_keeps_everything(
    tmp_path: Path, branch: branchfs.Branch, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    monkeypatch.setattr(transfer, "BATCH_ENTRIES", batch)  # 3: links and dirs span batches
    src = tmp_path / "src"
    rels = build_everything(src)
    expect = manifest(src, rels)
    files = sum(1 for r in rels if not stat.S_ISDIR(os.lstat(src / r).st_mode))
    stamp(src, rels)  # reading symlinks for the manifest moved their atimes

    assert branch.import_dir(src) == files
    assert branch_manifest(branch, rels) == expect
    assert sorted(branch.listdir("")) == sorted(os.listdir(src))

    out = tmp_path / "out"
    assert branch.export_dir(out) == files
    assert manifest(out, rels) == expect
    assert listing(out) == listing(src)
    small = os.lstat(out / "small.txt")
    assert small.st_nlink == 3
    assert os.lstat(out / "dir" / "hard1").st_ino == small.st_ino
    assert os.lstat(out / "sgid" / "hard2").st_ino == small.st_ino
    assert stat.S_ISFIFO(os.lstat(out / "dir" / "fifo").st_mode)


def test_hard_links_are_one_inode_in_the_branch(tmp_path: Path, branch: branchfs.Branch) -> None:
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "one").write_bytes(b"shared")
    os.link(src / "a" / "one", src / "two")
    os.link(src / "a" / "one", src / "a" / "three")
    (src / "lone").write_bytes(b"shared")  # same bytes, different file
    branch.import_dir(src)
    inos = {branch.lstat(p).st_ino for p in ("a/one", "two", "a/three")}
    assert len(inos) == 1
    assert branch.lstat("two").st_nlink == 3
    assert branch.lstat("lone").st_ino not in inos
    branch.write_bytes("two", b"changed through one name")
    assert branch.read_bytes("a/three") == b"changed through one name"
    assert branch.read_bytes("lone") == b"shared"


def test_symlinks_out_of_the_tree_stay_links_both_ways(
    tmp_path: Path, branch: branchfs.Branch
) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_bytes(b"do not copy me")
    src = tmp_path / "src"
    src.mkdir()
    os.symlink(secret, src / "to-dir")
    os.symlink(secret / "key", src / "to-file")
    os.symlink("../secret/key", src / "relative-escape")

    assert branch.import_dir(src) == 3
    for name in ("to-dir", "to-file", "relative-escape"):
        assert branch.islink(name)
        assert branch.readlink(name) == os.readlink(src / name)
    assert not branch.exists("to-dir/key")  # an absolute target resolves inside the tree
    assert b"do not copy me" not in _all_chunk_bytes(branch)

    out = tmp_path / "out"
    branch.export_dir(out)
    for name in ("to-dir", "to-file", "relative-escape"):
        assert os.path.islink(out / name)
        assert os.readlink(out / name) == os.readlink(src / name)
    assert sorted(os.listdir(secret)) == ["key"]


def _all_chunk_bytes(b: branchfs.Branch) -> bytes:
    store = b.store
    with store.meta.read() as txn:
        return b"".join(store.chunks.get(txn, k) for k in store.chunks.keys(txn))


def test_import_does_not_follow_a_symlinked_source_subdir(
    tmp_path: Path, branch: branchfs.Branch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "sub").mkdir(parents=True)
    (elsewhere / "sub" / "f").write_bytes(b"outside")
    src = tmp_path / "src"
    src.mkdir()
    os.symlink(elsewhere / "sub", src / "sub")
    branch.import_dir(src)
    assert branch.islink("sub")
    assert branch.listdir("") == ["sub"]


def test_sparse_file_round_trips_with_its_holes(tmp_path: Path, branch: branchfs.Branch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    size = 24 << 20
    pieces = {0: b"head", (7 << 20) + 5: b"middle" * 1000, size - 3: b"end"}
    with open(src / "sparse", "wb") as fh:
        fh.truncate(size)
        for off, data in pieces.items():
            fh.seek(off)
            fh.write(data)
    branch.import_dir(src)
    assert branch.stat("sparse").st_size == size
    with branch.store.meta.read() as txn:
        assert branch.store.chunks.stored_bytes(txn) < 4 * CHUNK_SIZE
    with branch.open("sparse") as fh:
        for off, data in pieces.items():
            fh.seek(off)
            assert fh.read(len(data)) == data
        fh.seek(1 << 20)
        assert fh.read(4096) == bytes(4096)

    out = tmp_path / "out"
    branch.export_dir(out)
    s = os.stat(out / "sparse")
    assert s.st_size == size
    assert s.st_blocks * 512 < 1 << 20  # the holes stayed holes
    with open(src / "sparse", "rb") as a, open(out / "sparse", "rb") as b:
        while chunk := a.read(1 << 20):
            assert b.read(1 << 20) == chunk


def test_large_file_is_committed_in_pieces(
    tmp_path: Path, branch: branchfs.Branch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "STREAM_PIECE", 4 * CHUNK_SIZE)
    monkeypatch.setattr(transfer, "BATCH_BYTES", 6 * CHUNK_SIZE)
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(21 * CHUNK_SIZE + 1234)
    (src / "large").write_bytes(data)
    (src / "after").write_bytes(b"x")
    seen: list[int] = []
    assert branch.import_dir(src, progress=seen.append) == 2
    assert branch.read_bytes("large") == data
    assert len(seen) > 2 and seen == sorted(seen) and seen[-1] == 2
    out = tmp_path / "out"
    branch.export_dir(out)
    assert (out / "large").read_bytes() == data


def test_import_survives_the_map_growing_mid_batch(tmp_path: Path) -> None:
    # A tiny map makes LMDB run out of room inside import batches, so the batch function
    # runs again after the map grows: the result must be the same as without retries.
    src = tmp_path / "src"
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(40):
            (src / f"d{d}" / f"f{f}").write_bytes(os.urandom(300 + 997 * f))
    os.link(src / "d0" / "f1", src / "d3" / "again")
    with branchfs.Store.open(tmp_path / "store", create=True, map_size=256 << 10) as store:
        b = store.create_branch("main")
        assert b.import_dir(src) == 161
        for d in range(4):
            for f in range(40):
                assert b.read_bytes(f"d{d}/f{f}") == (src / f"d{d}" / f"f{f}").read_bytes()
        assert b.stat("d3/again").st_ino == b.stat("d0/f1").st_ino
        assert store.meta.env.info()["map_size"] > 256 << 10


def test_hostile_tree_cannot_make_export_write_outside(
    tmp_path: Path, branch: branchfs.Branch
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    # `evil` is a symlink to a real host directory, and the branch also holds `evil/x`
    # (inside the tree, the absolute target resolves from the tree's root).
    branch.symlink(str(outside), "evil")
    branch.makedirs(str(outside).lstrip("/"))
    branch.write_bytes("evil/x", b"pwned")
    assert branch.read_bytes(str(outside).lstrip("/") + "/x") == b"pwned"

    out = tmp_path / "out"
    branch.export_dir(out)
    assert os.listdir(outside) == []
    assert os.readlink(out / "evil") == str(outside)
    assert (out / str(outside).lstrip("/") / "x").read_bytes() == b"pwned"


def test_export_refuses_names_that_climb_out(tmp_path: Path, branch: branchfs.Branch) -> None:
    branch.write_bytes("victim", b"pwned")
    target = tmp_path / "escape"

    def forge(v: View) -> None:
        ino = v.dirent(ROOT_INO, b"victim")
        assert ino is not None
        v.put_dirent(ROOT_INO, b"../escape", ino)

    branch.store.write_tree(branch.name, forge)
    out = tmp_path / "out"
    with pytest.raises(branchfs.StoreCorrupt, match="impossible name"):
        branch.export_dir(out)
    assert not target.exists()


def test_export_into_a_non_empty_directory_refuses(tmp_path: Path, branch: branchfs.Branch) -> None:
    branch.write_bytes("f", b"new")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_bytes(b"mine")
    with pytest.raises(FileExistsError) as info:
        branch.export_dir(out)
    assert info.value.errno == errno.EEXIST
    assert info.value.filename == str(out)
    assert "not empty" in str(info.value)
    assert os.listdir(out) == ["keep"]
    assert (out / "keep").read_bytes() == b"mine"

    a_file = tmp_path / "file"
    a_file.write_bytes(b"")
    with pytest.raises(FileExistsError):
        branch.export_dir(a_file)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert branch.export_dir(empty) == 1
    assert (empty / "f").read_bytes() == b"new"


def test_export_of_a_subdirectory_and_of_a_snapshot(
    tmp_path: Path, branch: branchfs.Branch
) -> None:
    branch.write_bytes("a/b/c", b"deep", parents=True)
    branch.chmod("a/b", 0o711)
    snap = branch.snapshot("s1")
    branch.write_bytes("a/b/c", b"changed later")
    out = tmp_path / "out" / "nested"
    assert snap.export_dir(out, "a/b") == 1
    assert (out / "c").read_bytes() == b"deep"
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o711
    with pytest.raises(NotADirectoryError):
        branch.export_dir(tmp_path / "out2", "a/b/c")
    with pytest.raises(FileNotFoundError):
        branch.export_dir(tmp_path / "out3", "missing")


def test_import_merges_into_an_existing_directory(tmp_path: Path, branch: branchfs.Branch) -> None:
    branch.write_bytes("dest/keep.txt", b"kept", parents=True)
    branch.write_bytes("dest/f", b"old")
    branch.write_bytes("dest/becomes-dir", b"was a file")
    branch.write_bytes("dest/sub/old-inner", b"stays", parents=True)
    branch.write_bytes("dest/sub/new-inner", b"replaced")
    branch.mkdir("dest/becomes-file")
    branch.write_bytes("dest/becomes-file/inner", b"goes")
    src = tmp_path / "src"
    (src / "becomes-dir").mkdir(parents=True)
    (src / "becomes-dir" / "inside").write_bytes(b"in")
    (src / "sub").mkdir()
    (src / "sub" / "new-inner").write_bytes(b"new")
    (src / "f").write_bytes(b"new")
    (src / "becomes-file").write_bytes(b"now a file")
    _set_times(src / "sub", 5)

    _set_times(src / "becomes-dir", 6)
    _set_times(src, 7)
    branch.import_dir(src, "dest")
    assert branch.read_bytes("dest/keep.txt") == b"kept"
    assert branch.read_bytes("dest/f") == b"new"
    assert branch.read_bytes("dest/becomes-dir/inside") == b"in"
    assert branch.read_bytes("dest/becomes-file") == b"now a file"
    assert sorted(branch.listdir("dest/sub")) == ["new-inner", "old-inner"]
    for merged in ("sub", ""):  # directories merged into end with the source's times
        assert branch.stat(f"dest/{merged}").st_mtime_ns == os.stat(src / merged).st_mtime_ns
    assert branch.stat("dest/becomes-dir").st_mtime_ns == os.stat(src / "becomes-dir").st_mtime_ns


def test_import_and_export_keep_sockets_and_device_files(
    tmp_path: Path, branch: branchfs.Branch
) -> None:
    """As ``cp -a`` does: a socket and (as root) a device file come in as nodes, with the
    device's number, and go out again; a device file is skipped only by an export that
    cannot make one (not root)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    if IS_ROOT:
        os.mknod(src / "null", stat.S_IFCHR | 0o640, os.makedev(1, 3))
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(src / "sock"))
        assert branch.import_dir(src, "x/y/z") == (3 if IS_ROOT else 2)
    finally:
        sock.close()
    assert sorted(branch.listdir("x/y/z")) == (["f", "null", "sock"] if IS_ROOT else ["f", "sock"])
    assert stat.S_ISSOCK(branch.lstat("x/y/z/sock").st_mode)
    if IS_ROOT:
        null = branch.lstat("x/y/z/null")
        assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
        assert stat.S_IMODE(null.st_mode) == 0o640
    out = tmp_path / "out"
    assert branch.export_dir(out, "x/y/z") == (3 if IS_ROOT else 2)
    assert stat.S_ISSOCK(os.lstat(out / "sock").st_mode)
    if IS_ROOT:
        null = os.lstat(out / "null")
        assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
        assert stat.S_IMODE(null.st_mode) == 0o640
        assert null.st_mtime_ns == branch.lstat("x/y/z/null").st_mtime_ns


def test_hard_links_to_special_files_stay_links(tmp_path: Path, branch: branchfs.Branch) -> None:
    """cp -a keeps a hard link whatever the file's type: a FIFO, a symlink, a device."""
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "fifo")
    os.link(src / "fifo", src / "fifo-too")
    os.symlink("target", src / "sym")
    os.link(src / "sym", src / "sym-too", follow_symlinks=False)
    if IS_ROOT:
        os.mknod(src / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        os.link(src / "null", src / "null-too")
    branch.import_dir(src)
    pairs = [("fifo", "fifo-too"), ("sym", "sym-too")] + ([("null", "null-too")] if IS_ROOT else [])
    out = tmp_path / "out"
    branch.export_dir(out)
    for a, b in pairs:
        assert branch.lstat(a).st_ino == branch.lstat(b).st_ino
        assert branch.lstat(a).st_nlink == 2
        assert os.lstat(out / a).st_ino == os.lstat(out / b).st_ino


def test_export_without_mknod_skips_device_files(
    tmp_path: Path, branch: branchfs.Branch, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(src / "sock"))
        branch.import_dir(src, "x/y/z")
    finally:
        sock.close()
    if IS_ROOT:

        def mknod(v: View) -> None:
            tree.make_node(v, ROOT_INO, b"null", stat.S_IFCHR | 0o600, 0, 0, rdev=os.makedev(1, 3))

        branch.store.write_tree(branch.name, mknod)
        branch.rename("null", "x/y/z/null")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # an export that cannot mknod a device
    out2 = tmp_path / "out2"
    assert branch.export_dir(out2, "x/y/z") == 2
    assert sorted(os.listdir(out2)) == ["f", "sock"]


@pytest.mark.skipif(not IS_ROOT or shutil.which("setpriv") is None, reason="needs root, setpriv")
def test_export_by_root_without_cap_mknod_skips_device_files(tmp_path: Path) -> None:
    """Root in a container often lacks CAP_MKNOD: the export goes on without the device."""
    store_path = tmp_path / "s.bfs"
    with branchfs.Store.open(store_path, create=True) as s:
        b = s.create_branch("main")
        b.write_bytes("f", b"x")

        def mknod(v: View) -> None:
            tree.make_node(v, ROOT_INO, b"null", stat.S_IFCHR | 0o600, 0, 0, rdev=os.makedev(1, 3))

        s.write_tree("main", mknod)
    out = tmp_path / "out"
    code = (
        "import branchfs, sys; s = branchfs.Store.open(sys.argv[1]); "
        "print(s.branch('main').export_dir(sys.argv[2])); s.close()"
    )
    ran = subprocess.run(
        ["setpriv", "--bounding-set=-mknod", sys.executable, "-c", code, str(store_path), str(out)],
        capture_output=True,
        text=True,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "1"
    assert os.listdir(out) == ["f"]


def test_import_errors_are_os_errors_with_the_path(tmp_path: Path, branch: branchfs.Branch) -> None:
    with pytest.raises(FileNotFoundError) as info:
        branch.import_dir(tmp_path / "missing")
    assert info.value.filename == str(tmp_path / "missing")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        branch.import_dir(tmp_path / "file")
    src = tmp_path / "src"
    src.mkdir()
    branch.write_bytes("occupied", b"")
    with pytest.raises(NotADirectoryError):
        branch.import_dir(src, "occupied")


def test_import_into_a_snapshot_is_read_only(tmp_path: Path, branch: branchfs.Branch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    snap = branch.snapshot("frozen")
    with pytest.raises(OSError) as info:
        snap.import_dir(src)
    assert info.value.errno == errno.EROFS


_UNREADABLE_SCRIPT = textwrap.dedent(
    """
    import sys, branchfs
    with branchfs.Store.open(sys.argv[1], create=True) as s:
        b = s.create_branch("main")
        try:
            b.import_dir(sys.argv[2])
        except PermissionError as exc:
            print("PermissionError", exc.filename)
        else:
            print("imported")
    """
)


def test_unreadable_source_file_is_a_permission_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "readable").write_bytes(b"ok")
    (src / "locked").write_bytes(b"secret")
    os.chmod(src / "locked", 0o000)
    store_dir = tmp_path / "store"
    if not IS_ROOT:
        with branchfs.Store.open(store_dir, create=True) as s:
            with pytest.raises(PermissionError) as info:
                s.create_branch("main").import_dir(src)
            assert info.value.filename == str(src / "locked")
        return
    # Root reads everything, so the import runs in a child whose capabilities to bypass
    # file permissions are dropped: the kernel check a non-root user meets.
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv (util-linux) is missing to drop CAP_DAC_*")
    drop = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
    run = subprocess.run(
        [*drop, sys.executable, "-c", _UNREADABLE_SCRIPT, str(store_dir), str(src)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["PermissionError", str(src / "locked")]


def test_visible_extents_agree_with_reads_across_layers(branch: branchfs.Branch) -> None:
    data = bytearray(os.urandom(6 * CHUNK_SIZE))
    branch.write_bytes("f", bytes(data))
    child = branch.fork("child")
    with child.open("f", "r+b") as fh:
        fh.truncate(2 * CHUNK_SIZE + 10)  # hides chunks 3.. of the lower layer
        fh.seek(5 * CHUNK_SIZE)
        fh.write(b"z" * 100)  # chunk 5 again, in the top layer
    grand = child.fork("grand")
    grand.write_bytes("g", b"")  # a new top over the truncation

    def check(v: View) -> None:
        ino = v.dirent(ROOT_INO, b"f")
        assert ino is not None
        rec = v.inode(ino)
        assert rec is not None
        got = dict(transfer.visible_extents(v, ino, rec.size))
        cuts = v.cuts(ino)
        for idx in range((rec.size + CHUNK_SIZE - 1) // CHUNK_SIZE):
            assert got.get(idx) == v.extent(cuts, ino, idx)

    branch.store.read_tree("grand", check)
    expect = bytes(data[: 2 * CHUNK_SIZE + 10]) + bytes(5 * CHUNK_SIZE - (2 * CHUNK_SIZE + 10))
    expect += b"z" * 100
    assert grand.read_bytes("f") == expect
