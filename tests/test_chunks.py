"""The chunk store: deduplication, reference counts and verified reads."""

from __future__ import annotations

import errno
import random

import pytest

import branchfs
from branchfs import keys
from branchfs import tree as T
from branchfs.chunks import digest
from branchfs.keys import U64
from branchfs.records import CHUNK_SIZE, INLINE_MAX


def chunk_keys(store: branchfs.Store) -> set[bytes]:
    with store.meta.read() as txn:
        return set(store.chunks.keys(txn))


def refcounts(store: branchfs.Store) -> dict[bytes, int]:
    with store.meta.read() as txn:
        return {k: store.chunks.refcount(txn, k) for k in store.chunks.keys(txn)}


def extent_refs(store: branchfs.Store) -> dict[bytes, int]:
    """How many extent records name each chunk, counted over every layer."""
    out: dict[bytes, int] = {}
    with store.meta.read() as txn:
        for key, value in txn.cursor(db=store.meta.extents_db):
            _layer, ino, idx = keys.split_extent_key(key)
            chunk = keys.decode_extent(value, ino, idx)
            out[chunk] = out.get(chunk, 0) + 1
    return out


def assert_counts_consistent(store: branchfs.Store) -> None:
    """Every stored refcount equals the number of extents naming the chunk."""
    assert refcounts(store) == extent_refs(store)


def distinct_chunks(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n * CHUNK_SIZE)


def test_identical_data_is_stored_once(store: branchfs.Store, branch: branchfs.Branch) -> None:
    data = distinct_chunks(3)
    branch.write_bytes("a", data)
    assert len(chunk_keys(store)) == 3
    branch.write_bytes("b", data)
    branch.makedirs("deep/dir")
    branch.write_bytes("deep/dir/c", data)
    fork = branch.fork("fork")
    fork.write_bytes("d", data)
    assert len(chunk_keys(store)) == 3
    assert set(refcounts(store).values()) == {4}
    assert_counts_consistent(store)


def test_same_chunk_at_other_offsets_and_repeats(
    store: branchfs.Store, branch: branchfs.Branch
) -> None:
    block = distinct_chunks(1, seed=7)
    branch.write_bytes("rep", block * 5)
    assert chunk_keys(store) == {digest(block) + b"\0"}
    assert refcounts(store) == {digest(block) + b"\0": 5}
    branch.write_bytes("shifted", b"x" + block * 2)  # not aligned: different chunks
    assert len(chunk_keys(store)) == 4
    assert_counts_consistent(store)


def test_small_files_are_inline(store: branchfs.Store, branch: branchfs.Branch) -> None:
    branch.write_bytes("small", b"s" * INLINE_MAX)
    assert chunk_keys(store) == set()
    branch.write_bytes("spill", b"s" * (INLINE_MAX + 1))
    assert len(chunk_keys(store)) == 1
    branch.truncate("spill", 10)
    assert branch.read_bytes("spill") == b"s" * 10
    assert_counts_consistent(store)


def test_refcounts_drop_to_zero(store: branchfs.Store, branch: branchfs.Branch) -> None:
    a, b = distinct_chunks(2, 1), distinct_chunks(2, 2)
    branch.write_bytes("one", a)
    branch.write_bytes("two", a)
    assert set(refcounts(store).values()) == {2}
    branch.remove("one")
    assert set(refcounts(store).values()) == {1}
    branch.write_bytes("two", b)  # overwrite: a's chunks lose their last reference
    assert chunk_keys(store) == {digest(b[:CHUNK_SIZE]) + b"\0", digest(b[CHUNK_SIZE:]) + b"\0"}
    with branch.open("two", "r+b") as fh:
        fh.seek(10)
        fh.write(b"patch")  # rewriting part of a chunk replaces it
    assert len(chunk_keys(store)) == 2
    branch.truncate("two", CHUNK_SIZE)
    assert len(chunk_keys(store)) == 1
    branch.truncate("two", 0)
    assert chunk_keys(store) == set()
    branch.write_bytes("three", a)
    branch.rename("three", "four")
    branch.link("four", "five")
    assert set(refcounts(store).values()) == {1}
    branch.remove("four")
    branch.remove("five")
    assert chunk_keys(store) == set()
    with store.meta.read() as txn:
        assert txn.stat(store.meta.chunkrefs_db)["entries"] == 0


def test_chunks_shared_with_a_frozen_layer_survive_deletes(
    store: branchfs.Store, branch: branchfs.Branch
) -> None:
    data = distinct_chunks(2, 3)
    branch.write_bytes("f", data)
    fork = branch.fork("fork")
    fork.remove("f")
    branch.write_bytes("f", b"other" * 30000)
    assert fork.snapshot("s")
    assert branch.fork("again").read_bytes("f") == b"other" * 30000
    assert store.snapshot_tree("s").listdir("") == []
    assert_counts_consistent(store)
    # the frozen layer under both still names data's chunks
    assert {digest(data[:CHUNK_SIZE]) + b"\0", digest(data[CHUNK_SIZE:]) + b"\0"} <= chunk_keys(
        store
    )


def test_rmtree_drops_references(store: branchfs.Store, branch: branchfs.Branch) -> None:
    branch.makedirs("a/b")
    for i in range(5):
        branch.write_bytes(f"a/b/{i}", distinct_chunks(1, 10 + i))
    assert len(chunk_keys(store)) == 5
    branch.rmtree("a")
    assert chunk_keys(store) == set()


def _corrupt(store: branchfs.Store, key: bytes) -> None:
    """Flip one byte of a stored chunk, through LMDB directly."""
    env = store.meta.env
    with env.begin(write=True) as txn:
        value = bytearray(txn.get(key, db=store.meta.chunks_db))
        value[len(value) // 2] ^= 0xFF
        txn.put(key, bytes(value), db=store.meta.chunks_db)


def test_corrupted_chunk_reads_as_eio(store: branchfs.Store, branch: branchfs.Branch) -> None:
    data = distinct_chunks(3, 5)
    branch.write_bytes("f", data)
    fork = branch.fork("fork")
    bad = digest(data[CHUNK_SIZE : 2 * CHUNK_SIZE]) + b"\0"
    _corrupt(store, bad)
    for b in (branch, fork):
        with pytest.raises(branchfs.StoreCorrupt) as info:
            b.read_bytes("f")
        assert isinstance(info.value, OSError)
        assert info.value.errno == errno.EIO
        assert bad.hex() in str(info.value)
        with b.open("f", "rb", buffering=0) as fh:
            assert fh.read(CHUNK_SIZE) == data[:CHUNK_SIZE]  # the good chunk still reads
            with pytest.raises(OSError) as info2:
                fh.read(10)
            assert info2.value.errno == errno.EIO
    # a partial write into the bad chunk needs its old bytes: EIO, nothing changed
    with pytest.raises(OSError) as info3, branch.open("f", "r+b", buffering=0) as fh:
        fh.seek(CHUNK_SIZE + 5)
        fh.write(b"x")
    assert info3.value.errno == errno.EIO
    # writing the original content again stores a good copy beside the damaged one
    fork.write_bytes("f", data)
    assert fork.read_bytes("f") == data
    with pytest.raises(branchfs.StoreCorrupt):
        branch.read_bytes("f")


def test_missing_chunk_reads_as_eio(store: branchfs.Store, branch: branchfs.Branch) -> None:
    data = distinct_chunks(1, 6)
    branch.write_bytes("f", data)
    with store.meta.env.begin(write=True) as txn:
        txn.delete(digest(data) + b"\0", db=store.meta.chunks_db)
    with pytest.raises(branchfs.StoreCorrupt) as info:
        branch.read_bytes("f")
    assert info.value.errno == errno.EIO


def test_corrupted_inode_record_is_store_corrupt(
    store: branchfs.Store, branch: branchfs.Branch
) -> None:
    branch.write_bytes("f", b"x")
    ino = branch.stat("f").st_ino
    with store.meta.env.begin(write=True) as txn:
        for key, _value in txn.cursor(db=store.meta.inodes_db):
            if bytes(key[8:16]) == U64.pack(ino):
                txn.put(bytes(key), b"\xc1garbage", db=store.meta.inodes_db)
    with pytest.raises(branchfs.StoreCorrupt) as info:
        branch.stat("f")
    assert info.value.errno == errno.EIO


def test_digest_match_is_confirmed_by_bytes(store: branchfs.Store, branch: branchfs.Branch) -> None:
    """Different bytes already stored under a chunk's digest never get returned for it."""
    wanted = distinct_chunks(1, 8)
    impostor = distinct_chunks(1, 9)
    key = digest(wanted) + b"\0"
    with store.meta.env.begin(write=True) as txn:
        txn.put(key, impostor, db=store.meta.chunks_db)
        txn.put(key, keys.u64(1), db=store.meta.chunkrefs_db)
    branch.write_bytes("f", wanted)
    assert branch.read_bytes("f") == wanted
    assert digest(wanted) + b"\1" in chunk_keys(store)


def test_fsck_names_a_corrupted_chunk(store: branchfs.Store, branch: branchfs.Branch) -> None:
    data = distinct_chunks(2, 11)
    branch.write_bytes("f", data)
    assert store.fsck().ok
    bad = digest(data[:CHUNK_SIZE]) + b"\0"
    _corrupt(store, bad)
    report = store.fsck()
    assert not report.ok
    assert any(bad.hex() in str(p) for p in report.problems), report.problems


def test_rename_over_a_file_frees_it(store: branchfs.Store, branch: branchfs.Branch) -> None:
    branch.write_bytes("old", distinct_chunks(1, 12))
    branch.write_bytes("new", b"small")
    branch.rename("new", "old")
    assert chunk_keys(store) == set()
    with store.meta.read() as txn:
        inodes = sum(1 for _ in txn.cursor(db=store.meta.inodes_db))
    assert inodes == 2  # the root and "old"; the replaced file's record is gone


def test_deleting_files_that_were_chunked_then_inline_frees_every_chunk(
    store: branchfs.Store, branch: branchfs.Branch
) -> None:
    # A deleted file whose record is inline (or a symlink) skips the scan of its extents:
    # whatever way a layer's record became inline, that layer holds none of its extents.
    branch.write_bytes("chunked", distinct_chunks(1, 24))
    branch.unlink("chunked")
    assert chunk_keys(store) == set()
    branch.write_bytes("shrunk", distinct_chunks(2, 21))
    branch.truncate("shrunk", 0)
    with branch.open("shrunk", "r+b") as fh:
        fh.write(b"small again")
    branch.write_bytes("replaced", distinct_chunks(1, 22))
    branch.write_bytes("replaced", b"tiny")
    branch.write_bytes("forked", distinct_chunks(1, 23))
    fork = branch.fork("fork")
    fork.write_bytes("forked", b"inline in the fork")
    fork.symlink("shrunk", "ln")
    for path in ("shrunk", "replaced", "ln"):
        fork.unlink(path)
    fork.unlink("forked")
    for path in ("shrunk", "replaced", "forked"):
        branch.unlink(path)
    fork.discard()
    store.gc()
    assert chunk_keys(store) == set()
    with store.meta.read() as txn:
        assert sum(1 for _ in txn.cursor(db=store.meta.extents_db)) == 0
    assert store.fsck().ok


def test_viewing_hands_out_chunks_uncopied_and_still_checked(
    store: branchfs.Store, branch: branchfs.Branch
) -> None:
    # The mount reads through Store.viewing: memoryviews into the map, one copy to the kernel.
    data = distinct_chunks(3, 7)
    branch.write_bytes("f", data)
    ino = branch.stat("f").st_ino
    with store.viewing("main") as v:
        pieces = T.read_pieces(v, ino, 0, len(data))
        assert all(isinstance(p, memoryview) for p in pieces)
        assert b"".join(pieces) == data
        assert b"".join(T.read_pieces(v, ino, CHUNK_SIZE - 3, 6)) == data[CHUNK_SIZE - 3 :][:6]
    _corrupt(store, digest(data[CHUNK_SIZE : 2 * CHUNK_SIZE]) + b"\0")
    with store.viewing("main") as v, pytest.raises(branchfs.StoreCorrupt):
        T.read_pieces(v, ino, 0, len(data))
