"""Drive the mount's filesystem object directly, without a kernel (as S3QL's tests do).

:class:`Driver` plays the kernel's part over a real store: it resolves paths with LOOKUP
(and keeps the lookup counts it would owe, to FORGET them), opens, reads, writes and closes
through file handles, lists with READDIRPLUS and runs the work a request deferred, in the
order the session would. Tests between the engine's and the real mount's use it to check
the bridge's bookkeeping (handles, holds, orphans, listings, invalidations) exactly.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager

from branchfs_fuse import kernel as K
from branchfs_fuse.bridge import Bridge

import branchfs

CTX = K.RequestContext(os.geteuid(), os.getegid(), os.getpid())


class Driver:
    """A kernel stand-in for one :class:`Bridge` serving branch ``branch`` of ``store``."""

    def __init__(self, store: branchfs.Store, branch: str = "main") -> None:
        self.bridge = Bridge(store, branch, "/nonexistent")
        #: Kernel cache drops the bridge asked for: ``(entries, inodes)`` per call.
        self.invalidated: list[tuple[list[tuple[int, bytes]], list[int]]] = []
        self.bridge.coherence.invalidator = lambda e, i: self.invalidated.append((e, i))
        #: References the kernel would hold, by fuse inode.
        self.refs: dict[int, int] = {}

    def _settle(self) -> None:
        """What the session does after each request: run deferred work, let go of replies."""
        for fn in self.bridge.take_work():
            fn()
        self.bridge.replied()

    def lookup(self, path: str) -> int:
        """The fuse inode of ``path`` (relative to the mount root), looked up component by
        component as the kernel would; ENOENT as ``FUSEError``."""
        ino = 1
        for part in path.strip("/").split("/"):
            if not part:
                continue
            try:
                attrs = self.bridge.lookup(ino, os.fsencode(part), CTX)
            finally:
                self._settle()
            if attrs.st_ino == 0:
                raise K.FUSEError(2)
            ino = attrs.st_ino
            self.refs[ino] = self.refs.get(ino, 0) + 1
        return ino

    def forget_all(self) -> None:
        """The kernel drops every reference it holds (as at unmount or memory pressure)."""
        self.bridge.forget(list(self.refs.items()))
        self.refs.clear()
        self._settle()

    def getattr(self, path: str) -> K.EntryAttributes:
        """The attributes the kernel would cache for ``path``."""
        attrs = self.bridge.getattr(self.lookup(path), CTX)
        self._settle()
        return attrs

    def create(self, path: str, mode: int = 0o644, flags: int = os.O_RDWR) -> int:
        """Create and open ``path``; its file handle."""
        parent, name = os.path.split(path.strip("/"))
        pino = self.lookup(parent)
        info, attrs = self.bridge.create(pino, os.fsencode(name), mode, flags, CTX)
        self.refs[attrs.st_ino] = self.refs.get(attrs.st_ino, 0) + 1
        self._settle()
        return info.fh

    def open(self, path: str, flags: int = os.O_RDONLY) -> int:
        """Open ``path``; its file handle."""
        fh = self.bridge.open(self.lookup(path), flags, CTX).fh
        self._settle()
        return fh

    def write(self, fh: int, off: int, data: bytes, kill_suidgid: bool = False) -> int:
        """A WRITE request."""
        n = self.bridge.write(fh, off, data, kill_suidgid=kill_suidgid)
        self._settle()
        return n

    def read(self, fh: int, off: int, size: int) -> bytes:
        """A READ request; the reply's bytes."""
        try:
            out = self.bridge.read(fh, off, size)
            return out if isinstance(out, bytes) else b"".join(bytes(p) for p in out)
        finally:
            self._settle()

    def close(self, fh: int) -> None:
        """close(2) of the last descriptor: FLUSH, then RELEASE."""
        try:
            self.bridge.flush(fh)
        finally:
            self.bridge.release(fh)
            self._settle()

    @contextmanager
    def opened(self, path: str, flags: int = os.O_RDONLY) -> Iterator[int]:
        """``open`` for a block, closed after it."""
        fh = self.open(path, flags)
        try:
            yield fh
        finally:
            self.close(fh)

    def mkdir(self, path: str, mode: int = 0o755) -> int:
        """mkdir; the new directory's fuse inode."""
        parent, name = os.path.split(path.strip("/"))
        attrs = self.bridge.mkdir(self.lookup(parent), os.fsencode(name), mode, CTX)
        self.refs[attrs.st_ino] = self.refs.get(attrs.st_ino, 0) + 1
        self._settle()
        return attrs.st_ino

    def unlink(self, path: str) -> None:
        """unlink(2)."""
        parent, name = os.path.split(path.strip("/"))
        self.bridge.unlink(self.lookup(parent), os.fsencode(name), CTX)
        self._settle()

    def rmdir(self, path: str) -> None:
        """rmdir(2)."""
        parent, name = os.path.split(path.strip("/"))
        self.bridge.rmdir(self.lookup(parent), os.fsencode(name), CTX)
        self._settle()

    def readdir(self, ino: int, offset: int = 0, size: int = 65536) -> list[tuple[bytes, int]]:
        """One READDIRPLUS reply: ``(name, next offset)`` of each entry; the references it
        hands the kernel are counted like lookups."""
        out = K.DirBuffer(size, plus=True)
        self.bridge.readdir(ino, offset, out)
        self._settle()
        raw = out.payload()
        entries = []
        pos = 0
        while pos < len(raw):
            nodeid = struct.unpack_from("<Q", raw, pos)[0]
            pos += K.ENTRY_OUT.size
            _ino, off, namelen, _typ = K.DIRENT.unpack_from(raw, pos)
            name = raw[pos + K.DIRENT.size : pos + K.DIRENT.size + namelen]
            if nodeid:
                self.refs[nodeid] = self.refs.get(nodeid, 0) + 1
            entries.append((name, off))
            pos += (K.DIRENT.size + namelen + 7) & ~7
        return entries

    def listdir(self, path: str) -> list[str]:
        """The names in ``path`` (without ``.`` and ``..``), read in small replies."""
        ino = self.lookup(path)
        names: list[str] = []
        offset = 0
        while True:
            batch = self.readdir(ino, offset, size=400)
            if not batch:
                return names
            names += [os.fsdecode(n) for n, _o in batch if n not in (b".", b"..")]
            offset = batch[-1][1]

    def ctl(self, line: str) -> bytes:
        """One command through ``.branchfs/ctl``: written, then the answer read back."""
        fh = self.open(".branchfs/ctl", os.O_RDWR)
        try:
            self.write(fh, 0, line.encode() + b"\n")
            return self.read(fh, 0, 1 << 20)
        finally:
            self.close(fh)
