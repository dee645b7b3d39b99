"""Many mounts, one interpreter start: mount daemons forked from a zygote process.

:class:`Spawner` starts a zygote (see :mod:`branchfs_fuse.zygote`) once, asks it for one
daemon per mount and waits for each to answer, like :func:`branchfs.mount.start_daemon`
does for a daemon of its own. best-of uses it so that N attempts' mounts cost one zygote
and N forks. A daemon forked this way is not this process's child: :class:`Daemon`
follows it by pid, and waits for its exit on a pidfd (pidfd_open(2)), not by polling.

The zygote is a fork of this process when this process runs a single thread and has no
store open (the command line before it opens the store): it then shares the interpreter
and the modules already imported, and imports only the daemon's own while its parent goes
on. Otherwise (other threads may hold locks a fork would copy; LMDB forbids using an
environment across a fork, see :func:`branchfs.envs.open_stores`) the zygote is a new
``python -m branchfs_fuse.zygote``.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from . import trace
from .errors import MountError
from .mount import (
    START_TIMEOUT,
    check_fuse,
    check_mountpoint,
    clean_stale,
    is_stale,
    unmount_while_alive,
)
from .notices import mounts_dir


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for process ``pid`` to exit; whether it did.

    Works for any process, not only a child: it polls a pidfd (Linux 5.3+), which becomes
    readable when the process exits; where pidfds are missing it polls ``/proc``. A
    child is not reaped here.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (OSError, AttributeError):
        return _poll_exit(pid, timeout)
    try:
        ready, _, _ = select.select([fd], [], [], max(timeout, 0.0))
        return bool(ready) or not _alive(pid)
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _poll_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


class Daemon:
    """A mount daemon followed by pid (it is the zygote's child, not ours)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def alive(self) -> bool:
        """Whether the process still runs (a zombie does not count)."""
        return _alive(self.pid)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for it to exit; whether it did."""
        return wait_exit(self.pid, timeout)

    def signal(self, sig: int) -> None:
        """Send ``sig`` if it still runs."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)


def _open_stores() -> list[str]:
    """The stores this process has open (none if it never imported the engine's LMDB layer:
    this module does not import it, so that the command line can fork its zygote first)."""
    meta = sys.modules.get("branchfs.envs")
    return [] if meta is None else list(meta.open_stores())


#: In a forked zygote, the parent's stream objects (see ``_Zygote.forked``).
_KEPT: list[object] = []


class _Zygote:
    """The zygote process: its pid, the pipe its requests go into and the one it answers on."""

    def __init__(self, pid: int, requests: IO[bytes], answers: IO[bytes]) -> None:
        self.pid = pid
        self.requests = requests
        self.answers = answers

    @classmethod
    def forked(cls) -> _Zygote:
        """Fork this (single-threaded) process into a zygote."""
        req_r, req_w = os.pipe()
        ans_r, ans_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's coverage is not collected
            code = 1
            try:
                os.setsid()  # a terminal's Ctrl-C is for our caller to handle
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(req_r, 0)
                os.dup2(ans_w, 1)
                os.dup2(null, 2)
                os.closerange(3, 65536)
                # New stream objects: the parent's may hold output it has not flushed yet,
                # which must reach neither the answer pipe nor a log. The old ones are kept
                # (never finalized, so never flushed) until os._exit.
                _KEPT.append((sys.stdout, sys.stderr))
                sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
                # What was inherited is never collected: the garbage collector would write to
                # every object's pages and copy them (gc.freeze's documented use, for a fork).
                gc.freeze()
                # The daemon's package, by name: the engine does not depend on it otherwise.
                code = importlib.import_module("branchfs_fuse.zygote").serve()
            finally:
                os._exit(code)
        os.close(req_r)
        os.close(ans_w)
        return cls(pid, os.fdopen(req_w, "wb"), os.fdopen(ans_r, "rb"))

    @classmethod
    def started(cls) -> _Zygote:
        """Start ``python -m branchfs_fuse.zygote`` (for a process with several threads)."""
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "branchfs_fuse.zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C is for our caller to handle
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.returncode = 0  # reaped below by pid; keep Popen from reaping it later
        return cls(proc.pid, proc.stdin, proc.stdout)

    def reap(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the zygote's exit, then kill it; reap it."""
        if not wait_exit(self.pid, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


class Spawner:
    """Starts mount daemons through one zygote; close it (or use ``with``) when done.

    Thread-safe: several threads may call :meth:`start` at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._zygote: _Zygote | None = None
        self._next = 0
        self._waiting: dict[int, tuple[threading.Event, list[dict[str, object]]]] = {}
        self._reader: threading.Thread | None = None

    def __enter__(self) -> Spawner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def warm(self) -> None:
        """Start the zygote now (it imports the daemon meanwhile).

        Call it before starting threads of your own: a single-threaded process forks it.
        """
        with self._lock:
            self._ensure()

    def _ensure(self) -> _Zygote:
        if self._zygote is None:
            single = threading.active_count() == 1 and not _open_stores()
            self._zygote = _Zygote.forked() if single else _Zygote.started()
            self._reader = threading.Thread(
                target=self._read, args=(self._zygote.answers,), name="branchfs-zygote",
                daemon=True,
            )  # fmt: skip
            self._reader.start()
            trace.mark("zygote started", forked=int(single))
        return self._zygote

    def _read(self, answers: IO[bytes]) -> None:
        for line in answers:
            try:
                answer = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                waiter = self._waiting.pop(int(answer.get("id", -1)), None)
            if waiter is not None:
                waiter[1].append(answer)
                waiter[0].set()
        with self._lock:  # the zygote is gone: nobody else will answer
            waiters, self._waiting = list(self._waiting.values()), {}
        for event, _box in waiters:
            event.set()

    def start(
        self,
        store_path: str,
        mountpoint: str,
        branch: str,
        *,
        timeout: float = START_TIMEOUT,
        owned: bool = False,
    ) -> Daemon:
        """Mount ``branch`` at ``mountpoint`` and return once the mount answers.

        ``owned``: the mountpoint is a directory the caller made for this mount; should the
        caller die without unmounting, the zygote removes it once the daemon is gone.

        Raises :class:`~branchfs.mount.MountError` (saying why) if it cannot be mounted.
        """
        check_fuse()
        mp = check_mountpoint(mountpoint)
        store_path = os.path.abspath(store_path)
        os.makedirs(mounts_dir(store_path), mode=0o700, exist_ok=True)
        log = os.path.join(mounts_dir(store_path), "daemon.log")
        event = threading.Event()
        box: list[dict[str, object]] = []
        with self._lock:
            zygote = self._ensure()
            self._next += 1
            rid = self._next
            self._waiting[rid] = (event, box)
            request = {"id": rid, "store": store_path, "branch": branch, "mountpoint": mp}
            request["log"] = log
            if owned:
                request["owned"] = True
            try:
                zygote.requests.write(json.dumps(request).encode() + b"\n")
                zygote.requests.flush()
            except OSError as exc:
                self._waiting.pop(rid, None)
                raise MountError(f"the daemon starter is gone ({exc})") from None
        trace.mark("mount requested")
        if not event.wait(timeout) or not box:
            raise MountError(f"mounting {branch!r} at {mp} failed: no answer from the daemon")
        answer = box[0]
        daemon = Daemon(int(str(answer.get("pid", 0))))
        if answer.get("ready") != "ok":
            if daemon.pid:
                daemon.signal(signal.SIGKILL)
            raise MountError(f"mounting {branch!r} at {mp} failed: {answer.get('ready')}")
        return daemon

    def close(self) -> None:
        """Let the zygote exit (its daemons keep serving) and reap it. Idempotent."""
        with self._lock:
            zygote, self._zygote = self._zygote, None
        if zygote is None:
            return
        with contextlib.suppress(OSError):
            zygote.requests.close()
        zygote.reap(30)
        if self._reader is not None:
            self._reader.join(timeout=5)
        with contextlib.suppress(OSError):
            zygote.answers.close()


def stop(daemon: Daemon, mountpoint: str, *, timeout: float = 60.0) -> None:
    """Flush and unmount ``mountpoint`` and wait until its daemon has exited.

    A busy mount is retried for 5 s, then the daemon is told to stop (SIGTERM); a daemon
    that does not exit within ``timeout`` seconds is killed, and a dead mount detached.
    """
    if not unmount_while_alive(mountpoint, daemon.alive):
        daemon.signal(signal.SIGTERM)
    if not daemon.wait(timeout):
        daemon.signal(signal.SIGKILL)
        daemon.wait(5)
    if is_stale(mountpoint):
        clean_stale(mountpoint)


@contextlib.contextmanager
def mounted_by(
    spawner: Spawner, store_path: str, mountpoint: str, branch: str, *, owned: bool = False
) -> Iterator[Path]:
    """Like :func:`branchfs.mount.mounted`, with the daemon forked by ``spawner``
    (``owned``: see :meth:`Spawner.start`)."""
    mp = os.path.abspath(mountpoint)
    daemon = spawner.start(store_path, mp, branch, owned=owned)
    try:
        yield Path(mp)
    finally:
        stop(daemon, mp)


__all__ = ["Daemon", "Spawner", "mounted_by", "stop"]
