"""The merge base of a merge: the best common ancestor, or a virtual one for a criss-cross.

The bases are the best common ancestors of the target's state and the source's frozen
state over forks and merges (:meth:`branchfs.history.History.merge_bases`, as
``git merge-base --all``). One base is used as it is. Several (a criss-cross history) are
merged into a *virtual* base as git's default strategy does: a temporary layer over the
first base, into which the others are merged in turn (each against their own bases,
recursively). Where those inner merges conflict the virtual base is not a state anyone
had, so those inodes are *uncertain*: in the real merge any difference between ours and
theirs there is a conflict, never a silent choice. The temporary layers live inside the
merge's transaction and are deleted before it commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lmdb

from ..engine import Engine, RecordCache
from ..gc import delete_layer
from .apply import apply
from .context import Sides, share_decoded
from .namespace import check
from .plan import plan_inodes
from .rules import Rules

#: Deeper criss-crosses than this (bases of bases of …) are merged against no base at all.
MAX_DEPTH = 16


@dataclass
class Base:
    """The chosen base: its chain, the uncertain inodes, and temporary layers to delete."""

    chain: tuple[int, ...]
    uncertain: set[int] = field(default_factory=set)
    temporary: list[int] = field(default_factory=list)


def choose(
    engine: Engine,
    txn: lmdb.Transaction,
    ours_state: int,
    theirs_state: int,
    records: RecordCache,
) -> Base:
    """The base of merging state ``theirs_state`` into ``ours_state`` (layer ids)."""
    bases = engine.history.merge_bases(txn, ours_state, theirs_state)
    return _build(engine, txn, bases, records, 0)


def _build(
    engine: Engine,
    txn: lmdb.Transaction,
    bases: list[int],
    records: RecordCache,
    depth: int,
) -> Base:
    layers, history = engine.layers, engine.history
    if not bases:
        return Base(())
    if len(bases) == 1:
        return Base(layers.chain(txn, bases[0]))
    temp = layers.create(txn, bases[0])
    out = Base((), set(), [temp])
    for other in bases[1:]:
        inner_bases = history.merge_bases(txn, temp, other) if depth < MAX_DEPTH else []
        inner = _build(engine, txn, inner_bases, records, depth + 1)
        out.temporary = inner.temporary + out.temporary
        views = (
            engine.chain_view(txn, inner.chain, False, records),
            engine.layer_view(txn, temp, True, records),
            engine.layer_view(txn, other, False, records),
        )
        share_decoded(*views)
        sides = Sides(
            base=views[0],
            ours=views[1],
            theirs=views[2],
            markers=True,
            names=("base", "base"),
            rules=Rules(),
            uncertain=frozenset(inner.uncertain),
        )
        plan = plan_inodes(sides)
        check(sides, plan)
        apply(sides, plan)
        out.uncertain |= plan.uncertain | inner.uncertain
        history.record(txn, temp, other)
    out.chain = layers.chain(txn, temp)
    return out


def discard(engine: Engine, txn: lmdb.Transaction, base: Base) -> None:
    """Delete the temporary layers of a virtual base (records, chunk references, edges)."""
    for lid in base.temporary:
        for parent in engine.history.merge_parents(txn, lid):
            engine.history.unrecord(txn, lid, parent)
        delete_layer(txn, engine, lid)
