"""Finding pages in an LMDB ``data.mdb`` by hand, to damage exactly one of them in tests.

Layout of LMDB 0.9 on 64-bit Linux (``mdb.c``): every page starts with a 16-byte header
(page number u64, pad u16, flags u16, lower u16, upper u16); pages 0 and 1 are meta pages
(``MDB_meta`` at offset 16: magic u32, version u32, address, map size, the free and main
databases' ``MDB_db`` records of 48 bytes, last page, transaction id). A leaf page's node
offsets (u16 each) follow the header; a node is lo u16, hi u16, flags u16, key size u16,
the key, then the value (a named database's value is its ``MDB_db``: root page at +40,
depth u16 at +6).
"""

from __future__ import annotations

import struct
from pathlib import Path

PAGE = 4096
P_BRANCH, P_LEAF = 0x01, 0x02
F_SUBDATA = 0x02


def newest_meta(data: bytes) -> int:
    """Offset of the meta page with the higher transaction id (0 or PAGE)."""
    t0 = struct.unpack_from("<Q", data, 144)[0]
    t1 = struct.unpack_from("<Q", data, PAGE + 144)[0]
    return 0 if t0 > t1 else PAGE


def main_root(data: bytes) -> int:
    """Root page number of the main database (which names the others)."""
    return struct.unpack_from("<Q", data, newest_meta(data) + 16 + 24 + 48 + 40)[0]


def leaf_nodes(data: bytes, pgno: int) -> list[tuple[bytes, int]]:
    """(key, offset of the value) of every node of leaf page ``pgno``."""
    base = pgno * PAGE
    lower = struct.unpack_from("<H", data, base + 12)[0]
    out = []
    for i in range((lower - 16) // 2):
        off = struct.unpack_from("<H", data, base + 16 + 2 * i)[0]
        _lo, _hi, _flags, ksize = struct.unpack_from("<HHHH", data, base + off)
        key = data[base + off + 8 : base + off + 8 + ksize]
        out.append((key, base + off + 8 + ksize))
    return out


def named_db(data: bytes, name: bytes) -> tuple[int, int]:
    """(root page, depth) of named database ``name`` (the main database is one leaf)."""
    root = main_root(data)
    flags = struct.unpack_from("<H", data, root * PAGE + 10)[0]
    assert flags & P_LEAF, "the main database has more than one page"
    for key, value_at in leaf_nodes(data, root):
        if key == name:
            depth = struct.unpack_from("<H", data, value_at + 6)[0]
            return struct.unpack_from("<Q", data, value_at + 40)[0], depth
    raise KeyError(name)


def flip(path: Path, offset: int, mask: int = 0x01) -> None:
    """XOR one byte of the file at ``offset`` with ``mask``."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([b ^ mask]))


def flip_all(path: Path, needle: bytes, at: int = 0) -> int:
    """Flip byte ``at`` of every occurrence of ``needle`` in the file; returns how many."""
    data = path.read_bytes()
    n, start = 0, 0
    while (i := data.find(needle, start)) >= 0:
        flip(path, i + at)
        n += 1
        start = i + 1
    return n
