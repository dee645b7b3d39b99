"""Garbage collection: delete unreachable layers and squash layers with a single child.

A layer is live if a branch, a snapshot or a state kept as a merge base (see
:meth:`branchfs.history.History.kept_states`) reaches it through parent links.
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import lmdb

from . import staging
from .engine import Engine
from .errors import StoreLocked
from .layers import NO_LAYER, LayerInfo

T = TypeVar("T")

BATCH = 256


@dataclass(frozen=True)
class GcReport:
    """What a gc run did. ``chunks_freed`` and ``bytes_freed`` are the chunks gc itself
    deleted and their size, counted inside its own transactions: never negative, whatever
    writers add meanwhile. The file does not shrink: :meth:`Store.compact` gives the space
    back to the filesystem."""

    layers_removed: int
    layers_squashed: int
    records_removed: int
    chunks_freed: int
    bytes_freed: int
    seconds: float

    def to_json(self) -> dict[str, float]:
        """A plain dict for JSON output."""
        return dict(self.__dict__)


def ref_roots(txn: lmdb.Transaction, engine: Engine) -> list[int]:
    """The layers branches and snapshots name, and staging layers (:mod:`branchfs.staging`)."""
    refs = engine.refs
    roots = [b.top for b in refs.branches(txn)] + [s.layer for s in refs.snapshots(txn)]
    return roots + sorted(staging.layers(txn, engine))


def kept_states(txn: lmdb.Transaction, engine: Engine) -> set[int]:
    """States kept for future merge bases (see :meth:`History.kept_states`)."""
    return engine.history.kept_states(txn, ref_roots(txn, engine))


def live_layers(txn: lmdb.Transaction, engine: Engine) -> set[int]:
    """Every layer reachable from a branch, a snapshot or a state kept as a merge base."""
    layers = engine.layers
    roots = ref_roots(txn, engine)
    roots += sorted(kept_states(txn, engine))
    live: set[int] = set()
    for root in roots:
        lid = root
        while lid != NO_LAYER and lid not in live:
            if not layers.exists(txn, lid):
                break
            live.add(lid)
            lid = layers.info(txn, lid).parent
    return live


def _write(engine: Engine, freed: list[int], fn: Callable[[lmdb.Transaction], T]) -> T:
    """``meta.write(fn)``, adding the chunks and bytes that its committed attempt deleted to
    ``freed``. Counting inside the transaction makes the figures gc's own, whatever other
    writers add meanwhile (``meta.write`` serialises this process's writers)."""
    chunks = engine.chunks

    def counted(txn: lmdb.Transaction) -> tuple[T, int, int]:
        tally = chunks.tally = [0, 0]  # reset at every attempt: a retried one counts once
        result = fn(txn)
        return result, tally[0], tally[1]

    result, n, size = engine.meta.write(counted)
    freed[0] += n
    freed[1] += size
    return result


def _children(txn: lmdb.Transaction, engine: Engine) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for info in engine.layers.all(txn):
        out.setdefault(info.parent, []).append(info.id)
    return out


def _squash_candidate(txn: lmdb.Transaction, engine: Engine) -> tuple[int, int] | None:
    """A (parent, child) pair where the frozen parent is used by that child only."""
    layers = engine.layers
    pinned = set(ref_roots(txn, engine)) | kept_states(txn, engine)
    building = staging.layers(txn, engine)  # written by their owners: never squashed
    for parent, kids in _children(txn, engine).items():
        if parent == NO_LAYER or len(kids) != 1 or parent in pinned or kids[0] in building:
            continue
        if layers.exists(txn, parent):
            return parent, kids[0]
    return None


def _below_of(txn: lmdb.Transaction, engine: Engine, p: int) -> tuple[int, ...]:
    parent = engine.layers.info(txn, p).parent
    return engine.layers.chain(txn, parent) if parent != NO_LAYER else ()


def _finish_squash(txn: lmdb.Transaction, engine: Engine, p: int, c: int) -> bool:
    """Move what is left of ``c`` into ``p`` and make everything that named ``c`` name ``p``.

    Returns False (and does nothing) if the pair is no longer a parent and its child, as
    when a concurrent discard already squashed it.
    """
    layers, records = engine.layers, engine.records
    info_c = layers.find(txn, c)
    info_p = layers.find(txn, p)
    if info_c is None or info_p is None or info_c.parent != p:
        return False
    below = _below_of(txn, engine, p)
    while records.move_inodes_down(txn, p, c, below, BATCH):
        pass
    while records.move_dirents_down(txn, p, c, below, BATCH):
        pass
    engine.refs.repoint(txn, c, p)
    engine.history.squash(txn, p, c)
    for child in layers.children(txn, c):
        layers.set_parent(txn, child, p, layers.info(txn, child).frozen)
    # p's record is as read above: nothing here rewrites it before this line.
    layers.set_parent(txn, p, info_p.parent, info_c.frozen)
    layers.delete(txn, c, info_c)
    return True


def _squash(engine: Engine, p: int, c: int, freed: list[int]) -> None:
    """Squash ``c`` into ``p`` in short transactions, then rewire in one more."""
    layers, records = engine.layers, engine.records

    def still_pair(txn: lmdb.Transaction) -> bool:
        return layers.exists(txn, c) and layers.info(txn, c).parent == p

    def inodes(txn: lmdb.Transaction) -> int:
        if not still_pair(txn):
            return 0
        return records.move_inodes_down(txn, p, c, _below_of(txn, engine, p), BATCH)

    def dirents(txn: lmdb.Transaction) -> int:
        if not still_pair(txn):
            return 0
        return records.move_dirents_down(txn, p, c, _below_of(txn, engine, p), BATCH)

    while _write(engine, freed, inodes) == BATCH:
        pass
    while _write(engine, freed, dirents) == BATCH:
        pass
    _write(engine, freed, lambda txn: _finish_squash(txn, engine, p, c))


def delete_layer(
    txn: lmdb.Transaction, engine: Engine, lid: int, info: LayerInfo | None = None
) -> int:
    """Delete dead layer ``lid`` with all its records in this transaction; returns how many.
    ``info``: its record, if the caller has just read it in this transaction."""
    removed = engine.records.delete_records(txn, lid)
    engine.layers.delete(txn, lid, info)
    return removed


#: The most records a discard will clean up or squash on the spot; larger layers wait for gc.
TIDY_LIMIT = 512


def tidy_after_discard(txn: lmdb.Transaction, engine: Engine, top: int) -> None:
    """Bounded clean-up after a branch whose top layer was ``top`` is discarded.

    Deletes the layers only that branch used, while each is small, then squashes the first
    live ancestor's only child into it if that child is small: the "fork, merge the
    winner, discard the rest" loop then keeps chains short without waiting for gc. Work is
    bounded by ``TIDY_LIMIT`` records per layer, so a discard stays O(1) in the tree size.
    """
    layers, refs, history = engine.layers, engine.refs, engine.history
    # A layer with children is never a branch's top, and the discarded top has no branch
    # left, so only snapshots can pin the layers looked at here, and merges: a layer merged
    # into two others may be the base of a later merge (gc decides those); merged into
    # one, it never is (that one descends from it and from nothing else of it).
    pinned = {snap.layer for snap in refs.snapshots(txn)}
    lid = top
    # Each layer's record, children and merge referrers are read once, here, and passed on
    # (to drop, delete_layer and the squash check after the loop).
    while True:
        if lid == NO_LAYER or lid in pinned:
            return
        info = layers.find(txn, lid)
        if info is None:
            return
        # two children at most: the squash check below needs to tell one from several
        kids = layers.children(txn, lid, limit=2)
        referrers = history.referrers(txn, lid)
        if kids:
            break
        if len(referrers) > 1 or layers.size_exceeds(txn, lid, TIDY_LIMIT):
            return
        history.drop(txn, lid, parent=info.parent, referrers=referrers)
        delete_layer(txn, engine, lid, info)
        lid = info.parent
    if referrers:
        return
    if len(kids) == 1 and kids[0] in staging.layers(txn, engine):
        return  # a staging layer is written by its owner: never squashed
    if len(kids) == 1 and not layers.size_exceeds(txn, kids[0], TIDY_LIMIT):
        _finish_squash(txn, engine, lid, kids[0])


def collect(engine: Engine) -> GcReport:
    """Run one gc over a store; raises :class:`StoreLocked` if another gc is running."""
    meta, layers, records = engine.meta, engine.layers, engine.records
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
        freed = [0, 0]  # chunks, bytes
        staging.reap(engine)  # the staging layers of dead owners become garbage below
        with meta.read() as txn:
            live = live_layers(txn, engine)
            dead = [info.id for info in layers.all(txn) if info.id not in live]

        def contract(txn: lmdb.Transaction) -> None:
            # a layer dead then is unreachable for good; roots made since are live
            engine.history.contract(txn, live | set(ref_roots(txn, engine)))

        meta.write(contract)
        removed = 0
        for lid in dead:

            def batch(txn: lmdb.Transaction, lid: int = lid) -> int:
                return records.delete_records(txn, lid, BATCH)

            def forget(txn: lmdb.Transaction, lid: int = lid) -> None:
                layers.delete(txn, lid)

            while True:
                n = _write(engine, freed, batch)
                removed += n
                if n < BATCH:
                    break
            meta.write(forget)
        squashed = 0
        while True:
            with meta.read() as txn:
                pair = _squash_candidate(txn, engine)
            if pair is None:
                break
            _squash(engine, *pair, freed)
            squashed += 1
        return GcReport(
            layers_removed=len(dead),
            layers_squashed=squashed,
            records_removed=removed,
            chunks_freed=freed[0],
            bytes_freed=freed[1],
            seconds=time.perf_counter() - started,
        )
    finally:
        engine.chunks.tally = None
        os.close(fd)


__all__ = ["GcReport", "collect", "live_layers"]
