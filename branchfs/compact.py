"""Compaction: rewrite ``data.mdb`` without its free pages, beside processes that use it.

LMDB reuses the pages a deletion frees but never gives them back to the filesystem, so a
store that once held a lot stays that big. :func:`compact` copies the live pages into a new
file (LMDB's own ``mdb_env_copy`` with ``MDB_CP_COMPACT``) and puts it in place of the old
one while other processes keep the store open, read it and write it.

The difficulty is those other processes: they have the old file mapped and share
``lock.mdb`` (the writer lock, the reader table and the last committed transaction id) with
the new one. The protocol, every step of which may be killed:

1. Take ``gc.lock`` and ``compact.lock`` (``flock``, exclusive).
2. Begin write transaction W1 (id T1). It holds LMDB's writer lock: nothing else commits.
3. Copy the snapshot of the last commit (T1 - 1) to ``compact.tmp/data.mdb``, fsync it.
4. Commit W1 with the mark :data:`~branchfs.following.MOVED_KEY` in the ``meta`` database. Every
   transaction of every process looks for the mark (one get); one that sees it waits on
   ``compact.lock`` and then follows (:meth:`branchfs.following.Follower.follow`).
5. Commit W2 (id T2 = T1 + 1) with the mark again, so that both meta pages of the old file
   carry it: a reader picks the meta page by the parity of the last transaction id in
   ``lock.mdb``, which commits to the new file will keep advancing.
6. Give the copy's two meta pages the ids T1 and T2 (LMDB's copy numbers them 0 and 1), so
   that the shared ``lock.mdb``, whose last id is T2, points into it correctly.
7. ``rename`` the copy over ``data.mdb`` and fsync the directory. Then re-open this
   process's environment and release the locks; other processes re-open theirs at their
   next transaction, and mounts are told to look (the change hook).

Killed before step 7, the old file is whole and carries the mark: the next process that sees
it finds ``compact.lock`` free and ``data.mdb`` not replaced, and removes the mark. Killed
after it, the new file is complete. A transaction that began before step 4 keeps reading the
old file (an unlinked inode) until it ends; its space returns to the filesystem once every
process that had the store open has made one more call.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import struct
from dataclasses import dataclass

import lmdb

from .errors import StoreCorrupt, StoreLocked
from .following import COMPACT_LOCK, MOVED_KEY
from .meta import Meta

#: Where the copy is made (inside the store: the rename must stay on one filesystem).
TMP_DIR = "compact.tmp"
#: LMDB's meta page layout (``MDB_page`` header then ``MDB_meta``, 64-bit builds).
META_MAGIC = 0xBEEFC0DE
_MAGIC_AT = 16
_TXNID_AT = 144
_META_END = 152


@dataclass(frozen=True)
class CompactReport:
    """What :func:`compact` did: ``data.mdb`` sizes before and after, in bytes."""

    bytes_before: int
    bytes_after: int
    seconds: float

    @property
    def bytes_freed(self) -> int:
        """Bytes given back to the filesystem (never negative)."""
        return max(0, self.bytes_before - self.bytes_after)

    def to_json(self) -> dict[str, float]:
        """A plain dict for JSON output."""
        return {**self.__dict__, "bytes_freed": self.bytes_freed}


def _step(name: str) -> None:
    """Called between the steps of the protocol; a test replaces it to kill us there."""


def _set_txnids(path: str, psize: int, t1: int, t2: int) -> None:
    """Number the two meta pages of the compacted copy ``t1`` and ``t2`` (same content)."""
    with open(path, "r+b") as fh:
        pages = bytearray(fh.read(2 * psize))
        if len(pages) < 2 * psize:
            raise StoreCorrupt(f"the compacted copy {path} is too short; nothing was replaced")
        ids = []
        for i in (0, 1):
            magic = struct.unpack_from("<I", pages, i * psize + _MAGIC_AT)[0]
            if magic != META_MAGIC:
                raise StoreCorrupt(f"the compacted copy {path} has no LMDB meta page {i}")
            ids.append(struct.unpack_from("<Q", pages, i * psize + _TXNID_AT)[0])
        newest = 0 if ids[0] > ids[1] else 1
        body = bytes(pages[newest * psize + _MAGIC_AT : newest * psize + _META_END])
        for i in (0, 1):
            pages[i * psize + _MAGIC_AT : i * psize + _META_END] = body
            struct.pack_into("<Q", pages, i * psize + _TXNID_AT, t1 if (t1 & 1) == i else t2)
        fh.seek(0)
        fh.write(pages)
        fh.flush()
        os.fsync(fh.fileno())


def _lock(path: str, name: str, what: str) -> int:
    fd = os.open(os.path.join(path, name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLocked(f"{what} is running on {path}; wait for it and try again") from None
    return fd


def compact(meta: Meta) -> CompactReport:
    """Rewrite the store's ``data.mdb`` without free pages; see the module docstring.

    Needs free disk space for the copy (at most the store's live data). Raises
    :class:`StoreLocked` if a gc or another compaction is running, ``OSError(ENOSPC)`` if
    the copy does not fit (nothing is changed then).
    """
    import time

    started = time.perf_counter()
    path = meta.path
    gc_fd = _lock(path, "gc.lock", "a gc")
    try:
        lock_fd = _lock(path, COMPACT_LOCK, "another compaction")
        try:
            before = os.stat(meta.data_file).st_size
            _replace(meta)
            after = os.stat(meta.data_file).st_size
        finally:
            os.close(lock_fd)
    finally:
        os.close(gc_fd)
    return CompactReport(before, after, time.perf_counter() - started)


def _replace(meta: Meta) -> None:
    path = meta.path
    tmp = os.path.join(path, TMP_DIR)
    shutil.rmtree(tmp, ignore_errors=True)  # a copy left by a compaction that was killed
    os.mkdir(tmp, 0o700)
    copy = os.path.join(tmp, "data.mdb")
    mark = str(os.getpid()).encode()
    try:
        with meta.lock:  # this process's other writers wait; its readers go on
            env = meta.env
            w1 = env.begin(write=True)
            try:
                reader = env.begin()
                try:
                    env.copy(tmp, compact=True, txn=reader)
                except lmdb.Error as exc:  # DiskError "No space left on device", EIO
                    if "No space" not in str(exc):
                        raise
                    raise OSError(
                        errno.ENOSPC,
                        "no space on its disk for the compacted copy of the store (it needs "
                        "up to the store's live data); free space there and compact again",
                        path,
                    ) from exc
                finally:
                    reader.abort()
                os.chmod(copy, 0o600)  # LMDB creates its copy 0644 (less the umask)
                with open(copy, "rb") as fh:
                    os.fsync(fh.fileno())
                _step("copied")
                t1 = w1.id()
                w1.put(MOVED_KEY, mark, db=meta.meta_db)
                w1.commit()
            except BaseException:
                w1.abort()
                raise
            try:
                _mark_again_and_rename(meta, copy, mark, t1)
            except BaseException:
                if not meta.follower.replaced():
                    meta.follower.clear_mark()  # we still hold compact.lock: the old file stays
                raise
        meta.follower.reopen()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _mark_again_and_rename(meta: Meta, copy: str, mark: bytes, t1: int) -> None:
    """Steps 5 to 7: mark the old file's other meta page, number the copy, rename it."""
    env = meta.env
    w2 = env.begin(write=True)
    try:
        t2 = w2.id()
        w2.put(MOVED_KEY, mark, db=meta.meta_db)
        w2.commit()
    except BaseException:
        w2.abort()
        raise
    if t2 != t1 + 1:  # a writer ignored the mark: the copy misses its commit
        raise StoreLocked(
            f"a process without compaction support wrote to {meta.path} during the "
            "compaction; nothing was replaced"
        )
    _step("marked")
    _set_txnids(copy, int(env.stat()["psize"]), t1, t2)
    os.rename(copy, meta.data_file)
    dir_fd = os.open(meta.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    _step("renamed")
