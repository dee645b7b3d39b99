"""Every LMDB key and value encoding of a store: the on-disk layout, in one module.

No other module builds or parses a key or a stored value; they call the codecs here
(through :mod:`branchfs.layers`, :mod:`branchfs.refs`, :mod:`branchfs.chunks` …). A format
change therefore touches this file and the format version in :mod:`branchfs.meta`.

Keys (all integers big-endian u64, so one layer's records are one contiguous key range and
a layer is enumerated with one cursor):

==============  ==========================================  ==================================
database        key                                         value
==============  ==========================================  ==================================
``meta``        ``magic`` ``format`` ``next_*`` ``topology``  raw bytes / u64 counters
``layers``      layer                                       ``[parent, frozen]``
``children``    parent layer, child layer                   empty
``branches``    name (utf-8, surrogateescape)               ``[id, top layer, created ns]``
``snapshots``   name                                        ``[layer, branch, created ns]``
``merges``      ``p`` layer, parent / ``c`` parent, layer   empty (the merge history)
``inodes``      layer, ino                                  inode record, or tombstone
``dirents``     layer, dir ino, name bytes                  ino (u64), or tombstone
``extents``     layer, ino, chunk index                     chunk key (17 bytes)
``chunks``      chunk key                                   the bytes
``chunkrefs``   chunk key                                   reference count (u64)
==============  ==========================================  ==================================

**Where record encoding happens**: every stored value (except chunk bytes, which are
checked by their digest in :mod:`branchfs.chunks`, and the empty :data:`TOMBSTONE`) goes
through :func:`seal` when written and :func:`unseal` when read, inside the ``encode_*`` /
``decode_*`` functions below. :func:`seal` appends a 4-byte xxh3 digest of the value and of
the part of its key that says what it is about (format 3); :func:`unseal` checks it, so a
flipped byte in any record is :class:`StoreCorrupt` (EIO), never a wrong answer. The
tombstone stays the empty value (callers test ``raw == TOMBSTONE`` before decoding).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from threading import get_ident as _get_ident
from typing import Any

import msgpack
import xxhash

from .errors import StoreCorrupt
from .records import Inode

U64 = struct.Struct(">Q")
U64x2 = struct.Struct(">QQ")
U64x3 = struct.Struct(">QQQ")
# The fixed-width key codecs below are the structs' own ``pack`` methods: they are built on
# every lookup, and a bound builtin is called without a Python frame.

#: An empty value: "deleted in this layer" (inodes and dirents).
TOMBSTONE = b""

# -- keys of the ``meta`` database -------------------------------------------------------------

MAGIC = b"magic"
FORMAT = b"format"
TOPOLOGY = b"topology"
NEXT_INO = b"next_ino"
NEXT_LAYER = b"next_layer"
NEXT_BRANCH = b"next_branch"
COUNTERS = (NEXT_INO, NEXT_LAYER, NEXT_BRANCH)
#: Present while a compaction is replacing the environment's file (``branchfs.compact``).
COMPACTING: bytes = b"compacting"
#: Prefix of the records of staging layers (``STAGING`` + u64 layer -> sealed owner token;
#: ``branchfs.staging``).
STAGING = b"staging/"

Raw = bytes | memoryview


# -- value framing -------------------------------------------------------------------------------


#: Bytes of digest appended to every sealed value.
DIGEST_SIZE = 4
_xxh3 = xxhash.xxh3_64_intdigest
_from_bytes = int.from_bytes
_U32 = struct.Struct("<I")
#: ``_digest_at(raw, offset)``: the stored digest (a 1-tuple), read in place (no slice).
_digest_at = _U32.unpack_from
_pack_digest = _U32.pack
_u64_at = U64.unpack_from
#: One msgpack packer per thread: ``msgpack.packb`` builds a new ``Packer`` per call, which
#: cost about 0.8 µs of a record's 1.1. A packer keeps a buffer between calls, so threads
#: do not share one.
_PACKERS: dict[int, Callable[[object], bytes]] = {}


def _packb(obj: object) -> bytes:
    """``msgpack.packb(obj, use_bin_type=True)``, with this thread's packer."""
    pack = _PACKERS.get(_get_ident())
    if pack is None:
        if len(_PACKERS) >= 256:  # threads come and go; their idents are reused
            _PACKERS.clear()
        pack = _PACKERS[_get_ident()] = msgpack.Packer(use_bin_type=True).pack
    return pack(obj)


_MASK64 = (1 << 64) - 1


def seal(payload: bytes, seed: int = 0) -> bytes:
    """The stored form of a value: ``payload`` then a 4-byte xxh3 digest of it.

    ``seed`` (a 64-bit int, hashed in) stands for the part of the record's key that says
    what the value is about (the inode number; the directory and name; the inode and chunk
    index; not the layer, so that gc can move a record to another layer unchanged): a value
    that a damaged key made appear under another key fails its check as surely as a damaged
    value. See :func:`inode_seed`, :func:`dirent_seed`, :func:`extent_seed`.
    """
    return payload + _pack_digest(_xxh3(payload, seed) & 0xFFFFFFFF)


def unseal(raw: Raw, seed: int = 0) -> Raw:
    """The payload of a value written by :func:`seal` with the same ``seed``.

    :class:`StoreCorrupt` if its digest does not match: the record was damaged on disk.
    (On every read path: kept to a few operations, about 0.3 µs.)
    """
    end = len(raw) - DIGEST_SIZE
    if end < 0:
        raise _damaged()
    payload = raw[:end]
    if _xxh3(payload, seed) & 0xFFFFFFFF != _digest_at(raw, end)[0]:
        raise _damaged()
    return payload


def _damaged() -> StoreCorrupt:
    return StoreCorrupt(
        "a metadata record does not match its checksum (damaged on disk); run "
        "`branchfs fsck` to see what it hurts"
    )


def inode_seed(ino: int) -> int:
    """The seal seed of the record of ``ino``."""
    return ino


def dirent_seed(parent: int, name: bytes) -> int:
    """The seal seed of entry ``name`` of directory ``parent``."""
    return _xxh3(name, parent)


def extent_seed(ino: int, idx: int) -> int:
    """The seal seed of the extent of chunk ``idx`` of ``ino``."""
    return (ino * 0x9E3779B97F4A7C15 + idx) & _MASK64


def reseal_v1(db: str, key: bytes, raw: bytes) -> bytes | None:
    """The format-3 value of a record written without digests (format 1); None: unchanged."""
    if db in ("chunks", "children") or (not raw and db in ("inodes", "dirents")):
        return None
    if db == "meta":
        return seal(raw) if key in COUNTERS else None
    if db == "inodes":
        return seal(raw, inode_seed(U64.unpack(key[8:16])[0]))
    if db == "dirents":
        return seal(raw, dirent_seed(U64.unpack(key[8:16])[0], key[16:]))
    if db == "extents":
        return seal(raw, extent_seed(*U64x2.unpack(key[8:24])))
    return seal(raw)  # layers, branches, snapshots, bases, chunkrefs


def u64(n: int) -> bytes:
    """A u64 value (counters, merge bases, reference counts, dirent targets), sealed."""
    payload = U64.pack(n)  # seal(payload), inlined: three of these in every fork
    return payload + _pack_digest(_xxh3(payload) & 0xFFFFFFFF)


def read_u64(raw: Raw) -> int:
    """The integer of a value written by :func:`u64`."""
    if len(raw) != 12:  # 8 bytes and the digest
        raise StoreCorrupt(f"a counter record is damaged ({len(raw)} bytes); run fsck")
    if _xxh3(raw[:8]) & 0xFFFFFFFF != _digest_at(raw, 8)[0]:  # unseal(raw), inlined
        raise _damaged()
    n: int = _u64_at(raw)[0]
    return n


def pack(obj: object) -> bytes:
    """A small metadata value (msgpack), sealed."""
    payload = _packb(obj)  # seal(payload), inlined
    return payload + _pack_digest(_xxh3(payload) & 0xFFFFFFFF)


def unpack(raw: Raw) -> Any:
    """Decode a small metadata value written by :func:`pack`."""
    try:
        return msgpack.unpackb(unseal(raw), raw=False, strict_map_key=False)
    except Exception as exc:
        raise StoreCorrupt(f"a metadata record cannot be decoded ({exc}); run fsck") from exc


# -- layers --------------------------------------------------------------------------------------


#: ``layer_key(lid)``: Key of a layer's record; also the prefix of every inode, dirent and
#: extent it holds.
layer_key: Callable[[int], bytes] = U64.pack


def layer_of(key: Raw) -> int:
    """The layer a ``layers``, ``inodes``, ``dirents`` or ``extents`` key belongs to."""
    return int(U64.unpack(key[:8])[0])


def encode_layer(parent: int, frozen: bool) -> bytes:
    """A layer record. It joins the decoded cache (the next fork or freeze reads the top
    layer this one made), and is kept by its fields: a fork writes the same record twice,
    for the source's new top and the fork's, both over the state it froze."""
    fields = (parent, bool(frozen))
    raw = _LAYER_VALUES.get(fields)
    if raw is None:
        raw = pack([parent, frozen])
        if len(_LAYER_VALUES) >= _DECODED_MAX:
            _LAYER_VALUES.clear()
        _LAYER_VALUES[fields] = raw
    if len(_LAYERS) >= _DECODED_MAX:
        _LAYERS.clear()
    _LAYERS[raw] = fields
    return raw


#: Layer and branch records already checked and decoded, by their stored bytes. Decoding is
#: a pure function of the bytes (same bytes: same digest check, same fields), and every
#: stat, create and fork decodes a branch record and layer records again (about 0.7 µs
#: each); the ones at hand are few. Each is cleared when it reaches ``_DECODED_MAX``.
_LAYERS: dict[bytes, tuple[int, bool]] = {}
#: Layer records this process encoded, by their fields (:func:`encode_layer`).
_LAYER_VALUES: dict[tuple[int, bool], bytes] = {}
_BRANCHES: dict[bytes, tuple[int, int, int]] = {}
#: The fork source of branch records (discard's root check reads it), by their bytes.
_SOURCES: dict[bytes, tuple[str, int] | None] = {}
_MISSING = object()
_DECODED_MAX = 4096
#: Inode records already checked and unpacked, by their stored bytes, with the inode they
#: were checked for (the digest is seeded by it): a directory's record is read by every
#: path through it. Same bytes, same inode: same verdict, same fields (never handed out).
#: Records this process encodes go in too (:func:`encode_inode_fields`): the mount reads a
#: record in the transaction after the one that wrote it (a directory at each create or
#: unlink in it, a file at its close), and bytes made by :func:`seal` pass their check.
_INODES: dict[bytes, tuple[int, list[Any]]] = {}


def decode_layer(raw: Raw) -> tuple[int, bool]:
    """(parent, frozen) of a layer record."""
    if type(raw) is bytes:
        hit = _LAYERS.get(raw)
        if hit is not None:
            return hit
    parent, frozen = unpack(raw)
    out = int(parent), bool(frozen)
    if type(raw) is bytes:
        if len(_LAYERS) >= _DECODED_MAX:
            _LAYERS.clear()
        _LAYERS[raw] = out
    return out


#: ``child_key(parent, child)``: Key of the ``children`` index entry saying ``child`` sits
#: on ``parent``.
child_key: Callable[[int, int], bytes] = U64x2.pack


def split_child_key(key: Raw) -> tuple[int, int]:
    """(parent, child) of a ``children`` key."""
    parent, child = U64x2.unpack(key)
    return int(parent), int(child)


# -- branches, snapshots, merge bases --------------------------------------------------------------


def ref_key(name: str) -> bytes:
    """Key of a branch or snapshot named ``name`` (validated by the caller)."""
    return name.encode("utf-8", "surrogateescape")


def ref_name(key: Raw) -> str:
    """The name of a branch or snapshot key."""
    return bytes(key).decode("utf-8", "surrogateescape")


def encode_branch(
    bid: int, top: int, created_ns: int, source: tuple[str, int] | None = None
) -> bytes:
    """A branch record; ``source`` (name, id) of the branch it was forked from, if any (a
    hint for discard's root check, re-verified when used). The record joins the decoded
    caches: a fork is often discarded by the process that made it."""
    raw = pack([bid, top, created_ns] if source is None else [bid, top, created_ns, *source])
    if len(_BRANCHES) >= _DECODED_MAX:
        _BRANCHES.clear()
    _BRANCHES[raw] = (bid, top, created_ns)
    if len(_SOURCES) >= _DECODED_MAX:
        _SOURCES.clear()
    _SOURCES[raw] = None if source is None else (source[0], source[1])
    return raw


def decode_branch_source(raw: Raw) -> tuple[str, int] | None:
    """(name, id) of the branch a branch record says it was forked from, or None."""
    if type(raw) is bytes:
        hit = _SOURCES.get(raw, _MISSING)
        if hit is not _MISSING:
            return hit  # type: ignore[return-value]
    fields = unpack(raw)
    out = (str(fields[3]), int(fields[4])) if len(fields) >= 5 else None
    if type(raw) is bytes:
        if len(_SOURCES) >= _DECODED_MAX:
            _SOURCES.clear()
        _SOURCES[raw] = out
    return out


def decode_branch(raw: Raw) -> tuple[int, int, int]:
    """(id, top layer, created ns) of a branch record."""
    if type(raw) is bytes:
        hit = _BRANCHES.get(raw)
        if hit is not None:
            return hit
    fields = unpack(raw)
    out = int(fields[0]), int(fields[1]), int(fields[2])
    if type(raw) is bytes:
        if len(_BRANCHES) >= _DECODED_MAX:
            _BRANCHES.clear()
        _BRANCHES[raw] = out
        if len(_SOURCES) >= _DECODED_MAX:
            _SOURCES.clear()
        # the same unpack answers decode_branch_source (discard's root check asks both)
        _SOURCES[raw] = (str(fields[3]), int(fields[4])) if len(fields) >= 5 else None
    return out


def encode_snapshot(layer: int, branch: str, created_ns: int) -> bytes:
    """A snapshot record."""
    return pack([layer, branch, created_ns])


def decode_snapshot(raw: Raw) -> tuple[int, str, int]:
    """(layer, source branch, created ns) of a snapshot record."""
    layer, branch, created = unpack(raw)
    return int(layer), str(branch), int(created)


# -- the merge history -----------------------------------------------------------------------

#: Key tags of the ``merges`` database: forward (layer -> merge parent) and reverse.
MERGE_FORWARD, MERGE_REVERSE = b"p", b"c"


def merge_key(layer: int, parent: int) -> bytes:
    """Key recording that state ``parent`` was merged into ``layer``."""
    return MERGE_FORWARD + U64x2.pack(layer, parent)


def merge_reverse_key(layer: int, parent: int) -> bytes:
    """The reverse-index key of the same edge (found from ``parent``)."""
    return MERGE_REVERSE + U64x2.pack(parent, layer)


def merge_parents_prefix(layer: int) -> bytes:
    """Prefix of the forward keys of ``layer`` (its merge parents)."""
    return MERGE_FORWARD + U64.pack(layer)


def merge_referrers_prefix(parent: int) -> bytes:
    """Prefix of the reverse keys of ``parent`` (the layers it was merged into)."""
    return MERGE_REVERSE + U64.pack(parent)


def split_merge_key(key: Raw) -> tuple[int, int]:
    """(first, second) layer of a ``merges`` key: (layer, parent) for a forward key,
    (parent, layer) for a reverse one."""
    a, b = U64x2.unpack(bytes(key[1:]))
    return int(a), int(b)


# -- inodes --------------------------------------------------------------------------------------


#: ``inode_key(layer, ino)``: Key of the record of ``ino`` in ``layer``.
inode_key: Callable[[int, int], bytes] = U64x2.pack


def split_inode_key(key: Raw) -> tuple[int, int]:
    """(layer, ino) of an ``inodes`` key."""
    layer, ino = U64x2.unpack(key)
    return int(layer), int(ino)


def encode_inode(rec: Inode, ino: int) -> bytes:
    """The stored form of the record of inode ``ino`` (a msgpack array), sealed."""
    return seal(_packb(_inode_list(rec)), ino)


def encode_inode_fields(rec: Inode, ino: int) -> tuple[bytes, list[Any] | None]:
    """:func:`encode_inode`, and the fields :func:`inode_fields` would decode from it, for a
    view that writes a record and reads it again in the same transaction (None when a
    field's type would not come back as it went in: only plain bytes and ints do)."""
    v = _inode_list(rec)
    raw = seal(_packb(v), ino)
    inline, xattrs = rec.inline, rec.xattrs
    if inline is not None and type(inline) is not bytes:
        return raw, None
    for _p, n in rec.links:
        if type(n) is not bytes:
            return raw, None
    if xattrs:
        for k, x in xattrs.items():
            if type(k) is not bytes or type(x) is not bytes:
                return raw, None
        v[11] = dict(xattrs)  # nothing in the fields is shared with ``rec``
    else:
        v[11] = {}
    if len(_INODES) >= _DECODED_MAX:
        _INODES.clear()
    _INODES[raw] = (ino, v)
    return raw, v


def _inode_list(rec: Inode) -> list[Any]:
    """The msgpack array of ``rec`` (a fresh list of its links)."""
    return [
        rec.mode,
        rec.uid,
        rec.gid,
        rec.size,
        rec.atime_ns,
        rec.mtime_ns,
        rec.ctime_ns,
        rec.rdev,
        list(rec.links),  # (parent, name) pairs: msgpack packs a tuple as an array
        rec.inline,
        rec.cut,
        rec.xattrs,
    ]


def decode_inode(raw: Raw, ino: int) -> Inode:
    """Parse the record of ``ino`` written by :func:`encode_inode`; :class:`StoreCorrupt` if
    it is not one or fails its checksum."""
    return inode_of(inode_fields(raw, ino))


def inode_fields(raw: Raw, ino: int) -> list[Any]:
    """The checked and unpacked fields of the record of ``ino``, for :func:`inode_of`.

    :class:`StoreCorrupt` if the record fails its checksum or is not an inode record. The
    list may be kept and given to :func:`inode_of` again (a view does, so that a record read
    many times in one transaction is checked and unpacked once): it is never handed out.
    """
    if type(raw) is bytes:
        hit = _INODES.get(raw)
        if hit is not None and hit[0] == ino:
            return hit[1]
    end = len(raw) - DIGEST_SIZE  # unseal(raw, ino), inlined: this is every stat's path
    if end < 0:
        raise _damaged()
    payload = raw[:end]
    if _xxh3(payload, ino) & 0xFFFFFFFF != _digest_at(raw, end)[0]:
        raise _damaged()
    try:
        v = msgpack.unpackb(payload, raw=True, use_list=True, strict_map_key=False)
    except Exception as exc:  # any decoding failure means the record is damaged
        raise StoreCorrupt(f"an inode record cannot be decoded ({exc}); run fsck") from exc
    if type(v) is not list or len(v) != 12:
        raise StoreCorrupt("an inode record has the wrong shape; run fsck")
    if type(raw) is bytes:
        if len(_INODES) >= _DECODED_MAX:
            _INODES.clear()
        _INODES[raw] = (ino, v)
    return v


def inode_of(v: list[Any]) -> Inode:
    """A new :class:`Inode` of fields from :func:`inode_fields` (nothing shared with them)."""
    try:
        return Inode(
            v[0],
            v[1],
            v[2],
            v[3],
            v[4],
            v[5],
            v[6],
            v[7],
            [(p, n) for p, n in v[8]],
            v[9],
            v[10],
            dict(v[11]),
        )
    except Exception as exc:  # any decoding failure means the record is damaged
        raise StoreCorrupt(f"an inode record cannot be decoded ({exc}); run fsck") from exc


# -- directory entries -----------------------------------------------------------------------------


#: ``dirent_prefix(layer, parent)``: Prefix of every entry of directory ``parent`` recorded
#: in ``layer``.
dirent_prefix: Callable[[int, int], bytes] = U64x2.pack


def dirent_key(layer: int, parent: int, name: bytes) -> bytes:
    """Key of entry ``name`` of directory ``parent`` in ``layer``."""
    return U64x2.pack(layer, parent) + name


def dirent_name(key: Raw) -> bytes:
    """The entry name of a ``dirents`` key."""
    return bytes(key[16:])


def rebase_key(key: Raw, layer: int) -> bytes:
    """The same ``inodes``/``dirents``/``extents`` key in another layer (squashing)."""
    return U64.pack(layer) + bytes(key[8:])


def encode_dirent(ino: int, parent: int, name: bytes) -> bytes:
    """The value of entry ``name`` of directory ``parent``, naming ``ino``."""
    return seal(U64.pack(ino), _xxh3(name, parent))


def decode_dirent(raw: Raw, parent: int, name: bytes) -> int:
    """The inode entry ``name`` of ``parent`` names; 0 for a tombstone."""
    if not raw:
        return 0
    seed = _xxh3(name, parent)  # unseal(raw, dirent_seed(...)), inlined: 2 in every stat
    if len(raw) != 12 or _xxh3(raw[:8], seed) & 0xFFFFFFFF != _digest_at(raw, 8)[0]:
        raise _damaged()
    ino: int = _u64_at(raw)[0]
    return ino


# -- extents -------------------------------------------------------------------------------------


#: ``extent_prefix(layer, ino)``: Prefix of every extent of ``ino`` recorded in ``layer``.
extent_prefix: Callable[[int, int], bytes] = U64x2.pack


#: ``extent_key(layer, ino, idx)``: Key of chunk ``idx`` of ``ino`` in ``layer``.
extent_key: Callable[[int, int, int], bytes] = U64x3.pack


def split_extent_key(key: Raw) -> tuple[int, int, int]:
    """(layer, ino, chunk index) of an ``extents`` key."""
    layer, ino, idx = U64x3.unpack(key)
    return int(layer), int(ino), int(idx)


def extent_index(key: Raw) -> int:
    """The chunk index of an ``extents`` key."""
    return int(U64.unpack(key[16:24])[0])


def encode_extent(chunk_key: bytes, ino: int, idx: int) -> bytes:
    """The value of the extent of chunk ``idx`` of ``ino``, naming ``chunk_key``."""
    return seal(chunk_key, (ino * 0x9E3779B97F4A7C15 + idx) & _MASK64)


def decode_extent(raw: Raw, ino: int, idx: int) -> bytes:
    """The chunk key the extent of chunk ``idx`` of ``ino`` names."""
    return bytes(unseal(raw, (ino * 0x9E3779B97F4A7C15 + idx) & _MASK64))
