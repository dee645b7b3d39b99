"""The write-back cache: ``write()`` data held per inode until it becomes chunks.

A buffer (:class:`.buffers.WriteBuffer`) becomes chunks at ``flush`` (a close in a view
under ``.branchfs/``), ``fsync``, ``release`` or ``setattr``, before a read of the inode,
and in every commit of the mount's batch (:mod:`.groupcommit`): every buffer, those of files
still open too, is applied in the batch just before it commits (:meth:`WriteBack.apply_all`,
``GroupCommit.before_commit``), so a commit holds every ``write()`` that returned before it
and a SIGKILLed daemon keeps a prefix of the calls. A buffer is due a batch window
(:data:`.groupcommit.MAX_NS`) after its first write even with no batch open
(:meth:`WriteBack.overdue`, :meth:`WriteBack.push`), which bounds what a SIGKILL loses.
In the mounted tree a released buffer, like one holding folded SETATTRs, is *sealed*: it is
applied first in the transaction of a request that could see the file's record
(:meth:`WriteBack.close`, :meth:`WriteBack.flush_sealed`). A full buffer
(:data:`.buffers.FLUSH_BYTES`), or big buffers due with no batch open, are committed by a flush
thread while the writer goes on (*write-behind*); at most one commit is in flight. A failed
write-behind commit is latched and reported by the next ``write``, ``flush`` or ``fsync`` of
the file, once, the way the kernel reports a writeback error.

Locks, as in S3QL's block cache, each method says which it holds: the request loop calls
everything here holding the daemon's lock (``Bridge.lock``). The flush thread takes no
daemon lock: it only runs :func:`apply_buffer` in its own transaction, and touches no
state of this module; the loop joins it in :meth:`WriteBack.settle`. The loop commits its
batch (:mod:`.groupcommit`) before it hands buffers to the flush thread and before it
waits for them, since the flush thread's transaction waits for LMDB's writer.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from branchfs import BranchFSError, Store
from branchfs import attrs as A
from branchfs import tree as T
from branchfs.layers import View
from branchfs.records import Inode

from . import groupcommit
from . import kernel as K
from .buffers import BEHIND_BYTES, FLUSH_BYTES, TOTAL_BYTES, WriteBuffer, apply_buffer
from .coherence import Coherence
from .errors import errno_of
from .inodes import Key, TreeRef
from .privs import SETID
from .stats import Stats

log = logging.getLogger("branchfs.fuse")
R = TypeVar("R")

#: Bytes buffered between two questions to the disk about its free space
#: (:meth:`WriteBack.short_of_space`).
SPACE_CHECK_BYTES = 1 << 20


#: Requests that may run while write buffers hold folded SETATTRs
#: (:meth:`WriteBack.fold`): they change no file's record and see a file's
#: attributes only through ``TreeNodes.attrs`` (or apply its buffer first: read, write,
#: setattr, flush, release, fsync). Any other request flushes those buffers first.
SEALED_SAFE = frozenset(
    (
        "lookup",
        "getattr",
        "setattr",
        "getxattr",
        "listxattr",
        "access",
        "read",
        "write",
        "flush",
        "release",
        "fsync",
        "create",
        "mkdir",
        "mknod",
        "symlink",
        "readdir",
        "readlink",
        "statfs",
        "rmdir",
    )
)
#: Requests that apply those buffers first in their own transaction
#: (:meth:`WriteBack.write_after_sealed`) rather than in one before it.
SEALED_FIRST = frozenset(("link", "unlink", "rename"))


class WriteBack:
    """Write buffers by inode, the write-behind flush thread and the write-error latch."""

    def __init__(self, store: Store, coherence: Coherence, stats: Stats) -> None:
        self.store = store
        self.coherence = coherence
        self.stats = stats
        self.buffers: dict[Key, WriteBuffer] = {}
        #: Bytes held in all buffers together.
        self.buffered = 0
        #: Buffers being written to the store by the flush thread (write-behind), each with
        #: whether its file was closed: the writer goes on while they commit. Every request
        #: but a write waits for it (:meth:`settle`).
        self.behind: tuple[list[tuple[Key, bool]], Future[None]] | None = None
        self._flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="branchfs-flush")
        #: Errors of write-behind commits, reported by the next write, flush or fsync.
        self.write_errors: dict[Key, int] = {}
        #: Buffers closed (:meth:`close`) or holding folded SETATTRs (:meth:`fold`).
        self.sealed: set[Key] = set()
        #: Since when (``perf_counter_ns``) some buffer has held data no commit holds: the
        #: buffers are due (:meth:`overdue`) a batch window later.
        self.pending_ns = 0
        #: What the flush thread runs on each buffer of a write-behind commit, in its
        #: transaction (:func:`apply_buffer`): the seam where tests hold that commit in
        #: flight or make it fail (a compiled module's functions cannot be patched).
        self.apply_behind: Callable[[View, int, WriteBuffer], Inode] = apply_buffer
        #: Whether a file is still open (``Holds.is_open``, set by the bridge): a buffer of
        #: an open file that could not be written fails that file's next ``write``.
        self.is_open: Callable[[Key], bool] = lambda _key: False
        #: Files written since the loop's last batch committed: if a batch is lost (a full
        #: disk), their writes may have been in it (:meth:`batch_lost`).
        self.written: set[Key] = set()
        #: Bytes buffered since the disk's free space was last asked, and its answer
        #: (:meth:`short_of_space`).
        self._unchecked = 0
        self._short = False
        #: The store's batches, and their counts as :meth:`batch_lost` last saw them.
        self._batches = store.meta.batches
        self._committed = self._losses = 0
        #: The file whose end :meth:`append_offset` just read, and in which batch.
        self._appending: tuple[Key, object] | None = None

    def add(self, key: Key, off: int, data: bytes, *, drop_privs: bool, kill_suidgid: bool) -> None:
        """Buffer ``data`` written at byte ``off`` of ``key``; a full buffer goes to the store.

        ``drop_privs``: clear privileges when the buffer is committed (KILLPRIV_V2), and
        set-user/group-ID too if ``kill_suidgid`` (the nodes clear those at once as well, so
        that ``fstat`` shows it before the commit: :mod:`.privs`). Holds the daemon's lock;
        may start a write-behind commit (:meth:`push`) or flush every buffer
        (:meth:`flush_all`).
        """
        buf = self.buffers.get(key)
        if buf is None:
            if not self.buffers:
                self.pending_ns = time.perf_counter_ns()
            buf = self.buffers[key] = WriteBuffer()
        buf.add(off, data)
        if self._appending is not None:  # this write's offset was read by append_offset
            if self._appending[0] == key:
                buf.appended_in = self._appending[1]
            self._appending = None
        self.written.add(key)
        if drop_privs:
            buf.kill_suidgid = buf.kill_suidgid or kill_suidgid
            buf.drop_privs = True
        self.buffered += len(data)
        self.stats.at_least("largest_write", len(data))
        if buf.nbytes >= FLUSH_BYTES:
            self.push()
        elif self.buffered >= TOTAL_BYTES:
            self.flush_all()

    def write(
        self, key: Key, off: int, data: bytes, append: bool, drop_privs: bool, kill_suidgid: bool
    ) -> None:
        """A ``write()`` of ``data`` at ``off`` (at the end with ``append``): buffered
        (:meth:`add`), or on a nearly full disk written through (:meth:`write_through`);
        ENOSPC (``FUSEError``, ``OSError``) when it does not fit. Holds the lock."""
        if append:
            if not self.store.meta.roomy:
                self._append_alone(key, data, drop_privs, kill_suidgid)
                return
            off = self.append_offset(key)
        self.add(key, off, data, drop_privs=drop_privs, kill_suidgid=kill_suidgid)
        if self.short_of_space(len(data)) and key in self.buffers:
            self.write_through(key)

    def _append_alone(self, key: Key, data: bytes, drop_privs: bool, kill_suidgid: bool) -> None:
        """An ``O_APPEND`` write when the loop's calls commit alone (a nearly full disk): the
        batch holds no writer from one call to the next, so the end is read and the data
        written in one transaction, which another process's append cannot split."""
        if key in self.buffers:
            self.flush(key)  # what was written before goes first
        else:
            self.settle()
        tree, ino = key

        def fn(v: View) -> Inode:  # may run again (Meta.write): a new buffer each time
            buf = WriteBuffer()
            buf.add(T.get(v, ino).size, data)
            buf.drop_privs, buf.kill_suidgid = drop_privs, drop_privs and kill_suidgid
            return apply_buffer(v, ino, buf)

        self.coherence.cache_record(key, self.coherence.write(tree, fn))

    def kills_suidgid(self, key: Key) -> bool:
        """Whether ``key``'s buffer already clears set-user/group-ID when it commits."""
        buf = self.buffers.get(key)
        return buf is not None and buf.kill_suidgid

    def take(self, key: Key, flushing: bool = False) -> WriteBuffer | None:
        """Remove ``key``'s buffer (to apply it, or because its data is gone). Holds the lock."""
        buf = self.buffers.pop(key, None)
        if buf is not None:
            self.buffered -= buf.nbytes
            self.sealed.discard(key)
            if flushing:
                self.stats.event("flushes")
        return buf

    def flush(self, key: Key) -> None:
        """Write one inode's buffered data to the store (one transaction). Holds the lock.

        Waits for a write-behind commit first. The buffer is taken before the transaction:
        if that fails, its data is lost and the caller hears why (``OSError``,
        ``BranchFSError``).
        """
        self.settle()
        buf = self.take(key, flushing=True)
        if buf is None:
            return
        tree, ino = key
        rec = self.coherence.write(tree, lambda v: apply_buffer(v, ino, buf))
        self.coherence.cache_record(key, rec)  # the getattr after a close needs no transaction

    def fold(
        self, key: Key, rec: Inode, changes: dict[str, int], chown_kills: bool
    ) -> Inode | None:
        """Fold a SETATTR of ``key`` (mode, owner, times: no size) into its write buffer,
        to be applied with its data at the next flush, in the same transaction: tar sets
        owner, mode and times of every file it writes, three SETATTRs between its last
        write and its close. Holds the lock.

        ``rec``: the file's record in the store (before the buffer); ``changes``: the
        :func:`branchfs.attrs.setattr` keywords; ``chown_kills``: a chown must clear
        privileges (KILLPRIV_V2). Returns the record as the SETATTR leaves it, for the
        reply, or None when the change cannot be folded (no buffer; privileges to clear;
        a buffer that clears set-ID bits at its commit): then the caller applies buffer
        and change as before. A folded buffer takes no more writes; it is applied before
        the batch commits (``GroupCommit.before_commit``: a crash keeps a prefix of the
        calls), when the loop goes idle, after a batch window with no batch open to carry
        it (:meth:`overdue`), and before any request that could see the store's
        record of the file (:data:`SEALED_SAFE`).
        """
        buf = self.buffers.get(key)
        if buf is None or "size" in changes:
            return None
        base = buf.attrs
        if base is None:
            if buf.drop_privs and b"security.capability" in rec.xattrs:
                return None
            if buf.kill_suidgid and rec.mode & SETID:
                return None
            base = rec.copy()
            base.size = max(rec.size, buf.end)
            base.mtime_ns = base.ctime_ns = buf.mtime_ns  # as apply_buffer leaves them
        new = base.copy()
        A.set_attrs(new, **changes)
        if (
            chown_kills
            and new.is_reg
            and (new.mode & SETID or b"security.capability" in new.xattrs)
        ):
            return None  # drop_privs would change the record: the usual way
        buf.attrs = new
        self.sealed.add(key)
        return new

    def overdue(self) -> bool:
        """Whether some buffer has held data no commit holds for a whole batch window
        (:data:`.groupcommit.MAX_NS`): then :meth:`.bridge.Bridge.take_work` commits them
        (:meth:`push`), so that a SIGKILLed daemon loses no ``write()`` older than that."""
        return bool(self.buffers) and time.perf_counter_ns() - self.pending_ns >= groupcommit.MAX_NS

    def remaining_ms(self) -> int:
        """How long (ms) the buffers may wait before they are due; -1 with none."""
        if not self.buffers:
            return -1
        left = self.pending_ns + groupcommit.MAX_NS - time.perf_counter_ns()
        return max(0, -(-left // 1_000_000))

    def close(self, key: Key) -> None:
        """The last close of ``key``'s file in the mounted tree (RELEASE): its buffer takes
        no more writes and is applied with the other closed and folded buffers, all in one
        transaction (:meth:`flush_sealed`), before the batch commits, before any request
        that could see the store's record of the file (:data:`SEALED_SAFE`), when the loop
        goes idle, or a batch window later with no batch open. Holds the lock; raises what
        :meth:`flush` raises.

        Nothing is promised at a close that this breaks: the close returned before the
        RELEASE anyway (no FLUSH in the mounted view), this daemon's answers include the
        buffer (``TreeNodes.attrs``, a read applies it first), and every commit, so every
        fsync, fork and other process's call, holds it (``GroupCommit.before_commit``).
        What it saves is a transaction per closed file: ``tar``, ``cp -r`` and ``pip``
        close a file every few requests. A buffer whose commit drops the file's
        ``security.capability`` is applied at once: GETXATTR answers from the record.
        """
        buf = self.buffers.get(key)
        if buf is None:
            return
        if buf.drop_privs and b"security.capability" in self.coherence.record(key).xattrs:
            self.flush(key)
            return
        self.sealed.add(key)

    def flush_sealed(self) -> None:
        """Apply every buffer closed (:meth:`close`) or holding folded SETATTRs, in one
        transaction per tree: before a request that could read the store's record of one of
        those files. Holds the lock. Never raises: when the transaction fails (a full disk),
        each buffer is tried in a transaction of its own, and one that fails is logged and
        dropped, like one at release."""
        if not self.sealed:
            return
        self.settle()
        self._apply(list(self.sealed))

    def apply_all(self) -> None:
        """Apply every buffer, those of files still open too, into the batch about to
        commit (``GroupCommit.before_commit``): every ``write()`` that returned before a
        commit is in it, so a SIGKILLed daemon keeps a prefix of the calls (contract 3).
        Like fsync's flush, but the store is not synced. Holds the lock; never raises
        (see :meth:`flush_sealed`).

        No write-behind commit is in flight here: every request that opens a batch waits
        for it first, and the flush thread's transaction would wait for the batch's writer.
        """
        if self.buffers:
            self._apply(list(self.buffers))

    def _apply(self, keys: list[Key]) -> None:
        """Take ``keys``' buffers and apply them, one transaction per tree (see
        :meth:`flush_sealed` for errors)."""
        by_tree: dict[TreeRef, list[tuple[int, WriteBuffer]]] = {}
        for key in keys:
            buf = self.take(key, flushing=True)
            if buf is not None:
                by_tree.setdefault(key[0], []).append((key[1], buf))
        co = self.coherence
        for tree, bufs in by_tree.items():

            def apply_all(v: View, bufs: list[tuple[int, WriteBuffer]] = bufs) -> list[Inode]:
                return [apply_buffer(v, ino, buf) for ino, buf in bufs]

            try:
                recs = co.write(tree, apply_all)
            except (BranchFSError, OSError):
                for ino, buf in bufs:
                    self._apply_alone((tree, ino), buf)
                continue
            for (ino, _buf), rec in zip(bufs, recs, strict=True):
                co.cache_record((tree, ino), rec)

    def write_after_sealed(
        self, tree: TreeRef, fn: Callable[[View, Inode | None], R], *, last: int = 0
    ) -> R:
        """``Coherence.write(tree, fn)`` with the closed and folded buffers
        (:meth:`flush_sealed`) applied first in the same transaction: a LINK, UNLINK or
        RENAME that may touch the record of a file just closed (git links each object it
        wrote, then unlinks its temporary name) costs one transaction, not two. Holds the
        lock. If the transaction fails, the buffers are applied on their own and ``fn`` is
        run again alone, so that its error is its own.

        ``fn(v, applied)``: ``applied`` is the record of inode ``last`` as its sealed buffer
        left it, when it had one, and None otherwise; ``fn`` must then put that record
        itself (a small file's may not be put yet: one put of it, not two).
        """
        if not self.sealed:
            return self.coherence.write(tree, lambda v: fn(v, None))
        self.settle()
        taken = [(key, buf) for key in list(self.sealed) if (buf := self.take(key, True))]
        bufs = [(key[1], buf) for key, buf in taken if key[0] == tree]

        def run(v: View) -> R:
            applied = None
            for ino, buf in bufs:
                if ino == last:
                    applied = apply_buffer(v, ino, buf, put=False)
                else:
                    apply_buffer(v, ino, buf)
            return fn(v, applied)

        try:
            if len(bufs) == len(taken):
                return self.coherence.write(tree, run)
        except Exception:  # any error of fn's: the buffers must not go with the transaction
            pass
        for key, buf in taken:  # unchanged by a failed transaction: back, to go alone
            self.buffers[key] = buf
            self.buffered += buf.nbytes
            self.sealed.add(key)
        self.flush_sealed()
        return self.coherence.write(tree, lambda v: fn(v, None))

    def _apply_alone(self, key: Key, buf: WriteBuffer) -> None:
        """Apply one taken buffer in its own transaction; log and drop it if that fails."""
        tree, ino = key
        try:
            rec = self.coherence.write(tree, lambda v: apply_buffer(v, ino, buf))
        except (BranchFSError, OSError) as exc:
            self.lost(key, exc)
            return
        self.coherence.cache_record(key, rec)

    def lost(self, key: Key, exc: BaseException) -> None:
        """``key``'s buffer, taken, could not be applied (``exc``: a full disk): logged, and
        reported by the next fsync or syncfs (:meth:`.groupcommit.GroupCommit.lost`), as
        the kernel reports a failed writeback. While the file is still open, its next
        ``write``, ``flush`` or ``fsync`` fails too (:meth:`raise_error`): a writer such as
        ``dd`` or ``cp``, which never calls fsync, stops there, as it would at ext4's
        ENOSPC, instead of writing on past the lost bytes and leaving zeros in their
        place."""
        log.warning("data and attributes of %s are lost: %s", key, exc)
        code = errno_of(exc)
        self.coherence.group.lost(code)
        if self.is_open(key):
            self.write_errors.setdefault(key, code)

    def batch_lost(self) -> bool:
        """Whether a batch of the loop's failed to commit (a full disk) since the last call
        (after each request): then writes to the files written since the last commit may
        be gone with it, and each of those still open fails its next ``write``, ``flush``
        or ``fsync`` (:meth:`raise_error`), so that its writer stops there, as at ext4's
        ENOSPC, rather than write on past the lost bytes. The next fsync of the mount
        reports it too (``Batches.lost``). Holds the lock."""
        batches = self._batches
        lost = batches.losses != self._losses
        if lost:
            self._losses = batches.losses
            code = batches.lost or errno.EIO
            for key in self.written:
                if self.is_open(key):
                    self.write_errors.setdefault(key, code)
        elif batches.committed == self._committed:
            return False
        self._committed = batches.committed  # the writes before it are in the store
        self.written.clear()
        return lost

    def write_through(self, key: Key) -> None:
        """The disk is nearly full (:meth:`short_of_space`): ``key``'s buffer goes to the
        store, committed, before the write returns; ENOSPC (``FUSEError``) if it does not
        fit, and the file keeps what it held before. Holds the lock."""
        batches = self._batches
        losses = batches.losses
        self.flush(key)  # OSError (ENOSPC) when it runs alone on a full disk
        self.coherence.group.commit()
        if batches.losses != losses:
            raise K.FUSEError(batches.lost or errno.ENOSPC)

    def append_offset(self, key: Key) -> int:
        """Where an ``O_APPEND`` write of ``key`` goes: the end of the file, buffered writes
        included. Holds the lock.

        The size is read in the loop's batch, not from the record cache: another process
        may have appended and committed a moment ago, before its change notice reached this
        daemon, and the write would land on its bytes (an API and a mount appending at once
        lost up to 27 of 200 lines that way). The batch holds LMDB's writer until it
        commits with this write's buffer in it, so nobody else appends in between.
        """
        self.settle()
        buf = self.buffers.get(key)
        batch = self._batches.txn
        if buf is not None and batch is not None and buf.appended_in is batch:
            return max(self.coherence.record(key).size, buf.end)  # read in this batch
        tree, ino = key
        rec = self.coherence.write(tree, lambda v: T.get(v, ino))
        self.coherence.cache_record(key, rec)
        self._appending = (key, self._batches.txn)
        return max(rec.size, buf.end) if buf is not None else rec.size

    def push(self) -> None:
        """Commit every buffer now (a full one, or the buffers are :meth:`overdue`).

        With no batch open and the buffers all of one tree and at least
        :data:`BEHIND_BYTES` together, they go to the flush thread in one transaction
        (*write-behind*) and the write that filled one returns: its next ``write()`` is
        copied in while this commits, on the other CPU. Otherwise they are applied in the
        batch (:meth:`apply_all`) and it is committed. Either way one commit holds every
        ``write()`` that returned, and no later call is committed before it: every request
        but a write waits for the flush thread (:meth:`settle`). At most one commit is in
        flight, so memory stays bounded. Holds the lock; the flush thread runs without it.
        """
        self.settle()  # commits the batch first if one is in flight
        if not self.buffers:
            return
        group = self.coherence.group
        keys = list(self.buffers)
        tree = keys[0][0]
        if (
            group.batch_open()
            or self.buffered < BEHIND_BYTES
            or any(key[0] != tree for key in keys)
        ):
            self.apply_all()  # into the batch (opened if none is)
            group.commit()
            return
        closed = self.sealed.copy()
        taken = [(key[1], buf) for key in keys if (buf := self.take(key, flushing=True))]

        apply = self.apply_behind

        def apply_taken(v: View) -> None:
            for ino, buf in taken:
                apply(v, ino, buf)

        future = self._flusher.submit(self.store.write_tree, tree.name, apply_taken)
        self.behind = ([(key, key in closed) for key in keys], future)

    def settle(self) -> None:
        """Wait for the write-behind commit: afterwards the store holds every write.

        Holds the lock while it waits (the flush thread needs none). A failed commit is
        latched for the file (:meth:`raise_error`), not raised here.
        """
        if self.behind is None:
            return
        self.coherence.group.commit()  # the flush thread's transaction may wait for our batch
        keys, future = self.behind
        self.behind = None
        try:
            future.result()
        except Exception as exc:  # the write returned long ago: the next write/flush/fsync says
            code = errno_of(exc)
            if code == errno.EIO:
                log.error("writing %s to the store failed", keys, exc_info=exc)
            for key, closed in keys:
                if closed:  # nobody holds it open to be told: the next fsync hears it
                    self.lost(key, exc)
                else:
                    self.write_errors[key] = code
        for key, _closed in keys:
            self.coherence.drop_record(key)

    def raise_error(self, key: Key) -> None:
        """Report (once) a failed write-behind commit of ``key`` as ``FUSEError``."""
        code = self.write_errors.pop(key, None)
        if code is not None:
            raise K.FUSEError(code)

    def forget_error(self, key: Key) -> None:
        """Nobody is left to be told of ``key``'s failed commit (its last descriptor
        closed): the next fsync or syncfs of the mount reports it instead
        (:meth:`.groupcommit.GroupCommit.lost`), as the kernel reports a failed writeback."""
        code = self.write_errors.pop(key, None)
        if code is not None:
            log.warning(
                "%s was closed with writes that did not reach the store: %s",
                key,
                errno.errorcode.get(code, code),
            )
            self.coherence.group.lost(code)

    def short_of_space(self, added: int) -> bool:
        """Whether the store's disk has too little room left to hold back writes: less free
        than every buffer could hold (:data:`.buffers.TOTAL_BYTES`) plus what they hold.
        Then each write goes to the store before it returns (``TreeNodes.write``), so that
        a full disk fails the ``write()`` itself with ENOSPC, as ext4's reservation of
        blocks at ``write()`` does, and a writer that never calls fsync (``cp``, ``dd``,
        ``tar``) hears it. ``added``: bytes just buffered; the disk is asked (``statvfs``)
        once per :data:`SPACE_CHECK_BYTES` buffered, at every write once it was short."""
        self._unchecked += added
        if self._unchecked < SPACE_CHECK_BYTES and not self._short:
            return False
        self._unchecked = 0
        try:
            fs = os.statvfs(self.store.path)
        except OSError:
            return False
        self._short = fs.f_bavail * fs.f_frsize < self.buffered + TOTAL_BYTES
        return self._short

    def flush_all(self) -> None:
        """Write every buffer to the store (before a fork, a merge, sync). Holds the lock.

        A buffer that fails is logged and dropped; the others are still written.
        """
        self.settle()
        for key in list(self.buffers):
            try:
                self.flush(key)
            except (BranchFSError, OSError) as exc:
                self.lost(key, exc)

    def shutdown(self) -> None:
        """Write every buffer and stop the flush thread (the kernel has let go)."""
        self.flush_all()
        self._flusher.shutdown()
