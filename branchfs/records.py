"""Inode records as stored in a layer, and the ``stat`` result the API returns.

An inode record carries everything about one file except its data chunks: type and mode,
owner, size, times in nanoseconds, the list of ``(parent inode, name)`` links that name it
(so ``nlink`` is derived and every path of a file can be found without a tree walk), its
extended attributes, small contents inline, and the *cut* that hides chunks of lower layers
after a truncation (see docs/architecture.md, "Truncation across layers"). Its stored form
is :func:`branchfs.keys.encode_inode`.
"""

from __future__ import annotations

import stat as _stat
from dataclasses import dataclass, field

#: Inode number of the root directory of every tree.
ROOT_INO = 1


@dataclass(slots=True)
class Inode:
    """One inode's attributes in one layer. Mutable: copy with :meth:`copy` before editing."""

    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    rdev: int = 0
    links: list[tuple[int, bytes]] = field(default_factory=list)
    inline: bytes | None = None
    cut: int | None = None
    xattrs: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def is_dir(self) -> bool:
        """True for a directory."""
        return _stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        """True for a regular file."""
        return _stat.S_ISREG(self.mode)

    @property
    def is_link(self) -> bool:
        """True for a symbolic link."""
        return _stat.S_ISLNK(self.mode)

    @property
    def nlink(self) -> int:
        """Link count: directories report 1 (like btrfs: "unknown", so tools never guess)."""
        if _stat.S_ISDIR(self.mode):
            return 1
        return len(self.links)

    def copy(self) -> Inode:
        """An independent copy (lists and dicts copied too)."""
        return Inode(
            self.mode,
            self.uid,
            self.gid,
            self.size,
            self.atime_ns,
            self.mtime_ns,
            self.ctime_ns,
            self.rdev,
            list(self.links),
            self.inline,
            self.cut,
            dict(self.xattrs),
        )


@dataclass(frozen=True, slots=True)
class Stat:
    """What ``Branch.stat`` returns: the fields of ``os.stat_result`` that a tree has."""

    st_mode: int
    st_ino: int
    st_dev: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_atime_ns: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_rdev: int
    st_blocks: int
    st_blksize: int

    @property
    def st_atime(self) -> float:
        """Access time in seconds."""
        return self.st_atime_ns / 1e9

    @property
    def st_mtime(self) -> float:
        """Modification time in seconds."""
        return self.st_mtime_ns / 1e9

    @property
    def st_ctime(self) -> float:
        """Status change time in seconds."""
        return self.st_ctime_ns / 1e9

    @staticmethod
    def of(ino: int, rec: Inode, dev: int = 0) -> Stat:
        """The stat result of inode ``ino`` whose record is ``rec``."""
        return Stat(
            rec.mode,
            ino,
            dev,
            rec.nlink,
            rec.uid,
            rec.gid,
            rec.size,
            rec.atime_ns,
            rec.mtime_ns,
            rec.ctime_ns,
            rec.rdev,
            (rec.size + 511) // 512,
            CHUNK_SIZE,
        )


#: Size of a data chunk; chunks are aligned on multiples of it.
CHUNK_SIZE = 64 * 1024
#: Files up to this size keep their bytes in the inode record instead of chunks.
INLINE_MAX = 2048
