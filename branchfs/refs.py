"""Branches and snapshots by name.

A branch record names the branch's writable top layer; a snapshot record names a frozen
layer. Every operation here is O(1) in the size of the tree: it creates, freezes and
re-points layers, never copies records.
"""

from __future__ import annotations

import re
import stat as st
import time
from dataclasses import dataclass

import lmdb

from . import keys
from .errors import BranchExists, BranchNotFound, InvalidName
from .history import History
from .layers import NO_LAYER, LayerIndex
from .meta import Meta
from .records import ROOT_INO, Inode

NAME_MAX_BYTES = 255
#: Layers of a source's chain :meth:`Refs.loss_if_discarded` looks through for the state a
#: fork was made on before it compares bottom layers (one per freeze of the source since).
HINT_STEPS = 4


@dataclass(frozen=True, slots=True)
class BranchRecord:
    """A branch: its stable id and its current top layer."""

    name: str
    id: int
    top: int
    created_ns: int


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    """A snapshot: the frozen layer it names and the branch it was taken from."""

    name: str
    layer: int
    branch: str
    created_ns: int


#: Characters a name may hold besides letters and digits (any script's).
NAME_PUNCTUATION = "._-+"
NAME_RULE = (
    "use letters, digits, '.', '_', '-' and '+' (at most 255 bytes), "
    "not starting with '.', '-' or '@'"
)


#: An ASCII name of letters, digits and :data:`NAME_PUNCTUATION` (for ASCII, ``[A-Za-z0-9]``
#: is exactly ``str.isalnum``); other names are checked character by character.
_ASCII_NAME = re.compile(r"[A-Za-z0-9._+\-]+")

#: Names found valid, with their keys: a name is checked on every call of the API (a stat,
#: a fork …), and the check is a pure function of the string. Bounded: cleared when full.
_VALID: dict[str, bytes] = {}
_VALID_MAX = 4096


def check_ref_name(name: object, what: str = "branch") -> bytes:
    """Validate a branch or snapshot name and return its key; :class:`InvalidName` if bad.

    A name is 1 to 255 bytes (UTF-8) of letters and digits (``str.isalnum``: any script) and
    ``._-+``, and does not start with ``.``, ``-`` or ``@`` — so that it is a file name in
    ``MOUNT/.branchfs/branches/``, never an option, and never confused with ``@SNAPSHOT``,
    the notation for snapshots on the command line. Every message says the rule.
    """
    if type(name) is str:
        key = _VALID.get(name)
        if key is not None:
            return key
    key = _check_ref_name(name, what)
    if len(_VALID) >= _VALID_MAX:
        _VALID.clear()
    _VALID[name] = key  # type: ignore[index]  # a str: anything else was refused
    return key


def _check_ref_name(name: object, what: str) -> bytes:
    if not isinstance(name, str):
        raise InvalidName(f"a {what} name must be a str, not {type(name).__name__}")
    if not name:
        raise InvalidName(f"a {what} name cannot be empty; {NAME_RULE}")
    if name[0] in ".-@":
        raise InvalidName(f"a {what} name cannot start with {name[0]!r}: {name!r}; {NAME_RULE}")
    if _ASCII_NAME.fullmatch(name) is not None:  # the common case: no per-character loop
        bad = []
    else:
        bad = sorted({c for c in name if not (c.isalnum() or c in NAME_PUNCTUATION)})
    if bad:
        shown = "".join(bad[:5])
        raise InvalidName(f"a {what} name cannot contain {shown!r}: {name!r}; {NAME_RULE}")
    key = keys.ref_key(name)
    if len(key) > NAME_MAX_BYTES:
        raise InvalidName(
            f"a {what} name is at most {NAME_MAX_BYTES} bytes; {name[:40]!r}… is longer"
        )
    return key


class Refs:
    """Create, look up and re-point branches and snapshots."""

    def __init__(self, meta: Meta, layers: LayerIndex, history: History) -> None:
        self.meta = meta
        self.layers = layers
        self.history = history

    # -- branches ---------------------------------------------------------------------------

    def branch(self, txn: lmdb.Transaction, name: str) -> BranchRecord:
        """The record of branch ``name``; :class:`BranchNotFound` if there is none."""
        bid, top, created = keys.decode_branch(self._branch_raw(txn, name)[1])
        return BranchRecord(name, bid, top, created)

    def _branch_raw(self, txn: lmdb.Transaction, name: str) -> tuple[bytes, keys.Raw]:
        """Branch ``name``'s key and encoded record; :class:`BranchNotFound` if there is none."""
        key = check_ref_name(name)
        raw = txn.get(key, db=self.meta.branches_db)
        if raw is None:
            raise BranchNotFound(
                f"no branch named {name!r}; list them with store.branches() or `branchfs branches`"
            )
        return key, raw

    def has_branch(self, txn: lmdb.Transaction, name: str) -> bool:
        """Whether branch ``name`` exists."""
        return txn.get(check_ref_name(name), db=self.meta.branches_db) is not None

    def branches(self, txn: lmdb.Transaction) -> list[BranchRecord]:
        """Every branch, sorted by name."""
        out = []
        for key, raw in txn.cursor(db=self.meta.branches_db):
            bid, top, created = keys.decode_branch(raw)
            out.append(BranchRecord(keys.ref_name(key), bid, top, created))
        return out

    def _put_branch(
        self, txn: lmdb.Transaction, rec: BranchRecord, source: tuple[str, int] | None = None
    ) -> None:
        txn.put(
            check_ref_name(rec.name),
            keys.encode_branch(rec.id, rec.top, rec.created_ns, source),
            db=self.meta.branches_db,
        )

    def _require_free(self, txn: lmdb.Transaction, name: str) -> None:
        if self.has_branch(txn, name):
            raise BranchExists(f"a branch named {name!r} already exists; pick another name")

    def create_branch(self, txn: lmdb.Transaction, name: str, uid: int, gid: int) -> BranchRecord:
        """A new branch holding an empty tree (a root directory owned by uid:gid)."""
        self._require_free(txn, name)
        top = self.layers.create(txn, NO_LAYER)
        t = time.time_ns()
        root = Inode(st.S_IFDIR | 0o755, uid, gid, 0, t, t, t, cut=0)
        txn.put(
            keys.inode_key(top, ROOT_INO), keys.encode_inode(root, ROOT_INO), db=self.meta.inodes_db
        )
        rec = BranchRecord(name, self.meta.next_id(txn, keys.NEXT_BRANCH), top, t)
        self._put_branch(txn, rec)
        return rec

    def freeze_state(self, txn: lmdb.Transaction, name: str) -> int:
        """Freeze branch ``name``'s current tree and return the layer that now holds it.

        If the top layer has changes (or merges recorded: it is a state of its own in the
        merge history) it is frozen and the branch gets a fresh empty top over it; if it is
        empty, its parent already is the current state.
        """
        return self._freeze(txn, name, 0)[0]

    def _freeze(self, txn: lmdb.Transaction, name: str, spare: int) -> tuple[int, int, int]:
        """:meth:`freeze_state`, allocating ``spare`` more layer ids with the one a freeze
        needs (one counter update for both): (the state's layer, the first spare id, or 0
        when nothing was frozen, the branch's id).

        Works on the records' fields, not on :class:`BranchRecord` / ``LayerInfo`` objects,
        and encodes the branch key once: every fork of a changed branch runs it.
        """
        key, raw = self._branch_raw(txn, name)
        bid, top, created = keys.decode_branch(raw)
        layers = self.layers
        parent, frozen = layers.fields(txn, top)
        if (
            parent != NO_LAYER
            and layers.is_empty(txn, top)
            and not self.history.merge_parents(txn, top)
        ):
            return parent, 0, bid
        if not frozen:
            layers.mark_frozen(txn, top, parent)
        first = self.meta.next_id(txn, keys.NEXT_LAYER, 1 + spare)
        new_top = layers.create(txn, top, first)
        txn.put(key, keys.encode_branch(bid, new_top, created), db=self.meta.branches_db)
        return top, (first + 1 if spare else 0), bid

    def fork(self, txn: lmdb.Transaction, source: str, new: str) -> BranchRecord:
        """Make branch ``new`` an independent copy of ``source`` as it is now: O(1)."""
        self._require_free(txn, new)  # first: BranchExists before BranchNotFound
        state, lid, source_id = self._freeze(txn, source, 1)
        return self._new_branch(txn, new, state, lid, (source, source_id))

    def branch_from_layer(self, txn: lmdb.Transaction, name: str, layer: int) -> BranchRecord:
        """A new branch whose tree is frozen layer ``layer``."""
        self._require_free(txn, name)
        return self._new_branch(txn, name, layer)

    def _new_branch(
        self,
        txn: lmdb.Transaction,
        name: str,
        layer: int,
        lid: int = 0,
        source: tuple[str, int] | None = None,
    ) -> BranchRecord:
        top = self.layers.create(txn, layer, lid)
        rec = BranchRecord(name, self.meta.next_id(txn, keys.NEXT_BRANCH), top, time.time_ns())
        self._put_branch(txn, rec, source)
        return rec

    def reset(self, txn: lmdb.Transaction, name: str, layer: int) -> BranchRecord:
        """Point branch ``name`` at frozen layer ``layer`` (under a fresh top)."""
        rec = self.branch(txn, name)
        top = self.layers.create(txn, layer)
        new = BranchRecord(name, rec.id, top, rec.created_ns)
        self._put_branch(txn, new)
        return new

    def replace_top(self, txn: lmdb.Transaction, name: str, top: int) -> BranchRecord:
        """Make layer ``top`` branch ``name``'s top (publishing a staging layer, see
        :mod:`branchfs.staging`; the caller checked that this loses nothing)."""
        rec = self.branch(txn, name)
        new = BranchRecord(name, rec.id, top, rec.created_ns)
        self._put_branch(txn, new)
        return new

    def loss_if_discarded(self, txn: lmdb.Transaction, name: str) -> str | None:
        """Why discarding branch ``name`` would lose a tree nothing else came from (words
        following "branch NAME"), or None.

        It would if it is the store's last branch, or a root branch: one that no older
        branch or snapshot shares a layer with (made by ``create_branch``, not forked; a
        fork of a branch since discarded becomes one). Layers form a forest whose chains
        end at a tree's root layer, so "shares a layer" is "has the same bottom layer";
        branches are ordered by id (given in creation order), snapshots by creation time.
        O(1) for a fork whose source (named in its record by :meth:`fork`) is still there,
        older and sharing its bottom layer: two record gets and a layer record or two
        (:meth:`_shares_with_source`); otherwise O(branches + snapshots) chain walks
        (cached by the layer index). A record rewritten since its fork (a freeze, reset or
        squash puts it without the hint) takes the scan.
        """
        own, raw = self._branch_raw(txn, name)
        bid, top, created = keys.decode_branch(raw)
        # The common case in O(1): the branch it was forked from is still there, older, and
        # still holds the layer the fork was made on (the hint is re-verified: a source
        # discarded, re-created or reset elsewhere falls through to the checks below). A
        # source still there means this is not the last branch either.
        hint = keys.decode_branch_source(raw)
        if hint is not None and self._shares_with_source(txn, bid, top, *hint):
            return None
        rec = BranchRecord(name, bid, top, created)
        if all(key == own for key in txn.cursor(db=self.meta.branches_db).iternext(values=False)):
            return "is the store's last branch: discarding it loses every file in it for good"
        bottom = self.layers.chain(txn, rec.top)[-1]
        others = [b for b in self.branches(txn) if b.name != name]
        for b in others:
            if b.id < rec.id and self.layers.chain(txn, b.top)[-1] == bottom:
                return None
        for s in self.snapshots(txn):
            if s.created_ns <= rec.created_ns and self.layers.chain(txn, s.layer)[-1] == bottom:
                return None
        return (
            "is a root branch (made by init, import or create_branch, not forked from another "
            "branch or snapshot): discarding it loses its files for good (its forks keep "
            "only their own copies)"
        )

    def _shares_with_source(
        self, txn: lmdb.Transaction, bid: int, top: int, src_name: str, src_id: int
    ) -> bool:
        """Whether branch ``src_name`` is still the branch that branch ``bid`` (top layer
        ``top``) was forked from (same id, older) and still shares a layer with it, hence its
        bottom layer (layers form a forest). The fork's top was made over the source's state
        at the fork, and the source's chain still holds that state unless it was reset or
        squashed since: it is looked for a few layers down from the source's top; not found
        there, the two bottom layers are compared."""
        raw = txn.get(check_ref_name(src_name), db=self.meta.branches_db)
        if raw is None:
            return False
        sid, stop, _created = keys.decode_branch(raw)
        if not sid == src_id < bid:
            return False
        parent = self.layers.parent
        state = parent(txn, top)
        lid = stop
        for _step in range(HINT_STEPS):
            if lid == state:
                return state != NO_LAYER
            if lid == NO_LAYER:
                break
            lid = parent(txn, lid)
        return self.layers.chain(txn, stop)[-1] == self.layers.chain(txn, top)[-1]

    def discard(self, txn: lmdb.Transaction, name: str) -> BranchRecord:
        """Remove branch ``name``; its layers become garbage for gc."""
        rec = self.branch(txn, name)
        txn.delete(check_ref_name(name), db=self.meta.branches_db)
        self.meta.frees = True
        return rec

    # -- snapshots --------------------------------------------------------------------------

    def snapshot(self, txn: lmdb.Transaction, name: str) -> SnapshotRecord:
        """The record of snapshot ``name``; :class:`BranchNotFound` if there is none."""
        raw = txn.get(check_ref_name(name, "snapshot"), db=self.meta.snapshots_db)
        if raw is None:
            raise BranchNotFound(
                f"no snapshot named {name!r}; list them with store.snapshots() "
                "or `branchfs snapshots`"
            )
        layer, branch, created = keys.decode_snapshot(raw)
        return SnapshotRecord(name, layer, branch, created)

    def snapshots(self, txn: lmdb.Transaction) -> list[SnapshotRecord]:
        """Every snapshot, sorted by name."""
        out = []
        for key, raw in txn.cursor(db=self.meta.snapshots_db):
            layer, branch, created = keys.decode_snapshot(raw)
            out.append(SnapshotRecord(keys.ref_name(key), layer, branch, created))
        return out

    def take_snapshot(self, txn: lmdb.Transaction, branch: str, name: str) -> SnapshotRecord:
        """Freeze ``branch``'s tree under the snapshot name ``name``: O(1)."""
        key = check_ref_name(name, "snapshot")
        if txn.get(key, db=self.meta.snapshots_db) is not None:
            raise BranchExists(f"a snapshot named {name!r} already exists; pick another name")
        layer = self.freeze_state(txn, branch)
        rec = SnapshotRecord(name, layer, branch, time.time_ns())
        txn.put(key, keys.encode_snapshot(layer, branch, rec.created_ns), db=self.meta.snapshots_db)
        return rec

    def delete_snapshot(self, txn: lmdb.Transaction, name: str) -> None:
        """Remove snapshot ``name``; its layers become garbage for gc if nothing else uses them."""
        self.snapshot(txn, name)
        txn.delete(check_ref_name(name, "snapshot"), db=self.meta.snapshots_db)
        self.meta.frees = True

    # -- squashing ---------------------------------------------------------------------------

    def repoint(self, txn: lmdb.Transaction, old: int, new: int) -> None:
        """Make every branch top and snapshot naming layer ``old`` name ``new``.

        gc's squash uses it once layer ``old``'s records live in ``new``.
        """
        for b in self.branches(txn):
            if b.top == old:
                txn.put(
                    keys.ref_key(b.name),
                    keys.encode_branch(b.id, new, b.created_ns),
                    db=self.meta.branches_db,
                )
        for snap in self.snapshots(txn):
            if snap.layer == old:
                txn.put(
                    keys.ref_key(snap.name),
                    keys.encode_snapshot(new, snap.branch, snap.created_ns),
                    db=self.meta.snapshots_db,
                )
