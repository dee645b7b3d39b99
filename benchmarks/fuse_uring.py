"""FUSE over io_uring against ``/dev/fuse`` read/write: one kernel round trip, both ways.

A trivial filesystem (a root directory; every name is absent) is served by a Python daemon
in one of these transports, and a client process times a tight loop of ``lstat`` calls:

* ``classic-poll``: ``readv`` of ``/dev/fuse`` and ``write`` of the reply, polling (non-
  blocking ``readv`` and ``sched_yield``) for 200 µs after each request, as
  ``branchfs_fuse.session`` does;
* ``classic-block``: the same with a blocking ``readv``;
* ``ring``: FUSE over io_uring, one thread owning one ring and every CPU's queue;
  ``ring-defer``: the ring set up with ``IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN``;
* ``percpu``: one thread per CPU, pinned to it, each with a ring serving that CPU's queue
  (the layout the kernel's per-CPU queues are made for; libfuse's too); ``percpu-defer``.

The client does ``--calls`` ``lstat`` calls: of fresh names (``lookup``: one LOOKUP each,
answered ENOENT) or of the mount's root (``getattr``: one GETATTR each, attributes never
cached). Each run reports µs per call: the client's wall time and CPU time
(``time.process_time_ns``), and the daemon's CPU time (the sum of its threads'
``/proc/PID/task/*/schedstat`` run time) with its user/system split (``/proc/PID/stat``,
10 ms ticks). Runs are interleaved (every transport once per round, ``--rounds``
rounds); the table gives the medians. ``--pin`` runs the client (and a one-thread daemon)
on CPU 1 as well as unpinned.

The io_uring side follows Linux 6.14+ ``fs/fuse/dev_uring.c`` and ``include/uapi/linux/
fuse.h``: the daemon answers INIT with ``FUSE_OVER_IO_URING`` (flags2 bit 9) when the kernel
offers it (module parameter ``/sys/module/fuse/parameters/enable_uring``), then submits
``IORING_OP_URING_CMD`` SQEs (``IORING_SETUP_SQE128``: ``struct fuse_uring_cmd_req`` is in
the 80-byte command area) on the ``/dev/fuse`` descriptor: ``FUSE_IO_URING_CMD_REGISTER``
gives the kernel one entry (an iovec of a 288-byte ``struct fuse_uring_req_header`` and a
payload buffer of at least max_write bytes) for queue ``qid``; the kernel uses the ring
only once every possible CPU's queue has an entry, and completes the command when a request
is in the entry; ``FUSE_IO_URING_CMD_COMMIT_AND_FETCH`` hands the reply back and the entry
over for the next request, in one ``io_uring_enter``. FORGET and INTERRUPT still come
through ``read`` of ``/dev/fuse``, notifications through its ``write``. There is no
io_uring in Python's standard library: the system calls go through ``ctypes``, whose call
costs about 1.3 µs more than a built-in one (``--overhead`` measures it).

Needs root (``fusermount3``, and writing the module parameter: the script sets it to Y for
the ring runs and back to what it was). Usage::

    .venv/bin/python benchmarks/fuse_uring.py [--calls 20000] [--rounds 4] [--pin]
        [--kinds lookup,getattr] [--modes classic-poll,classic-block,ring,percpu]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import glob
import mmap
import os
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from branchfs_fuse import kernel as K

PARAMETER = Path("/sys/module/fuse/parameters/enable_uring")
POLL_NS = 200_000

# -- io_uring (include/uapi/linux/io_uring.h) -----------------------------------------------
SYS_IO_URING_SETUP, SYS_IO_URING_ENTER = 425, 426
SETUP_SQE128 = 1 << 10
SETUP_SINGLE_ISSUER = 1 << 12
SETUP_DEFER_TASKRUN = 1 << 13
ENTER_GETEVENTS = 1 << 0
FEAT_SINGLE_MMAP = 1 << 0
OFF_SQES = 0x10000000
OP_URING_CMD = 46
#: ``struct io_uring_params``: 10 u32, then the SQ and CQ ring offsets (7 u32, u32, u64).
PARAMS = struct.Struct("<10I7IIQ7IIQ")
#: A 128-byte SQE up to the end of ``struct fuse_uring_cmd_req`` (flags, commit_id, qid):
#: opcode, flags, ioprio, fd, cmd_op, pad, addr, len, uring_cmd_flags, user_data.
SQE = struct.Struct("<BBHiIIQIIQ8xQQH6x")
CQE = struct.Struct("<QiI")  # user_data, res, flags

# -- FUSE over io_uring (include/uapi/linux/fuse.h, 7.42+) ----------------------------------
CMD_REGISTER, CMD_COMMIT_AND_FETCH = 1, 2
INIT_EXT = 1 << 30
OVER_IO_URING = 1 << (41 - 32)  # in flags2
#: ``struct fuse_uring_req_header``: in_out[128], op_in[128], fuse_uring_ent_in_out.
HEADER_SIZE = 288
OP_IN_OFFSET, ENT_OFFSET = 128, 256
ENT_IN_OUT = struct.Struct("<QQII")  # flags, commit_id, payload_sz, padding
#: max_write answered at INIT; the ring's payload buffers must hold at least this.
MAX_WRITE = 128 * 1024
INIT_OUT = struct.Struct("<IIIIHHIIHHI7I")
ROOT_ATTR_OUT = K.ATTR_OUT.pack(0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0o40755, 2, 0, 0, 0, 4096, 0)

_libc = ctypes.CDLL(None, use_errno=True)
_long = ctypes.c_long
_enter = ctypes.CFUNCTYPE(_long, _long, _long, _long, _long, _long, ctypes.c_void_p, _long)(
    ("syscall", _libc)
)
_setup = ctypes.CFUNCTYPE(_long, _long, _long, ctypes.c_void_p)(("syscall", _libc))


def _check(ret: int) -> int:
    if ret < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return ret


class Ring:
    """One io_uring with 128-byte SQEs: its rings mapped, submissions queued, completions read."""

    def __init__(self, entries: int, flags: int) -> None:
        params = ctypes.create_string_buffer(PARAMS.size)
        struct.pack_into("<I", params, 8, SETUP_SQE128 | flags)
        self.fd = _check(_setup(SYS_IO_URING_SETUP, entries, ctypes.addressof(params)))
        p = PARAMS.unpack(params.raw)
        sq_entries, cq_entries, features = p[0], p[1], p[5]
        _head, sq_tail, sq_mask, _n, _fl, _drop, sq_array, _r, _u = p[10:19]
        cq_head, cq_tail, cq_mask, _n, _ovf, cqes, _fl, _r, _u = p[19:28]
        if not features & FEAT_SINGLE_MMAP:
            raise OSError(errno.ENOSYS, "io_uring without IORING_FEAT_SINGLE_MMAP")
        size = max(sq_array + 4 * sq_entries, cqes + CQE.size * cq_entries)
        shared = mmap.MAP_SHARED | mmap.MAP_POPULATE
        self.rings = mmap.mmap(self.fd, size, shared, offset=0)
        self.sqes = mmap.mmap(self.fd, 128 * sq_entries, shared, offset=OFF_SQES)
        self.words = memoryview(self.rings).cast("I")
        self.sq_tail, self.sq_mask = sq_tail // 4, self.words[sq_mask // 4]
        self.cq_head, self.cq_tail = cq_head // 4, cq_tail // 4
        self.cq_mask, self.cqes = self.words[cq_mask // 4], cqes
        for i in range(sq_entries):  # SQ slot i always holds SQE i
            self.words[sq_array // 4 + i] = i
        self.pending = 0

    def fuse_cmd(self, fd: int, op: int, iov: int, user_data: int, qid: int, commit: int) -> None:
        """Queue an ``IORING_OP_URING_CMD`` for FUSE (``iov``: REGISTER's iovec pair, or 0)."""
        words = self.words
        tail = words[self.sq_tail]
        at = (tail & self.sq_mask) * 128
        SQE.pack_into(
            self.sqes, at, OP_URING_CMD, 0, 0, fd, op, 0, iov, 2 if iov else 0, 0, user_data,
            0, commit, qid,
        )  # fmt: skip
        words[self.sq_tail] = (tail + 1) & 0xFFFFFFFF
        self.pending += 1

    def enter(self, wait: int) -> None:
        """Submit what is queued; with ``wait``, sleep until that many completions are in."""
        flags = ENTER_GETEVENTS if wait else 0
        while True:
            ret = _enter(SYS_IO_URING_ENTER, self.fd, self.pending, wait, flags, None, 0)
            if ret >= 0:
                self.pending -= ret
                return
            if ctypes.get_errno() != errno.EINTR:
                _check(ret)

    def reap(self) -> list[tuple[int, int]]:
        """The completions in the CQ ring, as (user_data, res), consumed."""
        words = self.words
        head, tail = words[self.cq_head], words[self.cq_tail]
        done = []
        while head != tail:
            at = self.cqes + (head & self.cq_mask) * CQE.size
            user_data, res, _flags = CQE.unpack_from(self.rings, at)
            done.append((user_data, res))
            head = (head + 1) & 0xFFFFFFFF
        words[self.cq_head] = head
        return done


class Entry:
    """One ring entry's buffers, at fixed addresses: header, payload and the iovec of both."""

    def __init__(self, qid: int) -> None:
        self.qid = qid
        self.header = (ctypes.c_char * HEADER_SIZE)()
        self.payload = (ctypes.c_char * MAX_WRITE)()
        self.iov = (ctypes.c_uint64 * 4)(
            ctypes.addressof(self.header), HEADER_SIZE, ctypes.addressof(self.payload), MAX_WRITE
        )
        self.head = memoryview(self.header).cast("B")
        self.body = memoryview(self.payload).cast("B")


# -- the daemon -----------------------------------------------------------------------------


class Daemon:
    """Serves the trivial filesystem on one ``/dev/fuse`` descriptor; counts requests."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.counts: dict[str, int] = {}

    @staticmethod
    def answer(opcode: int) -> tuple[int, bytes | None]:
        """(errno, reply payload) for a request; None: no reply (forget, interrupt)."""
        if opcode == K.GETATTR:
            return 0, ROOT_ATTR_OUT
        if opcode == K.LOOKUP:
            return errno.ENOENT, b""
        if opcode in (K.FORGET, K.BATCH_FORGET, K.INTERRUPT):
            return 0, None
        return (0, b"") if opcode == K.DESTROY else (errno.ENOSYS, b"")

    def one_from_device(self, buf: bytearray, *, ring: bool) -> bool:
        """Read and answer one request from ``/dev/fuse``; False after DESTROY."""
        n = os.readv(self.fd, [buf])
        _len, opcode, unique, _node, *_rest = K.IN_HEADER.unpack_from(buf)
        self.counts["device"] = self.counts.get("device", 0) + 1
        out: bytes | None
        if opcode == K.INIT:
            code, out = 0, self.init_out(bytes(buf[40:n]), ring=ring)
        else:
            code, out = self.answer(opcode)
        if out is not None:
            try:
                os.write(self.fd, K.OUT_HEADER.pack(16 + len(out), -code, unique) + out)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENODEV):
                    raise
        return bool(opcode != K.DESTROY)

    @staticmethod
    def init_out(body: bytes, *, ring: bool) -> bytes:
        _major, _minor, readahead, flags, flags2 = struct.unpack_from("<5I", body)
        if ring and not flags2 & OVER_IO_URING:
            raise SystemExit("the kernel does not offer FUSE_OVER_IO_URING (enable_uring?)")
        return INIT_OUT.pack(
            7, 38, readahead, flags & INIT_EXT, 16, 12, MAX_WRITE, 1, 0, 0,
            OVER_IO_URING if ring else 0, *(0,) * 7,
        )  # fmt: skip

    def serve_device(self, *, poll_ns: int) -> None:
        """The classic loop: ``readv`` and ``write`` (polling ``poll_ns`` before sleeping)."""
        buf = bytearray(MAX_WRITE + 4096)
        os.set_blocking(self.fd, not poll_ns)
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        deadline = 0
        while True:
            try:
                if not self.one_from_device(buf, ring=False):
                    return
                deadline = 0
            except BlockingIOError:
                now = time.perf_counter_ns()
                deadline = deadline or now + poll_ns
                if now < deadline:
                    os.sched_yield()
                    continue
                deadline = 0
                poller.poll()
            except OSError as exc:
                if exc.errno == errno.ENODEV:
                    return
                if exc.errno != errno.ENOENT:
                    raise

    def serve_ring(self, qids: list[int], flags: int, *, pin: bool) -> None:
        """One thread's ring: an entry per queue in ``qids``, served until the unmount."""
        if pin:
            os.sched_setaffinity(0, set(qids))
        ring = Ring(8 * len(qids), flags)
        entries = [Entry(qid) for qid in qids]
        for i, ent in enumerate(entries):
            ring.fuse_cmd(self.fd, CMD_REGISTER, ctypes.addressof(ent.iov), i, ent.qid, 0)
        counts, keys = self.counts, [f"ring{qid}" for qid in qids]
        while True:
            ring.enter(1)
            for user_data, res in ring.reap():
                if res < 0:
                    if -res in (errno.ENOTCONN, errno.ECANCELED, errno.ENODEV):
                        return  # unmounted
                    raise OSError(-res, f"FUSE ring command: {os.strerror(-res)}")
                ent = entries[user_data]
                head = ent.head
                _len, opcode, unique, _node, *_ = K.IN_HEADER.unpack_from(head)
                _flags, commit_id, _size, _pad = ENT_IN_OUT.unpack_from(head, ENT_OFFSET)
                counts[keys[user_data]] = counts.get(keys[user_data], 0) + 1
                code, answer = self.answer(opcode)
                out = answer or b""
                head[0:16] = K.OUT_HEADER.pack(16 + len(out), -code, unique)
                ent.body[: len(out)] = out
                ENT_IN_OUT.pack_into(head, ENT_OFFSET, 0, commit_id, len(out), 0)
                ring.fuse_cmd(self.fd, CMD_COMMIT_AND_FETCH, 0, user_data, ent.qid, commit_id)


def serve(mode: str, mountpoint: str, report: str) -> None:
    """Mount, serve in ``mode`` until unmounted, write the request counts to ``report``."""
    fd = K.mount(mountpoint, ("fsname=uringbench", "subtype=uringbench"))
    daemon = Daemon(fd)
    if mode.startswith("classic"):
        daemon.serve_device(poll_ns=POLL_NS if mode == "classic-poll" else 0)
    else:
        buf = bytearray(MAX_WRITE + 4096)
        daemon.one_from_device(buf, ring=True)  # INIT: registering needs it answered
        flags = SETUP_SINGLE_ISSUER | SETUP_DEFER_TASKRUN if mode.endswith("-defer") else 0
        possible = range(os.cpu_count() or 1)
        groups = [list(possible)] if mode.startswith("ring") else [[q] for q in possible]
        pin = mode.startswith("percpu")
        for qids in groups:
            threading.Thread(
                target=daemon.serve_ring, args=(qids, flags), kwargs={"pin": pin}
            ).start()
        try:  # FORGET and INTERRUPT still come this way
            while daemon.one_from_device(buf, ring=True):
                pass
        except OSError as exc:
            if exc.errno != errno.ENODEV:
                raise
    Path(report).write_text(repr(daemon.counts))


# -- the client and the driver --------------------------------------------------------------

CLIENT = r"""
import os, sys, time
mnt, kind, n, cpu = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if cpu != "-":
    os.sched_setaffinity(0, {int(cpu)})
paths = [f"{mnt}/f{i}" for i in range(n)] if kind == "lookup" else [mnt] * n
for p in paths[:500]:  # warm up
    try: os.lstat(p + "w")
    except FileNotFoundError: pass
t0, c0 = time.perf_counter_ns(), time.process_time_ns()
for p in paths:
    try: os.lstat(p)
    except FileNotFoundError: pass
t1, c1 = time.perf_counter_ns(), time.process_time_ns()
print((t1 - t0) / n / 1000, (c1 - c0) / n / 1000)
"""


def daemon_cpu(pid: int) -> tuple[int, int, int]:
    """The daemon's run time (ns, all threads) and its user and system ticks."""
    run = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        with contextlib.suppress(OSError):
            run += int(Path(path).read_text().split()[0])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return run, int(fields[11]), int(fields[12])


def measure(mode: str, kind: str, calls: int, *, pin: bool, scratch: Path) -> list[float]:
    """One run: [wall, client CPU, daemon CPU, daemon user, daemon sys], µs per call."""
    mnt, report = scratch / "mnt", scratch / "report"
    mnt.mkdir(exist_ok=True)
    cmd = [sys.executable, __file__, "--serve", mode, str(mnt), str(report)]
    if pin and not mode.startswith("percpu"):
        cmd = ["taskset", "-c", "1", *cmd]
    daemon = subprocess.Popen(cmd)
    try:
        for _ in range(200):
            if os.path.ismount(mnt):
                break
            time.sleep(0.05)
        else:
            raise SystemExit(f"{mode}: the mount did not appear")
        before = daemon_cpu(daemon.pid)
        out = subprocess.run(
            [sys.executable, "-c", CLIENT, str(mnt), kind, str(calls), "1" if pin else "-"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        after = daemon_cpu(daemon.pid)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        daemon.wait(30)
    wall, client = map(float, out.split())
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    run, user, system = (b - a for a, b in zip(before, after, strict=True))
    counts = report.read_text()
    print(f"  {kind:7} {'pinned' if pin else 'free':6} {mode:14} {wall:6.2f} µs  {counts}")
    return [wall, client, run / calls / 1000, user * tick_us / calls, system * tick_us / calls]


def overhead() -> None:
    """A ``ctypes`` system call against a built-in one (getpid), µs of CPU per call."""
    n = 200_000
    for name, call in (
        ("os.getpid()", os.getpid),
        ("ctypes syscall(SYS_getpid)", lambda: _enter(39, 0, 0, 0, 0, None, 0)),
    ):
        start = time.thread_time_ns()
        for _ in range(n):
            call()
        print(f"{name:28} {(time.thread_time_ns() - start) / n / 1000:.2f} µs")


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--pin", action="store_true", help="also pinned to CPU 1")
    parser.add_argument("--kinds", default="lookup,getattr")
    modes = "classic-poll,classic-block,ring,ring-defer,percpu,percpu-defer"
    parser.add_argument("--modes", default=modes)
    parser.add_argument("--overhead", action="store_true", help="only the ctypes call cost")
    args = parser.parse_args()
    if args.overhead:
        overhead()
        return
    was = PARAMETER.read_text().strip() if PARAMETER.exists() else ""
    wanted = args.modes.split(",")
    if any(not m.startswith("classic") for m in wanted):
        try:
            PARAMETER.write_text("Y")
        except OSError as exc:
            print(f"FUSE over io_uring unavailable ({exc}): classic modes only")
            wanted = [m for m in wanted if m.startswith("classic")]
    results: dict[tuple[str, bool, str], list[list[float]]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="fuse-uring-") as tmp:
            for r in range(args.rounds):
                print(f"round {r + 1}, load average {os.getloadavg()[0]:.2f}")
                for kind in args.kinds.split(","):
                    for pin in (False, True) if args.pin else (False,):
                        for mode in wanted:
                            row = measure(mode, kind, args.calls, pin=pin, scratch=Path(tmp))
                            results.setdefault((kind, pin, mode), []).append(row)
    finally:
        if was and PARAMETER.read_text().strip() != was:
            PARAMETER.write_text(was)
    print("\nmedians, µs per call: wall, client CPU, daemon CPU (user + sys, from ticks)")
    for (kind, pin, mode), rows in results.items():
        wall, client, run, user, system = (
            statistics.median(col) for col in zip(*rows, strict=True)
        )
        where = "pinned" if pin else "free"
        print(
            f"{kind:7} {where:6} {mode:14} {wall:6.2f} {client:6.2f} {run:6.2f}"
            f" ({user:.1f} + {system:.1f})"
        )


if __name__ == "__main__":
    main()
