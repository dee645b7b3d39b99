"""Disk space a store keeps aside so that deletions work on a full disk.

LMDB never updates a page in place: even a deletion writes new pages (the B-tree path it
changes, the free list), and when readers still use the pages it frees, those new pages
extend ``data.mdb``. On a full disk the deletion meant to free space would then fail with
ENOSPC. The headroom ``Meta.preallocate`` keeps past the end of ``data.mdb`` does not
protect it: a large write that commits just before the disk fills may use all of it.

So a store also keeps ``STORE/reserve``, a file of :data:`RESERVE_BYTES` allocated on disk
(``posix_fallocate``, as ext4 keeps blocks for root). When a call that deletes something (a
name, a chunk, a branch or snapshot) and stores no new content fails with ENOSPC (an
unlink, an rmdir, a rename over a file, a truncate, a discard, a gc), the store deletes the
reserve and runs the call again in the space it gave back; the reserve is made again after
a later commit once the disk has room for it.
"""

from __future__ import annotations

import contextlib
import os

#: The size of ``STORE/reserve``, in bytes.
RESERVE_BYTES = 8 << 20
#: The least a reserve made on a nearly full disk may hold, and what it leaves free.
LEAST_BYTES = 1 << 20
SPARE_BYTES = 256 << 10
NAME = "reserve"


def path_of(store: str) -> str:
    """The reserve's path in the store directory ``store``."""
    return os.path.join(store, NAME)


def make(store: str) -> bool:
    """Allocate the reserve if it is missing; whether it exists afterwards.

    On a disk with less than :data:`RESERVE_BYTES` free the reserve takes what there is
    (all but :data:`SPARE_BYTES`), down to :data:`LEAST_BYTES`: right after a deletion
    spent it, the space it gave back is still nearly all free, and taking it again at
    once keeps the next deletion on a full disk possible (a deletion writes a few pages).
    Nothing is raised: a full disk or a store this user may not write to leave the store
    without a reserve (deletions then use the headroom alone).
    """
    path = path_of(store)
    if os.path.exists(path):
        return True
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return True
    except OSError:
        return False
    try:
        fs = os.fstatvfs(fd)
        size = min(RESERVE_BYTES, fs.f_bavail * fs.f_frsize - SPARE_BYTES)
        if size < LEAST_BYTES:
            raise OSError(28, "no room for a reserve")
        os.posix_fallocate(fd, 0, size)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        return False
    os.close(fd)
    return True


def release(store: str) -> bool:
    """Delete the reserve, giving its space back to the disk; whether there was one."""
    try:
        os.unlink(path_of(store))
    except OSError:
        return False
    return True
