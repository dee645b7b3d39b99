"""Group commit: one thread's writes batched into one open LMDB write transaction.

A thread may *batch* its writes (``Meta.batch_thread``; the mount daemon's request loop
does): each ``Meta.write`` of that thread then runs in a nested transaction (all or nothing,
as before) inside one open write transaction, committed by :meth:`Batches.commit`. The
thread's reads see the open batch (:class:`BatchRead`). While a batch is open this process
holds LMDB's single writer: the caller bounds how long (see ``fuse/groupcommit.py``).

This module owns the open batch and its bookkeeping; :class:`branchfs.meta.Meta` decides
when a write goes into it (not on a nearly full disk, where each write must hear its own
ENOSPC).
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

import lmdb

from .following import Follower

T = TypeVar("T")

#: The least of LMDB's map left free when a batch opens (see :func:`_map_room`).
MAP_ROOM = 16 << 20


class Environment(Protocol):
    """What :class:`Batches` needs of the environment it batches into (a ``Meta``)."""

    path: str
    lock: threading.RLock
    env: lmdb.Environment
    follower: Follower

    def begin(self, write: bool, buffers: bool = False) -> lmdb.Transaction:
        """A raw LMDB transaction (no following, no batching)."""
        ...

    def preallocate(self) -> None:
        """Keep disk space allocated past the end of ``data.mdb`` after a commit."""
        ...

    def commit_error(self, exc: lmdb.Error) -> OSError:
        """The ``OSError`` (ENOSPC or EIO) that a failed commit means."""
        ...

    def grow_map(self) -> None:
        """Double LMDB's map (``OSError`` ENOSPC at its limit)."""
        ...


class Moved(Exception):
    """A compaction marked the environment while a batch was being opened."""


class Batches:
    """The batching thread, its open batch, since when (ns) and how many writes it holds."""

    __slots__ = (
        "child",
        "committed",
        "ino_end",
        "ino_next",
        "losses",
        "lost",
        "meta",
        "owner",
        "started_ns",
        "txn",
        "writes",
    )

    def __init__(self, meta: Environment) -> None:
        self.meta = meta
        #: The thread whose writes are batched (0: none).
        self.owner = 0
        #: The open batch (None: none open).
        self.txn: lmdb.Transaction | None = None
        #: The call being written into it (its nested transaction), if any.
        self.child: lmdb.Transaction | None = None
        self.started_ns = 0
        self.writes = 0
        #: Inode numbers reserved by a call of a batch, not yet handed out: ``ino_next``
        #: up to ``ino_end`` (see ``Meta.next_id``). Dropped whenever the reservation may
        #: not have reached the store: a call that aborts, a batch whose commit fails.
        self.ino_next = 0
        self.ino_end = 0
        #: errno of the last batch whose commit failed (its writes are lost), until the
        #: batching thread's owner takes it to report it (``GroupCommit.take_error``).
        self.lost = 0
        #: Batches committed, and batches lost, so far: the batching thread's owner
        #: compares them after each call to learn that a batch it served calls into was
        #: lost, even when the commit was made for a later call (``Meta._end_batch``).
        self.committed = 0
        self.losses = 0

    def set_thread(self, ident: int) -> None:
        """Batch the writes of thread ``ident`` from now on (0: nobody's).

        Only that thread may call :meth:`commit`: LMDB write transactions belong to the
        thread that began them. Call with no batch open (``RuntimeError`` otherwise).
        """
        if self.txn is not None:
            raise RuntimeError("a batch is open")
        self.owner = ident

    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """``fn`` in a nested transaction of the open batch (opened on the first write).

        Raises :class:`Moved` if a compaction is under way (the caller writes the usual way,
        which follows it). Holds the environment's lock and LMDB's writer from the batch's
        first write to its commit; ``MapFullError`` leaves the batch as it was and
        propagates.
        """
        meta = self.meta
        if self.txn is None:
            meta.lock.acquire()
            meta.follower.enter()
            try:
                _map_room(meta)
                txn = meta.begin(True)
                if meta.follower.moved(txn, txn.id() - 1):
                    txn.abort()
                    raise Moved
            except BaseException:
                meta.follower.leave()
                meta.lock.release()
                raise
            self.txn = txn
            self.started_ns = time.perf_counter_ns()
            self.writes = 0
        child = meta.env.begin(None, self.txn, True)  # (db, parent, write): no keywords
        self.child = child
        try:
            result = fn(child)
            child.commit()
        except BaseException:
            child.abort()
            self.ino_next = self.ino_end = 0  # a reservation it made is undone
            raise
        finally:
            self.child = None
        self.writes += 1
        return result

    def commit(self) -> None:
        """Commit the open batch (nothing if none) and let LMDB's writer go.

        On failure (a full disk, EIO) the batch's writes are lost, ``OSError`` says why and
        :attr:`lost` keeps its errno: the batching thread's owner reports it the way the
        kernel reports a failed writeback, even when the commit was made for a later call.
        """
        txn = self.txn
        if txn is None:
            return
        meta = self.meta
        self.txn = None
        try:
            txn.commit()
        except lmdb.Error as exc:
            txn.abort()
            self.ino_next = self.ino_end = 0  # a reservation it held is lost
            error = meta.commit_error(exc)
            self.lost = error.errno or errno.EIO
            self.losses += 1
            raise error from exc
        finally:
            meta.follower.leave()
            meta.lock.release()
        self.committed += 1
        meta.preallocate()


def _map_room(meta: Environment) -> None:
    """Grow LMDB's map before a batch opens if little of it is left (``Meta.grow_map``:
    ENOSPC at the map's limit).

    A write outside a batch that runs out of map is run again in a bigger one, but a batch
    whose commit does is lost with every call in it: LMDB writes the free list at commit
    and can hit ``MDB_MAP_FULL`` there. ``make bench-fuse``'s unlink of a 1 GiB file, in a
    map the file had nearly filled, was lost that way (reported as EIO at the next fsync).
    So at least :data:`MAP_ROOM` bytes, or an eighth of the map, stay free at each batch's
    start; a batch holds at most ``MAX_WRITES`` calls, far less than that."""
    env = meta.env
    info = env.info()
    used = (info["last_pgno"] + 1) * env.stat()["psize"]
    if used + max(MAP_ROOM, info["map_size"] // 8) > info["map_size"]:
        meta.grow_map()


class BatchRead:
    """The ``with`` block of ``Meta.read`` in the batching thread: the open batch, which
    the block neither aborts nor commits."""

    __slots__ = ("txn",)

    def __init__(self, txn: lmdb.Transaction) -> None:
        self.txn = txn

    def __enter__(self) -> lmdb.Transaction:
        return self.txn

    def __exit__(self, *exc: object) -> None:
        return None
