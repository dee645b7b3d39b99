"""Many mounts, one interpreter start: mount daemons forked from a zygote process.

:class:`Spawner` starts ``python -m branchfs_fuse.zygote`` once (see that module), asks it
for one daemon per mount and waits for each to answer, like
:func:`branchfs.mount.start_daemon` does for a daemon of its own. best-of uses it so that
N attempts' mounts cost one interpreter start and N forks. A daemon forked this way is
not this process's child: :class:`Daemon` follows it by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

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


class Daemon:
    """A mount daemon followed by pid (it is the zygote's child, not ours)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def alive(self) -> bool:
        """Whether the process still runs (a zombie does not count)."""
        try:
            with open(f"/proc/{self.pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (OSError, IndexError):
            return False

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for it to exit; whether it did."""
        deadline = time.monotonic() + timeout
        delay = 0.001
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return True

    def signal(self, sig: int) -> None:
        """Send ``sig`` if it still runs."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)


class Spawner:
    """Starts mount daemons through one zygote; close it (or use ``with``) when done.

    Thread-safe: several threads may call :meth:`start` at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._next = 0
        self._waiting: dict[int, tuple[threading.Event, list[dict[str, object]]]] = {}
        self._reader: threading.Thread | None = None

    def __enter__(self) -> Spawner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def warm(self) -> None:
        """Start the zygote now (it imports the daemon meanwhile)."""
        with self._lock:
            self._ensure()

    def _ensure(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            self._proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "branchfs_fuse.zygote"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C is for our caller to handle
            )
            self._reader = threading.Thread(
                target=self._read, args=(self._proc,), name="branchfs-zygote", daemon=True
            )
            self._reader.start()
        return self._proc

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
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
        self, store_path: str, mountpoint: str, branch: str, *, timeout: float = START_TIMEOUT
    ) -> Daemon:
        """Mount ``branch`` at ``mountpoint`` and return once the mount answers.

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
            proc = self._ensure()
            self._next += 1
            rid = self._next
            self._waiting[rid] = (event, box)
            request = {"id": rid, "store": store_path, "branch": branch, "mountpoint": mp}
            request["log"] = log
            assert proc.stdin is not None
            try:
                proc.stdin.write(json.dumps(request).encode() + b"\n")
                proc.stdin.flush()
            except OSError as exc:
                self._waiting.pop(rid, None)
                raise MountError(f"the daemon starter is gone ({exc})") from None
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
        """Let the zygote exit (its daemons keep serving) and wait for it."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)


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
def mounted_by(spawner: Spawner, store_path: str, mountpoint: str, branch: str) -> Iterator[Path]:
    """Like :func:`branchfs.mount.mounted`, with the daemon forked by ``spawner``."""
    mp = os.path.abspath(mountpoint)
    daemon = spawner.start(store_path, mp, branch)
    try:
        yield Path(mp)
    finally:
        stop(daemon, mp)


__all__ = ["Daemon", "Spawner", "mounted_by", "stop"]
