"""The FUSE wire format of the daemon, without a kernel: requests in, replies parsed.

A :class:`Session` over a real store answers hand-built requests into a pipe; the replies
are decoded with the layouts of ``<linux/fuse.h>`` and checked field by field. This covers
what the kernel never sends this daemon (plain READDIR, since readdirplus is negotiated)
and pins the layouts the mount tests rely on.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from branchfs_fuse import kernel as K
from branchfs_fuse.bridge import Bridge
from branchfs_fuse.session import Session

import branchfs


class Wire:
    """A session whose replies land in a pipe, and a way to send it requests."""

    def __init__(self, store: branchfs.Store) -> None:
        self.ops = Bridge(store, "main", "/nonexistent")
        self.read_end, write_end = os.pipe()
        self.session = Session(write_end, self.ops)
        self.unique = 0

    def call(self, opcode: int, nodeid: int, body: bytes = b"") -> tuple[int, bytes]:
        """Send one request; the reply's error (0 or -errno) and body."""
        self.unique += 1
        header = K.IN_HEADER.pack(40 + len(body), opcode, self.unique, nodeid, 0, 0, 1, 0, 0)
        buf = bytearray(header + body)
        self.session._dispatch(memoryview(buf), len(buf))
        raw = os.read(self.read_end, 1 << 20)
        length, error, unique = K.OUT_HEADER.unpack_from(raw)
        assert unique == self.unique and length == len(raw)
        return error, raw[K.OUT_HEADER.size :]


@pytest.fixture
def wire(tmp_path: Path) -> Iterator[Wire]:
    with branchfs.Store.open(tmp_path / "store.bfs", create=True) as store:
        main = store.create_branch("main")
        main.write_bytes("file", b"hello")
        main.mkdir("dir")
        w = Wire(store)
        yield w
        os.close(w.read_end)
        os.close(w.session.fd)


def dirents(raw: bytes, plus: bool) -> list[tuple[bytes, int, int, int]]:
    """``(name, ino, next offset, type)`` of each entry of a readdir reply."""
    out = []
    pos = 0
    while pos < len(raw):
        if plus:
            nodeid = struct.unpack_from("<Q", raw, pos)[0]
            pos += K.ENTRY_OUT.size
        ino, off, namelen, typ = K.DIRENT.unpack_from(raw, pos)
        name = raw[pos + K.DIRENT.size : pos + K.DIRENT.size + namelen]
        if plus and name not in (b".", b".."):
            assert nodeid == ino
        out.append((name, ino, off, typ))
        pos += (K.DIRENT.size + namelen + 7) & ~7
    return out


def test_lookup_reply_is_an_entry_out_with_the_file_attributes(wire: Wire) -> None:
    err, body = wire.call(K.LOOKUP, 1, b"file\0")
    assert err == 0 and len(body) == K.ENTRY_OUT.size
    fields = K.ENTRY_OUT.unpack(body)
    nodeid, _gen, entry_valid, attr_valid = fields[:4]
    attr = fields[6:]
    assert nodeid == attr[0] > 1
    assert entry_valid == attr_valid == 600
    assert attr[1] == 5  # size
    assert attr[9] & 0o170000 == 0o100000  # a regular file


def test_missing_name_is_a_cached_negative_entry_and_bad_inode_is_enoent(wire: Wire) -> None:
    err, body = wire.call(K.LOOKUP, 1, b"nope\0")
    assert err == 0 and K.ENTRY_OUT.unpack(body)[0] == 0  # nodeid 0: cache "no such name"
    err, _ = wire.call(K.GETATTR, 987654, K.GETATTR_IN.pack(0, 0, 0))
    assert err == -errno.ENOENT


@pytest.mark.parametrize("opcode", [K.READDIR, K.READDIRPLUS])
def test_readdir_lists_dots_and_entries_with_offsets_that_continue(wire: Wire, opcode: int) -> None:
    plus = opcode == K.READDIRPLUS
    err, body = wire.call(opcode, 1, K.READ_IN.pack(0, 0, 4096, 0, 0, 0, 0))
    assert err == 0
    entries = dirents(body, plus)
    assert [e[0] for e in entries] == [b".", b"..", b"dir", b"file"]
    assert entries[2][3] == 4 and entries[3][3] == 8  # DT_DIR, DT_REG
    # Continuing from the second entry's offset gives the rest, once.
    err, body = wire.call(opcode, 1, K.READ_IN.pack(0, entries[1][2], 4096, 0, 0, 0, 0))
    assert [e[0] for e in dirents(body, plus)] == [b"dir", b"file"]
    # Only readdirplus hands the kernel references (the daemon counts them as lookups).
    file_ino = entries[3][1]
    assert wire.ops.inodes.known(file_ino) is plus


def test_readdir_into_a_small_buffer_returns_what_fits(wire: Wire) -> None:
    err, body = wire.call(K.READDIRPLUS, 1, K.READ_IN.pack(0, 0, 200, 0, 0, 0, 0))
    assert err == 0 and len(dirents(body, True)) == 1  # "." alone: 160 bytes of 200


def test_getxattr_asks_size_first_and_gets_erange_when_too_small(wire: Wire) -> None:
    err, _ = wire.call(K.LOOKUP, 1, b"file\0")
    ino = K.ENTRY_OUT.unpack(_)[0]
    err, _ = wire.call(K.SETXATTR, ino, K.SETXATTR_IN.pack(3, 0) + b"user.k\0abc")
    assert err == 0
    err, body = wire.call(K.GETXATTR, ino, K.GETXATTR_IN.pack(0, 0) + b"user.k\0")
    assert err == 0 and K.GETXATTR_OUT.unpack(body)[0] == 3
    err, _ = wire.call(K.GETXATTR, ino, K.GETXATTR_IN.pack(2, 0) + b"user.k\0")
    assert err == -errno.ERANGE
    err, body = wire.call(K.GETXATTR, ino, K.GETXATTR_IN.pack(16, 0) + b"user.k\0")
    assert (err, body) == (0, b"abc")
    err, _ = wire.call(K.SETXATTR, ino, K.SETXATTR_IN.pack(1, 1) + b"user.k\0x")  # CREATE
    assert err == -errno.EEXIST


def test_opendir_is_enosys_and_unknown_requests_too(wire: Wire) -> None:
    assert wire.call(K.OPENDIR, 1, K.OPEN_IN.pack(0, 0))[0] == -errno.ENOSYS
    assert wire.call(43, 1, b"\0" * 32)[0] == -errno.ENOSYS  # FUSE_FALLOCATE
    assert wire.call(39, 1, b"\0" * 32)[0] == -errno.ENOSYS  # FUSE_IOCTL
    assert wire.call(99, 1)[0] == -errno.ENOSYS
    # They still cost a round trip, so `ctl stats` counts them by name.
    counts = wire.ops.requests
    assert (counts["fallocate"], counts["ioctl"], counts["opcode 99"]) == (1, 1, 1)


def test_times_before_1970_encode_as_the_kernel_reads_them() -> None:
    a = K.EntryAttributes()
    a.st_mtime_ns = -1_500_000_000  # 1.5 s before the epoch
    fields = K.ATTR_OUT.unpack(a.attr_out())
    mtime, mtimensec = fields[3 + 4], fields[3 + 7]
    assert (mtime, mtimensec) == (-2, 500_000_000)
