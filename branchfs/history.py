"""The merge history: the graph of tree states over forks *and* merges, and merge bases.

Every layer is a state of some tree; its parents are its parent layer (the state it was
forked or continued from) and its *merge parents*: the frozen states of the sources merged
into it. That is git's commit graph with layers for commits, so the merge base of two trees
is their best common ancestors in it, as ``git merge-base --all`` computes them: the common
ancestors that are no ancestor of another common ancestor.

Stored in the ``merges`` database, in both directions so that gc can re-point edges
without a scan:

- ``b"p" + (layer, merge parent)`` -> empty: ``layer`` had ``merge parent`` merged into it;
- ``b"c" + (merge parent, layer)`` -> empty: the reverse index.

Cost: a merge records one edge (two puts). Finding the bases walks the ancestors of the
target: O(states in its history), never the tree; the source's side is walked only past a
merge parent (a fork merged back is answered from its line of single-parent states, see
:meth:`History.merge_bases`). Ancestor sets of frozen layers are cached per process and
dropped when the ``topology`` token changes (gc and discard rewrite edges).
"""

from __future__ import annotations

from collections.abc import Iterable

import lmdb

from . import keys
from .layers import NO_LAYER, LayerIndex, scan_prefix
from .meta import Meta

#: Steps of a line of single-parent states that :meth:`History.merge_bases` follows from
#: the source before it falls back to intersecting both ancestor sets.
LINE_MAX = 64


def _children_first(ids: list[int], kids: dict[int, list[int]]) -> list[int]:
    """The layers ordered so that every layer comes after all its children (Kahn)."""
    pending = {lid: len(set(kids[lid])) for lid in ids}
    parents: dict[int, list[int]] = {lid: [] for lid in ids}
    for lid in ids:
        for c in set(kids[lid]):
            parents[c].append(lid)
    ready = [lid for lid in ids if pending[lid] == 0]
    out: list[int] = []
    while ready:
        lid = ready.pop()
        out.append(lid)
        for p in parents[lid]:
            pending[p] -= 1
            if pending[p] == 0:
                ready.append(p)
    return out


def _has_uncovered_pair(here: frozenset[int], sets: list[frozenset[int]]) -> bool:
    """Whether two members of ``here`` are in no one of ``sets`` together."""
    masks: set[int] = set()
    for r in here:
        mask = 0
        for i, s in enumerate(sets):
            if r in s:
                mask |= 1 << i
        masks.add(mask)
    if 0 in masks:  # a root that is the state itself: paired with any other, uncovered
        return True
    ms = sorted(masks)
    return any(a & b == 0 for i, a in enumerate(ms) for b in ms[i + 1 :])


class History:
    """Record merge edges and answer ancestry questions over layers and merges."""

    def __init__(self, meta: Meta, layers: LayerIndex) -> None:
        self.meta = meta
        self.layers = layers
        self._token: bytes | None = None
        self._ancestors: dict[int, frozenset[int]] = {}
        self._parents: dict[int, tuple[int, ...]] = {}

    # -- edges ------------------------------------------------------------------------------

    def record(self, txn: lmdb.Transaction, layer: int, parent: int) -> None:
        """Record that the frozen state ``parent`` was merged into (writable) ``layer``."""
        if parent == layer:
            return
        db = self.meta.merges_db
        txn.put(keys.merge_key(layer, parent), b"", db=db)
        txn.put(keys.merge_reverse_key(layer, parent), b"", db=db)
        self._parents.pop(layer, None)
        self._ancestors.pop(layer, None)

    def unrecord(self, txn: lmdb.Transaction, layer: int, parent: int) -> None:
        """Remove the edge ``layer`` -> ``parent`` (both directions)."""
        db = self.meta.merges_db
        txn.delete(keys.merge_key(layer, parent), db=db)
        txn.delete(keys.merge_reverse_key(layer, parent), db=db)
        self._parents.pop(layer, None)
        self._ancestors.pop(layer, None)

    def merge_parents(self, txn: lmdb.Transaction, layer: int) -> list[int]:
        """The states merged into ``layer``, by layer id."""
        prefix = keys.merge_parents_prefix(layer)
        db = self.meta.merges_db
        return [keys.split_merge_key(k)[1] for k, _v in scan_prefix(txn, db, prefix)]

    def referrers(self, txn: lmdb.Transaction, layer: int) -> list[int]:
        """The layers that ``layer`` was merged into."""
        prefix = keys.merge_referrers_prefix(layer)
        db = self.meta.merges_db
        return [keys.split_merge_key(k)[1] for k, _v in scan_prefix(txn, db, prefix)]

    def edges(self, txn: lmdb.Transaction) -> list[tuple[int, int]]:
        """Every (layer, merge parent) edge (fsck and gc)."""
        db = self.meta.merges_db
        return [keys.split_merge_key(k) for k, _v in scan_prefix(txn, db, keys.MERGE_FORWARD)]

    # -- ancestry ---------------------------------------------------------------------------

    def _check_token(self, txn: lmdb.Transaction) -> None:
        raw = txn.get(keys.TOPOLOGY, db=self.meta.meta_db)
        token = None if raw is None else bytes(raw)
        if token != self._token:
            self._token = token
            self._ancestors.clear()
            self._parents.clear()

    def parents(self, txn: lmdb.Transaction, layer: int) -> tuple[int, ...]:
        """Parent layer first (if any), then merge parents."""
        return self._node(txn, layer)[0]

    def _node(self, txn: lmdb.Transaction, layer: int) -> tuple[tuple[int, ...], bool]:
        """(parents, frozen) of ``layer``; a frozen layer's parents are cached."""
        cached = self._parents.get(layer)
        if cached is not None:
            return cached, True
        info = self.layers.info(txn, layer)
        out = ([info.parent] if info.parent != NO_LAYER else []) + self.merge_parents(txn, layer)
        result = tuple(out)
        if info.frozen:
            self._parents[layer] = result
        return result, info.frozen

    def ancestors(self, txn: lmdb.Transaction, layer: int) -> frozenset[int]:
        """``layer`` and every state it descends from, over forks and merges."""
        self._check_token(txn)
        cached = self._ancestors.get(layer)
        if cached is not None:
            return cached
        seen: set[int] = {layer}
        up, frozen = self._node(txn, layer)
        todo = list(up)
        while todo:
            lid = todo.pop()
            if lid in seen:
                continue
            known = self._ancestors.get(lid)
            if known is not None:
                seen |= known
                continue
            # parents cached: the layer is known (the cache goes with any edge change)
            if lid not in self._parents and not self.layers.exists(txn, lid):
                continue
            seen.add(lid)
            todo.extend(self.parents(txn, lid))
        result = frozenset(seen)
        if frozen:
            self._ancestors[layer] = result
        return result

    def merge_bases(self, txn: lmdb.Transaction, a: int, b: int) -> list[int]:
        """The best common ancestors of states ``a`` and ``b`` (``git merge-base --all``),
        sorted by layer id; empty if the two histories never met.

        The common case, a fork merged back (``b``'s own states lead by single parents to
        a state ``a`` has), is answered without ``b``'s ancestor set: if ``b = y0 -> y1 ->
        … -> yk`` where each ``yi`` (i < k) has exactly one parent and is not an ancestor
        of ``a`` while ``yk`` is, then the common ancestors are exactly ``yk``'s ancestors
        (the ``yi`` are not common; ``a``'s ancestor set is closed), so ``yk`` is the only
        best one. Otherwise (a merge parent on the way, no such state within
        :data:`LINE_MAX` steps) the general intersection answers.
        """
        mine = self.ancestors(txn, a)
        y = b
        for _ in range(LINE_MAX):
            if y in mine:
                return [y]
            up = self.parents(txn, y)
            if len(up) != 1:
                break
            if up[0] not in self._parents and not self.layers.exists(txn, up[0]):
                break
            y = up[0]
        return self.best(txn, mine & self.ancestors(txn, b))

    def best(self, txn: lmdb.Transaction, common: Iterable[int]) -> list[int]:
        """The members of an ancestor-closed set that no other member descends from.

        Every ancestor of a member is a member, so a member is redundant exactly when one
        of its direct children is a member too: one pass over the parents suffices.
        """
        members = set(common)
        redundant: set[int] = set()
        for lid in members:
            redundant.update(self.parents(txn, lid))
        return sorted(members - redundant)

    def is_ancestor(self, txn: lmdb.Transaction, a: int, b: int) -> bool:
        """Whether state ``a`` is ``b`` or one of its ancestors."""
        return a in self.ancestors(txn, b)

    # -- what gc keeps, and how it re-points edges -------------------------------------------

    def kept_states(self, txn: lmdb.Transaction, roots: Iterable[int]) -> set[int]:
        """The states a future merge may need as its base, given the live ``roots`` (branch
        tops and snapshot layers): the best common ancestors of every pair of roots, and of
        every pair of those (the bases a virtual base is built from), until nothing new.

        Any future merge base that is an old state is among them: a future tree's old
        ancestors are the ancestors of the roots it descends from, and the best elements
        of a union of ancestor sets are best in one of the pairwise intersections. Every
        other state may be squashed or dropped; its edges are then re-pointed (below).

        One pass over the whole graph (gc is O(store) anyway), not one per pair: R(s), the
        roots that descend from state s, is gathered children first; s is a best common
        ancestor of two roots exactly when both are in R(s) and no child of s has both.
        Repeated with the states found as roots too, until nothing new (usually twice).
        Returns the states found that are not roots themselves.
        """
        ids = [info.id for info in self.layers.all(txn)]
        present = set(ids)
        kids: dict[int, list[int]] = {lid: [] for lid in ids}
        for info in self.layers.all(txn):
            if info.parent in present:
                kids[info.parent].append(info.id)
        for layer, parent in self.edges(txn):
            if layer in present and parent in present:
                kids[parent].append(layer)
        order = _children_first(ids, kids)
        marked = {r for r in roots if r in present}
        found: set[int] = set()
        while True:
            below: dict[int, frozenset[int]] = {}
            new: set[int] = set()
            for lid in order:
                children = kids[lid]
                sets = [below[c] for c in children if c in below]
                here = frozenset().union(*sets) | ({lid} if lid in marked else frozenset())
                below[lid] = here
                if lid in marked or len(sets) < 2 or len(here) < 2:
                    continue
                if _has_uncovered_pair(here, sets):
                    new.add(lid)
            if not new:
                return found
            found |= new
            marked |= new

    def contract(self, txn: lmdb.Transaction, live: set[int]) -> int:
        """Before gc deletes every layer not in ``live``: drop their own edges, and point
        each live layer's edge to a dead state at that state's nearest live ancestors
        instead (so ancestry among live states is kept). Returns the edges rewritten."""
        edges = self.edges(txn)
        rewritten = 0
        for layer, parent in edges:
            if layer not in live:
                self.unrecord(txn, layer, parent)
                rewritten += 1
            elif parent not in live:
                self.unrecord(txn, layer, parent)
                for q in self._nearest_live(txn, parent, live):
                    self._record_unless_redundant(txn, layer, q)
                rewritten += 1
        if rewritten:
            self.layers.bump_topology(txn)
        return rewritten

    def _nearest_live(self, txn: lmdb.Transaction, start: int, live: set[int]) -> set[int]:
        out: set[int] = set()
        seen: set[int] = set()
        todo = [start]
        while todo:
            lid = todo.pop()
            if lid in seen or not self.layers.exists(txn, lid):
                continue
            seen.add(lid)
            if lid in live:
                out.add(lid)
                continue
            info = self.layers.info(txn, lid)
            if info.parent != NO_LAYER:
                todo.append(info.parent)
            todo.extend(self.merge_parents(txn, lid))
        return out

    def _record_unless_redundant(self, txn: lmdb.Transaction, layer: int, parent: int) -> None:
        """Record ``layer`` -> ``parent`` unless ``parent`` already is an ancestor of
        ``layer``'s parent layer (then the edge adds nothing)."""
        if parent == layer:
            return
        info = self.layers.info(txn, layer)
        if info.parent != NO_LAYER and parent in self.ancestors(txn, info.parent):
            return
        self.record(txn, layer, parent)

    def squash(self, txn: lmdb.Transaction, p: int, c: int) -> None:
        """gc moves child ``c``'s state into layer ``p`` (``p``'s own state goes away):
        whoever merged ``p`` now names ``p``'s parents, whoever merged ``c`` names ``p``,
        and ``p`` gets ``c``'s merge parents besides its own."""
        info = self.layers.info(txn, p)
        old_parents = ([info.parent] if info.parent != NO_LAYER else []) + self.merge_parents(
            txn, p
        )
        for x in self.referrers(txn, p):
            self.unrecord(txn, x, p)
            for q in old_parents:
                if q != x:
                    self.record(txn, x, q)
        for q in self.merge_parents(txn, c):
            self.unrecord(txn, c, q)
            if q != p:
                self.record(txn, p, q)
        for x in self.referrers(txn, c):
            self.unrecord(txn, x, c)
            if x != p:
                self.record(txn, x, p)
        self.layers.bump_topology(txn)

    def drop(
        self,
        txn: lmdb.Transaction,
        lid: int,
        *,
        parent: int | None = None,
        referrers: list[int] | None = None,
    ) -> None:
        """Layer ``lid`` is deleted while it has no layer children: its own edges go, and
        whoever merged it names its parents instead.

        ``parent`` (its parent layer id, or ``NO_LAYER``) and ``referrers`` (what
        :meth:`referrers` returns for it) may be passed by a caller that has just read them
        in this transaction, to save a read of the layer record and a scan of the reverse
        index; left out, they are read here.
        """
        if parent is None:
            parent = self.layers.info(txn, lid).parent
        if referrers is None:
            referrers = self.referrers(txn, lid)
        own = self.merge_parents(txn, lid)
        parents = ([parent] if parent != NO_LAYER else []) + own
        for x in referrers:
            self.unrecord(txn, x, lid)
            for q in parents:
                self._record_unless_redundant(txn, x, q)
        for q in own:
            self.unrecord(txn, lid, q)
        if own or referrers:
            self.layers.bump_topology(txn)
