"""``python -m branchfs_fuse.zygote``: one process that has imported the daemon and forks a
daemon per request, so that N mounts cost one interpreter start instead of N.

best-of mounts every attempt with a daemon of its own. Started as ``python -m
branchfs_fuse``, each daemon pays an interpreter start and the daemon's imports (about
0.13 s of CPU on the benchmark machine); forked from this process, it pays a ``fork`` and
the mount itself. The zygote stays single-threaded and never opens a store, so a forked
child starts as clean as a new process would (LMDB must not be used across a fork).

The protocol, one JSON object per line on stdin and stdout::

    request  {"id": 7, "store": "/s.bfs", "branch": "b", "mountpoint": "/m", "log": "/l",
              "owned": true}
    answer   {"id": 7, "pid": 1234, "ready": "ok"}      (or "ready": why it failed)

Each daemon gets a session of its own, stdin and stdout on ``/dev/null`` and stderr
appended to ``log``. Daemons are reaped by the kernel (SIGCHLD ignored here).

At EOF on stdin the zygote answers what is pending, then tells every daemon it forked that
still runs to stop (SIGTERM: the daemon flushes, detaches its mount and exits) and exits.
Its client closes stdin only once it has unmounted every tree it asked for, so at that
point a daemon still running belongs to a client that died (SIGKILL) without cleaning up,
and would otherwise keep its mount forever. Once such a daemon has exited, its mountpoint
is removed too if the request said ``"owned"`` (a temporary directory its client made).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import traceback
from typing import Any

from branchfs import trace

from .daemon import run


def _child(req: dict[str, Any], ready_w: int) -> int:
    """In the forked child: become a detached daemon and serve the mount."""
    os.setsid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the daemon waits for fusermount3
    null = os.open(os.devnull, os.O_RDWR)
    log = os.open(str(req["log"]), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(log, 2)
    keep = {0, 1, 2, ready_w}
    for fd in (null, log):
        if fd not in keep:
            os.close(fd)
    os.closerange(3, ready_w)
    os.closerange(ready_w + 1, 65536)
    trace.mark("daemon forked")
    return run(str(req["store"]), str(req["mountpoint"]), str(req["branch"]), ready_fd=ready_w)


def _spawn(req: dict[str, Any]) -> tuple[int, int]:
    """Fork one daemon for ``req``; (read end of its ready pipe, its pid)."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(ready_r)
            code = _child(req, ready_w)
        except BaseException:
            traceback.print_exc()
        finally:
            trace.mark("daemon exit")
            os._exit(code)
    os.close(ready_w)
    return ready_r, pid


def _answer(obj: dict[str, Any]) -> None:
    os.write(1, json.dumps(obj).encode() + b"\n")


def serve() -> int:
    """Answer requests until EOF on stdin and no daemon is still starting."""
    trace.mark("zygote ready")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    pending: dict[int, tuple[int, int]] = {}  # ready pipe -> (request id, pid)
    forked: list[tuple[int, str | None]] = []  # pid, and its mountpoint if ours to remove
    buf = b""
    reading = True
    while reading or pending:
        fds = ([0] if reading else []) + list(pending)
        ready, _, _ = select.select(fds, [], [])
        for fd in ready:
            if fd == 0:
                data = os.read(0, 1 << 16)
                if not data:
                    reading = False
                    continue
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    req = json.loads(line)
                    try:
                        ready_r, pid = _spawn(req)
                    except OSError as exc:
                        _answer({"id": req["id"], "pid": 0, "ready": f"cannot fork: {exc}"})
                        continue
                    pending[ready_r] = (int(req["id"]), pid)
                    forked.append((pid, str(req["mountpoint"]) if req.get("owned") else None))
            else:
                data = os.read(fd, 4096)
                os.close(fd)
                rid, pid = pending.pop(fd)
                trace.mark("daemon ready", daemon=pid)
                message = data.decode(errors="replace").strip() or "the daemon exited"
                _answer({"id": rid, "pid": pid, "ready": message})
    orphans = [(pid, mp) for pid, mp in forked if _stop_orphan(pid)]
    for pid, mp in orphans:
        if mp is not None and _wait_exit(pid, 10.0):
            with contextlib.suppress(OSError):
                os.rmdir(mp)  # the client's temporary mountpoint, empty once detached
    return 0


def _stop_orphan(pid: int) -> bool:
    """SIGTERM a daemon this zygote forked, if it still runs (not a zombie, not reused);
    whether it did."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    if fields[0] in ("Z", "X") or int(fields[1]) != os.getpid():
        return False  # gone, or the pid now names someone else's process
    os.kill(pid, signal.SIGTERM)
    return True


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to exit (a pidfd, pidfd_open(2))."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return True  # already gone
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.stderr.flush()
    os._exit(serve())  # no interpreter teardown: its parent waits for this exit
