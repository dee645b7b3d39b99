"""The FUSE kernel protocol: message layouts, the values handlers trade in, and mounting.

The daemon speaks to ``/dev/fuse`` itself (see :mod:`.session`) instead of going through
libfuse, because the features that make a FUSE mount fast are negotiated in INIT and in
OPEN replies, and no maintained Python binding lets us ask for them: readdir by inode with
the kernel's directory cache (no OPENDIR at all), ``FUSE_HANDLE_KILLPRIV_V2`` (no
``getxattr security.capability`` before every ``write()``), and ``FOPEN_NOFLUSH`` on
read-only opens. Layouts follow ``<linux/fuse.h>``, protocol 7.38; the kernel adapts to the
minor version we answer with.

Mounting goes through ``fusermount3`` (Debian package ``fuse3``), which opens
``/dev/fuse``, mounts, and hands the descriptor back over a socket, as libfuse does.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
from dataclasses import dataclass
from typing import NamedTuple

from branchfs.errors import MountError as MountError  # K.MountError: fusermount3 refused

# -- opcodes --------------------------------------------------------------------------------
LOOKUP = 1
FORGET = 2
GETATTR = 3
SETATTR = 4
READLINK = 5
SYMLINK = 6
MKNOD = 8
MKDIR = 9
UNLINK = 10
RMDIR = 11
RENAME = 12
LINK = 13
OPEN = 14
READ = 15
WRITE = 16
STATFS = 17
RELEASE = 18
FSYNC = 20
SETXATTR = 21
GETXATTR = 22
LISTXATTR = 23
REMOVEXATTR = 24
FLUSH = 25
INIT = 26
OPENDIR = 27
READDIR = 28
FSYNCDIR = 30
ACCESS = 34
CREATE = 35
INTERRUPT = 36
DESTROY = 38
BATCH_FORGET = 42
READDIRPLUS = 44
RENAME2 = 45
SYNCFS = 50
TMPFILE = 51

#: Requests the daemon leaves to the kernel (ENOSYS: it falls back to its generic code,
#: or for ioctl answers ENOTTY), by name, so that ``ctl stats`` can count them too.
UNANSWERED = {
    31: "getlk",
    32: "setlk",
    33: "setlkw",
    37: "bmap",
    39: "ioctl",
    40: "poll",
    43: "fallocate",
    46: "lseek",
    47: "copy_file_range",
    52: "statx",
}

#: Every opcode by its lower-case name (``ctl stats`` reports time spent per name).
OPCODE_NAMES = {
    **{v: k.lower() for k, v in list(globals().items()) if k.isupper() and type(v) is int},
    **UNANSWERED,
}

NOTIFY_INVAL_INODE = 2
NOTIFY_INVAL_ENTRY = 3

# -- INIT flags -----------------------------------------------------------------------------
ASYNC_READ = 1 << 0
ATOMIC_O_TRUNC = 1 << 3
BIG_WRITES = 1 << 5
AUTO_INVAL_DATA = 1 << 12
DO_READDIRPLUS = 1 << 13
PARALLEL_DIROPS = 1 << 18
MAX_PAGES = 1 << 22
CACHE_SYMLINKS = 1 << 23
HANDLE_KILLPRIV_V2 = 1 << 28

#: What the daemon asks for (each only if the kernel offers it).
WANTED = (
    ASYNC_READ
    | ATOMIC_O_TRUNC
    | BIG_WRITES
    | AUTO_INVAL_DATA
    | DO_READDIRPLUS
    | MAX_PAGES
    | CACHE_SYMLINKS
    | HANDLE_KILLPRIV_V2
)

# -- open reply flags -----------------------------------------------------------------------
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_NOFLUSH = 1 << 5

# -- setattr valid bits ---------------------------------------------------------------------
FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_FH = 1 << 6
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8
FATTR_CTIME = 1 << 10
FATTR_KILL_SUIDGID = 1 << 11

WRITE_KILL_SUIDGID = 1 << 2
OPEN_KILL_SUIDGID = 1 << 0
FSYNC_FDATASYNC = 1 << 0

#: Largest write the kernel sends (with MAX_PAGES: 256 pages).
MAX_WRITE = 1 << 20
MAX_PAGES_COUNT = MAX_WRITE // 4096
#: Room for one request: the largest write plus its headers.
REQUEST_SIZE = MAX_WRITE + 4096

# -- layouts --------------------------------------------------------------------------------
IN_HEADER = struct.Struct("<IIQQIIIHH")
OUT_HEADER = struct.Struct("<IiQ")
_ATTR = "QQQqqqIIIIIIIIII"
ENTRY_OUT = struct.Struct("<QQQQII" + _ATTR)
ATTR_OUT = struct.Struct("<QII" + _ATTR)
DIRENT = struct.Struct("<QQII")
INIT_IN = struct.Struct("<IIII")
INIT_OUT = struct.Struct("<IIIIHHIIHHI7I")
GETATTR_IN = struct.Struct("<IIQ")
SETATTR_IN = struct.Struct("<IIQQQqqqIIIIIIII")
MKNOD_IN = struct.Struct("<IIII")
MKDIR_IN = struct.Struct("<II")
RENAME_IN = struct.Struct("<Q")
RENAME2_IN = struct.Struct("<QII")
LINK_IN = struct.Struct("<Q")
OPEN_IN = struct.Struct("<II")
CREATE_IN = struct.Struct("<IIII")
OPEN_OUT = struct.Struct("<QII")
READ_IN = struct.Struct("<QQIIQII")
WRITE_IN = struct.Struct("<QQIIQII")
WRITE_OUT = struct.Struct("<II")
RELEASE_IN = struct.Struct("<QIIQ")
FLUSH_IN = struct.Struct("<QIIQ")
FSYNC_IN = struct.Struct("<QII")
SETXATTR_IN = struct.Struct("<II")
GETXATTR_IN = struct.Struct("<II")
GETXATTR_OUT = struct.Struct("<II")
ACCESS_IN = struct.Struct("<II")
FORGET_IN = struct.Struct("<Q")
BATCH_FORGET_IN = struct.Struct("<II")
FORGET_ONE = struct.Struct("<QQ")
STATFS_OUT = struct.Struct("<QQQQQIIII6I")
NOTIFY_INVAL_INODE_OUT = struct.Struct("<Qqq")
NOTIFY_INVAL_ENTRY_OUT = struct.Struct("<QII")
#: ``fuse_notify_inval_entry_out.flags`` (protocol 7.38, Linux 6.2): only expire the
#: dentry, so that the next path walk through it asks LOOKUP again, rather than unhash it
#: (``d_invalidate``), which also broke the working directory of every process inside it.
#: Older kernels ignore the field and drop the dentry.
FUSE_EXPIRE_ONLY = 1 << 0


class FUSEError(Exception):
    """A request fails with ``errno``; the kernel hands that errno to the caller."""

    def __init__(self, errno: int) -> None:
        super().__init__(errno)
        self.errno = errno


class EntryAttributes:
    """What a lookup-like reply tells the kernel: an inode's attributes and cache timeouts.

    Built once per reply on the hot paths (lookup, getattr, create, mkdir): the constructor
    takes every field, so that a caller sets them in one call, and the packing methods read
    each field once, with the timeouts split by :func:`split_timeout`'s cache.
    """

    __slots__ = (
        "attr_timeout",
        "entry_timeout",
        "generation",
        "st_atime_ns",
        "st_blksize",
        "st_blocks",
        "st_ctime_ns",
        "st_gid",
        "st_ino",
        "st_mode",
        "st_mtime_ns",
        "st_nlink",
        "st_rdev",
        "st_size",
        "st_uid",
    )

    def __init__(
        self,
        st_ino: int = 0,
        entry_timeout: float = 0.0,
        attr_timeout: float = 0.0,
        st_mode: int = 0,
        st_nlink: int = 1,
        st_uid: int = 0,
        st_gid: int = 0,
        st_rdev: int = 0,
        st_size: int = 0,
        st_blksize: int = 4096,
        st_blocks: int = 0,
        st_atime_ns: int = 0,
        st_mtime_ns: int = 0,
        st_ctime_ns: int = 0,
    ) -> None:
        self.st_ino = st_ino
        self.generation = 0
        self.entry_timeout = entry_timeout
        self.attr_timeout = attr_timeout
        self.st_mode = st_mode
        self.st_nlink = st_nlink
        self.st_uid = st_uid
        self.st_gid = st_gid
        self.st_rdev = st_rdev
        self.st_size = st_size
        self.st_blksize = st_blksize
        self.st_blocks = st_blocks
        self.st_atime_ns = st_atime_ns
        self.st_mtime_ns = st_mtime_ns
        self.st_ctime_ns = st_ctime_ns

    def attr_fields(self) -> tuple[int, ...]:
        """The ``struct fuse_attr`` fields, in order."""
        a_s, a_n = divmod(self.st_atime_ns, _NS)
        m_s, m_n = divmod(self.st_mtime_ns, _NS)
        c_s, c_n = divmod(self.st_ctime_ns, _NS)
        return (
            self.st_ino,
            self.st_size,
            self.st_blocks,
            a_s,
            m_s,
            c_s,
            a_n,
            m_n,
            c_n,
            self.st_mode,
            self.st_nlink,
            self.st_uid,
            self.st_gid,
            self.st_rdev & 0xFFFFFFFF,
            self.st_blksize,
            0,
        )

    def entry_out(self) -> bytes:
        """``struct fuse_entry_out`` for this entry."""
        es, ens = split_timeout(self.entry_timeout)
        as_, ans = split_timeout(self.attr_timeout)
        return _ENTRY_OUT_PACK(self.st_ino, self.generation, es, as_, ens, ans, *self.attr_fields())

    def attr_out(self) -> bytes:
        """``struct fuse_attr_out`` for a getattr or setattr reply."""
        as_, ans = split_timeout(self.attr_timeout)
        return _ATTR_OUT_PACK(as_, ans, 0, *self.attr_fields())


_NS = 1_000_000_000
_ENTRY_OUT_PACK = ENTRY_OUT.pack
_ATTR_OUT_PACK = ATTR_OUT.pack
#: Timeouts already split, by value (a mount uses two or three).
_TIMEOUTS: dict[float, tuple[int, int]] = {}


def split_timeout(seconds: float) -> tuple[int, int]:
    """A timeout as the kernel takes it: whole seconds and nanoseconds."""
    hit = _TIMEOUTS.get(seconds)
    if hit is None:
        whole = int(seconds)
        hit = (whole, int((seconds - whole) * 1e9))
        if len(_TIMEOUTS) < 64:
            _TIMEOUTS[seconds] = hit
    return hit


@dataclass(slots=True)
class FileInfo:
    """An open file as the kernel will know it: its handle and how the kernel may cache it."""

    fh: int = 0
    keep_cache: bool = False
    direct_io: bool = False
    noflush: bool = False

    def open_out(self) -> bytes:
        """``struct fuse_open_out``."""
        flags = (
            (FOPEN_KEEP_CACHE if self.keep_cache else 0)
            | (FOPEN_DIRECT_IO if self.direct_io else 0)
            | (FOPEN_NOFLUSH if self.noflush else 0)
        )
        return OPEN_OUT.pack(self.fh, flags, 0)


class SetattrFields(NamedTuple):
    """A SETATTR request, decoded once: each attribute it changes, or None.

    Times are ns since the epoch (``*_NOW`` already resolved to the request's arrival).
    ``fh`` is the open file the change came through, if any; ``kill_suidgid`` means the
    caller lacks CAP_FSETID (``FATTR_KILL_SUIDGID``, protocol 7.33); ``touch`` that both
    times are "now" (``utimes(NULL)``, which needs less permission). A named tuple: tar
    sends three SETATTRs per file, and a frozen dataclass took 2 µs to build.
    """

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None
    ctime_ns: int | None = None
    fh: int | None = None
    kill_suidgid: bool = False
    touch: bool = False

    @classmethod
    def decode(cls, body: memoryview | bytes, now_ns: int) -> SetattrFields:
        """Decode ``struct fuse_setattr_in``; ``now_ns`` stands for ``FATTR_*_NOW``."""
        (
            valid,
            _pad,
            fh,
            size,
            _lock_owner,
            atime,
            mtime,
            ctime,
            atimensec,
            mtimensec,
            ctimensec,
            mode,
            _unused4,
            uid,
            gid,
            _unused5,
        ) = SETATTR_IN.unpack_from(body)
        atime_ns = mtime_ns = ctime_ns = None
        if valid & FATTR_ATIME:
            atime_ns = now_ns if valid & FATTR_ATIME_NOW else atime * 10**9 + atimensec
        if valid & FATTR_MTIME:
            mtime_ns = now_ns if valid & FATTR_MTIME_NOW else mtime * 10**9 + mtimensec
        if valid & FATTR_CTIME:
            ctime_ns = ctime * 10**9 + ctimensec
        return cls(
            mode if valid & FATTR_MODE else None,
            uid if valid & FATTR_UID else None,
            gid if valid & FATTR_GID else None,
            size if valid & FATTR_SIZE else None,
            atime_ns,
            mtime_ns,
            ctime_ns,
            fh if valid & FATTR_FH else None,
            bool(valid & FATTR_KILL_SUIDGID),
            valid & _NOW == _NOW,
        )

    def changes(self) -> dict[str, int]:
        """The changed attributes as keyword arguments of :func:`branchfs.attrs.setattr`."""
        return {n: v for n, v in zip(_CHANGES, self[:7], strict=True) if v is not None}


#: Both times set to "now": ``utimes(NULL)`` (fs/utimes.c ``ATTR_TOUCH``).
_NOW = FATTR_ATIME | FATTR_ATIME_NOW | FATTR_MTIME | FATTR_MTIME_NOW

#: The keyword names of :meth:`SetattrFields.changes`, in field order.
_CHANGES = ("mode", "uid", "gid", "size", "atime_ns", "mtime_ns", "ctime_ns")


@dataclass(slots=True)
class StatvfsData:
    """A statfs answer."""

    f_bsize: int = 4096
    f_frsize: int = 4096
    f_blocks: int = 0
    f_bfree: int = 0
    f_bavail: int = 0
    f_files: int = 0
    f_ffree: int = 0
    f_favail: int = 0
    f_namemax: int = 255

    def statfs_out(self) -> bytes:
        """``struct fuse_statfs_out``."""
        return STATFS_OUT.pack(
            self.f_blocks,
            self.f_bfree,
            self.f_bavail,
            self.f_files,
            self.f_ffree,
            self.f_bsize,
            self.f_namemax,
            self.f_frsize,
            0,
            *(0,) * 6,
        )


class RequestContext:
    """Who made a request."""

    __slots__ = ("gid", "pid", "uid", "umask")

    def __init__(self, uid: int, gid: int, pid: int, umask: int = 0) -> None:
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.umask = umask


_NO_ENTRY = bytes(ENTRY_OUT.size)


class DirBuffer:
    """The entries of one READDIRPLUS (or plain READDIR) reply, packed as the kernel reads them.

    Only a READDIRPLUS entry gives the kernel an inode reference (``plus``); the daemon counts
    those as lookups.
    """

    __slots__ = ("parts", "plus", "room")

    def __init__(self, size: int, *, plus: bool = True) -> None:
        self.parts: list[bytes] = []
        self.room = size
        self.plus = plus

    def add(self, name: bytes, attrs: EntryAttributes, next_offset: int) -> bool:
        """Append an entry (with its attributes if ``plus``); False once the reply is full."""
        entry = attrs.entry_out() if self.plus else b""
        return self._add(name, entry, attrs.st_ino, attrs.st_mode, next_offset)

    def add_dot(self, name: bytes, ino: int, next_offset: int) -> bool:
        """Append a directory's name only (``.``, ``..``, or one the kernel must look up
        itself): no attributes and no inode reference for the kernel."""
        return self._add(name, _NO_ENTRY if self.plus else b"", ino, 0o040000, next_offset)

    def _add(self, name: bytes, entry: bytes, ino: int, mode: int, next_offset: int) -> bool:
        namelen = len(name)
        size = len(entry) + DIRENT.size + namelen
        padded = (size + 7) & ~7
        if padded > self.room:
            return False
        self.room -= padded
        self.parts.append(
            entry
            + DIRENT.pack(ino, next_offset, namelen, (mode >> 12) & 0o17)
            + name
            + b"\0" * (padded - size)
        )
        return True

    def most_entries(self) -> int:
        """An upper bound on how many more entries fit: the shortest has a one-byte name."""
        shortest = ((ENTRY_OUT.size if self.plus else 0) + DIRENT.size + 1 + 7) & ~7
        return self.room // shortest

    def payload(self) -> bytes:
        """The reply body."""
        return b"".join(self.parts)


def cstrings(body: memoryview | bytes, count: int) -> list[bytes]:
    """The first ``count`` NUL-terminated strings of ``body``."""
    raw = bytes(body)
    out = []
    start = 0
    for _ in range(count):
        end = raw.index(b"\0", start)
        out.append(raw[start:end])
        start = end + 1
    return out


def mount(mountpoint: str, options: tuple[str, ...]) -> int:
    """Mount a FUSE filesystem at ``mountpoint``; the ``/dev/fuse`` descriptor serving it."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
        proc = subprocess.run(
            ["fusermount3", "-o", ",".join(options), "--", mountpoint],
            env=env,
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0:
            text = proc.stderr.decode(errors="replace").strip() or f"exit {proc.returncode}"
            raise MountError(text.removeprefix("fusermount3: "))
        theirs.close()
        _msg, fds, _flags, _addr = socket.recv_fds(ours, 16, 1)
    if not fds:
        raise MountError("fusermount3 mounted but sent no /dev/fuse descriptor")
    return fds[0]
