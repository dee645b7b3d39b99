"""``Branch.open``: a binary file object over one inode, with seek and truncate.

The raw file does one transaction per read or write; ``Branch.open`` wraps it in Python's
own buffered classes, so many small writes become a few large ones, as with ``open()``.
"""

from __future__ import annotations

import errno
import io

from . import tree
from .errors import os_error
from .layers import BoundTree, View


class RawBranchFile(io.RawIOBase):
    """An unbuffered file open on inode ``ino`` of a branch."""

    def __init__(
        self,
        branch: BoundTree,
        ino: int,
        name: str,
        *,
        readable: bool,
        writable: bool,
        append: bool,
    ) -> None:
        super().__init__()
        self._branch = branch
        self._ino = ino
        self.name = name
        self._readable = readable
        self._writable = writable
        self._append = append
        self._pos = 0

    @property
    def ino(self) -> int:
        """The inode number this file is open on."""
        return self._ino

    def readable(self) -> bool:
        """Whether the file was opened for reading."""
        return self._readable

    def writable(self) -> bool:
        """Whether the file was opened for writing."""
        return self._writable

    def seekable(self) -> bool:
        """Always true: branch files support random access."""
        return True

    def _size(self) -> int:
        return self._branch.read_view(lambda v: tree.get(v, self._ino).size)

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        """Read up to ``len(buffer)`` bytes at the current position."""
        self._checkClosed()
        if not self._readable:
            raise io.UnsupportedOperation("read")
        size = len(buffer)
        pos = self._pos
        data = self._branch.read_view(lambda v: tree.read(v, self._ino, pos, size))
        n = len(data)
        buffer[:n] = data
        self._pos += n
        return n

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        """Write ``data`` at the current position (at the end in append mode)."""
        self._checkClosed()
        if not self._writable:
            raise io.UnsupportedOperation("write")
        payload = bytes(data)

        def op(v: View) -> int:
            pos = tree.get(v, self._ino).size if self._append else self._pos
            tree.write(v, self._ino, pos, payload)
            return pos

        pos = self._branch.write_view(op)
        self._pos = pos + len(payload)
        return len(payload)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the position; SEEK_SET, SEEK_CUR and SEEK_END as for a native file."""
        self._checkClosed()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size() + offset
        else:
            raise os_error(errno.EINVAL, self.name)  # lseek(2) with an unknown whence
        if pos < 0:
            raise os_error(errno.EINVAL, self.name)
        self._pos = pos
        return pos

    def tell(self) -> int:
        """The current position."""
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        """Cut or extend the file to ``size`` (default: the current position)."""
        self._checkClosed()
        if not self._writable:
            raise io.UnsupportedOperation("truncate")
        size = self._pos if size is None else size
        self._branch.write_view(lambda v: tree.truncate(v, self._ino, size))
        return size

    def fileno(self) -> int:
        """Branch files have no OS descriptor."""
        raise io.UnsupportedOperation("fileno")


_MODES = {
    "r": (True, False, False, False, False),
    "r+": (True, True, False, False, False),
    "w": (False, True, True, True, False),
    "w+": (True, True, True, True, False),
    "a": (False, True, True, False, True),
    "a+": (True, True, True, False, True),
    "x": (False, True, True, True, False),
    "x+": (True, True, True, True, False),
}


def parse_mode(mode: str) -> tuple[bool, bool, bool, bool, bool, bool]:
    """(readable, writable, create, truncate, append, exclusive) for an ``open`` mode."""
    if "t" in mode:
        raise ValueError("Branch.open is binary only; use read_text/write_text for text")
    core = mode.replace("b", "")
    if core not in _MODES:
        raise ValueError(f"invalid mode: {mode!r}")
    r, w, create, trunc, append = _MODES[core]
    return r, w, create, trunc, append, core.startswith("x")
