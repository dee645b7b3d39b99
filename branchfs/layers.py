"""Copy-on-write layers: the tree state of every branch and snapshot.

A layer holds records keyed by (layer, …): inode records, directory entries and extents
(chunk index -> chunk key). A branch's tree is its *chain*: its writable top layer, then
the frozen layers beneath it down to the root. A lookup takes the first record found walking
the chain from the top; an empty value is a tombstone (deleted in this layer).

:class:`View` binds one transaction to one chain and offers the record primitives the tree
operations are built from. Writes go to the top layer only; a frozen layer never changes
(except when gc squashes it into its only child, which keeps every tree's content).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import lmdb

from . import keys
from .chunks import LmdbChunkStore
from .errors import StoreCorrupt
from .keys import TOMBSTONE
from .meta import Database, Meta
from .records import ROOT_INO, Inode

__all__ = ["NO_LAYER", "TOMBSTONE", "BoundTree", "LayerIndex", "LayerInfo", "View", "scan_prefix"]

T = TypeVar("T")
#: A chain ends at layer id 0 ("no parent").
NO_LAYER = 0


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """A layer's place in the layer graph."""

    id: int
    parent: int
    frozen: bool


class LayerIndex:
    """The ``layers`` database: create, freeze and walk layers; chains are cached."""

    def __init__(self, meta: Meta) -> None:
        self.meta = meta
        self._token: bytes | None = None
        self._chains: dict[int, tuple[int, ...]] = {}

    @property
    def db(self) -> Database:
        """The ``layers`` database (looked up each time: a compaction re-opens it)."""
        return self.meta.layers_db

    def info(self, txn: lmdb.Transaction, lid: int) -> LayerInfo:
        """The record of layer ``lid``; :class:`StoreCorrupt` if it is missing."""
        raw = txn.get(keys.layer_key(lid), db=self.db)
        if raw is None:
            raise StoreCorrupt(f"layer {lid} is referenced but missing; run fsck")
        parent, frozen = keys.decode_layer(raw)
        return LayerInfo(lid, parent, frozen)

    def parent(self, txn: lmdb.Transaction, lid: int) -> int:
        """The parent of layer ``lid`` (``NO_LAYER`` for a root layer): :meth:`info`'s
        ``parent`` without building the record; :class:`StoreCorrupt` if it is missing."""
        raw = txn.get(keys.layer_key(lid), db=self.meta.layers_db)
        if raw is None:
            raise StoreCorrupt(f"layer {lid} is referenced but missing; run fsck")
        return keys.decode_layer(raw)[0]

    def fields(self, txn: lmdb.Transaction, lid: int) -> tuple[int, bool]:
        """(parent, frozen) of layer ``lid``: :meth:`info` without building the record;
        :class:`StoreCorrupt` if it is missing."""
        raw = txn.get(keys.layer_key(lid), db=self.meta.layers_db)
        if raw is None:
            raise StoreCorrupt(f"layer {lid} is referenced but missing; run fsck")
        return keys.decode_layer(raw)

    def exists(self, txn: lmdb.Transaction, lid: int) -> bool:
        """Whether layer ``lid`` has a record."""
        return txn.get(keys.layer_key(lid), db=self.db) is not None

    def find(self, txn: lmdb.Transaction, lid: int) -> LayerInfo | None:
        """The record of layer ``lid``, or None if it has none: :meth:`exists` and
        :meth:`info` in one read."""
        raw = txn.get(keys.layer_key(lid), db=self.db)
        if raw is None:
            return None
        parent, frozen = keys.decode_layer(raw)
        return LayerInfo(lid, parent, frozen)

    def create(self, txn: lmdb.Transaction, parent: int, lid: int = 0) -> int:
        """A new, empty, writable layer over ``parent`` (``NO_LAYER`` for a root layer); its
        id is ``lid`` if given (allocated from ``next_layer`` by the caller), else a new one."""
        if not lid:
            lid = self.meta.next_id(txn, keys.NEXT_LAYER)
        txn.put(keys.layer_key(lid), keys.encode_layer(parent, False), db=self.db)
        if parent != NO_LAYER:
            txn.put(keys.child_key(parent, lid), b"", db=self.meta.children_db)
        return lid

    def children(self, txn: lmdb.Transaction, lid: int, limit: int | None = None) -> list[int]:
        """The layers whose parent is ``lid`` (live or not yet collected), at most ``limit``."""
        out: list[int] = []
        for key, _value in scan_prefix(txn, self.meta.children_db, keys.layer_key(lid)):
            if len(out) == limit:
                break
            out.append(keys.split_child_key(key)[1])
        return out

    def child_links(self, txn: lmdb.Transaction) -> Iterator[tuple[int, int]]:
        """Every (parent, child) pair of the ``children`` index (fsck compares it)."""
        for key in txn.cursor(db=self.meta.children_db).iternext(keys=True, values=False):
            yield keys.split_child_key(key)

    def size_exceeds(self, txn: lmdb.Transaction, lid: int, limit: int) -> bool:
        """Whether layer ``lid`` holds more than ``limit`` records (counting stops there)."""
        prefix = keys.layer_key(lid)
        count = 0
        for db in (self.meta.inodes_db, self.meta.dirents_db, self.meta.extents_db):
            for _record in scan_prefix(txn, db, prefix):
                count += 1
                if count > limit:
                    return True
        return False

    def freeze(self, txn: lmdb.Transaction, lid: int, info: LayerInfo | None = None) -> None:
        """Make ``lid`` read-only for good (it is about to be shared); ``info``: its record,
        if the caller has just read it."""
        if info is None:
            info = self.info(txn, lid)
        if not info.frozen:
            self.mark_frozen(txn, lid, info.parent)

    def mark_frozen(self, txn: lmdb.Transaction, lid: int, parent: int) -> None:
        """Write layer ``lid``'s record (over ``parent``, as read by the caller) as frozen."""
        txn.put(keys.layer_key(lid), keys.encode_layer(parent, True), db=self.meta.layers_db)

    def set_parent(self, txn: lmdb.Transaction, lid: int, parent: int, frozen: bool) -> None:
        """Rewrite a layer's parent (squashing only); invalidates cached chains."""
        old = self.info(txn, lid).parent
        if old != NO_LAYER:
            txn.delete(keys.child_key(old, lid), db=self.meta.children_db)
        txn.put(keys.layer_key(lid), keys.encode_layer(parent, frozen), db=self.db)
        if parent != NO_LAYER:
            txn.put(keys.child_key(parent, lid), b"", db=self.meta.children_db)
        self.bump_topology(txn)

    def delete(self, txn: lmdb.Transaction, lid: int, info: LayerInfo | None = None) -> None:
        """Remove a layer's record (once nothing refers to it and its records are gone);
        ``info``: its record, if the caller has just read it in this transaction.

        No live chain contains a dead layer and ids are never reused, so cached chains
        stay valid: the topology token is left alone.
        """
        key = keys.layer_key(lid)
        if info is None:
            info = self.find(txn, lid)
        if info is not None and info.parent != NO_LAYER:
            txn.delete(keys.child_key(info.parent, lid), db=self.meta.children_db)
        txn.delete(key, db=self.db)
        self._chains.pop(lid, None)

    def bump_topology(self, txn: lmdb.Transaction) -> None:
        """Record that existing chains changed, so every process drops its cached chains."""
        txn.put(keys.TOPOLOGY, os.urandom(8), db=self.meta.meta_db)
        self._token = None
        self._chains.clear()

    def all(self, txn: lmdb.Transaction) -> Iterator[LayerInfo]:
        """Every layer in the store."""
        for key, raw in txn.cursor(db=self.db):
            parent, frozen = keys.decode_layer(raw)
            yield LayerInfo(keys.layer_of(key), parent, frozen)

    def chain(self, txn: lmdb.Transaction, top: int) -> tuple[int, ...]:
        """Layer ids from ``top`` down to the root layer."""
        raw = txn.get(keys.TOPOLOGY, None, self.meta.meta_db)
        token = None if raw is None else bytes(raw)  # never keep a view into the map
        if token != self._token:
            self._chains.clear()
            # a copy: with buffers=True the token is a view into a map that may go away
            self._token = None if token is None else bytes(token)
        cached = self._chains.get(top)
        if cached is not None:
            return cached
        out: list[int] = []
        lid = top
        while lid != NO_LAYER:
            out.append(lid)
            if len(out) > 100_000:
                raise StoreCorrupt(f"the layer chain of {top} loops; run fsck")
            lid = self.info(txn, lid).parent
        chain = tuple(out)
        self._chains[top] = chain
        return chain

    def is_empty(self, txn: lmdb.Transaction, lid: int) -> bool:
        """True if layer ``lid`` holds no record at all (every change writes an inode)."""
        prefix = keys.layer_key(lid)
        for db in (self.meta.inodes_db, self.meta.dirents_db, self.meta.extents_db):
            cur = txn.cursor(db=db)
            if cur.set_range(prefix) and bytes(cur.key()[:8]) == prefix:
                return False
        return True


def scan_prefix(
    txn: lmdb.Transaction, db: Database, prefix: bytes
) -> Iterator[tuple[bytes | memoryview, bytes | memoryview]]:
    """(key, value) of every record of ``db`` whose key starts with ``prefix``, in key order.

    Read-only: collect what you need before changing the database in the same transaction.
    """
    cur = txn.cursor(db=db)
    if not cur.set_range(prefix):
        return
    n = len(prefix)
    for key, value in cur:
        if key[:n] != prefix:
            return
        yield key, value


class View:
    """One transaction's view of one tree: record lookups through the chain, writes to the top.

    ``top`` is ``None`` for a read-only tree (a snapshot); writers check :attr:`writable`.
    """

    __slots__ = (
        "chain",
        "chunks",
        "dirents",
        "extents",
        "fields",
        "inodes",
        "meta",
        "records",
        "top",
        "txn",
    )

    def __init__(
        self,
        meta: Meta,
        chunks: LmdbChunkStore,
        txn: lmdb.Transaction,
        chain: tuple[int, ...],
        writable: bool,
        records: dict[tuple[int, int], bytes | memoryview | None] | None = None,
    ) -> None:
        #: Raw inode records read in this transaction, by (layer, ino). Views of one
        #: transaction may share it (a merge walks three chains that share most layers).
        self.records = {} if records is None else records
        #: Checked and unpacked inode records, by (layer, ino), with the raw record they
        #: came from (a record is checked once a transaction, not once a read; a new raw
        #: record under the key, once put, is checked again).
        self.fields: dict[tuple[int, int], tuple[bytes | memoryview, list[Any]]] = {}
        self.meta = meta
        self.chunks = chunks
        self.txn = txn
        self.chain = chain
        self.top = chain[0] if writable else None
        self.inodes = meta.inodes_db
        self.dirents = meta.dirents_db
        self.extents = meta.extents_db

    @property
    def writable(self) -> bool:
        """Whether this view may change its tree."""
        return self.top is not None

    # -- inodes ---------------------------------------------------------------------------

    def new_ino(self) -> int:
        """Allocate a store-wide inode number for a node about to be created."""
        return self.meta.next_id(self.txn, keys.NEXT_INO)

    def raw_inode(self, layer: int, ino: int) -> bytes | memoryview | None:
        """The record of ``ino`` stored in ``layer`` itself (b"" = tombstone, None = none)."""
        key = (layer, ino)
        records = self.records
        if key in records:
            return records[key]
        raw = self.txn.get(keys.inode_key(layer, ino), None, self.inodes)
        records[key] = raw
        return raw

    def own_cut(self, layer: int, ino: int) -> int | None:
        """The cut that ``layer``'s own record of ``ino`` carries (None: no record or no cut)."""
        raw = self.raw_inode(layer, ino)
        return keys.decode_inode(raw, ino).cut if raw else None

    def layer_inodes(self, layer: int) -> list[int]:
        """The inode numbers that have a record (or a tombstone) in ``layer``."""
        return [
            keys.split_inode_key(key)[1]
            for key, _v in scan_prefix(self.txn, self.inodes, keys.layer_key(layer))
        ]

    def linkless_inodes(self) -> list[int]:
        """Inodes whose record in the top layer has no links (orphans), the root excepted."""
        out = []
        for key, raw in scan_prefix(self.txn, self.inodes, keys.layer_key(self.chain[0])):
            if raw == TOMBSTONE:
                continue
            ino = keys.split_inode_key(key)[1]
            if ino != ROOT_INO and not keys.decode_inode(raw, ino).links:
                out.append(ino)
        return out

    def _fields(self, ino: int) -> tuple[list[Any] | None, int]:
        """The checked fields of the visible record of ``ino`` (:func:`keys.inode_fields`,
        never handed out) and the chain position it came from (None, -1: none)."""
        records, fields = self.records, self.fields
        for pos, layer in enumerate(self.chain):
            key = (layer, ino)
            if key in records:
                raw = records[key]
            else:
                raw = records[key] = self.txn.get(keys.inode_key(layer, ino), None, self.inodes)
            if raw is not None:
                if raw == TOMBSTONE:
                    return None, pos
                hit = fields.get(key)
                if hit is None or hit[0] is not raw:  # `is`: the cache holds its raw alive
                    hit = fields[key] = (raw, keys.inode_fields(raw, ino))
                return hit[1], pos
        return None, -1

    def inode_at(self, ino: int) -> tuple[Inode | None, int]:
        """The visible record of ``ino`` and the chain position it came from (-1: none)."""
        v, pos = self._fields(ino)
        return (None if v is None else keys.inode_of(v)), pos

    def mode(self, ino: int) -> int | None:
        """The mode (type and permission bits) of ``ino``, or None if it does not exist in
        this tree: a path walk's question, answered without building an :class:`Inode`."""
        v = self._fields(ino)[0]
        return None if v is None else int(v[0])

    def inode(self, ino: int) -> Inode | None:
        """The visible record of ``ino``, or None if it does not exist in this tree."""
        return self.inode_at(ino)[0]

    def inode_for_write(self, ino: int) -> Inode | None:
        """A copy of the record of ``ino`` ready to be edited and put into the top layer.

        A record copied up from a lower layer loses that layer's cut: the cut describes
        truncations made *in* a layer and hides chunks only of layers beneath it.
        """
        v, pos = self._fields(ino)  # inode_at, inlined: every create and unlink's parent
        if v is None:
            return None
        rec = keys.inode_of(v)
        if pos > 0:
            rec.cut = None
        return rec

    def put_inode(self, ino: int, rec: Inode) -> None:
        """Write ``rec`` as the record of ``ino`` in the top layer."""
        top = self.top
        assert top is not None
        raw, fields = keys.encode_inode_fields(rec, ino)
        self.txn.put(keys.inode_key(top, ino), raw, True, True, False, self.inodes)
        self.records[(top, ino)] = raw
        # a read of it later in this transaction (the parent a create or unlink touched,
        # read again for the kernel's reply) neither checks nor unpacks it again
        if fields is not None:
            self.fields[(top, ino)] = (raw, fields)

    def delete_inode(self, ino: int, extents: bool = True) -> None:
        """Make ``ino`` not exist in this tree (tombstone only if a lower layer has it).

        ``extents``: whether the top layer may hold extents of ``ino`` to drop; False
        spares the extent scan when its record says there are none
        (:func:`branchfs.tree.has_extents`: a small file, a symlink, a directory)."""
        top = self.top
        assert top is not None
        if extents:
            self.drop_extents(ino, 0)
        below = False
        for layer in self.chain[1:]:
            raw = self.raw_inode(layer, ino)
            if raw is not None:
                below = raw != TOMBSTONE
                break
        if below:
            self.txn.put(keys.inode_key(top, ino), TOMBSTONE, db=self.inodes)
            self.records[(top, ino)] = TOMBSTONE
        else:
            self.txn.delete(keys.inode_key(top, ino), db=self.inodes)
            self.records[(top, ino)] = None

    # -- directory entries ------------------------------------------------------------------

    def dirent(self, parent: int, name: bytes) -> int | None:
        """The inode that ``name`` in directory ``parent`` names, or None."""
        txn, db = self.txn, self.dirents
        for layer in self.chain:
            raw = txn.get(keys.dirent_key(layer, parent, name), None, db)
            if raw is not None:
                return None if raw == TOMBSTONE else keys.decode_dirent(raw, parent, name)
        return None

    def put_dirent(self, parent: int, name: bytes, ino: int) -> None:
        """Make ``name`` in ``parent`` point at ``ino`` (top layer)."""
        top = self.top
        assert top is not None
        self.txn.put(
            keys.dirent_key(top, parent, name),
            keys.encode_dirent(ino, parent, name),
            True,
            True,
            False,
            self.dirents,
        )

    def delete_dirent(self, parent: int, name: bytes) -> None:
        """Remove ``name`` from ``parent`` (tombstone only if a lower layer has it)."""
        txn, db = self.txn, self.dirents
        top = self.top
        assert top is not None
        below = False
        for layer in self.chain[1:]:
            raw = txn.get(keys.dirent_key(layer, parent, name), db=db)
            if raw is not None:
                below = raw != TOMBSTONE
                break
        key = keys.dirent_key(top, parent, name)
        if below:
            txn.put(key, TOMBSTONE, db=db)
        else:
            txn.delete(key, db=db)
        self.meta.frees = True

    def list_dir(self, parent: int) -> list[tuple[bytes, int]]:
        """The entries of directory ``parent``, sorted by name."""
        if len(self.chain) == 1:
            return [(n, i) for n, i in self._layer_entries(self.chain[0], parent) if i]
        merged: dict[bytes, int] = {}
        for layer in reversed(self.chain):
            for name, ino in self._layer_entries(layer, parent):
                merged[name] = ino
        return sorted((n, i) for n, i in merged.items() if i)

    def has_entries(self, parent: int) -> bool:
        """Whether directory ``parent`` has at least one entry (cheaper than listing)."""
        if len(self.chain) == 1:
            return any(i for _n, i in self._layer_entries(self.chain[0], parent))
        return bool(self.list_dir(parent))

    def _layer_entries(self, layer: int, parent: int) -> Iterator[tuple[bytes, int]]:
        """Entries of ``parent`` recorded in one layer; ino 0 marks a tombstone."""
        for key, raw in scan_prefix(self.txn, self.dirents, keys.dirent_prefix(layer, parent)):
            name = keys.dirent_name(key)
            yield name, keys.decode_dirent(raw, parent, name)

    # -- extents ----------------------------------------------------------------------------

    def cuts(self, ino: int) -> list[tuple[int, int | None]]:
        """(layer, cut) for each layer that may hold extents of ``ino``, top first.

        Walking stops below a layer whose cut is 0 (created or emptied there) or that
        deleted the inode, since nothing beneath can be visible.
        """
        out: list[tuple[int, int | None]] = []
        for layer in self.chain:
            raw = self.raw_inode(layer, ino)
            if raw is None:
                out.append((layer, None))
                continue
            if raw == TOMBSTONE:
                break
            cut = keys.decode_inode(raw, ino).cut
            out.append((layer, cut))
            if cut == 0:
                break
        return out

    def extent(self, cuts: list[tuple[int, int | None]], ino: int, idx: int) -> bytes | None:
        """The chunk key holding chunk ``idx`` of ``ino``, or None for a hole."""
        txn, db = self.txn, self.extents
        for layer, cut in cuts:
            raw = txn.get(keys.extent_key(layer, ino, idx), db=db)
            if raw is not None:
                return keys.decode_extent(raw, ino, idx)
            if cut is not None and idx >= cut:
                return None
        return None

    def put_extent(self, ino: int, idx: int, chunk_key: bytes) -> None:
        """Point chunk ``idx`` of ``ino`` at ``chunk_key`` in the top layer.

        The caller has taken the reference on ``chunk_key``; the reference of the extent
        it replaces (in the top layer) is dropped here.
        """
        top = self.top
        assert top is not None
        key = keys.extent_key(top, ino, idx)
        old = self.txn.get(key, db=self.extents)
        self.txn.put(key, keys.encode_extent(chunk_key, ino, idx), db=self.extents)
        if old is not None:
            self.chunks.decref(self.txn, keys.decode_extent(old, ino, idx))

    def drop_extents(self, ino: int, first_idx: int) -> None:
        """Delete the top layer's extents of ``ino`` from chunk ``first_idx`` on."""
        top = self.top
        assert top is not None
        prefix = keys.extent_prefix(top, ino)
        cur = self.txn.cursor(db=self.extents)
        if not cur.set_range(keys.extent_key(top, ino, first_idx)):
            return
        doomed: list[tuple[bytes, bytes]] = []
        for key, value in cur:
            if key[:16] != prefix:
                break
            doomed.append((bytes(key), keys.decode_extent(value, ino, keys.extent_index(key))))
        for key, chunk_key in doomed:
            self.txn.delete(key, db=self.extents)
            self.chunks.decref(self.txn, chunk_key)

    def layer_extents(self, layer: int, ino: int) -> Iterator[tuple[int, bytes]]:
        """(chunk index, chunk key) of ``ino`` recorded in one layer."""
        for key, value in scan_prefix(self.txn, self.extents, keys.extent_prefix(layer, ino)):
            idx = keys.extent_index(key)
            yield idx, keys.decode_extent(value, ino, idx)


class BoundTree(Protocol):
    """One named tree of an open store, each call one transaction: what a ``Branch`` (or a
    ``Snapshot``) offers the modules beneath the API (file objects, import and export)."""

    def read_view(self, fn: Callable[[View], T]) -> T:
        """Run ``fn`` on a read-only view of the tree."""
        ...

    def write_view(self, fn: Callable[[View], T]) -> T:
        """Run ``fn`` on a writable view in one atomic transaction (EROFS on a snapshot)."""
        ...

    def makedirs(self, path: Any, mode: int = 0o777, exist_ok: bool = False) -> None:
        """``os.makedirs`` inside the tree."""
        ...
