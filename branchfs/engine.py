"""The parts of one open store, and the views of its named trees.

:class:`Engine` bundles what every engine-side operation works with — the LMDB environment
(:class:`~branchfs.meta.Meta`), the layer index, the chunk store, the merge history, the
refs and the whole-layer record interface — and builds a :class:`~branchfs.layers.View` of
a branch, a snapshot or a bare chain. ``Store`` (the public API) owns one; gc, fsck, diff
and merge take it instead of reaching into a ``Store``.
"""

from __future__ import annotations

import lmdb

from .chunks import LmdbChunkStore
from .envs import open_meta, release_meta
from .history import History
from .layerrecords import LayerRecords
from .layers import LayerIndex, View
from .meta import Meta
from .refs import Refs

#: Raw inode records read in one transaction, shared by views of that transaction.
RecordCache = dict[tuple[int, int], bytes | memoryview | None]


class Engine:
    """The layer index, chunk store, merge history, refs and layer records of one open
    environment."""

    __slots__ = ("chunks", "history", "layers", "meta", "records", "refs")

    def __init__(self, meta: Meta) -> None:
        self.meta = meta
        self.layers = LayerIndex(meta)
        self.chunks = LmdbChunkStore(meta)
        self.history = History(meta, self.layers)
        self.refs = Refs(meta, self.layers, self.history)
        self.records = LayerRecords(meta, self.chunks)

    def chain_view(
        self,
        txn: lmdb.Transaction,
        chain: tuple[int, ...],
        writable: bool,
        records: RecordCache | None = None,
    ) -> View:
        """A view of the tree whose chain is ``chain`` (top first)."""
        return View(self.meta, self.chunks, txn, chain, writable, records)

    def layer_view(
        self, txn: lmdb.Transaction, top: int, writable: bool, records: RecordCache | None = None
    ) -> View:
        """A view of the tree whose top layer is ``top``."""
        return self.chain_view(txn, self.layers.chain(txn, top), writable, records)

    def view(self, txn: lmdb.Transaction, name: str, snapshot: bool = False) -> View:
        """A view of branch ``name`` (writable) or of snapshot ``name`` (read-only);
        :class:`~branchfs.errors.BranchNotFound` if there is none."""
        if snapshot:
            top, writable = self.refs.snapshot(txn, name).layer, False
        else:
            top, writable = self.refs.branch(txn, name).top, True
        return View(self.meta, self.chunks, txn, self.layers.chain(txn, top), writable)

    def ref_view(self, txn: lmdb.Transaction, ref: str) -> View:
        """The view of ``ref``: a branch name, or ``@name`` for a snapshot."""
        if ref.startswith("@"):
            return self.view(txn, ref[1:], True)
        return self.view(txn, ref, False)


def check_branch(store_path: str, name: str) -> None:
    """Raise :class:`~branchfs.errors.BranchNotFound` (or the store's opening error) unless
    the store at ``store_path`` has a branch ``name``; for modules above the API that must
    check before they start a process, without importing the store."""
    meta = open_meta(store_path, create=False)
    try:
        with meta.read() as txn:
            Engine(meta).refs.branch(txn, name)
    finally:
        release_meta(meta)
