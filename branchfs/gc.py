"""Garbage collection: delete unreachable layers and squash layers with a single child.

A layer is live if a branch, a snapshot or a merge base reaches it through parent links.
Nothing ever makes an unreachable layer reachable again, so dead layers are deleted in
small batches, each its own short write transaction: writers in other processes never wait
for more than one batch. Chunks are freed by their reference counts as the extents that
name them go.

Squashing keeps chains short: a frozen layer P whose only user is one child layer C takes
C's records (cost: C's changes), then everything that pointed at C points at P. Each batch
moves whole inodes (record, extents and truncation cut together), so every tree reads the
same bytes before, during and after the move.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from itertools import islice

import lmdb

from .errors import StoreLocked
from .layers import NO_LAYER, TOMBSTONE, LayerIndex, scan_prefix
from .meta import U64, Meta, U64x2, U64x3, pack
from .records import Inode

BATCH = 256


@dataclass(frozen=True)
class GcReport:
    """What a gc run did."""

    layers_removed: int
    layers_squashed: int
    records_removed: int
    chunks_freed: int
    bytes_freed: int
    seconds: float

    def to_json(self) -> dict[str, float]:
        """A plain dict for JSON output."""
        return dict(self.__dict__)


def live_layers(txn: lmdb.Transaction, store: object) -> set[int]:
    """Every layer reachable from a branch, a snapshot or a merge base."""
    refs = store.refs  # type: ignore[attr-defined]
    layers: LayerIndex = store.layers  # type: ignore[attr-defined]
    roots = [b.top for b in refs.branches(txn)]
    roots += [s.layer for s in refs.snapshots(txn)]
    roots += refs.base_layers(txn)
    live: set[int] = set()
    for root in roots:
        lid = root
        while lid != NO_LAYER and lid not in live:
            if not layers.exists(txn, lid):
                break
            live.add(lid)
            lid = layers.info(txn, lid).parent
    return live


def _chunk_totals(meta: Meta) -> tuple[int, int]:
    with meta.read() as txn:
        entries = txn.stat(meta.chunks_db)["entries"]
        total = 0
        for _key, value in txn.cursor(db=meta.chunks_db):
            total += len(value)
    return entries, total


def _delete_layer_records(meta: Meta, store: object, lid: int) -> int:
    """Delete every record of dead layer ``lid`` in batches; returns how many."""
    chunks = store.chunks  # type: ignore[attr-defined]
    prefix = U64.pack(lid)
    removed = 0
    for db in (meta.extents_db, meta.dirents_db, meta.inodes_db):

        def batch(txn: lmdb.Transaction, db: object = db) -> int:
            cur = txn.cursor(db=db)
            n = 0
            if not cur.set_range(prefix):
                return 0
            while n < BATCH and bytes(cur.key()[:8]) == prefix:
                if db is meta.extents_db:
                    chunks.decref(txn, bytes(cur.value()))
                if not cur.delete():
                    break
                n += 1
            return n

        while True:
            n = meta.write(batch)
            removed += n
            if n < BATCH:
                break
    return removed


def _children(txn: lmdb.Transaction, layers: LayerIndex) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for info in layers.all(txn):
        out.setdefault(info.parent, []).append(info.id)
    return out


def _squash_candidate(txn: lmdb.Transaction, store: object) -> tuple[int, int] | None:
    """A (parent, child) pair where the frozen parent is used by that child only."""
    refs = store.refs  # type: ignore[attr-defined]
    layers: LayerIndex = store.layers  # type: ignore[attr-defined]
    pinned = {s.layer for s in refs.snapshots(txn)} | set(refs.base_layers(txn))
    pinned |= {b.top for b in refs.branches(txn)}
    for parent, kids in _children(txn, layers).items():
        if parent == NO_LAYER or len(kids) != 1 or parent in pinned:
            continue
        if layers.exists(txn, parent):
            return parent, kids[0]
    return None


def _move_inode(
    txn: lmdb.Transaction, store: object, p: int, c: int, ino: int, below: tuple[int, ...]
) -> None:
    """Move inode ``ino``'s record and extents from child layer ``c`` down into ``p``."""
    meta: Meta = store.meta  # type: ignore[attr-defined]
    chunks = store.chunks  # type: ignore[attr-defined]
    raw_c = txn.get(U64x2.pack(c, ino), db=meta.inodes_db)
    if raw_c is None:
        return
    raw_p = txn.get(U64x2.pack(p, ino), db=meta.inodes_db)

    def drop_p_extents(first: int) -> None:
        cur = txn.cursor(db=meta.extents_db)
        pre = U64x2.pack(p, ino)
        if not cur.set_range(U64x3.pack(p, ino, first)):
            return
        while bytes(cur.key()[:16]) == pre:
            chunks.decref(txn, bytes(cur.value()))
            if not cur.delete():
                break

    if raw_c == TOMBSTONE:
        drop_p_extents(0)
        exists_below = _visible_below(txn, meta, below, ino)
        if exists_below:
            txn.put(U64x2.pack(p, ino), TOMBSTONE, db=meta.inodes_db)
        else:
            txn.delete(U64x2.pack(p, ino), db=meta.inodes_db)
    else:
        rec = Inode.decode(raw_c)
        p_cut = Inode.decode(raw_p).cut if raw_p else None
        if rec.cut is not None:
            drop_p_extents(rec.cut)
        # move the child's extents over the parent's
        cur = txn.cursor(db=meta.extents_db)
        pre = U64x2.pack(c, ino)
        moved: list[tuple[bytes, bytes]] = []
        if cur.set_range(pre):
            for key, value in cur:
                if bytes(key[:16]) != pre:
                    break
                moved.append((bytes(key[16:]), bytes(value)))
        for tail, value in moved:
            pkey = U64x2.pack(p, ino) + tail
            old = txn.get(pkey, db=meta.extents_db)
            txn.put(pkey, value, db=meta.extents_db)
            if old is not None:
                chunks.decref(txn, bytes(old))
            txn.delete(U64x2.pack(c, ino) + tail, db=meta.extents_db)
        if raw_p == TOMBSTONE or raw_p is None:
            p_cut = None if raw_p is None else 0
        if rec.cut is None:
            rec.cut = p_cut
        elif p_cut is not None:
            rec.cut = min(rec.cut, p_cut)
        txn.put(U64x2.pack(p, ino), rec.encode(), db=meta.inodes_db)
    txn.delete(U64x2.pack(c, ino), db=meta.inodes_db)


def _visible_below(txn: lmdb.Transaction, meta: Meta, below: tuple[int, ...], ino: int) -> bool:
    for lay in below:
        r = txn.get(U64x2.pack(lay, ino), db=meta.inodes_db)
        if r is not None:
            return r != TOMBSTONE
    return False


def _below_of(txn: lmdb.Transaction, layers: LayerIndex, p: int) -> tuple[int, ...]:
    parent = layers.info(txn, p).parent
    return layers.chain(txn, parent) if parent != NO_LAYER else ()


def _move_inodes(
    txn: lmdb.Transaction, store: object, p: int, c: int, below: tuple[int, ...], limit: int
) -> int:
    """Move up to ``limit`` whole inodes of layer ``c`` down into ``p``; returns how many."""
    meta: Meta = store.meta  # type: ignore[attr-defined]
    inos = [
        U64x2.unpack(key)[1]
        for key, _v in islice(scan_prefix(txn, meta.inodes_db, U64.pack(c)), limit)
    ]
    for ino in inos:
        _move_inode(txn, store, p, c, ino, below)
    return len(inos)


def _move_dirents(
    txn: lmdb.Transaction, store: object, p: int, c: int, below: tuple[int, ...], limit: int
) -> int:
    """Move up to ``limit`` directory entries of layer ``c`` down into ``p``."""
    meta: Meta = store.meta  # type: ignore[attr-defined]
    c_prefix = U64.pack(c)
    items = [
        (key[8:], value)
        for key, value in islice(scan_prefix(txn, meta.dirents_db, c_prefix), limit)
    ]
    for tail, value in items:
        if value == TOMBSTONE and not _dirent_visible_below(txn, meta, below, tail):
            txn.delete(U64.pack(p) + tail, db=meta.dirents_db)
        else:
            txn.put(U64.pack(p) + tail, value, db=meta.dirents_db)
        txn.delete(c_prefix + tail, db=meta.dirents_db)
    return len(items)


def _finish_squash(txn: lmdb.Transaction, store: object, p: int, c: int) -> bool:
    """Move what is left of ``c`` into ``p`` and make everything that named ``c`` name ``p``.

    Returns False (and does nothing) if the pair is no longer a parent and its child, as
    when a concurrent discard already squashed it.
    """
    meta: Meta = store.meta  # type: ignore[attr-defined]
    layers: LayerIndex = store.layers  # type: ignore[attr-defined]
    refs = store.refs  # type: ignore[attr-defined]
    if not layers.exists(txn, c) or not layers.exists(txn, p):
        return False
    info_c = layers.info(txn, c)
    if info_c.parent != p:
        return False
    below = _below_of(txn, layers, p)
    while _move_inodes(txn, store, p, c, below, BATCH):
        pass
    while _move_dirents(txn, store, p, c, below, BATCH):
        pass
    for b in refs.branches(txn):
        if b.top == c:
            txn.put(
                b.name.encode("utf-8", "surrogateescape"),
                pack([b.id, p, b.created_ns]),
                db=meta.branches_db,
            )
    for snap in refs.snapshots(txn):
        if snap.layer == c:
            txn.put(
                snap.name.encode("utf-8", "surrogateescape"),
                pack([p, snap.branch, snap.created_ns]),
                db=meta.snapshots_db,
            )
    for key, raw in list(txn.cursor(db=meta.bases_db)):
        if U64.unpack(raw)[0] == c:
            txn.put(bytes(key), U64.pack(p), db=meta.bases_db)
    for child in layers.children(txn, c):
        layers.set_parent(txn, child, p, layers.info(txn, child).frozen)
    layers.set_parent(txn, p, layers.info(txn, p).parent, info_c.frozen)
    layers.delete(txn, c)
    return True


def _squash(store: object, p: int, c: int) -> None:
    """Squash ``c`` into ``p`` in short transactions, then rewire in one more."""
    meta: Meta = store.meta  # type: ignore[attr-defined]
    layers: LayerIndex = store.layers  # type: ignore[attr-defined]

    def batch(txn: lmdb.Transaction, move=_move_inodes) -> int:  # type: ignore[no-untyped-def]
        if not layers.exists(txn, c) or layers.info(txn, c).parent != p:
            return 0
        return move(txn, store, p, c, _below_of(txn, layers, p), BATCH)

    while meta.write(batch) == BATCH:
        pass
    while meta.write(lambda txn: batch(txn, _move_dirents)) == BATCH:
        pass
    meta.write(lambda txn: _finish_squash(txn, store, p, c))


def delete_layer(txn: lmdb.Transaction, store: object, lid: int) -> int:
    """Delete dead layer ``lid`` with all its records in this transaction; returns how many."""
    meta: Meta = store.meta  # type: ignore[attr-defined]
    chunks = store.chunks  # type: ignore[attr-defined]
    prefix = U64.pack(lid)
    removed = 0
    for db in (meta.extents_db, meta.dirents_db, meta.inodes_db):
        cur = txn.cursor(db=db)
        if not cur.set_range(prefix):
            continue
        while bytes(cur.key()[:8]) == prefix:
            if db is meta.extents_db:
                chunks.decref(txn, bytes(cur.value()))
            removed += 1
            if not cur.delete():
                break
    store.layers.delete(txn, lid)  # type: ignore[attr-defined]
    return removed


#: The most records a discard will clean up or squash on the spot; larger layers wait for gc.
TIDY_LIMIT = 512


def tidy_after_discard(txn: lmdb.Transaction, store: object, top: int) -> None:
    """Bounded clean-up after a branch whose top layer was ``top`` is discarded.

    Deletes the layers only that branch used, while each is small, then squashes the first
    live ancestor's only child into it if that child is small: the "fork, merge the
    winner, discard the rest" loop then keeps chains short without waiting for gc. Work is
    bounded by ``TIDY_LIMIT`` records per layer, so a discard stays O(1) in the tree size.
    """
    layers: LayerIndex = store.layers  # type: ignore[attr-defined]
    refs = store.refs  # type: ignore[attr-defined]
    # A layer with children is never a branch's top, and the discarded top has no branch
    # left, so only snapshots and merge bases can pin the layers looked at here.
    pinned = {snap.layer for snap in refs.snapshots(txn)} | set(refs.base_layers(txn))
    lid = top
    while lid != NO_LAYER and layers.exists(txn, lid):
        if lid in pinned or layers.children(txn, lid, limit=1):
            break
        if layers.size_exceeds(txn, lid, TIDY_LIMIT):
            return
        parent = layers.info(txn, lid).parent
        delete_layer(txn, store, lid)
        lid = parent
    if lid == NO_LAYER or lid in pinned or not layers.exists(txn, lid):
        return
    kids = layers.children(txn, lid, limit=2)
    if len(kids) == 1 and not layers.size_exceeds(txn, kids[0], TIDY_LIMIT):
        _finish_squash(txn, store, lid, kids[0])


def _dirent_visible_below(
    txn: lmdb.Transaction, meta: Meta, below: tuple[int, ...], tail: bytes
) -> bool:
    """Whether a layer beneath the squashed pair gives directory entry ``tail`` a live value."""
    for lay in below:
        r = txn.get(U64.pack(lay) + tail, db=meta.dirents_db)
        if r is not None:
            return r != TOMBSTONE
    return False


def collect(store: object) -> GcReport:
    """Run one gc over ``store``; raises :class:`StoreLocked` if another gc is running."""
    meta: Meta = store.meta  # type: ignore[attr-defined]
    layers: LayerIndex = store.layers  # type: ignore[attr-defined]
    started = time.perf_counter()
    lock_path = os.path.join(meta.path, "gc.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreLocked(
                f"another gc is running on {meta.path}; wait for it to finish and run gc again"
            ) from None
        chunks_before, bytes_before = _chunk_totals(meta)
        with meta.read() as txn:
            live = live_layers(txn, store)
            dead = [info.id for info in layers.all(txn) if info.id not in live]
        records = 0
        for lid in dead:
            records += _delete_layer_records(meta, store, lid)
            meta.write(lambda txn, lid=lid: layers.delete(txn, lid))
        squashed = 0
        while True:
            with meta.read() as txn:
                pair = _squash_candidate(txn, store)
            if pair is None:
                break
            _squash(store, *pair)
            squashed += 1
        chunks_after, bytes_after = _chunk_totals(meta)
        return GcReport(
            layers_removed=len(dead),
            layers_squashed=squashed,
            records_removed=records,
            chunks_freed=chunks_before - chunks_after,
            bytes_freed=bytes_before - bytes_after,
            seconds=time.perf_counter() - started,
        )
    finally:
        os.close(fd)


__all__ = ["GcReport", "collect", "live_layers"]
