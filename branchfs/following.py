"""Following a compaction: this process's side of :mod:`branchfs.compact`'s protocol.

Owns the count of the transactions this process has open on its environment, the check every
transaction makes for the compaction mark (:data:`MOVED_KEY` in the ``meta`` database), and
re-opening the environment once another process (or this one) has replaced ``data.mdb``.
:class:`branchfs.meta.Meta` holds one :class:`Follower` and calls it around each transaction;
nothing else needs to know that a compaction can happen.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from typing import Protocol, TypeAlias

import lmdb

from . import keys
from .damage import DAMAGE_ERRORS, damaged
from .errors import StoreLocked

#: A named database of the environment (lmdb's C module and stubs call it ``_Database``).
#: Not behind ``TYPE_CHECKING``: mypyc, which compiles this module, takes that as true.
Database: TypeAlias = lmdb._Database

#: Key in the ``meta`` database of an environment that a compaction is replacing.
MOVED_KEY = keys.COMPACTING
#: Held exclusively (``flock``) while a compaction swaps ``data.mdb``.
COMPACT_LOCK = "compact.lock"
#: How long a process waits for its own other transactions before following a compaction.
REOPEN_WAIT_S = 60.0


class Environment(Protocol):
    """What a :class:`Follower` needs of the environment it follows (a ``Meta``)."""

    path: str
    data_file: str
    lock: threading.RLock
    meta_db: Database

    def data_fd(self) -> int:
        """The descriptor of the ``data.mdb`` this process has mapped."""
        ...

    def begin(self, write: bool, buffers: bool = False) -> lmdb.Transaction:
        """A raw LMDB transaction (no following, no batching)."""
        ...

    def reopen_files(self) -> None:
        """Close the environment and open ``data.mdb`` again, at the same map size."""
        ...


class Follower:
    """Counts this process's open transactions and follows a compaction when one is seen.

    A transaction is counted (:meth:`enter` before it begins, :meth:`leave` after it ends) so
    that :meth:`reopen` can wait for the transactions whose memoryviews point into the old
    map. ``active`` is a list with one item per open transaction: ``append`` and ``pop``
    are atomic, so the common case takes no lock; ``cond`` is taken only while a re-open is
    under way.
    """

    __slots__ = ("active", "clean_id", "cond", "env", "reopening")

    def __init__(self, env: Environment) -> None:
        self.env = env
        self.cond = threading.Condition(threading.Lock())
        self.active: list[None] = []
        self.reopening = False
        #: The id of the last snapshot seen without the compaction mark (see :meth:`moved`).
        self.clean_id = -1

    def enter(self) -> None:
        """Count a transaction about to begin (waits while a re-open is under way)."""
        self.active.append(None)  # counted first, then checked: reopen() sees us or we it
        if self.reopening:
            self.leave()
            with self.cond:
                while self.reopening:
                    self.cond.wait()
            self.enter()

    def leave(self) -> None:
        """Uncount a transaction that has ended."""
        self.active.pop()
        if self.reopening:
            with self.cond:
                self.cond.notify_all()

    def moved(self, txn: lmdb.Transaction, snapshot: int) -> bool:
        """Whether a compaction is replacing (or replaced) this environment's file.

        ``snapshot`` is the id of the commit ``txn`` sees. One get, skipped when the last
        snapshot this process found unmarked is that same one: a commit id names one
        content, and the mark is only ever committed by :mod:`branchfs.compact` in
        transactions of its own (never through ``Meta.write``), each under a new id. Damage
        aborts ``txn`` and raises :class:`~branchfs.errors.StoreCorrupt`.
        """
        if snapshot == self.clean_id:
            return False
        try:
            moved = txn.get(MOVED_KEY, db=self.env.meta_db) is not None
        except DAMAGE_ERRORS as exc:
            txn.abort()
            raise damaged(self.env.path, exc) from exc
        if not moved:
            self.clean_id = snapshot
        return moved

    def replaced(self) -> bool:
        """Whether ``data.mdb`` is now another file than the one this process has open."""
        try:
            now = os.stat(self.env.data_file)
        except FileNotFoundError:
            return False
        mine = os.fstat(self.env.data_fd())
        return (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino)

    def follow(self) -> None:
        """The environment carries the compaction mark: wait for it, then follow it.

        The compacting process holds ``compact.lock`` until ``data.mdb`` is replaced. Once
        it is released either the file was replaced (re-open it) or the compaction died
        before its rename, and the mark is a leftover to remove.
        """
        fd = os.open(os.path.join(self.env.path, COMPACT_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            fcntl.flock(fd, fcntl.LOCK_UN)
            if self.replaced():
                self.reopen()
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # a new compaction started: the caller's next attempt waits for it
            if self.replaced():
                self.reopen()
            else:
                self.clear_mark()
        finally:
            os.close(fd)

    def clear_mark(self) -> None:
        """Remove a compaction mark (only with ``compact.lock`` held)."""
        env = self.env
        with env.lock:
            txn = env.begin(True)
            try:
                if txn.get(MOVED_KEY, db=env.meta_db) is not None:
                    txn.delete(MOVED_KEY, db=env.meta_db)
                    txn.commit()
                else:
                    txn.abort()
            except BaseException:
                txn.abort()
                raise

    def reopen(self) -> None:
        """Close the environment and open ``data.mdb`` again (it was replaced).

        Waits (up to ``REOPEN_WAIT_S``) for this process's other transactions to end:
        their memoryviews point into the old map. Raises
        :class:`~branchfs.errors.StoreLocked` if they do not.
        """
        with self.cond:
            if self.reopening:
                while self.reopening:
                    self.cond.wait()
                return
            self.reopening = True
            deadline = time.monotonic() + REOPEN_WAIT_S
            while self.active:
                left = deadline - time.monotonic()
                if left <= 0 or not self.cond.wait(left):
                    self.reopening = False
                    self.cond.notify_all()
                    raise StoreLocked(
                        f"{self.env.path} was compacted, and this process still has a "
                        "transaction open on the old file; end it (or restart the process)"
                    )
        try:
            self.env.reopen_files()
            self.clean_id = -1
        finally:
            with self.cond:
                self.reopening = False
                self.cond.notify_all()
