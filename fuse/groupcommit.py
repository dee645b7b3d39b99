"""Group commit: the mount's metadata calls committed together, as a kernel would.

Contract 3 of docs/architecture.md makes the daemon the kernel of its mount: calls that
returned may be grouped into one LMDB transaction, provided that fsync/fdatasync/syncfs are
durable, that a fork, snapshot, merge or reset (through the mount, ``ctl``, the CLI or
another process's API) sees every call that returned before it, and that a SIGKILLed daemon
loses at most a bounded window of calls and always keeps a prefix of them in order.

How this module keeps that:

* The request loop's thread batches its writes (:meth:`branchfs.meta.Meta.batch_thread`):
  each call runs all-or-nothing in a nested transaction of one open write transaction, so
  the batch always holds a prefix of the calls in the order they were served, and a commit
  makes that prefix durable against a crash of the daemon (LMDB commits are atomic).
* The batch is committed (:meth:`GroupCommit.commit`)
  - once it is :data:`MAX_NS` old or holds :data:`MAX_WRITES` calls, checked after every
    request (:meth:`due`);
  - when the loop has had no request for its poll window (about 200 µs) and is about to
    sleep: an idle mount holds nothing uncommitted and never holds LMDB's writer;
  - before fsync, fdatasync, fsyncdir and syncfs (then the store is synced), before every
    fork, snapshot, merge, reset or other ``ctl`` command, before the write-behind thread
    commits a buffer, and at unmount;
  - when another process asks (:meth:`wait_committed`, from the notice thread): an API
    call on the mounted branch from another process first asks every daemon serving it
    over the notice path and waits for this.
* ``write()`` data joins the batch at its commit (``before_commit``: every write buffer, open
  files' too); buffers with no batch open are committed :data:`MAX_NS` after their first
  write (``WriteBack.overdue``).
* So a SIGKILLed daemon loses at most the calls of the last :data:`MAX_NS` (5 ms) plus the
  one being served (and, for a stream of large writes, the write-behind commit in flight),
  never a call that an fsync, a fork or another process's call has seen.
* LMDB's single writer is held from a batch's first write to its commit: at most
  :data:`MAX_NS` plus one request, below contract 2's 10 ms bound for stalling writers.
  Requests that may run long (a fork, a merge, a flush of a full write buffer) commit the
  batch before they start and run outside it.

Locks: :meth:`commit`, :meth:`due` and :meth:`wants_commit` run in the loop's thread only
(the batch's LMDB transaction belongs to it); :meth:`commit` takes :attr:`_cond` to publish
that the batch is gone. :meth:`wait_committed` runs in any other thread and takes only
:attr:`_cond`, never the daemon's request lock, so a loop that waits on another daemon never
deadlocks with a daemon that waits on it. A failed commit (a full disk, EIO) loses the
batch; the error is kept in :attr:`error` and reported by the next fsync or syncfs, the way
the kernel reports a failed writeback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable

from branchfs.meta import Meta

log = logging.getLogger("branchfs.fuse")

#: The longest a batch stays open (ns): the window a SIGKILLed daemon may lose.
MAX_NS = int(float(os.environ.get("BRANCHFS_BATCH_MS", "5")) * 1_000_000)
#: The most calls one batch holds.
MAX_WRITES = 1024

_clock = time.perf_counter_ns


class GroupCommit:
    """The loop thread's open batch of writes, and when to commit it."""

    def __init__(self, meta: Meta) -> None:
        self.meta = meta
        self._batches = meta.batches
        self._cond = threading.Condition()
        #: Another thread waits for every call served so far to be committed (ns it asked).
        self.wanted = False
        self.wanted_ns = 0
        #: The loop is waiting on another daemon; its batch is committed (see module doc).
        self.calling_out = False
        #: errno of the last failed commit, not yet reported to an fsync.
        self.error = 0
        self.commits = 0
        #: Time (ns) the loop spent applying write buffers into batches at their commit
        #: (``before_commit``) and committing them (``ctl stats``: ``batch_apply_ns``,
        #: ``batch_commit_ns``); also counted in the loop time of the request that ended them.
        self.apply_ns = 0
        self.commit_ns = 0
        self.enabled = MAX_NS > 0
        #: ``idle`` (no loop yet), ``serving``, ``stopping`` (the loop ended, the daemon
        #: flushes and commits), ``stopped``: whom :meth:`wait_committed` waits for.
        self.state = "idle"
        #: Run by :meth:`commit` first, into the batch: the mount applies its write buffers,
        #: open files' too, and the SETATTRs folded into them
        #: (:meth:`.writeback.WriteBack.apply_all`), so that every commit holds every call
        #: that returned before it. Must not raise.
        self.before_commit: Callable[[], None] = lambda: None
        self._committing = False
        #: Written to wake a loop that sleeps in poll(2) (see :meth:`wait_committed`).
        self.wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def start(self) -> None:
        """Batch the writes of the calling thread (the request loop's) from now on."""
        if self.enabled:
            self.meta.batch_thread(threading.get_ident())
        self.state = "serving"

    def loop_ended(self) -> None:
        """The request loop returned: waiters now wait for :meth:`stop` instead."""
        with self._cond:
            self.state = "stopping"
            self._cond.notify_all()

    def stop(self) -> None:
        """Commit and stop batching (at unmount, after every buffer was written)."""
        self.commit()
        self.meta.batch_thread(0)
        with self._cond:
            self.state = "stopped"
            self.wanted = False
            self._cond.notify_all()

    def due(self) -> bool:
        """Whether the batch must be committed now: old or big enough (loop thread)."""
        batches = self._batches  # read after every request: Meta's properties, inlined
        if batches.txn is None:
            return False
        return batches.writes >= MAX_WRITES or _clock() - batches.started_ns >= MAX_NS

    def batch_open(self) -> bool:
        """Whether the loop's batch holds uncommitted writes (``Meta.batch_open``)."""
        return self._batches.txn is not None

    def remaining_ms(self) -> int:
        """How long the loop may sleep before the batch is due (ms); -1 with no batch."""
        meta = self.meta
        if not meta.batch_open:
            return -1
        left = meta.batch_started_ns + MAX_NS - time.perf_counter_ns()
        return max(0, -(-left // 1_000_000))

    def overdue(self) -> bool:
        """Whether a waiting thread has waited :data:`MAX_NS` (loop thread, busy mount)."""
        return self.wanted and time.perf_counter_ns() - self.wanted_ns >= MAX_NS

    def commit(self) -> None:
        """Commit the open batch, if any (loop thread). Never raises: see :attr:`error`."""
        meta = self.meta
        if meta.batch_open and not self._committing:
            # before_commit may write to a tree under .branchfs/, which commits "at once":
            # that commit is this one, after every buffer is in the batch.
            started = _clock()
            self._committing = True
            try:
                self.before_commit()
            finally:
                self._committing = False
            applied = _clock()
            try:
                meta.commit_batch()
                self.commits += 1
            except OSError as exc:  # Batches.lost keeps its errno (see take_error)
                log.error(
                    "committing a batch of calls failed; they are lost: %s (%r)", exc, exc.__cause__
                )
            ended = _clock()
            self.apply_ns += applied - started
            self.commit_ns += ended - applied

    def answer(self) -> None:
        """After a commit that a waiting thread asked for: let it go (loop thread).

        The wake-up pipe is emptied first: a thread that asks again once ``wanted`` is
        cleared writes a byte that must stay there, or the loop would sleep in poll(2) with
        a waiter it never sees, whose call then went on after the notice timeout (10 s).
        """
        with contextlib.suppress(OSError):
            while os.read(self.wake_r, 64):
                pass
        with self._cond:
            self.wanted = False
            self._cond.notify_all()

    def lost(self, code: int) -> None:
        """Data whose call returned could not reach the store (a closed file's buffer on a
        full disk): like the kernel's failed writeback, the next fsync, fdatasync, fsyncdir
        or syncfs reports ``code`` (an errno), once (:meth:`take_error`)."""
        if not self.error:
            self.error = code

    def take_error(self) -> int:
        """The errno of a failed commit not yet reported (0 if none); reported once.

        A batch may fail to commit in this loop's :meth:`commit` or when the store ends it
        early for a call that must commit alone (``Batches.lost`` keeps that errno)."""
        code = self.error or self._batches.lost
        self.error = self._batches.lost = 0
        return code

    def wait_committed(self, timeout: float) -> bool:
        """Wait until every call served so far is committed (any thread but the loop's).

        The loop is woken if it sleeps; it serves what the kernel already queued (a
        RELEASE sent by a ``close()`` that returned before this was asked), writes its
        buffers and commits at the first moment it has no request, or after
        :data:`MAX_NS` on a busy mount. Returns False on timeout.
        """
        with self._cond:
            if self.state in ("idle", "stopped") or self.calling_out:
                return True  # nothing served yet; all committed; or committed before calling out
            if self.state == "serving":
                if not self.wanted:
                    self.wanted = True
                    self.wanted_ns = time.perf_counter_ns()
                with contextlib.suppress(OSError):
                    os.write(self._wake_w, b"x")
            return self._cond.wait_for(
                lambda: self.state == "stopped" or (self.state == "serving" and not self.wanted),
                timeout,
            )
