"""Bad input: things that are not stores, newer formats, bad names, escaping paths, full maps."""

from __future__ import annotations

import errno
import os
import stat as st
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest
from twin import Twin

import branchfs
from branchfs import keys
from branchfs.keys import U64
from branchfs.meta import DB_NAMES, FORMAT_VERSION, HEADROOM_BYTES
from branchfs.reserve import RESERVE_BYTES

# -- what is and is not a store ----------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(branchfs.StoreNotFound) as info:
        branchfs.Store.open(tmp_path / "nothing")
    assert isinstance(info.value, FileNotFoundError)
    assert "create" in str(info.value)
    assert not (tmp_path / "nothing").exists()


def test_missing_parent_with_create(tmp_path: Path) -> None:
    """create=True makes the missing parents too, and the store works and opens again."""
    path = tmp_path / "a" / "b" / "store"
    with branchfs.Store.open(path, create=True) as s:
        s.create_branch("main").write_bytes("f", b"kept")
    assert st.S_IMODE(path.stat().st_mode) == 0o700
    with branchfs.Store.open(path) as s:
        assert s.branches() == ["main"]
        assert s.branch("main").read_bytes("f") == b"kept"


@pytest.mark.parametrize("create", [False, True])
def test_foreign_directory(tmp_path: Path, create: bool) -> None:
    d = tmp_path / "project"
    d.mkdir()
    (d / "README").write_text("not a store")
    if create:
        # a directory with someone else's files may become a store only if asked to
        with branchfs.Store.open(d, create=True):
            pass
        assert (d / "README").read_text() == "not a store"
        return
    with pytest.raises(branchfs.NotAStore) as info:
        branchfs.Store.open(d)
    assert str(d) in str(info.value)
    assert sorted(os.listdir(d)) == ["README"]


def test_empty_directory_without_create(tmp_path: Path) -> None:
    with pytest.raises(branchfs.NotAStore):
        branchfs.Store.open(tmp_path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("create", [False, True])
def test_plain_file(tmp_path: Path, create: bool) -> None:
    f = tmp_path / "file"
    f.write_bytes(b"hello")
    with pytest.raises(branchfs.NotAStore):
        branchfs.Store.open(f, create=create)
    assert f.read_bytes() == b"hello"


@pytest.mark.parametrize("create", [False, True])
def test_foreign_lmdb_database(tmp_path: Path, create: bool) -> None:
    d = tmp_path / "other.lmdb"
    env = lmdb.open(str(d), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"someone", b"else's data")
    env.close()
    with pytest.raises(branchfs.NotAStore):
        branchfs.Store.open(d, create=create)
    env = lmdb.open(str(d), map_size=1 << 20, create=False)
    with env.begin() as txn:
        assert list(txn.cursor()) == [(b"someone", b"else's data")]
    env.close()


def _set_format(path: Path, version: int) -> None:
    env = lmdb.open(str(path), max_dbs=20, map_size=1 << 30, create=False)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        txn.put(b"format", U64.pack(version), db=meta)
    env.close()


def test_newer_format_version_is_refused(store_path: Path) -> None:
    with branchfs.Store.open(store_path, create=True) as s:
        s.create_branch("main").write_bytes("f", b"data")
    _set_format(store_path, FORMAT_VERSION + 1)
    for create in (False, True):
        with pytest.raises(branchfs.StoreVersionError) as info:
            branchfs.Store.open(store_path, create=create)
        assert str(FORMAT_VERSION + 1) in str(info.value)
        assert "upgrade" in str(info.value)
    _set_format(store_path, FORMAT_VERSION)
    with branchfs.Store.open(store_path) as s:
        assert s.branch("main").read_bytes("f") == b"data"


def test_store_permissions(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "s"
        with branchfs.Store.open(path, create=True) as s:
            s.create_branch("main").write_bytes("f", b"x")
    finally:
        os.umask(old)
    assert st.S_IMODE(os.stat(path).st_mode) == 0o700
    names = os.listdir(path)
    assert "data.mdb" in names
    for name in names:
        assert st.S_IMODE(os.stat(path / name).st_mode) == 0o600, name


def test_same_store_twice_shares_one_environment(store_path: Path, tmp_path: Path) -> None:
    a = branchfs.Store.open(store_path, create=True)
    b = branchfs.Store.open(store_path)
    os.symlink(store_path, tmp_path / "alias")
    c = branchfs.Store.open(tmp_path / "alias")
    try:
        assert a.meta is b.meta is c.meta
        a.create_branch("main").write_bytes("f", b"1")
        assert b.branch("main").read_bytes("f") == b"1"
        a.close()
        with pytest.raises(ValueError):
            a.branches()
        c.branch("main").write_bytes("f", b"2")
        assert b.branch("main").read_bytes("f") == b"2"
    finally:
        a.close()
        b.close()
        c.close()
    with branchfs.Store.open(store_path) as again:
        assert again.branch("main").read_bytes("f") == b"2"


# -- names ------------------------------------------------------------------------------------

INVALID = ["", "/", "a/b", "..", ".", "nul\0byte", "n" * 256, "-leading-dash"]


@pytest.mark.parametrize("name", INVALID, ids=repr)
def test_invalid_branch_names(store: branchfs.Store, name: str) -> None:
    with pytest.raises(branchfs.InvalidName) as info:
        store.create_branch(name)
    assert isinstance(info.value, branchfs.BranchFSError)
    assert store.branches() == []


# -- paths cannot leave the tree -------------------------------------------------------------


def test_dotdot_stays_inside(branch: branchfs.Branch, tmp_path: Path) -> None:
    before = sorted(os.listdir(tmp_path))
    branch.write_bytes("../../../../escape", b"x")
    assert branch.listdir("") == ["escape"]
    assert branch.listdir("..") == ["escape"]
    assert branch.listdir("/../..") == ["escape"]
    branch.mkdir("d")
    assert branch.read_bytes("d/../../../escape") == b"x"
    with pytest.raises(FileNotFoundError):
        branch.read_bytes("../../../../../../etc/passwd")
    branch.rename("d", "../../d2")
    assert branch.listdir("") == ["d2", "escape"]
    assert sorted(os.listdir(tmp_path)) == before


def test_symlinks_resolve_inside(branch: branchfs.Branch) -> None:
    branch.makedirs("etc")
    branch.write_bytes("etc/passwd", b"tree's own")
    branch.symlink("/etc/passwd", "abs")
    branch.symlink("../../../../etc/passwd", "rel")
    branch.symlink("/", "root")
    branch.symlink("/../..", "up")
    assert branch.read_bytes("abs") == b"tree's own"
    assert branch.read_bytes("rel") == b"tree's own"
    assert branch.read_bytes("root/etc/passwd") == b"tree's own"
    assert branch.listdir("up") == ["abs", "etc", "rel", "root", "up"]
    branch.symlink("/usr/bin/python3", "host")
    with pytest.raises(FileNotFoundError):
        branch.read_bytes("host")
    assert branch.readlink("host") == "/usr/bin/python3"
    # creating through an absolute dangling symlink creates inside the tree
    branch.write_bytes("host-dir-link", b"")
    branch.symlink("/etc/new-file", "creator")
    branch.write_bytes("creator", b"made inside")
    assert branch.read_bytes("etc/new-file") == b"made inside"


def test_symlink_loops_and_the_limit(branch: branchfs.Branch, real: Path) -> None:
    t = Twin(branch, real)
    t.ok("symlink", "a", "b")
    t.ok("symlink", "b", "a")
    assert t.fails("stat", "a")[1] == errno.ELOOP
    assert t.fails("read", "a/x")[1] == errno.ELOOP
    assert t.fails("write", "a", b"")[1] == errno.ELOOP
    t.ok("write", "target", b"end")
    prev = "target"
    for i in range(45):
        t.ok("symlink", prev, f"s{i}")
        prev = f"s{i}"
    for i in (38, 39, 40, 41, 44):
        t.do("read", f"s{i}")  # Linux follows at most 40 links
    assert t.fails("read", "s44")[1] == errno.ELOOP
    t.ok("read", "s10")
    t.check_trees()


def test_name_too_long(branch: branchfs.Branch, real: Path) -> None:
    t = Twin(branch, real)
    t.ok("write", "n" * 255, b"")
    assert t.fails("write", "n" * 256, b"")[1] == errno.ENAMETOOLONG
    assert t.fails("mkdir", "n" * 256)[1] == errno.ENAMETOOLONG
    assert t.fails("stat", "n" * 256)[1] == errno.ENAMETOOLONG
    assert t.fails("symlink", "x", "n" * 256)[1] == errno.ENAMETOOLONG
    long_path = "/".join(["d" * 200] * 25)  # > PATH_MAX
    with pytest.raises(OSError) as info:
        branch.stat(long_path)
    assert info.value.errno == errno.ENAMETOOLONG
    with pytest.raises(OSError) as info:
        os.stat(os.path.join(real, long_path))
    assert info.value.errno == errno.ENAMETOOLONG
    t.check_trees()


# -- a full map --------------------------------------------------------------------------------


def test_map_full_is_enospc_and_the_store_stays_usable(tmp_path: Path) -> None:
    path = tmp_path / "tiny"
    s = branchfs.Store.open(path, create=True, map_size=1 << 20, max_map_size=4 << 20)
    try:
        main = s.create_branch("main")
        main.write_bytes("keep", b"k" * 100_000)
        written = []
        with pytest.raises(OSError) as info:
            for i in range(200):
                main.write_bytes(f"f{i}", os.urandom(200_000))
                written.append(f"f{i}")
        assert info.value.errno == errno.ENOSPC
        assert 3 <= len(written) < 200
        failed = f"f{len(written)}"
        assert not main.exists(failed)  # nothing half-written
        # a fork, a snapshot and an overwrite that need little space still fail or work
        # cleanly; reads are unaffected
        assert main.read_bytes("keep") == b"k" * 100_000
        for name in written:
            assert len(main.read_bytes(name)) == 200_000
        with pytest.raises(OSError) as info2:
            main.write_bytes("keep", os.urandom(3 << 20))
        assert info2.value.errno == errno.ENOSPC
        assert main.read_bytes("keep") == b"k" * 100_000
        # freeing space makes room again
        for name in written:
            main.remove(name)
        main.write_bytes("after", os.urandom(200_000))
        main.fork("fork").write_bytes("x", b"small")
        assert sorted(main.listdir("")) == ["after", "keep"]
        report = s.fsck()
        assert report.ok, report.problems
    finally:
        s.close()
    with branchfs.Store.open(path) as again:
        assert again.branch("main").read_bytes("keep") == b"k" * 100_000


def test_full_disk_is_enospc_and_the_store_stays_usable(small_disk: Path) -> None:
    # LMDB reports a disk that fills up in the middle of a commit as a short write (EIO);
    # the store must say ENOSPC, keep nothing of the failed call, and work once space is freed.
    with branchfs.Store.open(small_disk / "s", create=True) as s:
        main = s.create_branch("main")
        main.write_bytes("keep", b"k" * 100_000)
        written = []
        with pytest.raises(OSError) as info:
            for i in range(100):
                main.write_bytes(f"f{i}", os.urandom(1 << 20))
                written.append(f"f{i}")
        assert info.value.errno == errno.ENOSPC
        assert not main.exists(f"f{len(written)}")  # nothing half-written
        assert main.read_bytes("keep") == b"k" * 100_000
        for name in written:
            main.remove(name)
        main.write_bytes("after", b"room again")
        s.sync()
        assert s.fsck().ok
    with branchfs.Store.open(small_disk / "s") as s:
        assert s.branch("main").read_bytes("after") == b"room again"


def test_the_data_file_is_allocated_to_its_end_and_beyond(
    store_path: Path, branch: branchfs.Branch
) -> None:
    # LMDB never writes a page a transaction took and gave back, leaving holes that a full
    # disk cannot fill later; the store keeps the whole file allocated, plus headroom.
    for i in range(40):
        with branch.open(f"f{i}", "wb") as fh:
            for _ in range(4):  # pieces that rewrite a chunk within one transaction
                fh.write(os.urandom(50_000))
    st = os.stat(store_path / "data.mdb")
    assert st.st_blocks * 512 >= st.st_size + HEADROOM_BYTES // 2


def test_format_1_store_is_migrated_at_open(store_path: Path) -> None:
    """A store written before records carried digests (format 1) gets them at open."""
    with branchfs.Store.open(store_path, create=True) as s:
        b = s.create_branch("main")
        b.write_bytes("dir/big", os.urandom(100_000), parents=True)
        b.write_bytes("small", b"inline bytes")
        s.fork("main", "other")
        s.snapshot("main", "snap")
        want = {p: b.read_bytes(p) for p in ("dir/big", "small")}
    # make it format 1: strip every digest format 3 added
    env = lmdb.open(str(store_path), max_dbs=20, map_size=1 << 30, create=False)
    with env.begin(write=True) as txn:
        for name in DB_NAMES:
            db = env.open_db(name.encode(), txn=txn)
            for key, raw in list(txn.cursor(db=db)):
                if keys.reseal_v1(name, bytes(key), b"x") is not None and raw:
                    txn.put(bytes(key), bytes(raw)[: -keys.DIGEST_SIZE], db=db)
        txn.put(b"format", U64.pack(1), db=env.open_db(b"meta", txn=txn))
    env.close()
    with branchfs.Store.open(store_path) as s:
        for p, data in want.items():
            assert s.branch("main").read_bytes(p) == data
            assert s.branch("other").read_bytes(p) == data
        assert s.fsck().ok
        with s.meta.read() as txn:
            assert U64.unpack(txn.get(b"format", db=s.meta.meta_db))[0] == FORMAT_VERSION


def _fill(write: Callable[[int], None], sizes: tuple[int, ...]) -> None:
    """Call ``write(size)`` for each size, largest first, until each fails with ENOSPC."""
    for size in sizes:
        for _ in range(10_000):
            try:
                write(size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break


def test_a_deletion_on_a_full_disk_spends_the_reserve(small_disk: Path) -> None:
    # A reader pins the pages that commits free, so every commit extends data.mdb; the disk
    # is filled down to its last page, headroom included. A deletion must still find room
    # (it writes new pages too): the store gives its reserve file back to the disk for it.
    path = small_disk / "s"
    with branchfs.Store.open(path, create=True) as s:
        main = s.create_branch("main")
        assert (path / "reserve").stat().st_blocks * 512 >= RESERVE_BYTES
        main.write_bytes("big", os.urandom(4 << 20))
        count = iter(range(1 << 30))
        spent = (path / "reserve").stat().st_ino
        with s.meta.read():  # a reader: the pages commits free cannot be used again
            _fill(lambda n: main.write_bytes(f"f{next(count)}", os.urandom(n)), SIZES)
            _fill(lambda n: main.mkdir(f"d{next(count)}"), (0,))
            assert os.statvfs(small_disk).f_bfree == 0
            main.remove("big")
        assert not main.exists("big")
        # spent, and made again at once from the space it gave back (the deletion took a
        # few pages of it), for the next time the disk fills up
        assert (path / "reserve").stat().st_ino != spent
        main.write_bytes("after", b"room again")
        assert s.fsck().ok


SIZES = (1 << 20, 64 << 10, 4 << 10, 100)


def test_compacting_a_full_store_is_enospc_in_words_and_changes_nothing(
    small_disk: Path,
) -> None:
    # LMDB's copy raised lmdb.DiskError, which reached the user as a 52-line traceback.
    path = small_disk / "store.bfs"
    with branchfs.Store.open(path, create=True) as s:
        main = s.create_branch("main")
        with pytest.raises(OSError) as full:
            for i in range(100):
                main.write_bytes(f"f{i}", os.urandom(1 << 20))
        assert full.value.errno == errno.ENOSPC
        with pytest.raises(OSError) as exc:
            s.compact()
        assert exc.value.errno == errno.ENOSPC
        assert "free space there and compact again" in str(exc.value)
        assert s.fsck().ok
        assert len(main.read_bytes("f0")) == 1 << 20


def test_a_store_that_fills_up_again_and_again_can_always_be_emptied(small_disk: Path) -> None:
    # The reserve that a deletion on a full disk spends was made again only once the disk
    # had room for the headroom and for it: after one fill, the next full disk refused
    # every deletion (rm, truncate, rename over a file), and only a bigger disk helped.
    path = small_disk / "s"
    with branchfs.Store.open(path, create=True) as s:
        main = s.create_branch("main")
        count = iter(range(1 << 30))
        for cycle in range(3):
            main.write_bytes("big", os.urandom(4 << 20))
            with s.meta.read():  # a reader: the pages commits free cannot be used again
                _fill(lambda n: main.write_bytes(f"f{next(count)}", os.urandom(n)), SIZES)
                assert os.statvfs(small_disk).f_bavail < RESERVE_BYTES, cycle
                main.remove("big")  # ENOSPC from the second cycle on, before
            for name in main.listdir(""):
                main.remove(name)
        assert s.fsck().ok
