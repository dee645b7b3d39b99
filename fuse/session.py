"""The request loop: read ``/dev/fuse``, decode, call the filesystem, write the reply.

One thread serves every request, in arrival order, holding :attr:`Session.lock` while the
filesystem runs (other threads take it to touch the filesystem's state). Work that may block
on the kernel or the disk runs in a worker thread and the reply is sent from there, so the
loop keeps answering meanwhile: ``fsync`` (the store's fsync), change notices to other
daemons, and cache invalidations (an invalidation can wait for a page lock held by a
process that waits for us).

Between requests the loop polls for the next one for a short while before it sleeps. On
this kind of machine (two vCPUs) waking a sleeping daemon on the other CPU costs about
40 µs, twice what a request costs to serve; a daemon that is still polling picks the next
request of ``tar`` or ``git`` up at once. The poll ends after :data:`POLL_NS` of silence,
so an idle mount costs no CPU.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import queue
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from . import kernel as K
from .bridge import NEGATIVE, Bridge

log = logging.getLogger("branchfs.fuse")

#: How long the loop keeps polling after a request before it sleeps (0 disables polling).
POLL_NS = int(float(os.environ.get("BRANCHFS_POLL_US", "200")) * 1000)

#: Also count the loop thread's CPU time per request type (``ctl stats`` ``cpu_ns``): two
#: clock_gettime system calls per request, about 2 µs, so only when asked for.
CPU_TIMES = os.environ.get("BRANCHFS_CPU_TIMES") == "1"

#: ``struct fuse_out_header`` (16 bytes), packed.
_OUT_HEADER_PACK = K.OUT_HEADER.pack
assert K.OUT_HEADER.size == 16
#: ``struct fuse_in_header`` (40 bytes), unpacked in place.
_IN_HEADER_UNPACK = K.IN_HEADER.unpack_from
assert K.IN_HEADER.size == 40
_RequestContext = K.RequestContext
_FUSEError = K.FUSEError
_clock = time.perf_counter_ns
#: The reply to every lookup of a name that is not there.
_NEGATIVE_OUT = NEGATIVE.entry_out()
_thread_clock = time.thread_time_ns

#: The cyclic garbage collector's thresholds while the loop serves (``gc.set_threshold``):
#: the first generation is collected every 10,000 allocations instead of 700. A request
#: allocates tens of tracked objects and the daemon keeps many (the record cache), so at
#: the default the collector ran every ~15 creates and its middle generation, walking every
#: survivor again, cost about 3 µs per created file (``gc.callbacks``, 6,000 creates and
#: ``rm``); with these, about 1.4 µs, and each pause stays near a millisecond.
GC_THRESHOLDS = (10_000, 20, 20)

#: A handler's answer when the request takes no reply (forget).
NO_REPLY = object()
#: GETXATTR's answer for an attribute that is not set (returned, never raised).
_NODATA = K.FUSEError(errno.ENODATA)

Work = list[Callable[[], None]]


class Session:
    """Serves one mount's ``/dev/fuse`` descriptor with ``ops`` (see :mod:`.bridge`)."""

    def __init__(self, fd: int, ops: Bridge) -> None:
        self.fd = fd
        self.ops = ops
        self.lock = ops.lock
        self.proto_minor = 0
        self.initialized = threading.Event()
        self.stopping = False
        #: ``--debug``: log every request and how it was answered.
        self.trace = log.isEnabledFor(logging.DEBUG)
        #: The loop's wall time per opcode (``ctl stats``), bound once.
        self._loop_ns = ops.stats.loop_ns
        self._stop_r, self._stop_w = os.pipe()
        os.set_blocking(self._stop_w, False)
        self._work: queue.SimpleQueue[tuple[Work, int, Any] | None] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._run_work, name="fuse-work", daemon=True)
        self._handlers: dict[int, Callable[[int, int, K.RequestContext, memoryview], Any]] = {
            K.INIT: self._init,
            K.LOOKUP: self._lookup,
            K.FORGET: self._forget,
            K.BATCH_FORGET: self._batch_forget,
            K.GETATTR: self._getattr,
            K.SETATTR: self._setattr,
            K.READLINK: self._readlink,
            K.SYMLINK: self._symlink,
            K.MKNOD: self._mknod,
            K.MKDIR: self._mkdir,
            K.UNLINK: self._unlink,
            K.RMDIR: self._rmdir,
            K.RENAME: self._rename,
            K.RENAME2: self._rename2,
            K.LINK: self._link,
            K.OPEN: self._open,
            K.CREATE: self._create,
            K.READ: self._read,
            K.WRITE: self._write,
            K.FLUSH: self._flush,
            K.RELEASE: self._release,
            K.FSYNC: self._fsync,
            K.OPENDIR: self._opendir,
            K.READDIR: self._readdir_plain,
            K.READDIRPLUS: self._readdir,
            K.FSYNCDIR: self._fsyncdir,
            K.STATFS: self._statfs,
            K.SETXATTR: self._setxattr,
            K.GETXATTR: self._getxattr,
            K.LISTXATTR: self._listxattr,
            K.REMOVEXATTR: self._removexattr,
            K.ACCESS: self._access,
            K.SYNCFS: self._syncfs,
            K.TMPFILE: self._tmpfile,
            K.INTERRUPT: self._no_reply,
            K.DESTROY: self._destroy,
        }

    # -- the loop -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Make :meth:`serve` return (safe from a signal handler or another thread)."""
        self.stopping = True
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")

    @property
    def stop_fd(self) -> int:
        """A descriptor for ``signal.set_wakeup_fd``: a signal stops the loop."""
        return self._stop_w

    def serve(self) -> None:
        """Answer requests until the filesystem is unmounted or :meth:`stop` is called."""
        tune_gc()
        self._worker.start()
        fd = self.fd
        os.set_blocking(fd, False)
        buf = bytearray(K.REQUEST_SIZE)
        view = memoryview(buf)
        readv = os.readv
        yield_cpu = os.sched_yield
        clock = time.perf_counter_ns
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        group = self.ops.group
        poller.register(group.wake_r, select.POLLIN)
        # While polling, poll(2) with no timeout says whether a request is queued: a readv
        # that finds none raises BlockingIOError, whose message is decoded from the locale
        # each time (about 1.5 µs a turn, so a request waited longer to be seen).
        queued = select.poll()
        queued.register(fd, select.POLLIN)
        peek = queued.poll
        deadline = 0  # while polling: when to stop and sleep in poll(2)
        try:
            while True:
                n = -1  # no request queued
                if not deadline or peek(0):
                    try:
                        n = readv(fd, [buf])
                    except BlockingIOError:
                        pass
                    except InterruptedError:
                        continue
                    except OSError as exc:
                        if exc.errno == errno.ENODEV:  # unmounted
                            return
                        if exc.errno == errno.ENOENT:  # the request was interrupted
                            continue
                        raise
                if n < 0:
                    now = clock()
                    if not deadline:
                        deadline = now + POLL_NS
                    if group.wanted:  # another process waits for our batch
                        self._background(self.ops.idle())
                    if now < deadline:
                        yield_cpu()  # a runnable process on this CPU goes first
                        continue
                    deadline = 0
                    # Sleep holding a batch (and LMDB's writer) only until it is due.
                    wait = self.ops.remaining_ms()
                    if wait < 0:
                        self._background(self.ops.idle())  # change notices, if any
                    ready = [rfd for rfd, _ev in poller.poll(wait)]
                    if not ready:
                        self._background(self.ops.idle())
                        continue
                    if self._stop_r in ready:
                        return
                    if group.wake_r in ready:
                        with contextlib.suppress(OSError):
                            os.read(group.wake_r, 64)
                    continue
                deadline = 0
                self._dispatch(view, n)
                if self.stopping:
                    return
        finally:
            group.loop_ended()
            self._work.put(None)
            self._worker.join(timeout=30)

    def _dispatch(self, view: memoryview, n: int) -> None:
        # The hot path of every request: globals bound to locals, no call that is not needed.
        _len, opcode, unique, nodeid, uid, gid, pid, _ext, _pad = _IN_HEADER_UNPACK(view)
        handler = self._handlers.get(opcode)
        if handler is None:
            name = K.UNANSWERED.get(opcode, f"opcode {opcode}")
            counts = self.ops.requests
            counts[name] = counts.get(name, 0) + 1
            if self.trace:
                log.debug("%s on inode %d: left to the kernel (ENOSYS)", name, nodeid)
            self._reply_error(unique, errno.ENOSYS)
            return
        ops = self.ops
        started = _clock()
        cpu = _thread_clock() if CPU_TIMES else 0
        with self.lock:
            try:
                answer = handler(unique, nodeid, _RequestContext(uid, gid, pid), view[40:n])
            except _FUSEError as exc:
                answer = exc
            except Exception:
                log.exception("request %d on inode %d failed", opcode, nodeid)
                answer = K.FUSEError(errno.EIO)
            work = ops.take_work()
        if self.trace:
            outcome = f"errno {answer.errno}" if isinstance(answer, K.FUSEError) else "ok"
            log.debug("%s on inode %d: %s", handler.__name__.lstrip("_"), nodeid, outcome)
        try:
            if work:
                if isinstance(answer, list):  # the worker replies after ops.replied()
                    answer = [bytes(piece) for piece in answer]
                self._work.put((work, unique, answer))
            elif isinstance(answer, _FUSEError):
                self._reply_error(unique, answer.errno)
            elif answer is not NO_REPLY:
                self._reply(unique, answer)
        finally:
            ops.replied()
            loop_ns = self._loop_ns
            loop_ns[opcode] = loop_ns.get(opcode, 0) + _clock() - started
            if CPU_TIMES:
                cpu_ns = ops.stats.cpu_ns
                cpu_ns[opcode] = cpu_ns.get(opcode, 0) + _thread_clock() - cpu

    def _background(self, work: Work) -> None:
        """Run ``work`` in the worker thread, with no reply to send."""
        if work:
            self._work.put((work, 0, NO_REPLY))

    def _reply(self, unique: int, payload: bytes | list[bytes] | list[bytes | memoryview]) -> None:
        try:
            if not isinstance(payload, list):  # most replies: one small buffer, one write
                os.write(self.fd, _OUT_HEADER_PACK(16 + len(payload), 0, unique) + payload)
                return
            size = 16
            for part in payload:
                size += len(part)
            os.writev(self.fd, [_OUT_HEADER_PACK(size, 0, unique), *payload])
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENODEV):  # interrupted, or unmounted
                raise

    def _reply_error(self, unique: int, code: int) -> None:
        try:
            os.write(self.fd, K.OUT_HEADER.pack(K.OUT_HEADER.size, -code, unique))
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                raise

    def _run_work(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            work, unique, answer = item
            try:
                for fn in work:
                    fn()
                if not unique:
                    continue  # background work (see _background): nobody waits for an answer
            except OSError as exc:
                answer = K.FUSEError(exc.errno or errno.EIO)
            except Exception:
                log.exception("deferred work failed")
                answer = K.FUSEError(errno.EIO)
            if not unique:
                continue
            try:
                if isinstance(answer, K.FUSEError):
                    self._reply_error(unique, answer.errno)
                elif answer is not NO_REPLY:
                    self._reply(unique, answer)
            except OSError:
                log.warning("a deferred reply could not be sent", exc_info=True)

    # -- kernel cache invalidation (never from the loop's own thread) ----------------------------

    def invalidate(self, entries: list[tuple[int, bytes]], inodes: list[int]) -> None:
        """Drop the kernel's cached names and inodes (attributes, pages, directory listings)."""
        for parent, name in entries:
            body = K.NOTIFY_INVAL_ENTRY_OUT.pack(parent, len(name), K.FUSE_EXPIRE_ONLY)
            body += name + b"\0"
            self._notify(K.NOTIFY_INVAL_ENTRY, body)
        for ino in inodes:
            self._notify(K.NOTIFY_INVAL_INODE, K.NOTIFY_INVAL_INODE_OUT.pack(ino, 0, 0))

    def _notify(self, code: int, body: bytes) -> None:
        header = K.OUT_HEADER.pack(K.OUT_HEADER.size + len(body), code, 0)
        try:
            os.writev(self.fd, [header, body])
        except OSError as exc:
            # ENOENT: the kernel no longer knows it, which is fine. Anything else is logged:
            # the request that caused the notice succeeded and must not report a failure.
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ENODEV, errno.EBADF):
                log.warning("the kernel refused a cache invalidation: %s", exc)

    # -- requests ------------------------------------------------------------------------------

    def _init(self, _u: int, _n: int, _c: K.RequestContext, body: memoryview) -> bytes:
        major, minor, max_readahead, flags = K.INIT_IN.unpack_from(body)
        if major != 7:
            raise K.FUSEError(errno.EPROTO)
        self.proto_minor = min(minor, 38)
        want = flags & K.WANTED
        self.ops.negotiated(want)
        self.initialized.set()
        return K.INIT_OUT.pack(
            7,
            self.proto_minor,
            max_readahead,
            want,
            64,  # max_background: readahead and releases in flight
            48,  # congestion_threshold
            K.MAX_WRITE,
            1,  # time granularity: nanoseconds
            K.MAX_PAGES_COUNT,
            0,
            0,
            *(0,) * 7,
        )

    def _destroy(self, _u: int, _n: int, _c: K.RequestContext, _b: memoryview) -> bytes:
        return b""

    def _no_reply(self, _u: int, _n: int, _c: K.RequestContext, _b: memoryview) -> object:
        return NO_REPLY

    def _lookup(self, _u: int, nodeid: int, ctx: K.RequestContext, body: memoryview) -> bytes:
        raw = bytes(body)
        attrs = self.ops.lookup(nodeid, raw[: raw.index(b"\0")], ctx)
        if attrs is NEGATIVE:
            return _NEGATIVE_OUT
        return attrs.entry_out()

    def _forget(self, _u: int, nodeid: int, _c: K.RequestContext, body: memoryview) -> object:
        (n,) = K.FORGET_IN.unpack_from(body)
        self.ops.forget([(nodeid, n)])
        return NO_REPLY

    def _batch_forget(self, _u: int, _n: int, _c: K.RequestContext, body: memoryview) -> object:
        count, _ = K.BATCH_FORGET_IN.unpack_from(body)
        size = K.BATCH_FORGET_IN.size
        one = K.FORGET_ONE
        self.ops.forget([one.unpack_from(body, size + i * one.size) for i in range(count)])
        return NO_REPLY

    def _getattr(self, _u: int, nodeid: int, ctx: K.RequestContext, _b: memoryview) -> bytes:
        return self.ops.getattr(nodeid, ctx).attr_out()

    def _setattr(self, _u: int, nodeid: int, ctx: K.RequestContext, body: memoryview) -> bytes:
        fields = K.SetattrFields.decode(body, time.time_ns())
        return self.ops.setattr(nodeid, fields, ctx).attr_out()

    def _readlink(self, _u: int, nodeid: int, ctx: K.RequestContext, _b: memoryview) -> bytes:
        return self.ops.readlink(nodeid, ctx)

    def _symlink(self, _u: int, nodeid: int, ctx: K.RequestContext, body: memoryview) -> bytes:
        name, target = K.cstrings(body, 2)
        return self.ops.symlink(nodeid, name, target, ctx).entry_out()

    def _mknod(self, _u: int, nodeid: int, ctx: K.RequestContext, body: memoryview) -> bytes:
        mode, rdev, umask, _pad = K.MKNOD_IN.unpack_from(body)
        ctx.umask = umask
        (name,) = K.cstrings(body[K.MKNOD_IN.size :], 1)
        return self.ops.mknod(nodeid, name, mode, rdev, ctx).entry_out()

    def _mkdir(self, _u: int, nodeid: int, ctx: K.RequestContext, body: memoryview) -> bytes:
        mode, umask = K.MKDIR_IN.unpack_from(body)
        ctx.umask = umask
        (name,) = K.cstrings(body[K.MKDIR_IN.size :], 1)
        return self.ops.mkdir(nodeid, name, mode, ctx).entry_out()

    def _unlink(self, _u: int, nodeid: int, ctx: K.RequestContext, body: memoryview) -> bytes:
        (name,) = K.cstrings(body, 1)
        self.ops.unlink(nodeid, name, ctx)
        return b""

    def _rmdir(self, _u: int, nodeid: int, ctx: K.RequestContext, body: memoryview) -> bytes:
        (name,) = K.cstrings(body, 1)
        self.ops.rmdir(nodeid, name, ctx)
        return b""

    def _rename(self, _u: int, nodeid: int, ctx: K.RequestContext, body: memoryview) -> bytes:
        (newdir,) = K.RENAME_IN.unpack_from(body)
        old, new = K.cstrings(body[K.RENAME_IN.size :], 2)
        self.ops.rename(nodeid, old, newdir, new, 0, ctx)
        return b""

    def _rename2(self, _u: int, nodeid: int, ctx: K.RequestContext, body: memoryview) -> bytes:
        newdir, flags, _pad = K.RENAME2_IN.unpack_from(body)
        old, new = K.cstrings(body[K.RENAME2_IN.size :], 2)
        self.ops.rename(nodeid, old, newdir, new, flags, ctx)
        return b""

    def _link(self, _u: int, nodeid: int, ctx: K.RequestContext, body: memoryview) -> bytes:
        (old,) = K.LINK_IN.unpack_from(body)
        (name,) = K.cstrings(body[K.LINK_IN.size :], 1)
        return self.ops.link(old, nodeid, name, ctx).entry_out()

    def _open(self, _u: int, nodeid: int, ctx: K.RequestContext, body: memoryview) -> bytes:
        flags, open_flags = K.OPEN_IN.unpack_from(body)
        kill = bool(open_flags & K.OPEN_KILL_SUIDGID)
        return self.ops.open(nodeid, flags, ctx, kill_suidgid=kill).open_out()

    def _create(self, _u: int, nodeid: int, ctx: K.RequestContext, body: memoryview) -> bytes:
        flags, mode, umask, _open_flags = K.CREATE_IN.unpack_from(body)
        ctx.umask = umask
        (name,) = K.cstrings(body[K.CREATE_IN.size :], 1)
        info, attrs = self.ops.create(nodeid, name, mode, flags, ctx)
        return attrs.entry_out() + info.open_out()  # one buffer: one write(2)

    def _tmpfile(
        self, _u: int, nodeid: int, ctx: K.RequestContext, body: memoryview
    ) -> list[bytes]:
        # Laid out as CREATE; the name the kernel sends is a placeholder ("/").
        flags, mode, umask, _open_flags = K.CREATE_IN.unpack_from(body)
        ctx.umask = umask
        info, attrs = self.ops.tmpfile(nodeid, mode, flags, ctx)
        return [attrs.entry_out(), info.open_out()]

    def _read(
        self, _u: int, _n: int, _c: K.RequestContext, body: memoryview
    ) -> bytes | list[bytes | memoryview]:
        fh, offset, size, _rf, _lo, _flags, _pad = K.READ_IN.unpack_from(body)
        return self.ops.read(fh, offset, size)

    def _write(self, _u: int, _n: int, ctx: K.RequestContext, body: memoryview) -> bytes:
        fh, offset, size, write_flags, _lo, _flags, _pad = K.WRITE_IN.unpack_from(body)
        data = bytes(body[K.WRITE_IN.size : K.WRITE_IN.size + size])
        kill = bool(write_flags & K.WRITE_KILL_SUIDGID)
        written = self.ops.write(fh, offset, data, ctx, kill_suidgid=kill)
        return K.WRITE_OUT.pack(written, 0)

    def _flush(self, _u: int, _n: int, _c: K.RequestContext, body: memoryview) -> bytes:
        (fh, _unused, _pad, _lo) = K.FLUSH_IN.unpack_from(body)
        self.ops.flush(fh)
        return b""

    def _release(self, _u: int, _n: int, _c: K.RequestContext, body: memoryview) -> bytes:
        (fh, _flags, _rflags, _lo) = K.RELEASE_IN.unpack_from(body)
        self.ops.release(fh)
        return b""

    def _fsync(self, _u: int, _n: int, _c: K.RequestContext, body: memoryview) -> bytes:
        fh, fsync_flags, _pad = K.FSYNC_IN.unpack_from(body)
        self.ops.fsync(fh, bool(fsync_flags & K.FSYNC_FDATASYNC))
        return b""

    def _opendir(self, _u: int, _n: int, _c: K.RequestContext, _b: memoryview) -> bytes:
        # ENOSYS once, and the kernel opens directories itself from then on, caches their
        # listings, sends READDIR with the directory's inode (see .ops.readdir) and never
        # sends RELEASEDIR.
        raise K.FUSEError(errno.ENOSYS)

    def _readdir(self, _u: int, nodeid: int, ctx: K.RequestContext, body: memoryview) -> bytes:
        return self._list(nodeid, body, ctx, plus=True)

    def _readdir_plain(
        self, _u: int, nodeid: int, ctx: K.RequestContext, body: memoryview
    ) -> bytes:
        # Only if the kernel did not take readdirplus: names without attributes.
        return self._list(nodeid, body, ctx, plus=False)

    def _list(self, nodeid: int, body: memoryview, ctx: K.RequestContext, *, plus: bool) -> bytes:
        _fh, offset, size, _rf, _lo, _flags, _pad = K.READ_IN.unpack_from(body)
        out = K.DirBuffer(size, plus=plus)
        self.ops.readdir(nodeid, offset, out, ctx)
        return out.payload()

    def _fsyncdir(self, _u: int, nodeid: int, _c: K.RequestContext, body: memoryview) -> bytes:
        _fh, fsync_flags, _pad = K.FSYNC_IN.unpack_from(body)
        self.ops.fsyncdir(nodeid, bool(fsync_flags & K.FSYNC_FDATASYNC))
        return b""

    def _syncfs(self, _u: int, _n: int, _c: K.RequestContext, _b: memoryview) -> bytes:
        self.ops.syncfs()
        return b""

    def _statfs(self, _u: int, _n: int, ctx: K.RequestContext, _b: memoryview) -> bytes:
        return self.ops.statfs(ctx).statfs_out()

    def _setxattr(self, _u: int, nodeid: int, ctx: K.RequestContext, body: memoryview) -> bytes:
        size, flags = K.SETXATTR_IN.unpack_from(body)
        rest = bytes(body[K.SETXATTR_IN.size :])
        end = rest.index(b"\0")
        self.ops.setxattr(nodeid, rest[:end], rest[end + 1 : end + 1 + size], flags, ctx)
        return b""

    def _getxattr(
        self, _u: int, nodeid: int, ctx: K.RequestContext, body: memoryview
    ) -> bytes | K.FUSEError:
        size, _pad = K.GETXATTR_IN.unpack_from(body)
        (name,) = K.cstrings(body[K.GETXATTR_IN.size :], 1)
        value = self.ops.getxattr(nodeid, name, ctx)
        if value is None:
            return _NODATA  # an answer, not raised: the common case of untar and git
        return _sized(value, size)

    def _listxattr(self, _u: int, nodeid: int, ctx: K.RequestContext, body: memoryview) -> bytes:
        size, _pad = K.GETXATTR_IN.unpack_from(body)
        names = self.ops.listxattr(nodeid, ctx)
        return _sized(b"".join(n + b"\0" for n in names), size)

    def _removexattr(self, _u: int, nodeid: int, ctx: K.RequestContext, body: memoryview) -> bytes:
        (name,) = K.cstrings(body, 1)
        self.ops.removexattr(nodeid, name, ctx)
        return b""

    def _access(self, _u: int, nodeid: int, ctx: K.RequestContext, body: memoryview) -> bytes:
        mask, _pad = K.ACCESS_IN.unpack_from(body)
        self.ops.access(nodeid, mask, ctx)
        return b""


def tune_gc() -> None:
    """Set the collector up for serving (:data:`GC_THRESHOLDS`): what exists now (modules,
    the store, the startup's objects) moves to the permanent generation (``gc.freeze``),
    so no collection walks it again."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _sized(value: bytes, size: int) -> bytes:
    """A getxattr/listxattr answer: the length when asked with size 0, ERANGE if too small."""
    if size == 0:
        return K.GETXATTR_OUT.pack(len(value), 0)
    if len(value) > size:
        raise K.FUSEError(errno.ERANGE)
    return value
