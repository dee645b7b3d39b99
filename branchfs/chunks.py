"""Content-addressed chunk storage: ``put(bytes) -> key``, ``get(key) -> bytes``.

A chunk key is the 128-bit xxh3 digest of the bytes plus one disambiguation byte: a digest
match on ``put`` is confirmed by comparing the stored bytes, and a true collision gets the
next disambiguator, so two different chunks never share a key. Every ``get`` re-hashes the
bytes and raises :class:`StoreCorrupt` on a mismatch, so damaged data is never returned.

Chunks are reference counted: each extent record that names a chunk holds one reference,
and a chunk is deleted in the same transaction that drops its last reference. The bytes
live in the same LMDB environment as the metadata, so a chunk is always committed in the
same transaction as the record that names it (see docs/architecture.md for why).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import lmdb
import xxhash

from . import keys as codec
from .errors import StoreCorrupt
from .meta import Database, Meta

KEY_SIZE = 17


def digest(data: bytes | memoryview) -> bytes:
    """The 16-byte xxh3-128 digest of ``data``."""
    return xxhash.xxh3_128_digest(data)


class ChunkStore(Protocol):
    """What the tree layer needs from a chunk backend (local LMDB today, object storage later)."""

    def put(self, txn: lmdb.Transaction, data: bytes | memoryview) -> bytes:
        """Store ``data`` (or find it stored), take one reference, return its key."""
        ...

    def get(self, txn: lmdb.Transaction, key: bytes) -> bytes | memoryview:
        """The verified bytes of ``key`` (a memoryview into the map in a buffers txn)."""
        ...

    def incref(self, txn: lmdb.Transaction, key: bytes) -> None:
        """Take one more reference on an existing chunk."""
        ...

    def decref(self, txn: lmdb.Transaction, key: bytes) -> None:
        """Drop one reference; the chunk is deleted with its last one."""
        ...


class LmdbChunkStore:
    """Chunks as values of the ``chunks`` database, counts in ``chunkrefs``."""

    def __init__(self, meta: Meta) -> None:
        self.meta = meta
        #: When a list, :meth:`decref` adds [chunks, bytes] it deletes to it (gc counts).
        self.tally: list[int] | None = None

    @property
    def db(self) -> Database:
        """The ``chunks`` database (looked up each time: a compaction re-opens it)."""
        return self.meta.chunks_db

    @property
    def refs(self) -> Database:
        """The ``chunkrefs`` database."""
        return self.meta.chunkrefs_db

    def put(self, txn: lmdb.Transaction, data: bytes | memoryview) -> bytes:
        """Store ``data`` (deduplicated), take one reference, return its key."""
        d = digest(data)
        for seq in range(256):
            key = d + bytes((seq,))
            stored = txn.get(key, db=self.db)
            if stored is None:
                txn.put(key, data, db=self.db)
                txn.put(key, codec.u64(1), db=self.refs)
                self.meta.put_bytes += len(data)
                return key
            if stored == data:
                self.incref(txn, key)
                return key
        raise StoreCorrupt("256 chunks share one digest; the store is damaged, run fsck")

    def get(self, txn: lmdb.Transaction, key: bytes) -> bytes | memoryview:
        """The bytes of ``key``, checked against the digest (a memoryview into the map in a
        transaction opened with ``buffers``)."""
        data = txn.get(key, db=self.db)
        if data is None:
            raise StoreCorrupt(f"chunk {key.hex()} is missing; run fsck to find what it hurts")
        if digest(data) != key[:16]:
            raise StoreCorrupt(
                f"chunk {key.hex()} does not match its digest (damaged on disk); "
                "run fsck to find the files that use it"
            )
        return data

    def incref(self, txn: lmdb.Transaction, key: bytes) -> None:
        """Take one more reference."""
        raw = txn.get(key, db=self.refs)
        count = codec.read_u64(raw) if raw is not None else 0
        txn.put(key, codec.u64(count + 1), db=self.refs)

    def decref(self, txn: lmdb.Transaction, key: bytes) -> None:
        """Drop one reference, deleting the chunk when none is left."""
        raw = txn.get(key, db=self.refs)
        count = codec.read_u64(raw) if raw is not None else 0
        if count <= 1:
            txn.delete(key, db=self.refs)
            if self.tally is not None:
                data = txn.get(key, db=self.db)
                if data is not None:
                    self.tally[0] += 1
                    self.tally[1] += len(data)
            txn.delete(key, db=self.db)
            self.meta.frees = True
        else:
            txn.put(key, codec.u64(count - 1), db=self.refs)

    def refcount(self, txn: lmdb.Transaction, key: bytes) -> int:
        """The stored reference count of ``key`` (0 if none)."""
        raw = txn.get(key, db=self.refs)
        return codec.read_u64(raw) if raw is not None else 0

    def has_count(self, txn: lmdb.Transaction, key: bytes) -> bool:
        """Whether ``key`` has a reference count record at all."""
        return txn.get(key, db=self.refs) is not None

    def items(self, txn: lmdb.Transaction) -> Iterator[tuple[bytes, bytes | memoryview]]:
        """(key, stored bytes) of every chunk, unchecked (fsck checks them itself)."""
        for key, value in txn.cursor(db=self.db):
            yield bytes(key), value

    def counts(self, txn: lmdb.Transaction) -> Iterator[tuple[bytes, int]]:
        """(key, reference count) of every count record."""
        for key, raw in txn.cursor(db=self.refs):
            yield bytes(key), codec.read_u64(raw)

    def count(self, txn: lmdb.Transaction) -> int:
        """How many chunks are stored."""
        return int(txn.stat(self.db)["entries"])

    def keys(self, txn: lmdb.Transaction) -> Iterator[bytes]:
        """Every stored chunk key."""
        cur = txn.cursor(db=self.db)
        for key in cur.iternext(keys=True, values=False):
            yield bytes(key)

    def stored_bytes(self, txn: lmdb.Transaction) -> int:
        """Total size of the chunk bytes (the logical size of all distinct data)."""
        total = 0
        cur = txn.cursor(db=self.db)
        for _key, value in cur:
            total += len(value)
        return total
