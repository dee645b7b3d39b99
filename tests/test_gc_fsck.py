"""gc reclaims what discards free and squashes chains without changing any tree; fsck finds
every kind of damage and names what it hurts."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import lmdb
import pytest

import branchfs
from branchfs import Branch, Store, keys
from branchfs.keys import U64, U64x2, U64x3


def snapshot_of(b: Branch) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, files in b.walk(""):
        for f in files:
            p = f"{dirpath}/{f}".lstrip("/")
            out[p] = b.read_bytes(p) if not b.islink(p) else b"->" + b.readlink(p).encode()
    return out


def chain_of(store: Store, name: str) -> tuple[int, ...]:
    with store.meta.read() as txn:
        return store.layers.chain(txn, store.refs.branch(txn, name).top)


def chunk_count(store: Store) -> int:
    with store.meta.read() as txn:
        return txn.stat(store.meta.chunks_db)["entries"]


def test_discard_frees_a_small_forks_data_at_once(store: Store) -> None:
    main = store.create_branch("main")
    main.write_bytes("shared.bin", os.urandom(500_000))
    before = chunk_count(store)
    for i in range(5):
        b = main.fork(f"f{i}")
        b.write_bytes(f"own{i}.bin", os.urandom(200_000))
    assert chunk_count(store) == before + 5 * 4  # 200,000 bytes = 4 chunks each
    for i in range(5):
        store.discard(f"f{i}")
    assert chunk_count(store) == before
    assert len(chain_of(store, "main")) == 1  # the fork points were squashed too
    report = store.gc()
    assert (report.layers_removed, report.chunks_freed) == (0, 0)
    assert store.fsck().ok


def test_a_deleted_snapshots_space_comes_back_but_not_what_a_fork_of_it_shares(
    store: Store,
) -> None:
    main = store.create_branch("main")
    shared = os.urandom(130_000)
    main.write_bytes("shared.bin", shared)
    store.snapshot("main", "keep")
    kid = store.fork_snapshot("keep", "kid")  # shares keep's layers
    main.remove("shared.bin")
    main.write_bytes("only.bin", os.urandom(200_000))  # 4 chunks only v1 will hold
    store.snapshot("main", "v1")
    main.remove("only.bin")
    store.gc()
    before = chunk_count(store)
    store.delete_snapshot("keep")
    store.delete_snapshot("v1")
    assert store.snapshots() == []
    report = store.gc()
    assert report.chunks_freed == 4 and report.bytes_freed == 200_000
    assert chunk_count(store) == before - 4
    assert kid.read_bytes("shared.bin") == shared  # the fork's shared layers were kept
    assert main.listdir("") == []
    assert store.fsck().ok
    with pytest.raises(branchfs.BranchNotFound, match="no snapshot named 'v1'"):
        store.delete_snapshot("v1")


def test_a_large_discarded_layer_is_left_for_gc(store: Store) -> None:
    from branchfs.gc import TIDY_LIMIT

    main = store.create_branch("main")
    main.write_bytes("keep", b"k")
    big = main.fork("big")
    for i in range(TIDY_LIMIT):
        big.write_bytes(f"f{i}", os.urandom(3000))
    before = chunk_count(store)
    store.discard("big")
    assert chunk_count(store) == before, "discard must not do unbounded work"
    report = store.gc()
    assert report.layers_removed >= 1
    assert report.chunks_freed == TIDY_LIMIT
    assert main.read_bytes("keep") == b"k"
    assert store.fsck().ok


def test_fork_merge_discard_loop_keeps_the_chain_short_without_gc(store: Store) -> None:
    main = store.create_branch("main")
    main.write_bytes("a", b"0")
    for i in range(30):
        attempt = main.fork(f"attempt-{i}")
        loser = main.fork(f"loser-{i}")
        attempt.write_bytes("a", str(i).encode())
        loser.write_bytes("a", b"lost")
        main.merge(attempt)
        loser.discard()
        attempt.discard()
    assert main.read_bytes("a") == b"29"
    assert len(chain_of(store, "main")) <= 3
    with store.meta.read() as txn:
        assert len(list(store.layers.all(txn))) <= 3
    assert store.fsck().ok


def test_gc_keeps_every_live_tree_and_squashes_chains(store: Store) -> None:
    from branchfs.gc import TIDY_LIMIT

    main = store.create_branch("main")
    main.write_bytes("a", b"1")
    for round_ in range(3):
        attempt = main.fork(f"attempt-{round_}")
        attempt.write_bytes(f"r{round_}", b"x" * 5000)
        attempt.write_bytes("a", str(round_).encode())
        main.merge(attempt)
        # more than a discard squashes on the spot: this is left for gc
        for i in range(TIDY_LIMIT // 2):
            main.write_bytes(f"main-{round_}-{i}", b"m")
        attempt.discard()
    main.snapshot("keep-me")
    main.write_bytes("after-snapshot", b"s")
    kept = main.fork("kept")
    kept.write_bytes("kept-only", b"k")
    assert [c.path for c in main.merge(kept).changes] == ["kept-only"]
    main.write_bytes("kept-only", b"edited on main after the merge")
    kept.write_bytes("kept-later", b"l")
    trees = {n: snapshot_of(store.branch(n)) for n in store.branches()}
    snap = snapshot_of(store.snapshot_tree("keep-me"))
    deep = len(chain_of(store, "main"))
    report = store.gc()
    assert report.layers_squashed > 0
    assert len(chain_of(store, "main")) < deep
    assert {n: snapshot_of(store.branch(n)) for n in store.branches()} == trees
    assert snapshot_of(store.snapshot_tree("keep-me")) == snap
    assert store.fsck().ok
    # the merge base survives gc: merging kept again brings only what is new, no conflict
    assert [c.path for c in main.merge(kept).changes] == ["kept-later"]
    assert main.read_bytes("kept-only") == b"edited on main after the merge"


def test_squash_keeps_truncation_cuts(store: Store) -> None:
    main = store.create_branch("main")
    payload = os.urandom(400_000)
    main.write_bytes("big", payload)
    child = main.fork("child")
    child.truncate("big", 10_000)
    child.truncate("big", 400_000)
    main.discard(force=True)  # a root: its fork keeps the tree
    store.gc()
    assert len(chain_of(store, "child")) == 1
    assert child.read_bytes("big") == payload[:10_000] + bytes(390_000)
    assert store.fsck().ok


def test_second_gc_is_refused_while_one_runs(store: Store) -> None:
    store.create_branch("main")
    fd = os.open(os.path.join(store.path, "gc.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(branchfs.StoreLocked, match="another gc"):
            store.gc()
    finally:
        os.close(fd)
    store.gc()


WRITER = textwrap.dedent(
    """
    import os, sys, branchfs
    store = branchfs.Store.open(sys.argv[1])
    main = store.branch("main")
    for i in range(int(sys.argv[2])):
        name = f"w{i}"
        b = main.fork(name)
        b.write_bytes(f"file{i}", os.urandom(70_000))
        main.merge(b)
        b.discard()
        main.write_bytes("counter", str(i).encode())
    print("done", flush=True)
    """
)


def test_gc_beside_a_writer_in_another_process(store: Store, tmp_path: Path) -> None:
    main = store.create_branch("main")
    main.write_bytes("base", os.urandom(100_000))
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen(
        [sys.executable, str(script), store.path, "60"], stdout=subprocess.PIPE, text=True
    )
    runs = 0
    while proc.poll() is None:
        store.gc()
        runs += 1
    out, _ = proc.communicate()
    assert proc.returncode == 0 and "done" in out
    store.gc()
    assert runs >= 1
    assert main.read_bytes("counter") == b"59"
    assert len([n for n in main.listdir() if n.startswith("file")]) == 60
    report = store.fsck()
    assert report.ok, report.problems


# -- fsck ----------------------------------------------------------------------------------------


def damage(store: Store, fn) -> None:  # type: ignore[no-untyped-def]
    with store.meta.env.begin(write=True) as txn:
        fn(txn, store.meta)


def test_fsck_clean_store(store: Store) -> None:
    main = store.create_branch("main")
    main.write_bytes("f", os.urandom(100_000))
    main.fork("x").write_bytes("g", b"1")
    report = store.fsck()
    assert report.ok and bool(report)
    assert report.trees == 2 and report.chunks == 2
    assert report.to_json()["ok"] is True


def test_fsck_names_the_file_of_a_corrupt_chunk(store: Store) -> None:
    main = store.create_branch("main")
    main.write_bytes("dir/victim.bin", os.urandom(100_000), parents=True)

    def flip(txn: lmdb.Transaction, meta) -> None:  # type: ignore[no-untyped-def]
        key, value = next(iter(txn.cursor(db=meta.chunks_db)))
        data = bytearray(value)
        data[10] ^= 0xFF
        txn.put(bytes(key), bytes(data), db=meta.chunks_db)

    damage(store, flip)
    report = store.fsck()
    assert not report.ok
    kinds = {p.kind for p in report.problems}
    assert kinds == {"corrupt-chunk", "damaged-file"}
    assert any("dir/victim.bin" in p.where for p in report.problems)
    with pytest.raises(branchfs.StoreCorrupt):
        main.read_bytes("dir/victim.bin")


def test_fsck_finds_dangling_refs_and_orphaned_records(store: Store) -> None:
    main = store.create_branch("main")
    main.write_bytes("f", b"x")
    main.snapshot("s")

    def drop_snapshot_layer(txn: lmdb.Transaction, meta) -> None:  # type: ignore[no-untyped-def]
        with store.meta.read() as rtxn:
            lid = store.refs.snapshot(rtxn, "s").layer
        txn.delete(U64.pack(lid), db=meta.layers_db)

    damage(store, drop_snapshot_layer)
    kinds = {p.kind for p in store.fsck().problems}
    assert {"dangling-ref", "dangling-layer", "orphaned-records"} <= kinds


def test_fsck_finds_bad_refcounts_and_dangling_entries(store: Store) -> None:
    main = store.create_branch("main")
    main.write_bytes("f", os.urandom(70_000))
    main.write_bytes("g", b"small")
    ino = main.stat("g").st_ino

    def break_things(txn: lmdb.Transaction, meta) -> None:  # type: ignore[no-untyped-def]
        key, _ = next(iter(txn.cursor(db=meta.chunkrefs_db)))
        txn.put(bytes(key), keys.u64(7), db=meta.chunkrefs_db)
        with store.meta.read() as rtxn:
            top = store.refs.branch(rtxn, "main").top
        txn.delete(U64x2.pack(top, ino), db=meta.inodes_db)

    damage(store, break_things)
    kinds = {p.kind for p in store.fsck().problems}
    assert {"refcount", "dangling-entry"} <= kinds


def test_fsck_finds_an_extent_naming_a_chunk_that_is_not_stored(store: Store) -> None:
    """A chunk gone from the store with its count (so no refcount check can see it): the
    extents that still name it are reported, and so is the file they belong to."""
    main = store.create_branch("main")
    main.write_bytes("dir/victim.bin", os.urandom(100_000), parents=True)
    main.write_bytes("other.bin", os.urandom(70_000))
    victim = main.stat("dir/victim.bin").st_ino
    with store.meta.read() as txn:
        top = store.refs.branch(txn, "main").top
        raw = txn.get(U64x3.pack(top, victim, 1), db=store.meta.extents_db)
        lost = keys.decode_extent(raw, victim, 1)

    def drop_chunk(txn: lmdb.Transaction, meta) -> None:  # type: ignore[no-untyped-def]
        assert txn.delete(lost, db=meta.chunks_db)
        assert txn.delete(lost, db=meta.chunkrefs_db)

    damage(store, drop_chunk)
    problems = store.fsck().problems
    assert {(p.kind, p.where) for p in problems} == {
        ("missing-chunk", f"chunk {lost.hex()}"),
        ("damaged-file", "branch main:dir/victim.bin"),
    }, problems


def test_fsck_finds_an_inode_no_entry_names(store: Store) -> None:
    """A record left in a tree with no directory entry naming it (what an unlinked-but-open
    file leaves when its daemon dies) is an orphaned inode."""
    main = store.create_branch("main")
    main.write_bytes("kept", b"k")
    main.write_bytes("lost", b"l")
    ino = main.stat("lost").st_ino
    with store.meta.read() as txn:
        top = store.refs.branch(txn, "main").top

    def drop_entry(txn: lmdb.Transaction, meta) -> None:  # type: ignore[no-untyped-def]
        from branchfs.records import ROOT_INO

        assert txn.delete(U64x2.pack(top, ROOT_INO) + b"lost", db=meta.dirents_db)

    damage(store, drop_entry)
    problems = store.fsck().problems
    assert [(p.kind, p.where) for p in problems] == [
        ("orphaned-inode", f"branch main:inode {ino}")
    ], problems


def test_gc_figures_are_its_own_beside_a_writer(store: Store) -> None:
    """GcReport counts what gc deleted, never minus what a writer added meanwhile."""
    main = store.create_branch("main")
    main.write_bytes("keep", b"k")
    store.fork("main", "dead")
    dead = store.branch("dead")
    for i in range(600):  # more than a discard tidies on the spot
        dead.write_bytes(f"f{i}", b"x")
    unique = os.urandom(5 * 65536)
    dead.write_bytes("big", unique)
    store.discard("dead")
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            main.write_bytes(f"new{i % 50}", os.urandom(70_000))
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        report = store.gc()
    finally:
        stop.set()
        t.join()
    assert report.chunks_freed == 5
    assert report.bytes_freed == len(unique)
    assert report.layers_removed >= 1
    assert store.fsck().ok
