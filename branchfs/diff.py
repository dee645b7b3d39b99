"""Change sets between two trees, found from the layers above their deepest shared layer.

Two trees that share a layer share every record beneath it, so only the records in the
layers above it can differ: the cost of a diff follows the number of changes, never the
size of the tree. Inode numbers are stable across branches, so a file that moved is
reported as ``renamed`` without guessing from content.
"""

from __future__ import annotations

import stat as st
from dataclasses import dataclass

import lmdb

from . import content
from .content import split_at_common
from .engine import Engine
from .errors import BranchFSError
from .layers import View
from .quoting import quote_path
from .records import CHUNK_SIZE, ROOT_INO, Inode

KINDS = ("added", "deleted", "modified", "renamed", "type", "mode", "xattr")


@dataclass(frozen=True, order=True)
class Change:
    """One path that differs between two trees.

    ``kind`` is one of ``added``, ``deleted``, ``modified`` (content), ``renamed`` (with
    ``old_path``), ``type`` (a file became a directory or a symlink …), ``mode`` (permission
    bits or owner) or ``xattr``.
    """

    path: str
    kind: str
    old_path: str | None = None

    def __str__(self) -> str:
        if self.old_path is not None:
            return f"{self.kind:8} {quote_path(self.old_path)} -> {quote_path(self.path)}"
        return f"{self.kind:8} {quote_path(self.path)}"

    def to_json(self) -> dict[str, str | None]:
        """A plain dict for JSON output."""
        return {"path": self.path, "kind": self.kind, "old_path": self.old_path}


def changed_inodes(a: View, b: View) -> set[int]:
    """Inodes whose records may differ between trees ``a`` and ``b``."""
    up_a, up_b = split_at_common(a.chain, b.chain)
    out: set[int] = set()
    for layer in up_a + up_b:
        out.update(a.layer_inodes(layer))
    return out


def path_of(v: View, ino: int, rec: Inode | None = None) -> bytes:
    """The path of ``ino`` in tree ``v`` (its first link), e.g. ``b"src/app.py"``."""
    parts: list[bytes] = []
    seen = 0
    while ino != ROOT_INO:
        rec = rec if rec is not None else v.inode(ino)
        if rec is None or not rec.links:
            parts.append(b"?")
            break
        parent, name = rec.links[0]
        parts.append(name)
        ino, rec = parent, None
        seen += 1
        if seen > 4096:
            raise BranchFSError("a directory loop was found while naming a path; run fsck")
    return b"/".join(reversed(parts))


def _decode(path: bytes) -> str:
    import os

    return os.fsdecode(path)


def _all_bytes(v: View, ino: int, rec: Inode) -> bytes:
    from . import tree

    return tree.read(v, ino, 0, rec.size)


def content_equal(a: View, ra: Inode, b: View, rb: Inode, ino: int) -> bool:
    """Whether inode ``ino`` has the same bytes in trees ``a`` and ``b`` (cost: the chunks
    that may differ, i.e. those written above the trees' shared layer)."""
    if ra.size != rb.size:
        return False
    if st.S_IFMT(ra.mode) != st.S_IFMT(rb.mode):
        return False
    if not st.S_ISREG(ra.mode):
        return (ra.inline or b"") == (rb.inline or b"")
    if ra.inline is not None and rb.inline is not None:
        return ra.inline == rb.inline
    if ra.inline is not None or rb.inline is not None or ra.size <= CHUNK_SIZE:
        return _all_bytes(a, ino, ra) == _all_bytes(b, ino, rb)
    nchunks = content.nchunks(ra.size)
    above = content.chunks_written_above(a, b, ino)
    if above is None:  # no shared layer: any chunk may differ
        candidates: set[int] = set(range(nchunks))
    else:
        candidates, min_cut = above
        if min_cut is not None:
            candidates.update(range(min_cut, nchunks))
    cuts_a, cuts_b = a.cuts(ino), b.cuts(ino)
    for idx in sorted(i for i in candidates if i < nchunks):
        ka, kb = a.extent(cuts_a, ino, idx), b.extent(cuts_b, ino, idx)
        if ka != kb:
            da = bytes(a.chunks.get(a.txn, ka)) if ka is not None else b""
            db = bytes(b.chunks.get(b.txn, kb)) if kb is not None else b""
            width = min(CHUNK_SIZE, ra.size - idx * CHUNK_SIZE)
            if da.ljust(width, b"\0") != db.ljust(width, b"\0"):
                return False
    return True


def owner_mode(rec: Inode) -> tuple[int, int, int]:
    """Permission bits and owner: what a ``mode`` change is about."""
    return st.S_IMODE(rec.mode), rec.uid, rec.gid


def classify(
    ino: int, a: View, ra: Inode | None, b: View, rb: Inode | None
) -> list[tuple[bytes, str, bytes | None]]:
    """Path-level changes of one inode from tree ``a`` to tree ``b``: (path, kind, old path)."""
    if ra is None and rb is None:
        return []
    if ra is None:
        assert rb is not None
        return [(_link_path(b, p, n), "added", None) for p, n in rb.links]
    if rb is None:
        return [(_link_path(a, p, n), "deleted", None) for p, n in ra.links]
    out: list[tuple[bytes, str, bytes | None]] = []
    la, lb = ra.links, rb.links
    if set(la) != set(lb):
        if len(la) == 1 and len(lb) == 1:
            out.append((_link_path(b, *lb[0]), "renamed", _link_path(a, *la[0])))
        else:
            out += [(_link_path(a, p, n), "deleted", None) for p, n in la if (p, n) not in lb]
            out += [(_link_path(b, p, n), "added", None) for p, n in lb if (p, n) not in la]
    where = _link_path(b, *lb[0]) if lb else b""
    if ino == ROOT_INO:
        where = b""
    if not rb.is_dir and not content_equal(a, ra, b, rb, ino):
        out.append((where, "modified", None))
    if owner_mode(ra) != owner_mode(rb):
        out.append((where, "mode", None))
    if ra.xattrs != rb.xattrs:
        out.append((where, "xattr", None))
    return out


def _link_path(v: View, parent: int, name: bytes) -> bytes:
    base = path_of(v, parent) if parent != ROOT_INO else b""
    return base + b"/" + name if base else name


def diff_views(a: View, b: View) -> list[Change]:
    """Every change from tree ``a`` to tree ``b``, sorted by path."""
    raw: list[tuple[bytes, str, bytes | None, int, Inode | None, Inode | None]] = []
    for ino in changed_inodes(a, b):
        ra, rb = a.inode(ino), b.inode(ino)
        for path, kind, old in classify(ino, a, ra, b, rb):
            raw.append((path, kind, old, ino, ra, rb))
    # A path deleted in one inode and added in another is one change of that path.
    added = {p: (ino, rb) for p, k, _o, ino, _ra, rb in raw if k == "added"}
    deleted = {p: (ino, ra) for p, k, _o, ino, ra, _rb in raw if k == "deleted"}
    replaced = added.keys() & deleted.keys()
    out: list[Change] = []
    for path, kind, old, _ino, _ra, _rb in raw:
        if kind in ("added", "deleted") and path in replaced:
            continue
        out.append(Change(_decode(path), kind, None if old is None else _decode(old)))
    for path in replaced:
        ino_b, rb = added[path]
        ino_a, ra = deleted[path]
        assert ra is not None and rb is not None
        if st.S_IFMT(ra.mode) != st.S_IFMT(rb.mode):
            out.append(Change(_decode(path), "type"))
            continue
        same = _same_bytes(a, ino_a, ra, b, ino_b, rb)
        if not same:
            out.append(Change(_decode(path), "modified"))
        if owner_mode(ra) != owner_mode(rb):
            out.append(Change(_decode(path), "mode"))
        if ra.xattrs != rb.xattrs:
            out.append(Change(_decode(path), "xattr"))
    out.sort()
    return out


def _same_bytes(a: View, ia: int, ra: Inode, b: View, ib: int, rb: Inode) -> bool:
    if ra.size != rb.size:
        return False
    if ra.is_dir:
        return True
    if not ra.is_reg:
        return (ra.inline or b"") == (rb.inline or b"")
    return _all_bytes(a, ia, ra) == _all_bytes(b, ib, rb)


def diff_refs(engine: Engine, txn: lmdb.Transaction, a: str, b: str) -> list[Change]:
    """The changes from ``a`` to ``b`` (branch names, or ``@snapshot``)."""
    va, vb = engine.ref_view(txn, a), engine.ref_view(txn, b)
    vb.records = va.records  # one transaction: the chains share layers, so share reads
    return diff_views(va, vb)
