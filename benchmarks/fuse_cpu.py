"""The daemon's own CPU per request type, without a kernel: the request mixes of
``make bench-fuse``'s metadata rows replayed through the request loop's dispatcher.

Each request is encoded as ``/dev/fuse`` would deliver it and handed to
:meth:`branchfs_fuse.session.Session._dispatch`, which decodes it, runs the filesystem,
packs the reply and writes it to a pipe (the one system call left of a kernel round trip),
from which this script reads it back, untimed (a compiled ``Session`` has no ``_reply`` to
wrap). The loop's thread batches its writes as the daemon's does (group commit). Figures
are the thread's CPU time (``time.thread_time_ns``) per request type, in µs, so load from
other processes on the machine moves them little. Requests per file are those ``ctl
stats`` counted on a real mount for the same workloads (see docs/architecture.md, "Profile
of metadata-heavy work").

Workloads (``--files`` files, 100 a directory), as on a root daemon's private mount,
where the daemon checks permissions (:mod:`branchfs_fuse.dac`, installed in the bridge):

* ``create``: per file LOOKUP (negative), CREATE, WRITE (112 bytes), RELEASE; per
  directory LOOKUP and MKDIR;
* ``untar``: as ``create``, plus three SETATTRs through the handle (owner, mode, times) and
  GETXATTR ``security.capability`` (the kernel asks it at a chown) before the RELEASE;
* ``rm``: per file UNLINK, then FORGET of the file (the kernel held it from a READDIRPLUS);
* ``git``: ``git add -A`` of the ``create`` files, as a real mount's trace shows it: per
  file OPEN, READ and RELEASE of the source; LOOKUP (negative) and CREATE of
  ``objects/xx/tmp_obj_N`` (``O_RDWR | O_EXCL``, mode 0444), GETXATTR
  ``security.capability`` (the kernel's page-cache write asks it), WRITE of the compressed
  object (7 in 8 files 460 bytes, inline; 1 in 8 12,000 bytes, chunks: the median and the
  mean of the standard library's compressed sources), RELEASE, LOOKUP (negative) and LINK
  of the final name, UNLINK of the temporary name; 256 object directories made by LOOKUP
  and MKDIR.

``--default-permissions`` replays the mixes of a mount with ``default_permissions`` (any
other mount): no checks in the daemon, and a GETATTR of the directory after each CREATE,
UNLINK and LINK, and after each MKDIR of ``git``'s (the kernel refreshes the directory's
attributes before the next change in it).

Usage: ``.venv/bin/python benchmarks/fuse_cpu.py [--files 5000] [--rounds 3] [--profile]
[--default-permissions]``. ``--profile`` prints a cProfile of the loop for the ``create``
workload. Run it with ``PYTHONPATH=/other/checkout:/other/checkout/fuse``-style trees to
compare two versions.
"""

from __future__ import annotations

import argparse
import cProfile
import fcntl
import os
import pstats
import shutil
import tempfile
import time
from collections.abc import Iterator

from branchfs_fuse import kernel as K
from branchfs_fuse import session as session_module
from branchfs_fuse.bridge import Bridge
from branchfs_fuse.session import Session

import branchfs
from branchfs import notices

UID, GID, PID = os.geteuid(), os.getegid(), os.getpid()
ROOT = 1

#: The mixes of a mount with ``default_permissions`` (``--default-permissions``).
KERNEL_CHECKS = False


class Replay:
    """A bridge and session over a fresh store; requests go in raw, replies to a pipe."""

    def __init__(self, path: str) -> None:
        changes = notices.Pending()
        self.store = branchfs.Store.open(path, create=True, observer=changes)
        self.store.create_branch("main")
        self.bridge = Bridge(self.store, "main", "/nonexistent")
        if not KERNEL_CHECKS:  # trees before the daemon checked permissions have no dac
            from branchfs_fuse import dac

            tree = self.bridge.tree
            self.bridge.checks = dac.DaemonChecks(tree.record, tree.child_record, lambda _f: None)
        self.bridge.coherence.changes = changes
        self.store.settler = self.bridge.coherence.settle_others
        # Replies go to a pipe big enough for any one of them, read back after each request.
        self.replies, self.reply_fd = os.pipe()
        fcntl.fcntl(self.replies, fcntl.F_SETPIPE_SZ, 1 << 20)
        os.set_blocking(self.replies, False)
        self.session = Session(self.reply_fd, self.bridge)
        self.bridge.group.start()
        tune = getattr(session_module, "tune_gc", None)
        if tune is not None:  # what Session.serve does first (trees that have it)
            tune()
        self.unique = 0
        self.buf = bytearray(K.REQUEST_SIZE)
        self.view = memoryview(self.buf)
        #: CPU ns and count per opcode.
        self.cpu: dict[int, int] = {}
        self.count: dict[int, int] = {}
        #: The payload of the last reply written (after its header), None if it had none.
        self.last: bytes | None = None

    def close(self) -> None:
        self.bridge.group.commit()
        self.bridge.shutdown()
        self.store.close()
        os.close(self.reply_fd)
        os.close(self.replies)

    def send(self, opcode: int, nodeid: int, body: bytes) -> bytes | None:
        """One request through the dispatcher; the reply payload it wrote (or None)."""
        self.unique += 1
        n = K.IN_HEADER.size + len(body)
        K.IN_HEADER.pack_into(self.buf, 0, n, opcode, self.unique, nodeid, UID, GID, PID, 0, 0)
        self.buf[K.IN_HEADER.size : n] = body
        t = time.thread_time_ns()
        self.session._dispatch(self.view, n)
        self.cpu[opcode] = self.cpu.get(opcode, 0) + time.thread_time_ns() - t
        self.count[opcode] = self.count.get(opcode, 0) + 1
        try:
            reply = os.read(self.replies, 1 << 20)
        except BlockingIOError:  # no reply (FORGET)
            return None
        self.last = reply[K.OUT_HEADER.size :] or None
        return self.last

    # -- requests ---------------------------------------------------------------------------

    def lookup(self, parent: int, name: bytes) -> int:
        out = self.send(K.LOOKUP, parent, name + b"\0")
        assert isinstance(out, bytes)
        return int.from_bytes(out[:8], "little")

    def mkdir(self, parent: int, name: bytes) -> int:
        out = self.send(K.MKDIR, parent, K.MKDIR_IN.pack(0o755, 0o022) + name + b"\0")
        assert isinstance(out, bytes), out
        return int.from_bytes(out[:8], "little")

    def create(self, parent: int, name: bytes) -> tuple[int, int]:
        """An ``O_WRONLY | O_EXCL`` create of mode 0644: (inode, file handle)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        return self.create_as(parent, name, flags, 0o100644)

    def create_as(self, parent: int, name: bytes, flags: int, mode: int) -> tuple[int, int]:
        out = self.send(K.CREATE, parent, K.CREATE_IN.pack(flags, mode, 0o022, 0) + name + b"\0")
        assert isinstance(out, bytes), out
        entry, opened = out[: K.ENTRY_OUT.size], out[K.ENTRY_OUT.size :]
        return int.from_bytes(entry[:8], "little"), int.from_bytes(opened[:8], "little")

    def write(self, fh: int, off: int, data: bytes) -> None:
        self.send(K.WRITE, 0, K.WRITE_IN.pack(fh, off, len(data), 0, 0, 0, 0) + data)

    def release(self, fh: int) -> None:
        self.send(K.RELEASE, 0, K.RELEASE_IN.pack(fh, 0, 0, 0))

    def getattr(self, nodeid: int) -> None:
        self.send(K.GETATTR, nodeid, K.GETATTR_IN.pack(0, 0, 0))

    def setattr(self, nodeid: int, fh: int, valid: int, **kw: int) -> None:
        body = K.SETATTR_IN.pack(
            valid | K.FATTR_FH,
            0,
            fh,
            0,
            0,
            kw.get("atime", 0),
            kw.get("mtime", 0),
            0,
            0,
            0,
            0,
            kw.get("mode", 0),
            0,
            kw.get("uid", 0),
            kw.get("gid", 0),
            0,
        )
        self.send(K.SETATTR, nodeid, body)

    def getxattr(self, nodeid: int, name: bytes) -> None:
        self.send(K.GETXATTR, nodeid, K.GETXATTR_IN.pack(0, 0) + name + b"\0")

    def unlink(self, parent: int, name: bytes) -> None:
        self.send(K.UNLINK, parent, name + b"\0")

    def forget(self, nodeid: int) -> None:
        self.send(K.FORGET, nodeid, K.FORGET_IN.pack(1))

    def open(self, nodeid: int, flags: int) -> int:
        out = self.send(K.OPEN, nodeid, K.OPEN_IN.pack(flags, 0))
        assert isinstance(out, bytes), out
        return int.from_bytes(out[:8], "little")

    def read(self, fh: int, size: int) -> None:
        self.send(K.READ, 0, K.READ_IN.pack(fh, 0, size, 0, 0, 0, 0))

    def link(self, ino: int, parent: int, name: bytes) -> None:
        self.send(K.LINK, parent, K.LINK_IN.pack(ino) + name + b"\0")


def files(n: int) -> Iterator[tuple[int, bytes]]:
    for i in range(n):
        yield i, b"f%05d.txt" % i


def workload_create(r: Replay, n: int, untar: bool) -> list[tuple[int, bytes, int]]:
    """Create ``n`` small files; (directory, name, inode) of each."""
    top = r.mkdir(ROOT, b"w%d" % r.unique)
    made = []
    d = 0
    for i, name in files(n):
        if i % 100 == 0:
            dname = b"d%03d" % (i // 100)
            r.send(K.LOOKUP, top, dname + b"\0")
            d = r.mkdir(top, dname)
        r.send(K.LOOKUP, d, name + b"\0")
        ino, fh = r.create(d, name)
        r.write(fh, 0, b"small file %d\n" % i * 8)
        if untar:
            r.setattr(ino, fh, K.FATTR_UID | K.FATTR_GID, uid=UID, gid=GID)
            r.getxattr(ino, b"security.capability")
            r.setattr(ino, fh, K.FATTR_MODE, mode=0o100644)
            r.setattr(
                ino, fh, K.FATTR_ATIME | K.FATTR_MTIME, atime=1_700_000_000, mtime=1_700_000_000
            )
        r.release(fh)
        if KERNEL_CHECKS:
            r.getattr(d)
        made.append((d, name, ino))
    return made


def workload_rm(r: Replay, made: list[tuple[int, bytes, int]]) -> None:
    for d, name, ino in made:
        r.unlink(d, name)
        if KERNEL_CHECKS:
            r.getattr(d)
        r.forget(ino)


#: The object directories of ``git``'s workload: ``objects/xx`` by ``xx`` (made once).
_objdirs: dict[int, int] = {}


def workload_git(r: Replay, made: list[tuple[int, bytes, int]], first: int) -> None:
    """``git add -A`` of ``made`` (see the module docstring); ``first``: the number of the
    first file, for object names that differ across blocks."""
    objects = _objdirs.get(-1)
    if objects is None:
        objects = _objdirs[-1] = r.mkdir(ROOT, b"objects")
    small, big = b"x" * 460, bytes(range(256)) * 47
    for n, (_d, _name, ino) in enumerate(made, first):
        src = r.open(ino, os.O_RDONLY)
        r.read(src, 4096)
        xx = (n * 2654435761) >> 8 & 0xFF
        d = _objdirs.get(xx)
        if d is None:
            r.send(K.LOOKUP, objects, b"%02x" % xx + b"\0")
            d = _objdirs[xx] = r.mkdir(objects, b"%02x" % xx)
            if KERNEL_CHECKS:
                r.getattr(d)
        tmp = b"tmp_obj_%06d" % n
        r.send(K.LOOKUP, d, tmp + b"\0")
        obj, fh = r.create_as(d, tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o100444)
        r.getxattr(obj, b"security.capability")
        r.write(fh, 0, big if n % 8 == 7 else small)
        r.release(fh)
        if KERNEL_CHECKS:
            r.getattr(d)
        final = b"%038x" % n
        r.send(K.LOOKUP, d, final + b"\0")
        r.link(obj, d, final)
        if KERNEL_CHECKS:
            r.getattr(d)
        r.unlink(d, tmp)
        r.release(src)


#: Files per block: each request type's figure is the lowest of its per-block means, the
#: block least disturbed by other processes on a shared machine.
BLOCK = 200


def run(n: int, rounds: int, profile: bool) -> dict[str, dict[str, float]]:
    """Per workload, per request type: CPU µs per request; ``per file``: the sum per file."""
    results: dict[str, dict[str, list[float]]] = {}
    for _ in range(rounds):
        scratch = tempfile.mkdtemp(prefix="fuse-cpu-")
        try:
            r = Replay(os.path.join(scratch, "store"))
            for label, untar in (("create", False), ("untar", True)):
                made: list[tuple[int, bytes, int]] = []
                prof = cProfile.Profile() if profile and label == "create" else None
                for _block in range(0, n, BLOCK):
                    r.cpu.clear()
                    r.count.clear()
                    if prof:
                        prof.enable()
                    made += workload_create(r, BLOCK, untar)
                    if prof:
                        prof.disable()
                    collect(results, label, r, BLOCK)
                if prof:
                    pstats.Stats(prof).sort_stats("tottime").print_stats(40)
                if label == "create":
                    _objdirs.clear()
                    for start in range(0, len(made), BLOCK):
                        r.cpu.clear()
                        r.count.clear()
                        workload_git(r, made[start : start + BLOCK], start)
                        collect(results, "git", r, BLOCK)
                    for start in range(0, len(made), BLOCK):
                        r.cpu.clear()
                        r.count.clear()
                        workload_rm(r, made[start : start + BLOCK])
                        collect(results, "rm", r, BLOCK)
            r.close()
        finally:
            shutil.rmtree(scratch)
    out: dict[str, dict[str, float]] = {}
    for label, per in results.items():
        best = {k: min(v) for k, v in per.items()}
        out[label] = best
        print(f"{label}: daemon CPU {best['per file']:.1f} µs per file")
        for k in sorted(best):
            if k != "per file":
                print(f"   {k:10} {best[k]:6.1f} µs/request  {per_file[label][k]:5.2f}/file")
    return out


#: Requests per file of each type, by workload (filled by :func:`collect`).
per_file: dict[str, dict[str, float]] = {}


def collect(results: dict[str, dict[str, list[float]]], label: str, r: Replay, n: int) -> None:
    """Add one block's figures: CPU µs per request of each type, and per file."""
    per = results.setdefault(label, {})
    counts = per_file.setdefault(label, {})
    total = 0
    for op, ns in r.cpu.items():
        name = K.OPCODE_NAMES.get(op, str(op))
        per.setdefault(name, []).append(ns / r.count[op] / 1000)
        counts[name] = r.count[op] / n
        total += ns
    per.setdefault("per file", []).append(total / n / 1000)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--default-permissions", action="store_true", help="the kernel checks")
    a = p.parse_args(argv)
    global KERNEL_CHECKS
    KERNEL_CHECKS = a.default_permissions
    run(a.files, a.rounds, a.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
