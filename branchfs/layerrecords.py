"""Whole-layer record work: listing, deleting and squashing the records a layer holds.

:class:`~branchfs.layers.View` reads and writes one tree's records through its chain; gc and
fsck work on layers as such — a dead layer's records go in batches, a child layer's records
move down into its parent (squash), fsck reads every record of the store. This module is
that interface, so neither of them builds a key (the layout lives in :mod:`branchfs.keys`).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

import lmdb

from . import keys
from .chunks import LmdbChunkStore
from .errors import StoreCorrupt
from .keys import TOMBSTONE
from .layers import scan_prefix
from .meta import Meta


class LayerRecords:
    """The ``inodes``, ``dirents`` and ``extents`` databases, seen layer by layer."""

    def __init__(self, meta: Meta, chunks: LmdbChunkStore) -> None:
        self.meta = meta
        self.chunks = chunks

    # -- reading every record (fsck) -----------------------------------------------------------

    def all_inodes(self, txn: lmdb.Transaction) -> Iterator[tuple[int, int, bytes]]:
        """(layer, ino, raw record or TOMBSTONE) of every inode record in the store."""
        for key, raw in txn.cursor(db=self.meta.inodes_db):
            layer, ino = keys.split_inode_key(key)
            yield layer, ino, bytes(raw)

    def all_dirent_layers(self, txn: lmdb.Transaction) -> Iterator[int]:
        """The layer of every directory entry in the store (one item per entry)."""
        for key in txn.cursor(db=self.meta.dirents_db).iternext(keys=True, values=False):
            yield keys.layer_of(key)

    def all_extents(self, txn: lmdb.Transaction) -> Iterator[tuple[int, int, int, bytes]]:
        """(layer, ino, chunk index, chunk key) of every extent in the store."""
        for key, raw in txn.cursor(db=self.meta.extents_db):
            layer, ino, idx = keys.split_extent_key(key)
            try:
                yield layer, ino, idx, keys.decode_extent(raw, ino, idx)
            except StoreCorrupt:
                continue  # listed by damaged_records

    def damaged_records(self, txn: lmdb.Transaction) -> Iterator[str]:
        """Where each directory entry or extent whose checksum fails is (for fsck)."""
        for key, raw in txn.cursor(db=self.meta.dirents_db):
            if raw == TOMBSTONE:
                continue
            layer, parent = keys.split_inode_key(key[:16])
            name = keys.dirent_name(key)
            try:
                keys.decode_dirent(raw, parent, name)
            except StoreCorrupt:
                yield f"entry {name!r} of directory {parent} in layer {layer}"
        for key, raw in txn.cursor(db=self.meta.extents_db):
            layer, ino, idx = keys.split_extent_key(key)
            try:
                keys.decode_extent(raw, ino, idx)
            except StoreCorrupt:
                yield f"extent of chunk {idx} of inode {ino} in layer {layer}"

    def inodes_in(self, txn: lmdb.Transaction, lid: int, limit: int | None = None) -> list[int]:
        """The inode numbers with a record (or tombstone) in layer ``lid``, at most ``limit``."""
        found = scan_prefix(txn, self.meta.inodes_db, keys.layer_key(lid))
        return [keys.split_inode_key(k)[1] for k, _v in islice(found, limit)]

    # -- deleting a dead layer (gc) ------------------------------------------------------------

    def delete_records(self, txn: lmdb.Transaction, lid: int, limit: int | None = None) -> int:
        """Delete up to ``limit`` records of layer ``lid`` (extents first, dropping their
        chunk references; then entries; then inodes). Returns how many went."""
        prefix = keys.layer_key(lid)
        removed = 0
        meta = self.meta
        for db in (meta.extents_db, meta.dirents_db, meta.inodes_db):
            cur = txn.cursor(db=db)
            if not cur.set_range(prefix):
                continue
            while (limit is None or removed < limit) and bytes(cur.key()[:8]) == prefix:
                if db is meta.extents_db:
                    _layer, ino, idx = keys.split_extent_key(cur.key())
                    self.chunks.decref(txn, keys.decode_extent(cur.value(), ino, idx))
                removed += 1
                if not cur.delete():
                    break
            if limit is not None and removed >= limit:
                break
        return removed

    # -- squashing a child layer into its parent (gc) -------------------------------------------

    def _drop_extents(self, txn: lmdb.Transaction, layer: int, ino: int, first: int) -> None:
        cur = txn.cursor(db=self.meta.extents_db)
        prefix = keys.extent_prefix(layer, ino)
        if not cur.set_range(keys.extent_key(layer, ino, first)):
            return
        while bytes(cur.key()[:16]) == prefix:
            idx = keys.extent_index(cur.key())
            self.chunks.decref(txn, keys.decode_extent(cur.value(), ino, idx))
            if not cur.delete():
                break

    def inode_visible_below(self, txn: lmdb.Transaction, below: tuple[int, ...], ino: int) -> bool:
        """Whether the first record of ``ino`` in chain ``below`` is a live one."""
        for lay in below:
            raw = txn.get(keys.inode_key(lay, ino), db=self.meta.inodes_db)
            if raw is not None:
                return raw != TOMBSTONE
        return False

    def move_inode_down(
        self, txn: lmdb.Transaction, p: int, c: int, ino: int, below: tuple[int, ...]
    ) -> None:
        """Move inode ``ino``'s record, extents and cut from child layer ``c`` into its parent
        ``p`` (``below`` is the chain under ``p``); every tree reads the same bytes after."""
        db = self.meta.inodes_db
        raw_c = txn.get(keys.inode_key(c, ino), db=db)
        if raw_c is None:
            return
        raw_p = txn.get(keys.inode_key(p, ino), db=db)
        if raw_c == TOMBSTONE:
            self._drop_extents(txn, p, ino, 0)
            if self.inode_visible_below(txn, below, ino):
                txn.put(keys.inode_key(p, ino), TOMBSTONE, db=db)
            else:
                txn.delete(keys.inode_key(p, ino), db=db)
        else:
            rec = keys.decode_inode(raw_c, ino)
            p_cut = keys.decode_inode(raw_p, ino).cut if raw_p else None
            if rec.cut is not None:
                self._drop_extents(txn, p, ino, rec.cut)
            # move the child's extents over the parent's
            ext = self.meta.extents_db
            moved = [
                (keys.extent_index(key), keys.decode_extent(value, ino, keys.extent_index(key)))
                for key, value in scan_prefix(txn, ext, keys.extent_prefix(c, ino))
            ]
            for idx, chunk_key in moved:
                pkey = keys.extent_key(p, ino, idx)
                old = txn.get(pkey, db=ext)
                txn.put(pkey, keys.encode_extent(chunk_key, ino, idx), db=ext)
                if old is not None:
                    self.chunks.decref(txn, keys.decode_extent(old, ino, idx))
                txn.delete(keys.extent_key(c, ino, idx), db=ext)
            if raw_p == TOMBSTONE or raw_p is None:
                p_cut = None if raw_p is None else 0
            if rec.cut is None:
                rec.cut = p_cut
            elif p_cut is not None:
                rec.cut = min(rec.cut, p_cut)
            txn.put(keys.inode_key(p, ino), keys.encode_inode(rec, ino), db=db)
        txn.delete(keys.inode_key(c, ino), db=db)

    def move_inodes_down(
        self, txn: lmdb.Transaction, p: int, c: int, below: tuple[int, ...], limit: int
    ) -> int:
        """Move up to ``limit`` whole inodes of layer ``c`` down into ``p``; returns how many."""
        inos = self.inodes_in(txn, c, limit)
        for ino in inos:
            self.move_inode_down(txn, p, c, ino, below)
        return len(inos)

    def _dirent_visible_below(
        self, txn: lmdb.Transaction, below: tuple[int, ...], key: bytes
    ) -> bool:
        for lay in below:
            raw = txn.get(keys.rebase_key(key, lay), db=self.meta.dirents_db)
            if raw is not None:
                return raw != TOMBSTONE
        return False

    def move_dirents_down(
        self, txn: lmdb.Transaction, p: int, c: int, below: tuple[int, ...], limit: int
    ) -> int:
        """Move up to ``limit`` directory entries of layer ``c`` down into ``p``."""
        db = self.meta.dirents_db
        items = [
            (bytes(key), bytes(value))
            for key, value in islice(scan_prefix(txn, db, keys.layer_key(c)), limit)
        ]
        for key, value in items:
            if value == TOMBSTONE and not self._dirent_visible_below(txn, below, key):
                txn.delete(keys.rebase_key(key, p), db=db)
            else:
                txn.put(keys.rebase_key(key, p), value, db=db)
            txn.delete(key, db=db)
        return len(items)
