"""3-way merge of one tree into a branch, against their best common ancestor.

The package, one concern per module, in the order a merge runs:

- :mod:`~branchfs.merge.base`: the merge base over the whole merge history (a virtual
  base for a criss-cross);
- :mod:`~branchfs.merge.plan`: per inode, what the merged state is (the :class:`Plan`);
- :mod:`~branchfs.merge.namespace`: names, parents and cycles, checked over the plan;
- :mod:`~branchfs.merge.apply`: the plan written into the target's top layer;
- :mod:`~branchfs.merge.text`: the line-level text merge and conflict markers;
- :mod:`~branchfs.merge.rules`: merge rules per path (``.branchfs-merge``);
- :mod:`~branchfs.merge.context`: the three trees and the options (:class:`Sides`).

Everything runs in one write transaction. A conflict left unresolved raises
:class:`MergeConflict` before anything is written and the transaction is aborted, so the
target is exactly as it was. A merge that succeeds records the source's frozen state as a
merge parent of the target's top layer (:mod:`branchfs.history`), so later merges of any
two trees find their base through it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import lmdb

from ..diff import Change
from ..engine import Engine, RecordCache
from ..errors import BranchFSError, Conflict, MergeConflict
from ..layers import View
from ..records import ROOT_INO
from ..tree import read
from . import base as bases
from .apply import apply
from .context import Sides, share_decoded
from .namespace import check
from .plan import Plan, plan_inodes
from .rules import RULES_FILE, Rules

STRATEGIES = (None, "ours", "theirs")

__all__ = ["STRATEGIES", "MergeResult", "merge"]


@dataclass
class MergeResult:
    """What a merge did: the changes applied to the target, and the conflicts it resolved
    (by ``strategy``: those the same merge without one refuses with, one per path; or with
    conflict markers; empty for a clean merge). ``markers`` are
    the paths of the files it wrote conflict markers into: conflicts left for a person to
    resolve, as ``git merge`` leaves them."""

    changes: list[Change]
    conflicts: list[Conflict] = field(default_factory=list)
    markers: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changes)


_rules_cache: dict[bytes, Rules] = {}


def tree_rules(v: View) -> Rules:
    """The merge rules of tree ``v``: the built-in ones, then its ``.branchfs-merge``."""
    ino = v.dirent(ROOT_INO, RULES_FILE.encode())
    rec = v.inode(ino) if ino is not None else None
    if rec is None or not rec.is_reg:
        return Rules.defaults()
    text = read(v, ino, 0, rec.size) if ino is not None else b""
    cached = _rules_cache.get(text)
    if cached is None:
        cached = Rules.parse(text.decode("utf-8", "replace"))
        if len(_rules_cache) > 64:
            _rules_cache.clear()
        _rules_cache[text] = cached
    return cached


def refused(sides: Sides) -> Plan:
    """The plan of the same merge without a strategy, whose conflicts a forced merge
    reports: a strategy decides how the conflicts are resolved, not which there are, and
    resolving one may avoid or cause another (taking theirs gives a file its name back,
    where ours may have put a directory). Planning writes nothing to the store."""
    plain = replace(sides, strategy=None)
    plan = plan_inodes(plain)
    check(plain, plan)
    return plan


def merge(
    engine: Engine,
    target: str,
    source: str,
    *,
    strategy: str | None = None,
    conflict_markers: bool = False,
) -> MergeResult:
    """Merge ``source`` (a branch, or ``@snapshot``) into branch ``target``.

    All or nothing: on any conflict that ``strategy`` does not resolve, :class:`MergeConflict`
    lists every conflict and ``target`` is left exactly as it was. ``strategy="ours"`` or
    ``"theirs"`` resolves every conflict one way; ``conflict_markers=True`` writes diff3-style
    markers into text files that both sides changed and reports them in
    ``MergeResult.conflicts``. Per-path rules come from the target's ``.branchfs-merge``
    (see :mod:`branchfs.merge.rules`). Raises :class:`BranchNotFound` for an unknown branch
    or snapshot, :class:`BranchFSError` for a bad strategy or a branch merged into itself.
    """
    if strategy not in STRATEGIES:
        raise BranchFSError(f"unknown merge strategy {strategy!r}; use 'ours' or 'theirs'")
    if target == source:
        raise BranchFSError(f"cannot merge branch {target!r} into itself")
    refs, meta = engine.refs, engine.meta

    def op(txn: lmdb.Transaction) -> MergeResult:
        tgt = refs.branch(txn, target)
        if source.startswith("@"):
            src_state = refs.snapshot(txn, source[1:]).layer
        else:
            src_state = refs.freeze_state(txn, source)
        records: RecordCache = {}
        ours = engine.layer_view(txn, tgt.top, True, records)
        theirs = engine.layer_view(txn, src_state, False, records)
        base = bases.choose(engine, txn, tgt.top, src_state, records)
        base_view = engine.chain_view(txn, base.chain, False, records)
        share_decoded(ours, theirs, base_view)
        sides = Sides(
            base=base_view,
            ours=ours,
            theirs=theirs,
            strategy=strategy,
            markers=conflict_markers,
            names=(target, source),
            rules=tree_rules(ours),
            uncertain=frozenset(base.uncertain),
        )
        plan = plan_inodes(sides)
        check(sides, plan)
        if plan.conflicts and strategy is None:
            raise MergeConflict(target, source, plan.conflicts)
        conflicts = plan.conflicts
        if conflicts:
            conflicts = refused(sides).conflicts
        changes = apply(sides, plan)
        bases.discard(engine, txn, base)
        engine.history.record(txn, tgt.top, src_state)
        markers = sorted({c.path for c in plan.resolved})
        return MergeResult(changes, conflicts + plan.resolved, markers)

    return meta.write(op)
