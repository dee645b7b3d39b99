"""What a branch changed since it last shared a state with another branch (``status``).

The base of branch B against branch U is the state the two last shared, by the same rule
the merge uses: their best common ancestor over every fork and merge
(:meth:`branchfs.history.History.merge_bases`; of several, the newest). Without a U,
:func:`status` compares B with the branch whose base with B is the newest in B's history —
the branch it was forked from, or last merged with (when several share that state, the
oldest of them: a branch is forked from an older one). The result is what ``merge B --into
U`` would bring, and like ``diff`` its cost follows the changes: O(branches * states in the
history) to find the base, then the records above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import lmdb

from .diff import Change, diff_views
from .layers import View

if TYPE_CHECKING:
    from .store import Store


@dataclass
class Status:
    """``branch``'s changes since the state it last shared with ``against`` (None when no
    other branch shares any state with it: everything in it is new)."""

    branch: str
    against: str | None
    changes: list[Change] = field(default_factory=list)


def _base_chain(store: Store, txn: lmdb.Transaction, b: View, b_id: int, u: str) -> tuple[int, ...]:
    """The chain of the state branches ``u`` and the branch of view ``b`` last shared."""
    rec = store.refs.branch(txn, u)
    bases = store.engine.history.merge_bases(txn, rec.top, b.chain[0])
    if not bases:
        return ()
    # several (a criss-cross): the newest; merge itself builds a virtual base from all
    return store.layers.chain(txn, bases[-1])


def _age(b: View, base: tuple[int, ...]) -> int:
    """How far below ``b``'s top the base joins its history (smaller is newer)."""
    where = {layer: i for i, layer in enumerate(b.chain)}
    for layer in base:
        if layer in where:
            return where[layer]
    return len(b.chain) + 1


def base_views(
    store: Store, txn: lmdb.Transaction, branch: str, against: str | None
) -> tuple[View, View, str | None]:
    """(base view, branch view, the branch compared with) inside ``txn``."""
    b = store.engine.ref_view(txn, branch)
    b_id = store.refs.branch(txn, branch).id
    if against is not None:
        chain = _base_chain(store, txn, b, b_id, against)
    else:
        best: tuple[int, int, str, tuple[int, ...]] | None = None
        for rec in store.refs.branches(txn):
            if rec.name == branch:
                continue
            shared = _base_chain(store, txn, b, b_id, rec.name)
            if not shared:
                continue
            key = (_age(b, shared), rec.created_ns, rec.name, shared)
            if best is None or key[:3] < best[:3]:
                best = key
        chain = best[3] if best else ()
        against = best[2] if best else None
    view = store.engine.chain_view(txn, chain, False, b.records)
    return view, b, against


def status(store: Store, branch: str, against: str | None = None) -> Status:
    """``branch``'s changes since its base (see the module docstring); BranchNotFound if
    either branch is missing."""
    with store.meta.read() as txn:
        base_view, b, who = base_views(store, txn, branch, against)
        return Status(branch, who, diff_views(base_view, b))
