"""Per-inode write buffers: ``write()`` calls collect here and reach the store in batches.

A buffer turns many small writes into one transaction (and whole 64 KiB chunks) at
flush/fsync/release, or as soon as it holds :data:`FLUSH_BYTES`. Small sequential writes
extend one segment; a large write, or a write elsewhere, starts a new one, and segments are
applied in order, so a later write over an earlier one wins just as it would on a disk.
"""

from __future__ import annotations

import time

from branchfs import attrs as A
from branchfs import tree as T
from branchfs.layers import View
from branchfs.records import Inode

from .privs import drop_privs

#: A buffer this large is written to the store at once.
FLUSH_BYTES = 8 << 20
#: All buffers together may hold this much before every one is flushed.
TOTAL_BYTES = 64 << 20
#: Due buffers (``WriteBack.overdue``) this large together go to the flush thread rather
#: than into the loop's batch (write-behind), when no batch is open.
BEHIND_BYTES = 256 << 10
#: A write this large is kept as its own segment; smaller sequential writes are joined.
WHOLE_PIECE = 64 << 10


class WriteBuffer:
    """Pending writes of one inode."""

    __slots__ = (
        "appended_in",
        "attrs",
        "drop_privs",
        "end",
        "kill_suidgid",
        "mtime_ns",
        "nbytes",
        "segments",
    )

    def __init__(self) -> None:
        #: ``(offset, data)`` in the order written; a ``bytearray`` grows with the small
        #: writes that continue it, ``bytes`` are kept as they came.
        self.segments: list[tuple[int, bytes | bytearray]] = []
        self.nbytes = 0
        self.end = 0
        self.mtime_ns = 0
        #: The daemon clears security.capability on flush (the kernel left it to us) …
        self.drop_privs = False
        #: … and set-user/group-ID bits: a writer without CAP_FSETID wrote.
        self.kill_suidgid = False
        #: The file's record as the SETATTRs folded into this buffer leave it (after its
        #: data): mode, owner and times are applied from it with the data. A buffer with
        #: attributes takes no more writes (see :meth:`.writeback.WriteBack.fold`).
        self.attrs: Inode | None = None
        #: The open batch (its LMDB transaction) in which an ``O_APPEND`` write read the
        #: file's end (``WriteBack.append_offset``): while it stays open, nobody else can
        #: have appended, and the next append need not read it again.
        self.appended_in: object = None

    def add(self, offset: int, data: bytes) -> None:
        """Record ``data`` written at ``offset``.

        A new segment keeps ``data`` itself (the request's own copy: most files are one
        write); it becomes a ``bytearray`` only when the next write continues it.
        """
        segs = self.segments
        n = len(data)
        if n < WHOLE_PIECE and segs:
            start, last = segs[-1]
            # a large write stays as it came; a small one, or a run of them, grows
            if start + len(last) == offset and (type(last) is bytearray or len(last) < WHOLE_PIECE):
                if type(last) is bytes:
                    last = bytearray(last)
                    segs[-1] = (start, last)
                last += data
                n = 0
        if n:
            segs.append((offset, data))
        self.nbytes += len(data)
        if offset + len(data) > self.end:
            self.end = offset + len(data)
        self.mtime_ns = time.time_ns()


def apply_buffer(v: View, ino: int, buf: WriteBuffer, put: bool = True) -> Inode:
    """Write a buffer's segments into ``ino`` and give it the buffer's mtime, then the
    attributes folded into it (:meth:`WriteBack.fold`); its record. Without ``put`` the
    record of a small file may be left unput: the caller puts the record returned (with
    its own changes) in the same transaction."""
    final = buf.attrs
    if not buf.kill_suidgid:
        # A small file (the common case of tar, git, pip): one read and one put of the
        # record, unless security.capability must go (then the general path below).
        privs = buf.drop_privs
        rec = T.write_inline(v, ino, buf.segments, buf.mtime_ns, final, put or privs)
        if rec is not None:
            if not (privs and b"security.capability" in rec.xattrs):
                return rec
            drop_privs(v, ino, False)
            rec = A.setattr(v, ino, mtime_ns=buf.mtime_ns, ctime_ns=buf.mtime_ns)
            return rec if final is None else _set_final(v, ino, final)
    for offset, data in buf.segments:
        T.write(v, ino, offset, data if isinstance(data, bytes) else memoryview(data))
    if buf.drop_privs:
        drop_privs(v, ino, buf.kill_suidgid)
    rec = A.setattr(v, ino, mtime_ns=buf.mtime_ns, ctime_ns=buf.mtime_ns)
    return rec if final is None else _set_final(v, ino, final)


def _set_final(v: View, ino: int, final: Inode) -> Inode:
    """Give ``ino`` the mode, owner and times of the record ``final`` (folded SETATTRs)."""
    return A.setattr(
        v,
        ino,
        mode=final.mode,
        uid=final.uid,
        gid=final.gid,
        atime_ns=final.atime_ns,
        mtime_ns=final.mtime_ns,
        ctime_ns=final.ctime_ns,
    )
