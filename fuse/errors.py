"""Which errno the kernel hears for an exception raised below the mount.

Engine errors are ``OSError`` with Linux's errno already; branchfs's own errors map to the
errno a shell user would expect; anything unexpected is EIO (and is logged by the caller).
"""

from __future__ import annotations

import errno

from branchfs import BranchExists, BranchFSError, BranchNotFound, InvalidName


def errno_of(exc: BaseException) -> int:
    """The errno for ``exc``: its own for ``OSError``, ENOENT / EEXIST / EINVAL for a missing
    branch / an existing branch / a bad name, EPERM for other branchfs errors, else EIO."""
    if isinstance(exc, BranchNotFound):
        return errno.ENOENT
    if isinstance(exc, BranchExists):
        return errno.EEXIST
    if isinstance(exc, InvalidName):
        return errno.EINVAL
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if isinstance(exc, BranchFSError):
        return errno.EPERM
    return errno.EIO
