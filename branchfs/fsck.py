"""fsck: check a whole store and report every problem found, changing nothing.

It checks, in one read transaction (a consistent snapshot even beside writers):
the layer graph (every referenced layer exists, no loops), that every record decodes and
belongs to an existing layer, every chunk's bytes against its digest and its reference count
against the extents that name it, and the structure of every branch and snapshot tree
(entries point at inodes that exist and name them back, directories form a tree, no inode
is left without a name).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import lmdb

from . import keys
from .chunks import digest
from .diff import path_of
from .engine import Engine
from .errors import BranchFSError
from .keys import TOMBSTONE
from .layers import NO_LAYER, View
from .records import CHUNK_SIZE, ROOT_INO, Inode


@dataclass(frozen=True)
class Problem:
    """One thing fsck found wrong: a ``kind`` (e.g. ``corrupt-chunk``), where, and what."""

    kind: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.where}: {self.message}"


@dataclass
class FsckReport:
    """The result of :func:`check`: ``ok`` is true when ``problems`` is empty."""

    problems: list[Problem] = field(default_factory=list)
    layers: int = 0
    inodes: int = 0
    chunks: int = 0
    bytes_checked: int = 0
    trees: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the store is consistent."""
        return not self.problems

    def __bool__(self) -> bool:
        return self.ok

    def to_json(self) -> dict[str, object]:
        """A plain dict for JSON output."""
        return {
            "ok": self.ok,
            "problems": [p.__dict__ for p in self.problems],
            "layers": self.layers,
            "inodes": self.inodes,
            "chunks": self.chunks,
            "bytes_checked": self.bytes_checked,
            "trees": self.trees,
            "seconds": self.seconds,
        }


class _Checker:
    def __init__(self, engine: Engine, txn: lmdb.Transaction) -> None:
        self.engine = engine
        self.layers = engine.layers
        self.refs = engine.refs
        self.chunks = engine.chunks
        self.txn = txn
        self.report = FsckReport()
        self.layer_ids: set[int] = set()

    def problem(self, kind: str, where: str, message: str) -> None:
        self.report.problems.append(Problem(kind, where, message))

    def run(self) -> FsckReport:
        refcounts: Counter[bytes] = Counter()
        self._bad_chunks: set[str] = set()

        def records() -> None:
            refcounts.update(self.check_records())

        for label, phase in (
            ("layers", self.check_layers),
            ("records", records),
            ("chunks", lambda: self.check_chunks(refcounts)),
            ("trees", self.check_trees),
        ):
            try:
                phase()
            except Exception as exc:  # damage must be reported, never raised
                self.problem("unreadable", f"the {label} of the store", _describe(exc))
        return self.report

    def check_layers(self) -> None:
        parents: dict[int, int] = {}
        for info in self.layers.all(self.txn):
            parents[info.id] = info.parent
        self.layer_ids = set(parents)
        self.report.layers = len(parents)
        for lid, parent in parents.items():
            if parent != NO_LAYER and parent not in parents:
                self.problem("dangling-layer", f"layer {lid}", f"its parent {parent} is missing")
            seen = set()
            cur = lid
            while cur != NO_LAYER and cur in parents:
                if cur in seen:
                    self.problem("layer-loop", f"layer {lid}", "its chain of parents loops")
                    break
                seen.add(cur)
                cur = parents[cur]
        indexed = set()
        for parent, child in self.layers.child_links(self.txn):
            indexed.add((parent, child))
            if parents.get(child) != parent:
                self.problem("children-index", f"layer {child}", f"indexed under {parent} wrongly")
        for lid, parent in parents.items():
            if parent != NO_LAYER and (parent, lid) not in indexed:
                self.problem("children-index", f"layer {lid}", f"missing under its parent {parent}")
        for b in self.refs.branches(self.txn):
            if b.top not in parents:
                self.problem(
                    "dangling-ref", f"branch {b.name}", f"its top layer {b.top} is missing"
                )
        for s in self.refs.snapshots(self.txn):
            if s.layer not in parents:
                self.problem(
                    "dangling-ref", f"snapshot {s.name}", f"its layer {s.layer} is missing"
                )
        for layer, parent in self.engine.history.edges(self.txn):
            for lid in (layer, parent):
                if lid not in parents:
                    self.problem(
                        "dangling-ref", f"merge of {parent} into {layer}", f"layer {lid} is missing"
                    )

    def check_records(self) -> Counter[bytes]:
        txn, records = self.txn, self.engine.records
        missing_layers: Counter[int] = Counter()
        for layer, ino, raw in records.all_inodes(txn):
            if layer not in self.layer_ids:
                missing_layers[layer] += 1
            if raw != TOMBSTONE:
                self.report.inodes += 1
                try:
                    keys.decode_inode(raw, ino)
                except BranchFSError as exc:
                    self.problem("corrupt-record", f"inode {ino} in layer {layer}", str(exc))
        for where in records.damaged_records(txn):
            self.problem("corrupt-record", where, "it does not match its checksum")
        for layer in records.all_dirent_layers(txn):
            if layer not in self.layer_ids:
                missing_layers[layer] += 1
        refcounts: Counter[bytes] = Counter()
        for layer, _ino, _idx, chunk_key in records.all_extents(txn):
            if layer not in self.layer_ids:
                missing_layers[layer] += 1
            refcounts[chunk_key] += 1
        for layer, n in sorted(missing_layers.items()):
            self.problem(
                "orphaned-records", f"layer {layer}", f"{n} records of a layer that does not exist"
            )
        return refcounts

    def check_chunks(self, refcounts: Counter[bytes]) -> None:
        txn, chunks = self.txn, self.chunks
        stored: set[bytes] = set()
        for key, value in chunks.items(txn):
            stored.add(key)
            self.report.chunks += 1
            self.report.bytes_checked += len(value)
            if digest(bytes(value)) != key[:16]:
                self.problem(
                    "corrupt-chunk", f"chunk {key.hex()}", "its bytes do not match its digest"
                )
        for key, count in chunks.counts(txn):
            if count != refcounts.get(key, 0):
                self.problem(
                    "refcount",
                    f"chunk {key.hex()}",
                    f"reference count {count}, but {refcounts.get(key, 0)} extents name it",
                )
            if key not in stored:
                self.problem("missing-chunk", f"chunk {key.hex()}", "counted but not stored")
        for key, n in refcounts.items():
            if key not in stored:
                self.problem(
                    "missing-chunk", f"chunk {key.hex()}", f"named by {n} extents but not stored"
                )
            elif not chunks.has_count(txn, key):
                self.problem(
                    "refcount", f"chunk {key.hex()}", f"named by {n} extents but has no count"
                )
        for key in stored:
            if key not in refcounts and not chunks.has_count(txn, key):
                self.problem("orphaned-chunk", f"chunk {key.hex()}", "stored but nothing names it")
        self._bad_chunks = {
            p.where.split()[1]
            for p in self.report.problems
            if p.kind in ("corrupt-chunk", "missing-chunk")
        }

    def check_trees(self) -> None:
        trees: list[tuple[str, int, bool]] = []
        for b in self.refs.branches(self.txn):
            if b.top in self.layer_ids:
                trees.append((f"branch {b.name}", b.top, True))
        for s in self.refs.snapshots(self.txn):
            if s.layer in self.layer_ids:
                trees.append((f"snapshot {s.name}", s.layer, False))
        seen_chains: set[tuple[int, ...]] = set()
        for label, top, _branch in trees:
            try:
                chain = self.layers.chain(self.txn, top)
            except BranchFSError as exc:
                self.problem("layer-loop", label, str(exc))
                continue
            if chain in seen_chains:
                continue
            seen_chains.add(chain)
            self.report.trees += 1
            view = self.engine.chain_view(self.txn, chain, False)
            try:
                self.check_tree(label, view)
            except Exception as exc:  # damage below this tree: report it, check the next
                self.problem("unreadable", label, _describe(exc))

    def check_tree(self, label: str, v: View) -> None:
        root = v.inode(ROOT_INO)
        if root is None or not root.is_dir:
            self.problem("missing-root", label, "the root directory is missing")
            return
        names: dict[int, set[tuple[int, bytes]]] = {}
        stack = [ROOT_INO]
        visited_dirs = {ROOT_INO}
        while stack:
            d = stack.pop()
            for name, child in v.list_dir(d):
                names.setdefault(child, set()).add((d, name))
                rec = v.inode(child)
                shown = (path_of(v, d) + b"/" + name).decode("utf-8", "replace").lstrip("/")
                where = f"{label}:{shown}"
                if rec is None:
                    self.problem(
                        "dangling-entry", where, f"names inode {child}, which does not exist"
                    )
                    continue
                if rec.is_dir:
                    if child in visited_dirs:
                        self.problem("directory-loop", where, "a directory is reachable twice")
                        continue
                    visited_dirs.add(child)
                    stack.append(child)
                elif rec.is_reg and rec.inline is None:
                    self.check_extents(where, v, child, rec)
        for ino, linked in names.items():
            rec = v.inode(ino)
            if rec is None:
                continue
            if set(rec.links) != linked:
                where = f"{label}:inode {ino}"
                self.problem(
                    "link-mismatch",
                    where,
                    f"records links {sorted(rec.links)!r} but is named by {sorted(linked)!r}",
                )
        self.check_unnamed(label, v, names)

    def check_extents(self, where: str, v: View, ino: int, rec: Inode) -> None:
        if not self._bad_chunks:
            return
        cuts = v.cuts(ino)
        nchunks = (rec.size + CHUNK_SIZE - 1) // CHUNK_SIZE
        for idx in range(nchunks):
            key = v.extent(cuts, ino, idx)
            if key is not None and bytes(key).hex() in self._bad_chunks:
                self.problem("damaged-file", where, f"chunk {idx} is missing or corrupt")
                return

    def check_unnamed(self, label: str, v: View, names: dict[int, set[tuple[int, bytes]]]) -> None:
        """Inodes visible in a tree's top layer that no entry names (lost or orphaned files)."""
        for ino in v.layer_inodes(v.chain[0]):
            if ino == ROOT_INO or ino in names or v.raw_inode(v.chain[0], ino) == TOMBSTONE:
                continue
            self.problem(
                "orphaned-inode",
                f"{label}:inode {ino}",
                "no directory entry names it (an unlinked file still open when a mount died?)",
            )


def _describe(exc: BaseException) -> str:
    """A one-line account of why part of the store could not be read."""
    if isinstance(exc, lmdb.Error):
        return f"LMDB could not read it: {exc}"
    if isinstance(exc, BranchFSError):
        return str(exc)
    return f"a record is malformed ({type(exc).__name__}: {exc})"


def check(engine: Engine) -> FsckReport:
    """Check every part of a store; see the module docstring.

    Never raises because of damage: what cannot be read is reported as a problem of kind
    ``unreadable`` and the check goes on with the next part.
    """
    started = time.perf_counter()
    try:
        with engine.meta.read() as txn:
            report = _Checker(engine, txn).run()
    except Exception as exc:
        report = FsckReport()
        report.problems.append(Problem("unreadable", engine.meta.path, _describe(exc)))
    report.seconds = time.perf_counter() - started
    return report
