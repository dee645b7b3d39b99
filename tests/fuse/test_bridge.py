"""The mount's filesystem object driven directly, without a kernel (:mod:`fsdriver`).

Each test checks the bridge's own bookkeeping against the real store: orphans live exactly
as long as the kernel holds them, lookup references of branch views are let go, a fork
through ``mkdir`` holds every buffered write, a write through an alias of the mounted tree
invalidates exactly that inode, and a listing stays one listing while the directory changes.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from branchfs_fuse import groupcommit
from branchfs_fuse import kernel as K
from branchfs_fuse.inodes import ALIAS_BASE, FIRST_DYNAMIC
from fsdriver import CTX, Driver

import branchfs
from branchfs import tree as T


@pytest.fixture
def store(tmp_path: Path) -> Iterator[branchfs.Store]:
    with branchfs.Store.open(tmp_path / "store.bfs", create=True) as s:
        s.create_branch("main").write_bytes("f", b"hello")
        yield s


@pytest.fixture
def fs(store: branchfs.Store) -> Iterator[Driver]:
    d = Driver(store)
    try:
        yield d
    finally:
        d.bridge.shutdown()


def test_an_unlinked_open_file_lives_until_its_release(fs: Driver, store: branchfs.Store) -> None:
    fh = fs.create("gone", flags=os.O_RDWR)
    fs.write(fh, 0, b"still here")
    ino = store.branch("main").stat("gone").st_ino
    fs.unlink("gone")
    assert not store.branch("main").exists("gone")
    assert fs.read(fh, 0, 100) == b"still here"
    fs.close(fh)
    # The kernel still holds a lookup reference: the record stays until it forgets.
    assert store.read_tree("main", lambda v: v.inode(ino)) is not None
    fs.forget_all()
    assert store.read_tree("main", lambda v: v.inode(ino)) is None
    assert not fs.bridge.holds.orphans


def test_an_unlinked_file_nobody_has_open_goes_at_the_unlink(
    fs: Driver, store: branchfs.Store
) -> None:
    fh = fs.create("gone")
    fs.write(fh, 0, b"data")
    fs.close(fh)
    fs.mkdir("dir")
    ino = fs.lookup("gone")  # the kernel holds a lookup reference, no open file
    dino = fs.lookup("dir")
    fs.unlink("gone")
    fs.rmdir("dir")
    # The file's record went with its name; the directory, still held, stays an orphan
    # (it may be a working directory) until the kernel forgets it.
    assert store.read_tree("main", lambda v: v.inode(ino)) is None
    assert store.read_tree("main", lambda v: v.inode(dino)) is not None
    # Until the kernel forgets it (an O_PATH descriptor may hold it), GETATTR answers from
    # memory with nlink 0, as ext4 does; the FORGET drops that too.
    attrs = fs.bridge.getattr(ino, CTX)
    assert (attrs.st_nlink, attrs.st_size) == (0, 4)
    fs.forget_all()
    assert not fs.bridge.holds.gone
    with pytest.raises(K.FUSEError) as err:
        fs.bridge.getattr(ino, CTX)
    assert err.value.errno == errno.ENOENT
    assert store.read_tree("main", lambda v: v.inode(dino)) is None
    assert not fs.bridge.holds.orphans and not fs.bridge.holds.counts
    assert store.fsck().ok


@pytest.fixture
def batching(fs: Driver, monkeypatch: pytest.MonkeyPatch) -> Driver:
    """The driver's thread batches its writes as the daemon's loop does, in batches that
    only end when committed on purpose (so that a loaded machine cannot end one early)."""
    monkeypatch.setattr(groupcommit, "MAX_NS", 3600 * 10**9)
    fs.bridge.group.start()
    return fs


def test_setattrs_after_writes_fold_into_the_buffer_and_reach_the_store_with_its_data(
    batching: Driver, store: branchfs.Store
) -> None:
    """tar's chown, chmod and utimens between its last write and its close."""
    fs = batching
    fh = fs.create("t", mode=0o644, flags=os.O_WRONLY)
    fs.write(fh, 0, b"data")
    ino = fs.lookup("t")
    t = 1_700_000_000_123_456_789
    uid, gid = os.geteuid(), os.getegid()
    for fields in (
        K.SetattrFields(uid=uid, gid=gid, fh=fh),
        K.SetattrFields(mode=0o4750, fh=fh),
        K.SetattrFields(atime_ns=t, mtime_ns=t, fh=fh),
    ):
        attrs = fs.bridge.setattr(ino, fields, CTX)
        fs._settle()
    assert (attrs.st_mode, attrs.st_size, attrs.st_mtime_ns) == (0o104750, 4, t)
    assert fs.bridge.wb.sealed  # not in the store yet: applied with the data
    assert store.branch("main").stat("t").st_mode == 0o100644
    seen = fs.getattr("t")
    assert (seen.st_mode, seen.st_size, seen.st_atime_ns, seen.st_mtime_ns) == (
        0o104750,
        4,
        t,
        t,
    )
    fs.close(fh)
    assert not fs.bridge.wb.sealed
    st_ = store.branch("main").stat("t")
    assert (st_.st_mode, st_.st_size, st_.st_atime_ns, st_.st_mtime_ns) == (0o104750, 4, t, t)
    assert st_.st_ctime_ns == attrs.st_ctime_ns  # the last SETATTR's, as answered
    assert store.branch("main").read_bytes("t") == b"data"


def test_a_request_that_changes_a_file_applies_its_folded_setattrs_first(
    batching: Driver, store: branchfs.Store
) -> None:
    fs = batching
    fh = fs.create("u", flags=os.O_WRONLY)
    fs.write(fh, 0, b"x")
    ino = fs.lookup("u")
    fs.bridge.setattr(ino, K.SetattrFields(mode=0o600, fh=fh), CTX)
    fs._settle()
    assert fs.bridge.wb.sealed
    fs.bridge.link(ino, 1, b"v", CTX)  # not a request a folded buffer may wait through
    fs._settle()
    assert not fs.bridge.wb.sealed
    assert store.branch("main").stat("v").st_mode == 0o100600
    assert fs.getattr("v").st_nlink == 2
    # A write after a fold applies the fold first: the later data then carries the mtime.
    fs.bridge.setattr(ino, K.SetattrFields(mtime_ns=5, atime_ns=5, fh=fh), CTX)
    fs._settle()
    fs.write(fh, 1, b"y")
    assert store.branch("main").stat("u").st_mtime_ns == 5
    fs.close(fh)
    st_ = store.branch("main").stat("u")
    assert st_.st_mtime_ns > 5 and store.branch("main").read_bytes("u") == b"xy"


def test_a_batch_commits_with_the_setattrs_folded_before_it(
    batching: Driver, store: branchfs.Store
) -> None:
    """Contract 3 of docs/architecture.md: what a commit makes durable is a prefix of the
    calls that returned."""
    fs = batching
    fh = fs.create("w", flags=os.O_WRONLY)
    fs.write(fh, 0, b"x")
    ino = fs.lookup("w")
    fs.bridge.setattr(ino, K.SetattrFields(mode=0o640, fh=fh), CTX)
    fs._settle()
    fs.mkdir("later")  # a call after the chmod, in the same batch
    assert fs.bridge.wb.sealed
    fs.bridge.group.commit()
    assert not fs.bridge.wb.sealed
    with branchfs.Store.open(store.path) as other:  # what another process (or a crash) sees
        assert other.read_tree("main", lambda v: v.inode(T.lookup(v, 1, b"w"))).mode == 0o100640
    fs.close(fh)


def test_folded_setattrs_with_no_batch_to_carry_them_reach_the_store_within_a_window(
    fs: Driver, store: branchfs.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No batch is open (reads only since the last commit): the loop's idle moment, or the
    next request a batch window later, applies them."""
    fh = fs.create("x", flags=os.O_WRONLY)
    fs.write(fh, 0, b"x")
    ino = fs.lookup("x")
    fs.bridge.setattr(ino, K.SetattrFields(mode=0o600, fh=fh), CTX)
    fs._settle()
    assert fs.bridge.wb.sealed
    fs.bridge.idle()
    assert not fs.bridge.wb.sealed
    assert store.branch("main").stat("x").st_mode == 0o100600
    fs.write(fh, 1, b"y")
    fs.bridge.setattr(ino, K.SetattrFields(mode=0o640, fh=fh), CTX)
    fs._settle()
    assert fs.bridge.wb.sealed
    monkeypatch.setattr(groupcommit, "MAX_NS", 0)  # the window has passed
    fs.getattr("x")  # any request
    assert not fs.bridge.wb.sealed
    assert store.branch("main").stat("x").st_mode == 0o100640
    fs.close(fh)


def test_views_under_branchfs_get_numbers_that_go_with_the_last_forget(
    fs: Driver, store: branchfs.Store
) -> None:
    store.fork("main", "side")
    ino = fs.lookup(".branchfs/branches/side/f")
    assert ino >= FIRST_DYNAMIC
    assert fs.getattr(".branchfs/branches/side/f").st_size == 5
    assert fs.bridge.inodes.aliases
    fs.forget_all()
    assert not fs.bridge.inodes.aliases and not fs.bridge.inodes.reverse
    assert not fs.bridge.holds.counts
    assert not fs.bridge.coherence.viewed  # notices of "side" are no longer needed
    # The number is the same when the kernel asks again (st_ino must not change).
    assert fs.lookup(".branchfs/branches/side/f") == ino
    assert fs.bridge.coherence.viewed == {"side"}


def test_the_mounted_branch_under_branches_is_a_link_to_the_root(fs: Driver) -> None:
    link = fs.lookup(".branchfs/branches/main")
    assert fs.bridge.readlink(link, CTX) == b"../.."
    assert stat.S_ISLNK(fs.bridge.getattr(link, CTX).st_mode)
    listing = dict(fs.readdir(fs.lookup(".branchfs/branches")))
    assert b"main" in listing
    for call in (fs.rmdir, fs.unlink):
        with pytest.raises(K.FUSEError) as info:
            call(".branchfs/branches/main")
        assert info.value.errno == errno.EBUSY


def test_a_fork_by_mkdir_holds_every_buffered_write(fs: Driver, store: branchfs.Store) -> None:
    fh = fs.open("f", os.O_WRONLY)
    fs.write(fh, 5, b" world")
    assert fs.bridge.wb.buffers  # not in the store yet
    fs.mkdir(".branchfs/branches/forked")
    assert store.branch("forked").read_bytes("f") == b"hello world"
    fs.close(fh)
    fs.rmdir(".branchfs/branches/forked")
    assert "forked" not in store.branches()


def test_a_merge_into_the_mounted_branch_through_ctl_drops_the_mounted_view(
    fs: Driver, store: branchfs.Store
) -> None:
    main_ino = fs.lookup("f")
    fs.mkdir(".branchfs/branches/side")
    with fs.opened(".branchfs/branches/side/f", os.O_WRONLY) as fh:
        fs.write(fh, 0, b"HELLO")
    assert not fs.invalidated  # another tree: the mounted view is untouched
    assert json.loads(fs.ctl("merge side"))["ok"]
    entries, inos = fs.invalidated[-1]
    assert main_ino in inos and 1 in inos and (1, b"f") in entries
    with fs.opened("f") as fh:
        assert fs.read(fh, 0, 10) == b"HELLO"


def test_a_listing_read_in_pieces_is_one_listing_while_the_directory_changes(
    fs: Driver, store: branchfs.Store
) -> None:
    names = [f"n{i:03d}" for i in range(40)]
    for n in names:
        fs.close(fs.create(n))
    ino = fs.lookup("")
    first = fs.readdir(ino, 0, size=600)
    got = [os.fsdecode(n) for n, _o in first if n not in (b".", b"..")]
    fs.unlink(names[-1])  # removed before the rest is read
    fs.close(fs.create("late"))  # added before the rest is read
    offset = first[-1][1]
    while batch := fs.readdir(ino, offset, size=600):
        got += [os.fsdecode(n) for n, _o in batch]
        offset = batch[-1][1]
    # Entries never repeat or vanish; one added meanwhile is not seen (POSIX leaves open
    # whether one removed meanwhile is).
    assert len(got) == len(set(got))
    assert {"f", *names[:-1]} <= set(got) <= {"f", *names}
    assert set(fs.listdir("")) == {"f", "late", *names[:-1]}
    assert offset >> 32  # offsets name their listing


def test_each_reply_of_a_long_listing_reads_only_the_records_it_can_hold(fs: Driver) -> None:
    # Every reply read the records of every entry left in the listing: 26 replies of a
    # 10,000-entry directory read 130,000 records.
    names = {f"n{i:04d}" for i in range(2000)}
    for n in names:
        fs.close(fs.create(n))
    ino = fs.lookup("")
    got: list[bytes] = []
    offset = replies = 0
    while batch := fs.readdir(ino, offset, size=8192):
        got += [n for n, _o in batch]
        offset = batch[-1][1]
        replies += 1
    assert sorted(got) == sorted([b".", b"..", b"f", *(os.fsencode(n) for n in names)])
    assert replies > 30
    assert fs.bridge.stats.events["listed_records"] <= 2 * len(got)


def test_ctl_answers_on_the_same_handle_and_counts_requests(fs: Driver) -> None:
    answer = json.loads(fs.ctl("branches"))
    assert answer["ok"] and answer["branches"] == ["main"] and answer["current"] == "main"
    stats = json.loads(fs.ctl("stats"))
    assert stats["requests"]["write"] >= 1 and stats["requests"]["lookup"] >= 2
    assert json.loads(fs.ctl("nonsense"))["error"] == "usage"


def test_setattr_is_decoded_once_with_every_field_it_changes() -> None:
    valid = K.FATTR_MODE | K.FATTR_SIZE | K.FATTR_MTIME | K.FATTR_ATIME | K.FATTR_ATIME_NOW
    body = K.SETATTR_IN.pack(valid, 0, 7, 4096, 0, 1, 2, 3, 4, 5, 6, 0o100600, 0, 9, 9, 0)
    fields = K.SetattrFields.decode(body, now_ns=123)
    assert fields.changes() == {
        "size": 4096,
        "mode": 0o100600,
        "atime_ns": 123,
        "mtime_ns": 2 * 10**9 + 5,
    }
    assert fields.fh is None and fields.uid is None and not fields.kill_suidgid
    body = K.SETATTR_IN.pack(
        K.FATTR_FH | K.FATTR_KILL_SUIDGID | K.FATTR_UID,
        0,
        7,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        65534,
        0,
        0,
    )
    fields = K.SetattrFields.decode(body, now_ns=0)
    assert (fields.fh, fields.uid, fields.kill_suidgid) == (7, 65534, True)
    assert fields.changes() == {"uid": 65534}


def test_truncate_through_setattr_takes_buffered_data_first(
    fs: Driver, store: branchfs.Store
) -> None:
    fh = fs.open("f", os.O_RDWR)
    fs.write(fh, 5, b"123456")
    attrs = fs.bridge.setattr(fs.lookup("f"), K.SetattrFields(size=8, fh=fh), fs_ctx())
    assert attrs.st_size == 8
    fs.close(fh)
    assert store.branch("main").read_bytes("f") == b"hello123"
    assert fs.lookup("f") < ALIAS_BASE


def fs_ctx() -> K.RequestContext:
    return K.RequestContext(os.geteuid(), os.getegid(), os.getpid())


def test_closed_files_reach_the_store_with_the_batch_or_the_link_that_names_them(
    batching: Driver, store: branchfs.Store
) -> None:
    """git writes each object to a temporary file, closes it, links it to its final name
    and unlinks the temporary one; a closed file's data waits for the batch, or goes into
    the transaction of the first request that could see its record."""
    fs = batching
    fh = fs.create("tmp_obj", flags=os.O_RDWR)
    fs.write(fh, 0, b"object")
    fs.bridge.release(fh)  # the kernel's RELEASE, without the driver's settling
    assert fs.bridge.wb.sealed
    assert fs.getattr("tmp_obj").st_size == 6  # answered with the buffer
    ino = fs.lookup("tmp_obj")
    linked = fs.bridge.link(ino, 1, b"final", CTX)  # its record is put once, data and link
    assert (linked.st_size, linked.st_nlink) == (6, 2)
    assert not fs.bridge.wb.sealed
    stored = store.branch("main").stat("final")  # this thread reads the open batch
    assert (stored.st_size, stored.st_nlink, stored.st_ino) == (6, 2, ino)
    fs.unlink("tmp_obj")
    assert store.branch("main").read_bytes("final") == b"object"
    # A link that fails (the name is taken) keeps the closed file's data and its own errno.
    fh = fs.create("tmp2", flags=os.O_RDWR)
    fs.write(fh, 0, b"second")
    fs.bridge.release(fh)
    ino2 = fs.lookup("tmp2")
    with pytest.raises(K.FUSEError) as err:
        fs.bridge.link(ino2, 1, b"final", CTX)
    assert err.value.errno == errno.EEXIST
    assert not fs.bridge.wb.sealed
    assert store.branch("main").read_bytes("tmp2") == b"second"
    # Closed files and later calls reach another process (or a crash) in one commit.
    fh = fs.create("third", flags=os.O_WRONLY)
    fs.write(fh, 0, b"third")
    fs.bridge.release(fh)
    fs.mkdir("after")
    assert fs.bridge.wb.sealed
    fs.bridge.group.commit()
    with branchfs.Store.open(store.path) as other:
        assert other.branch("main").read_bytes("third") == b"third"
    assert store.fsck().ok
