"""Attributes of one inode: chmod, chown, utimens and truncate in one call (:func:`setattr`),
the same on a record in memory (:func:`set_attrs`, for the mount's folded SETATTRs), the
set-id clearing rule of chown and unprivileged writes (:func:`cleared_setid`), and extended
attributes with Linux's name rules and errno (``getxattr(2)``, ``setxattr(2)``).

Functions take a :class:`~branchfs.layers.View` and an inode number, like
:mod:`branchfs.tree`, over whose lookups and truncate they are built. Errors are ``OSError``
with Linux's errno.
"""

from __future__ import annotations

import errno
import stat as st

from .errors import os_error
from .layers import View
from .records import Inode
from .tree import for_write, get, now_ns, truncate, writable

XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
XATTR_CREATE = 1
XATTR_REPLACE = 2


def cleared_setid(mode: int, *, member: bool = True) -> int:
    """``mode`` without the set-id bits a chown, or a write by a caller without CAP_FSETID,
    must clear: set-user-ID always; set-group-ID when the file is group-executable (else it
    marks mandatory locking) or the caller is not in the file's group (``member``). The rule
    of Linux's ``setattr_should_drop_suidgid()`` / ``file_remove_privs()`` (fs/attr.c,
    fs/inode.c); the daemon applies it to writes, :func:`setattr` to chown."""
    mode &= ~st.S_ISUID
    if mode & st.S_IXGRP or not member:
        mode &= ~st.S_ISGID
    return mode


def setattr(
    v: View,
    ino: int,
    *,
    mode: int | None = None,
    uid: int | None = None,
    gid: int | None = None,
    size: int | None = None,
    atime_ns: int | None = None,
    mtime_ns: int | None = None,
    ctime_ns: int | None = None,
) -> Inode:
    """chmod / chown / truncate / utimens in one call; None leaves a field as it is."""
    writable(v)
    rec = for_write(v, ino)
    if size is not None:
        rec = truncate(v, ino, size, rec)
    set_attrs(
        rec, mode=mode, uid=uid, gid=gid, atime_ns=atime_ns, mtime_ns=mtime_ns, ctime_ns=ctime_ns
    )
    v.put_inode(ino, rec)
    return rec


def set_attrs(
    rec: Inode,
    *,
    mode: int | None = None,
    uid: int | None = None,
    gid: int | None = None,
    atime_ns: int | None = None,
    mtime_ns: int | None = None,
    ctime_ns: int | None = None,
) -> None:
    """What :func:`setattr` does to a record besides its size, on ``rec`` in memory (the
    mount folds a file's SETATTRs into its write buffer with it)."""
    if mode is not None:
        rec.mode = st.S_IFMT(rec.mode) | st.S_IMODE(mode)
    if uid is not None and uid != -1:
        rec.uid = uid
    if gid is not None and gid != -1:
        rec.gid = gid
    # Linux's chown_common kills the set-id bits of a non-directory whatever ids it is
    # given, -1 (unchanged) included; a chmod in the same call sets the mode instead.
    if (uid is not None or gid is not None) and not rec.is_dir and mode is None:
        rec.mode = cleared_setid(rec.mode)
    if atime_ns is not None:
        rec.atime_ns = atime_ns
    if mtime_ns is not None:
        rec.mtime_ns = mtime_ns
    rec.ctime_ns = ctime_ns if ctime_ns is not None else now_ns()


# -- extended attributes -----------------------------------------------------------------------


# POSIX ACLs (``system.posix_acl_access`` / ``_default``) are not supported: they must be
# EOPNOTSUPP, as on a filesystem mounted without ACLs, so that tools copying permissions
# (``sed -i``, ``cp -p``: gnulib's qcopy_acl) fall back to chmod. Stored as plain xattrs they
# were kept but never applied to the mode bits, and the file stayed 0600.
XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.")


def check_xattr_name(name: bytes) -> None:
    """Linux's rules for an xattr name: a known namespace (else EOPNOTSUPP, which includes
    ``system.posix_acl_*``: no ACL support, see acl(5)) and a name after it."""
    if not name or len(name) > XATTR_NAME_MAX:
        raise os_error(errno.ERANGE)
    if not name.startswith(XATTR_NAMESPACES):
        raise os_error(errno.EOPNOTSUPP)
    if name.endswith(b".") and name.count(b".") == 1:
        raise os_error(errno.EINVAL)


def getxattr(v: View, ino: int, name: bytes) -> bytes:
    """The value of extended attribute ``name``; ENODATA if unset."""
    check_xattr_name(name)
    rec = get(v, ino)
    value = rec.xattrs.get(name)
    if value is None:
        raise os_error(errno.ENODATA)
    return value


def listxattr(v: View, ino: int) -> list[bytes]:
    """Names of the extended attributes of ``ino``, sorted."""
    return sorted(get(v, ino).xattrs)


def setxattr(v: View, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
    """Set extended attribute ``name`` (``XATTR_CREATE`` / ``XATTR_REPLACE`` honoured)."""
    writable(v)
    check_xattr_name(name)
    if len(value) > XATTR_SIZE_MAX:
        raise os_error(errno.E2BIG)
    rec = for_write(v, ino)
    if name.startswith(b"user.") and not (rec.is_reg or rec.is_dir):
        raise os_error(errno.EPERM)  # user xattrs only on files and directories, as on Linux
    exists = name in rec.xattrs
    if flags & XATTR_CREATE and exists:
        raise os_error(errno.EEXIST)
    if flags & XATTR_REPLACE and not exists:
        raise os_error(errno.ENODATA)
    rec.xattrs[name] = bytes(value)
    rec.ctime_ns = now_ns()
    v.put_inode(ino, rec)


def removexattr(v: View, ino: int, name: bytes) -> None:
    """Remove extended attribute ``name``; ENODATA if unset."""
    writable(v)
    check_xattr_name(name)
    rec = for_write(v, ino)
    if name not in rec.xattrs:
        raise os_error(errno.ENODATA)
    del rec.xattrs[name]
    rec.ctime_ns = now_ns()
    v.put_inode(ino, rec)
