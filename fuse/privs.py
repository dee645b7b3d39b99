"""Privilege clearing that the kernel leaves to the daemon (``FUSE_HANDLE_KILLPRIV_V2``).

With KILLPRIV_V2 the kernel stops asking ``getxattr security.capability`` before every
``write()``; in exchange the daemon clears privileges itself on a write, a truncate and a
chown, as Linux's ``file_remove_privs()`` / ``setattr_should_drop_suidgid()`` (fs/inode.c,
fs/attr.c) would: ``security.capability`` goes on any write; set-user-ID goes when the
writer lacks CAP_FSETID (the kernel's ``*_KILL_SUIDGID`` flags); set-group-ID goes too
when the file is group-executable, or when the writer is not in the file's group.
"""

from __future__ import annotations

import stat as st

from branchfs import attrs as A
from branchfs.layers import View
from branchfs.records import Inode

from . import kernel as K

SETID = st.S_ISUID | st.S_ISGID


def in_group(ctx: K.RequestContext, gid: int) -> bool:
    """Whether the caller of a request is in group ``gid`` (its fsgid, or a supplementary
    group read from ``/proc/PID/status``); False when that cannot be read."""
    if ctx.gid == gid:
        return True
    try:
        with open(f"/proc/{ctx.pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Groups:"):
                    return str(gid).encode() in line.split()[1:]
    except OSError:
        pass
    return False


def cleared_mode(rec: Inode, kill_suidgid: bool, member: bool = True) -> int:
    """``rec``'s mode after a write by a caller without CAP_FSETID (``kill_suidgid``);
    ``member``: the caller is in the file's group."""
    if not kill_suidgid:
        return rec.mode
    return A.cleared_setid(rec.mode, member=member)


def drop_privs(v: View, ino: int, kill_suidgid: bool, member: bool = True) -> None:
    """Clear in ``ino`` what a write or truncate must clear (see the module docstring)."""
    rec = v.inode(ino)
    if rec is None:
        return
    if b"security.capability" in rec.xattrs:
        A.removexattr(v, ino, b"security.capability")
    mode = cleared_mode(rec, kill_suidgid, member)
    if mode != rec.mode:
        A.setattr(v, ino, mode=mode & 0o7777)
