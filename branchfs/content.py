"""File content: bytes into extents and back, the one path every writer of file data takes.

A regular file up to :data:`~branchfs.records.INLINE_MAX` bytes keeps its bytes in its inode
record (``inline``); a bigger one is cut into :data:`~branchfs.records.CHUNK_SIZE` chunks
aligned on multiples of it, each stored once in the chunk store and named by an extent of
the top layer. A missing extent is a hole (zeros); the *cut* of a layer's record hides the
extents of layers beneath it past that chunk (docs/architecture.md, "Truncation across
layers"). This module owns those rules for tree writes and reads (:mod:`branchfs.tree`),
import (:mod:`branchfs.transfer`) and merge: splitting bytes, putting chunks, reading a
range, truncating, replacing a whole content, copying one tree's extents into another's
top layer, and listing the extents visible through a chain.

Every function takes a :class:`~branchfs.layers.View`; those that write need a writable one
and leave putting the inode record to the caller (they edit ``rec`` in place).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .layers import View
from .records import CHUNK_SIZE, INLINE_MAX, Inode

_ZERO = bytes(CHUNK_SIZE)

Cuts = list[tuple[int, int | None]]


def nchunks(size: int) -> int:
    """How many chunks a file of ``size`` bytes spans."""
    return (size + CHUNK_SIZE - 1) // CHUNK_SIZE


def split(data: bytes, first_idx: int = 0) -> Iterator[tuple[int, bytes]]:
    """(chunk index, bytes) of ``data`` starting at chunk ``first_idx``; all-zero chunks are
    skipped (a hole reads back as zeros and costs nothing)."""
    for i in range(0, len(data), CHUNK_SIZE):
        piece = data[i : i + CHUNK_SIZE]
        if piece[0] == 0 and piece == (_ZERO if len(piece) == CHUNK_SIZE else bytes(len(piece))):
            continue
        yield first_idx + i // CHUNK_SIZE, piece


def put_chunks(v: View, ino: int, pieces: Iterable[tuple[int, bytes | memoryview]]) -> None:
    """Store each (chunk index, bytes) of ``pieces`` and point ``ino``'s extent at it."""
    put, txn = v.chunks.put, v.txn
    for idx, data in pieces:
        v.put_extent(ino, idx, put(txn, data))


def chunk_bytes(v: View, cuts: Cuts, ino: int, idx: int) -> bytes | memoryview:
    """The stored bytes of chunk ``idx`` of ``ino`` (b"" for a hole; may be short)."""
    key = v.extent(cuts, ino, idx)
    if key is None:
        return b""
    return v.chunks.get(v.txn, key)


def read_pieces(v: View, ino: int, rec: Inode, offset: int, end: int) -> list[bytes | memoryview]:
    """The bytes of regular file ``ino`` from ``offset`` to ``end`` (within its size), as
    pieces whose concatenation is the data: whole chunks are the chunk store's own objects
    (memoryviews into the map in a buffers view), holes and short chunks come back as zeros.
    """
    if rec.inline is not None:
        data = rec.inline[offset:end]
        return [data + bytes(end - offset - len(data))]
    cuts = v.cuts(ino)
    first, last = offset // CHUNK_SIZE, (end - 1) // CHUNK_SIZE
    pieces: list[bytes | memoryview] = []
    for idx in range(first, last + 1):
        chunk = chunk_bytes(v, cuts, ino, idx)
        lo = max(offset - idx * CHUNK_SIZE, 0)
        hi = min(end - idx * CHUNK_SIZE, CHUNK_SIZE)
        piece = chunk if lo == 0 and hi == len(chunk) else chunk[lo:hi]
        if piece:
            pieces.append(piece)
        if len(piece) < hi - lo:  # a hole, or a chunk shorter than the file says: zeros
            pieces.append(bytes(hi - lo - len(piece)))
    return pieces


def read_all(v: View, ino: int, rec: Inode) -> bytes:
    """The whole content of regular file (or symlink) ``ino`` whose record is ``rec``."""
    if rec.size == 0:
        return b""
    if rec.inline is not None or not rec.is_reg:
        data = rec.inline or b""
        return data[: rec.size] + bytes(max(0, rec.size - len(data)))
    return b"".join(bytes(p) for p in read_pieces(v, ino, rec, 0, rec.size))


def spill_inline(v: View, ino: int, rec: Inode) -> None:
    """Move an inline file's bytes into chunk 0 so that it can grow past INLINE_MAX."""
    data = rec.inline or b""
    rec.inline = None
    v.drop_extents(ino, 0)
    rec.cut = 0
    if data:
        v.put_extent(ino, 0, v.chunks.put(v.txn, data))


def write(v: View, ino: int, rec: Inode, offset: int, data: bytes | memoryview) -> None:
    """Write ``data`` at ``offset`` into regular file ``ino`` (record ``rec``, edited: its
    inline bytes, cut and size). A chunk only partly written is read, patched and stored
    whole; fully written chunks are stored without a copy."""
    n = len(data)
    end = offset + n
    if not n:
        return
    if rec.inline is not None and end <= INLINE_MAX:
        if not offset and len(rec.inline) <= n:  # a new file's one write: no copy to patch
            rec.inline = bytes(data)
            rec.size = max(rec.size, end)
            return
        buf = bytearray(rec.inline)
        if len(buf) < offset:
            buf.extend(bytes(offset - len(buf)))
        buf[offset:end] = data
        rec.inline = bytes(buf)
    else:
        if rec.inline is not None:
            spill_inline(v, ino, rec)
        _write_chunks(v, ino, offset, data)
    rec.size = max(rec.size, end)


def _write_chunks(v: View, ino: int, offset: int, data: bytes | memoryview) -> None:
    cuts = v.cuts(ino)
    mv = memoryview(data)
    pos = 0
    total = len(mv)
    while pos < total:
        at = offset + pos
        idx, coff = divmod(at, CHUNK_SIZE)
        n = min(CHUNK_SIZE - coff, total - pos)
        new: bytes | memoryview
        if coff == 0 and n == CHUNK_SIZE:
            new = mv[pos : pos + n]  # the chunk store copies it into LMDB: no copy here
        else:
            old = chunk_bytes(v, cuts, ino, idx)
            buf = bytearray(old)
            if len(buf) < coff + n:
                buf.extend(bytes(coff + n - len(buf)))
            buf[coff : coff + n] = mv[pos : pos + n]
            new = bytes(buf)
        v.put_extent(ino, idx, v.chunks.put(v.txn, new))
        pos += n


def truncate(v: View, ino: int, rec: Inode, size: int) -> None:
    """Cut regular file ``ino`` short or extend it with a hole (``rec`` edited). Costs the
    chunks this layer holds past the end: lower layers' chunks are hidden by the cut."""
    if size == rec.size:
        return
    if size == 0:
        v.drop_extents(ino, 0)
        rec.inline = b""
        rec.cut = 0
    elif rec.inline is not None:
        if size <= INLINE_MAX:
            rec.inline = rec.inline[:size] + bytes(max(0, size - len(rec.inline)))
        else:
            spill_inline(v, ino, rec)
    elif size < rec.size:
        keep = nchunks(size)
        tail = size % CHUNK_SIZE
        if tail:
            idx = size // CHUNK_SIZE
            old = chunk_bytes(v, v.cuts(ino), ino, idx)
            if len(old) > tail:
                v.put_extent(ino, idx, v.chunks.put(v.txn, old[:tail]))
        v.drop_extents(ino, keep)
        rec.cut = keep if rec.cut is None else min(rec.cut, keep)
    rec.size = size


def replace(v: View, ino: int, rec: Inode, data: bytes) -> None:
    """Make ``data`` the whole content of regular file ``ino`` (``rec`` edited), hiding every
    chunk of the layers beneath."""
    v.drop_extents(ino, 0)
    rec.size = len(data)
    rec.cut = 0
    if len(data) <= INLINE_MAX:
        rec.inline = data
    else:
        rec.inline = None
        put_chunks(
            v,
            ino,
            ((i // CHUNK_SIZE, data[i : i + CHUNK_SIZE]) for i in range(0, len(data), CHUNK_SIZE)),
        )


def visible_extents(v: View, ino: int, size: int) -> list[tuple[int, bytes]]:
    """(chunk index, chunk key) of every chunk of ``ino`` holding data, in order.

    The same answer as :meth:`View.extent` for each index, found by scanning the extents
    each layer of the chain recorded, so that the cost follows the data, not the size.
    """
    limit = nchunks(size)
    found: dict[int, bytes] = {}
    for layer, cut in v.cuts(ino):
        for idx, key in v.layer_extents(layer, ino):
            if idx >= limit:
                break
            if idx not in found:
                found[idx] = key
        if cut is not None:
            limit = min(limit, cut)
    return sorted(found.items())


def split_at_common(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """The layers of chains ``a`` and ``b`` above their deepest shared layer."""
    in_b = set(b)
    for i, layer in enumerate(a):
        if layer in in_b:
            return list(a[:i]), list(b[: b.index(layer)])
    return list(a), list(b)


def chunks_written_above(a: View, b: View, ino: int) -> tuple[set[int], int | None] | None:
    """The chunk indexes of ``ino`` that trees ``a`` and ``b`` may see differently: those
    with an extent in a layer above their deepest shared layer, and the smallest cut one of
    those layers carries for ``ino`` (chunks from there on may differ too). None when the
    trees share no layer at all (then any chunk may differ)."""
    up_a, up_b = split_at_common(a.chain, b.chain)
    if len(up_a) == len(a.chain) and len(up_b) == len(b.chain):
        return None
    candidates: set[int] = set()
    min_cut: int | None = None
    for view, layers in ((a, up_a), (b, up_b)):
        for layer in layers:
            candidates.update(idx for idx, _k in view.layer_extents(layer, ino))
            cut = view.own_cut(layer, ino)
            if cut is not None:
                min_cut = cut if min_cut is None else min(min_cut, cut)
    return candidates, min_cut


def copy_extents(
    ours: View, theirs: View, ino: int, size: int, ours_chunked: bool, top_cut: int | None
) -> int | None:
    """Make the chunks of ``ino`` (a file of ``size`` bytes) in ``ours``' top layer read as
    they do in ``theirs``; returns the cut the top layer's record must carry.

    ``ours_chunked``: ours holds the file in chunks (not inline); ``top_cut`` is the cut of
    ours' top-layer record, if it has one. When the trees share a layer and no layer above
    it cut the file, only the extents that differ are copied; otherwise every extent is
    copied and the cut is 0. A copied extent takes a reference on its chunk: no chunk bytes
    are read or written.
    """
    n = nchunks(size)
    cuts_t = theirs.cuts(ino)
    above = chunks_written_above(ours, theirs, ino) if ours_chunked else None
    if above is not None and above[1] is None:
        cuts_o = ours.cuts(ino)
        done = True
        for idx in sorted(i for i in above[0] if i < n):
            kt = theirs.extent(cuts_t, ino, idx)
            if kt == ours.extent(cuts_o, ino, idx):
                continue
            if kt is None:
                done = False
                break
            ours.chunks.incref(ours.txn, kt)
            ours.put_extent(ino, idx, kt)
        if done:
            ours.drop_extents(ino, n)
            return n if top_cut is None else min(top_cut, n)
    # Full copy: every chunk of theirs into our top, hiding everything beneath.
    ours.drop_extents(ino, 0)
    for idx in range(n):
        kt = theirs.extent(cuts_t, ino, idx)
        if kt is not None:
            ours.chunks.incref(ours.txn, kt)
            ours.put_extent(ino, idx, kt)
    return 0
