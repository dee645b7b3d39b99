"""Permission checks the daemon makes when the kernel does not (no ``default_permissions``).

Under ``default_permissions`` the kernel checks every access against the attributes it
caches, and refreshes a directory's attributes before the next check whenever an entry of
it changed (fs/fuse/dir.c ``fuse_permission``: ``fuse_dir_changed()`` marks mode, uid and
gid stale), which costs one GETATTR round trip per create, unlink, mkdir, rmdir, rename,
link and symlink. Without it, ``fuse_permission()`` checks nothing but the exec of a regular
file without any x bit, sends ACCESS for access(2) and chdir(2), and ``fuse_do_setattr()``
adds ``ATTR_FORCE`` so that ``setattr_prepare()`` skips its ownership checks (fs/attr.c).

The daemon mounts that way only when it runs as root and the mount is private: FUSE then
admits only processes whose uid, euid, suid, gid, egid and sgid are the daemon's
(``fuse_allow_current_process``), and such a process holding CAP_DAC_OVERRIDE,
CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_CHOWN and CAP_FSETID passes every check below. For
the rest (a uid-0 process that dropped capabilities, or moved its fsuid) the daemon makes,
on each request that reaches it, the checks Linux would make: :func:`permitted` is
``generic_permission()`` (fs/namei.c), :func:`check_setattr` is ``may_setattr()`` and
``setattr_prepare()`` (fs/attr.c) plus ``vfs_truncate()``'s write check (fs/open.c).
Capabilities come from ``capget(2)`` of the calling thread, only when the mode bits alone
refuse, so a caller that owns what it touches costs no system call.

The kernel also walks cached names without asking: names in a directory that such a
caller may not search (:func:`guarded`) reach it uncached, so each walk through one asks
the daemon (LOOKUP), and a chmod or chown that closes a directory drops the names the
kernel holds in it. Still answered by the kernel alone (docs/architecture.md,
"Permissions"): a listing it holds of a directory the caller may not read (the daemon
answers no OPENDIR, so every listing is cached), a ``..`` out of a directory the caller
may not search, and the cached walks of a process that moved its fsuid off 0.
"""

from __future__ import annotations

import errno
import os
import stat as st
from collections.abc import Callable

from branchfs.records import Inode

from . import kernel as K
from .caps import capabilities
from .inodes import CONTROL_NODES
from .privs import in_group

#: ``mask`` bits of ``inode_permission()`` and of the ACCESS request (include/linux/fs.h).
MAY_EXEC = 1
MAY_WRITE = 2
MAY_READ = 4

#: Capability bits (include/uapi/linux/capability.h).
CAP_CHOWN = 1 << 0
CAP_DAC_OVERRIDE = 1 << 1
CAP_DAC_READ_SEARCH = 1 << 2
CAP_FOWNER = 1 << 3
CAP_FSETID = 1 << 4

#: renameat2(2)'s flag that swaps two names (include/uapi/linux/fs.h).
RENAME_EXCHANGE = 2

#: ``f_flags`` bit of an open for execve (``__FMODE_EXEC``), which FUSE passes in OPEN.
FMODE_EXEC = 0x20


def _own_userns() -> str:
    try:
        return os.readlink("/proc/self/ns/user")
    except OSError:
        return ""


_USERNS = _own_userns()


def _mapped(pid: int, rec: Inode) -> bool:
    """Whether ``rec``'s owner and group are mapped into thread ``pid``'s user namespace
    (``privileged_wrt_inode_uidgid``); True in the daemon's own namespace."""
    try:
        if os.readlink(f"/proc/{pid}/ns/user") == _USERNS:
            return True
        for kind, value in (("uid", rec.uid), ("gid", rec.gid)):
            with open(f"/proc/{pid}/{kind}_map", "rb") as fh:
                ranges = [tuple(map(int, line.split())) for line in fh]
            if not any(out <= value < out + n for _in, out, n in ranges):
                return False
    except (OSError, ValueError):
        return False
    return True


def inode_caps(ctx: K.RequestContext, rec: Inode, *, permitted: bool = False) -> int:
    """The capabilities the caller may use on ``rec``: its effective (or ``permitted``)
    set, none where ``rec``'s owner or group is not mapped into the caller's user namespace
    (``capable_wrt_inode_uidgid``, kernel/capability.c)."""
    caps = capabilities(ctx.pid, permitted=permitted)
    return caps if caps and _mapped(ctx.pid, rec) else 0


def permitted(ctx: K.RequestContext, rec: Inode, mask: int, *, access: bool = False) -> bool:
    """Whether the caller of a request may access ``rec`` for ``mask`` (``MAY_*`` bits), as
    ``generic_permission()`` decides (fs/namei.c; no ACLs: the mount does not negotiate
    ``FUSE_POSIX_ACL``). ``access``: for access(2), whose credentials carry the caller's
    permitted capabilities as effective ones (fs/open.c ``access_override_creds``)."""
    mode = rec.mode
    mask &= 7
    if ctx.uid == rec.uid:
        bits = mode >> 6
    elif mask & (mode ^ (mode >> 3)) and in_group(ctx, rec.gid):
        bits = mode >> 3
    else:
        bits = mode
    if not mask & ~bits:
        return True
    caps = inode_caps(ctx, rec, permitted=access)
    if st.S_ISDIR(mode):
        if not mask & MAY_WRITE and caps & CAP_DAC_READ_SEARCH:
            return True
        return bool(caps & CAP_DAC_OVERRIDE)
    if mask == MAY_READ and caps & CAP_DAC_READ_SEARCH:
        return True
    return bool((not mask & MAY_EXEC or mode & 0o111) and caps & CAP_DAC_OVERRIDE)


def require(ctx: K.RequestContext, rec: Inode, mask: int) -> None:
    """:func:`permitted`, or ``FUSEError(EACCES)``."""
    if not permitted(ctx, rec, mask):
        raise K.FUSEError(errno.EACCES)


def capable(ctx: K.RequestContext, rec: Inode, cap: int) -> bool:
    """Whether the caller may use capability ``cap`` (a ``CAP_*`` bit) on ``rec``
    (:func:`inode_caps`)."""
    return bool(inode_caps(ctx, rec) & cap)


def owner_or_capable(ctx: K.RequestContext, rec: Inode) -> bool:
    """``inode_owner_or_capable()``: the caller owns ``rec`` or holds CAP_FOWNER."""
    return ctx.uid == rec.uid or capable(ctx, rec, CAP_FOWNER)


def open_mask(flags: int) -> int:
    """What an open with ``flags`` asks for (``build_open_flags``/``may_open``, fs/namei.c
    and fs/open.c): read and/or write by the access mode, write for ``O_TRUNC``, only
    execute for an execve."""
    if flags & FMODE_EXEC:
        return MAY_EXEC
    acc = flags & os.O_ACCMODE
    mask = MAY_READ if acc == os.O_RDONLY else MAY_WRITE if acc == os.O_WRONLY else 6
    if flags & os.O_TRUNC:
        mask |= MAY_WRITE
    return mask


def check_setattr(ctx: K.RequestContext, rec: Inode, fields: K.SetattrFields) -> K.SetattrFields:
    """Check a SETATTR as Linux would and return it, set-group-ID dropped from a new mode
    where ``setattr_prepare()`` drops it; ``FUSEError`` EACCES or EPERM otherwise.

    A truncate by path needs write permission (``vfs_truncate``; one through a descriptor,
    ``fh`` set, was checked at its open); ``utimes(NULL)`` (both times now) needs ownership,
    CAP_FOWNER or write permission (``may_setattr``); chown needs CAP_CHOWN unless the owner
    keeps the uid and gives a group of its own; chmod and explicit times need ownership or
    CAP_FOWNER; chmod drops set-group-ID unless the caller is in the (new) group or holds
    CAP_FSETID.
    """
    if fields.size is not None:
        if fields.fh is None:
            require(ctx, rec, MAY_WRITE)
    elif fields.touch:
        if not owner_or_capable(ctx, rec) and not permitted(ctx, rec, MAY_WRITE):
            raise K.FUSEError(errno.EACCES)
    elif (fields.atime_ns is not None or fields.mtime_ns is not None) and not owner_or_capable(
        ctx, rec
    ):
        raise K.FUSEError(errno.EPERM)
    owner = ctx.uid == rec.uid
    chown = fields.uid is not None and not (owner and fields.uid == rec.uid)
    if chown and not capable(ctx, rec, CAP_CHOWN):
        raise K.FUSEError(errno.EPERM)
    if fields.gid is not None:
        mine = owner and (fields.gid == rec.gid or in_group(ctx, fields.gid))
        if not mine and not capable(ctx, rec, CAP_CHOWN):
            raise K.FUSEError(errno.EPERM)
    if fields.mode is not None:
        if not owner_or_capable(ctx, rec):
            raise K.FUSEError(errno.EPERM)
        gid = rec.gid if fields.gid is None else fields.gid
        if fields.mode & st.S_ISGID and not (in_group(ctx, gid) or capable(ctx, rec, CAP_FSETID)):
            return fields._replace(mode=fields.mode & ~st.S_ISGID)
    return fields


def check_link_source(ctx: K.RequestContext, rec: Inode) -> None:
    """The part of ``may_linkat()`` (fs/namei.c, ``fs.protected_hardlinks``) that asks
    ``inode_permission()``: a non-owner without CAP_FOWNER may link a regular file only if
    it may read and write it; EPERM otherwise."""
    if not st.S_ISREG(rec.mode) or ctx.uid == rec.uid:
        return
    if rec.mode & st.S_ISUID or rec.mode & (st.S_ISGID | st.S_IXGRP) == st.S_ISGID | st.S_IXGRP:
        return  # the kernel already required ownership or CAP_FOWNER
    if permitted(ctx, rec, MAY_READ | MAY_WRITE) or capable(ctx, rec, CAP_FOWNER):
        return
    if _protected_hardlinks():
        raise K.FUSEError(errno.EPERM)


def check_sticky(ctx: K.RequestContext, parent: Inode, rec: Inode) -> None:
    """``may_delete()``'s sticky test (fs/namei.c ``__check_sticky``): in a sticky
    directory only the owner of the name's file or of the directory, or a holder of
    CAP_FOWNER, may remove or replace it; EPERM otherwise. The VFS cannot make it here:
    without ``default_permissions`` FUSE hides S_ISVTX from the inode's mode
    (fs/fuse/inode.c ``fuse_change_attributes_common``; ``stat`` still shows it)."""
    if not parent.mode & st.S_ISVTX or ctx.uid in (rec.uid, parent.uid):
        return
    if not capable(ctx, rec, CAP_FOWNER):
        raise K.FUSEError(errno.EPERM)


def xattr_mask(name: bytes, write: bool) -> int:
    """What ``xattr_permission()`` (fs/xattr.c) asks ``inode_permission()`` for an attribute
    ``name``: nothing for ``security.``, ``system.`` and ``trusted.`` (left to the LSM, the
    filesystem, CAP_SYS_ADMIN), read or write for the rest."""
    if name.startswith((b"security.", b"system.", b"trusted.")):
        return 0
    return MAY_WRITE if write else MAY_READ


def guarded(rec: Inode) -> bool:
    """Whether directory ``rec`` may refuse a search to a uid-0 caller without capabilities:
    its owner class lacks x (owned by root), or its group or other class does (owned by
    another user; root's groups vary). The kernel checks no search of a cached name
    (``fuse_permission`` with no ``default_permissions``), so the names in such a directory
    are given to it uncached, and each path walk through it asks the daemon (LOOKUP)."""
    if rec.uid == 0:
        return not rec.mode & 0o100
    return rec.mode & 0o011 != 0o011


def _protected_hardlinks() -> bool:
    try:
        with open("/proc/sys/fs/protected_hardlinks", "rb") as fh:
            return fh.read().strip() != b"0"
    except OSError:
        return True


#: Write and search: what adding or removing a name in a directory needs (``may_create``,
#: ``may_delete``, fs/namei.c).
CHANGE = MAY_WRITE | MAY_EXEC


class KernelChecks:
    """The checks of a mount with ``default_permissions``: the kernel made them all."""

    def require(self, fino: int, mask: int, ctx: K.RequestContext) -> None:
        """EACCES unless the caller may access ``fino`` for ``mask``."""

    def open(self, fino: int, flags: int, ctx: K.RequestContext) -> None:
        """An open with ``flags``."""

    def listing(self, fino: int, offset: int, ctx: K.RequestContext) -> None:
        """A READDIR at ``offset``."""

    def access(self, fino: int, mask: int, ctx: K.RequestContext) -> None:
        """ACCESS (access(2), chdir(2)) for ``mask``."""

    def setattr(self, fino: int, fields: K.SetattrFields, ctx: K.RequestContext) -> K.SetattrFields:
        """SETATTR: what to apply of ``fields``."""
        return fields

    def link(self, fino: int, new_parent: int, ctx: K.RequestContext) -> None:
        """LINK of ``fino`` into ``new_parent``."""

    def remove(self, parent: int, name: bytes, ctx: K.RequestContext) -> None:
        """UNLINK or RMDIR of ``name`` in ``parent``."""

    def rename(
        self,
        old_parent: int,
        old_name: bytes,
        new_parent: int,
        new_name: bytes,
        flags: int,
        ctx: K.RequestContext,
    ) -> None:
        """RENAME/RENAME2."""

    def xattr(self, fino: int, name: bytes, ctx: K.RequestContext, *, write: bool) -> None:
        """GETXATTR (or with ``write``, SETXATTR and REMOVEXATTR) of ``name``."""

    def uncached(self, parent: int) -> bool:
        """Whether names in directory ``parent`` must reach the kernel uncached."""
        return False


class DaemonChecks(KernelChecks):
    """The checks of one mount's requests, on fuse inode numbers (control nodes, the
    daemon's own, are not checked); each raises ``FUSEError`` when Linux would refuse.

    ``record(fino)`` is the record of an inode; ``child(parent, name)`` the record a name
    names, or None; ``guard(fino)`` is called when a SETATTR makes directory ``fino``
    :func:`guarded`: the names the kernel caches in it must go.
    """

    def __init__(
        self,
        record: Callable[[int], Inode],
        child: Callable[[int, bytes], Inode | None],
        guard: Callable[[int], None],
    ) -> None:
        self.record = record
        self.child = child
        self.guard = guard

    def uncached(self, parent: int) -> bool:
        """Whether names in ``parent`` must reach the kernel uncached (:func:`guarded`)."""
        return parent not in CONTROL_NODES and guarded(self.record(parent))

    def require(self, fino: int, mask: int, ctx: K.RequestContext) -> None:
        """EACCES unless the caller may access ``fino`` for ``mask``."""
        if fino not in CONTROL_NODES:
            require(ctx, self.record(fino), mask)

    def open(self, fino: int, flags: int, ctx: K.RequestContext) -> None:
        """An open with ``flags`` (:func:`open_mask`)."""
        self.require(fino, open_mask(flags), ctx)

    def listing(self, fino: int, offset: int, ctx: K.RequestContext) -> None:
        """READDIR: read permission at a listing's start (offset 0: each ``opendir`` and
        ``rewinddir``). The kernel opens directories itself (the daemon answers no OPENDIR),
        so this is where ``may_open()``'s check is made."""
        if not offset:
            self.require(fino, MAY_READ, ctx)

    def access(self, fino: int, mask: int, ctx: K.RequestContext) -> None:
        """ACCESS (access(2), chdir(2)): :func:`permitted` with ``access``."""
        if fino not in CONTROL_NODES and not permitted(ctx, self.record(fino), mask, access=True):
            raise K.FUSEError(errno.EACCES)

    def setattr(self, fino: int, fields: K.SetattrFields, ctx: K.RequestContext) -> K.SetattrFields:
        """:func:`check_setattr` of ``fino``; ``guard`` it if it becomes :func:`guarded`."""
        rec = self.record(fino)
        fields = check_setattr(ctx, rec, fields)
        if rec.is_dir and (fields.mode is not None or fields.uid is not None):
            after = Inode(
                mode=rec.mode if fields.mode is None else st.S_IFDIR | fields.mode & 0o7777,
                uid=rec.uid if fields.uid is None else fields.uid,
            )
            if guarded(after) and not guarded(rec):
                self.guard(fino)
        return fields

    def link(self, fino: int, new_parent: int, ctx: K.RequestContext) -> None:
        """LINK: a name added to ``new_parent``, and :func:`check_link_source`."""
        if fino not in CONTROL_NODES:
            self.require(new_parent, CHANGE, ctx)
            check_link_source(ctx, self.record(fino))

    def remove(self, parent: int, name: bytes, ctx: K.RequestContext) -> None:
        """UNLINK, RMDIR: write and search on ``parent``, and :func:`check_sticky`."""
        if parent in CONTROL_NODES:
            return
        prec = self.record(parent)
        require(ctx, prec, CHANGE)
        if prec.mode & st.S_ISVTX:
            rec = self.child(parent, name)
            if rec is not None:
                check_sticky(ctx, prec, rec)

    def rename(
        self,
        old_parent: int,
        old_name: bytes,
        new_parent: int,
        new_name: bytes,
        flags: int,
        ctx: K.RequestContext,
    ) -> None:
        """``vfs_rename()`` (fs/namei.c): write and search on both directories and the
        sticky test of both names (``may_delete``), and write on a directory that changes
        parent (its ``..`` changes), both ways for an exchange."""
        self.remove(old_parent, old_name, ctx)
        self.remove(new_parent, new_name, ctx)
        if new_parent == old_parent:
            return
        moved = [(old_parent, old_name)]
        if flags & RENAME_EXCHANGE:
            moved.append((new_parent, new_name))
        for parent, name in moved:
            rec = self.child(parent, name)
            if rec is not None and rec.is_dir:
                require(ctx, rec, MAY_WRITE)

    def xattr(self, fino: int, name: bytes, ctx: K.RequestContext, *, write: bool) -> None:
        """GETXATTR, SETXATTR, REMOVEXATTR of ``name`` (:func:`xattr_mask`); a ``user.``
        name of a sticky directory is its owner's (or CAP_FOWNER's) to change."""
        mask = xattr_mask(name, write)
        if mask and fino not in CONTROL_NODES:
            rec = self.record(fino)
            sticky = rec.is_dir and rec.mode & st.S_ISVTX and name.startswith(b"user.")
            if write and sticky and not owner_or_capable(ctx, rec):
                raise K.FUSEError(errno.EPERM)
            require(ctx, rec, mask)
