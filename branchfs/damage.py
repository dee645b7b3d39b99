"""What damage to a store's LMDB file looks like, and refusing it before it is mapped.

LMDB maps ``data.mdb`` and trusts it: a page past the end of a truncated file is a SIGBUS
that kills the process, an emptied file is silently re-created as a new environment, and
damaged pages come back as a handful of LMDB errors. This module names those errors
(:data:`DAMAGE_ERRORS`), turns them into :class:`StoreCorrupt` (EIO) naming the store and
what to run, and checks a file before LMDB maps it.
"""

from __future__ import annotations

import fcntl
import os

import lmdb

from .errors import BranchFSError, NotAStore, StoreCorrupt

#: LMDB errors that mean the file is damaged or truncated, never a mistake of the caller.
DAMAGE_ERRORS: tuple[type[lmdb.Error], ...] = (
    lmdb.CorruptedError,
    lmdb.PageNotFoundError,
    lmdb.PanicError,
    lmdb.InvalidError,
    lmdb.VersionMismatchError,
)


def damaged(path: str, exc: BaseException) -> StoreCorrupt:
    """The :class:`StoreCorrupt` for an LMDB error that means a damaged file."""
    return StoreCorrupt(
        f"the store at {path} is damaged ({exc}); run `branchfs fsck {path}` to see what is "
        "hurt, and restore what it lists from a backup"
    )


def wait_for_creator(path: str) -> None:
    """Wait until a process creating the environment at ``path`` has written its header.

    LMDB holds an exclusive ``fcntl`` lock on byte 0 of ``lock.mdb`` while it initializes a
    new environment and downgrades it to shared afterwards (``mdb_env_setup_locks``).
    """
    try:
        fd = os.open(os.path.join(path, "lock.mdb"), os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH, 1, 0, os.SEEK_SET)
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0, os.SEEK_SET)
    except OSError:
        pass
    finally:
        os.close(fd)  # this process holds no lock of its own on lock.mdb yet


def refuse_emptied(path: str, data_file: str) -> None:
    """Refuse a ``data.mdb`` truncated to 0 bytes, which LMDB would silently re-create."""
    try:
        if os.stat(data_file).st_size:
            return
    except FileNotFoundError:
        return
    wait_for_creator(path)
    if os.stat(data_file).st_size == 0:
        raise StoreCorrupt(
            f"{data_file} is empty: the store was truncated (or its creation was interrupted "
            f"before anything was stored). Restore {path} from a backup; if it never held "
            "anything, delete it and create it again"
        )


def unreadable(path: str, data_file: str, exc: lmdb.Error) -> BranchFSError:
    """What an ``MDB_INVALID`` at open means: a truncated, damaged or foreign file."""
    size = os.stat(data_file).st_size if os.path.exists(data_file) else 0
    if size < 2 * 4096:
        return StoreCorrupt(
            f"{data_file} is truncated ({size:,} bytes, shorter than LMDB's two meta pages); "
            f"restore {path} from a backup"
        )
    return NotAStore(
        f"{path} cannot be read as a branchfs store: data.mdb is not an LMDB file this "
        f"version reads ({exc}); its header (LMDB's meta pages) is damaged or it belongs to "
        "something else. Restore the store from a backup"
    )


def check_size(env: lmdb.Environment, fd: int, path: str) -> None:
    """Refuse ``data.mdb`` (open as ``fd``, mapped by ``env``) if it is shorter than LMDB's
    newest meta page says (:class:`StoreCorrupt`).

    LMDB maps the file and would read past its end (SIGBUS, the process dies) instead
    of reporting an error. A commit writes its pages before the meta page that names
    them and the file never shrinks in place, so a shorter file is a truncated one.
    """
    psize = env.stat()["psize"]
    needed = (env.info()["last_pgno"] + 1) * psize
    size = os.fstat(fd).st_size
    if size < needed:
        raise StoreCorrupt(
            f"{path}/data.mdb is truncated: it is {size:,} bytes, but LMDB's meta page "
            f"says its pages reach {needed:,} bytes. Restore {path} from a backup"
        )
