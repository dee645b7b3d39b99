"""A command run from the command line in a process group of its own (``branchfs run``).

The group is what lets a run kill everything the command left behind (``sleep 100 &``)
before its tree is unmounted, and only that: the command's group is not branchfs's. So
that the command still behaves as if typed at the shell, :func:`supervise` does a shell's
part of job control (JOB CONTROL in bash(1)):

- on a terminal whose foreground branchfs is, the command's group is made the terminal's
  foreground (``tcsetpgrp(3)``): the terminal's Ctrl-C and Ctrl-\\ reach it, and it may
  read the terminal. When it stops (Ctrl-Z, or reading the terminal of a ``run … &``),
  branchfs takes the terminal back and stops itself, so the shell sees the job stopped;
  on ``fg`` branchfs gives the terminal to the command again and continues it;
- SIGINT, SIGTERM and SIGHUP sent to branchfs (``kill``, ``timeout``, a closing terminal)
  are forwarded to the command's group. For SIGTERM and SIGHUP the handler that was in
  place is called after (``branchfs run``'s ends the run as Ctrl-C does).

When the command ends, or a signal ends branchfs, whatever is left in its group is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from types import FrameType

#: Signals forwarded to the command's group.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Seconds a command stopped by SIGTERM or SIGHUP gets to exit before its group is killed.
GRACE = 5.0

Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to process group ``pgid`` if anything is left in it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _terminal() -> int | None:
    """The controlling terminal's fd if this process's group is its foreground, else None
    (None too off the main thread, where SIGTTOU cannot be ignored to hand it over)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
                return fd
    return None


def _give_terminal(fd: int, pgid: int) -> None:
    """Make ``pgid`` the foreground group of terminal ``fd`` (from the background too)."""
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(fd, pgid)
    finally:
        signal.signal(signal.SIGTTOU, previous)


@contextlib.contextmanager
def _forwarding(pgid: int) -> Iterator[None]:
    """Forward :data:`FORWARDED` signals to group ``pgid`` for the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Handler] = {}

    def forward(signum: int, frame: FrameType | None) -> None:
        kill_group(pgid, signum)
        if signum == signal.SIGINT:
            return
        kill_group(pgid, signal.SIGCONT)  # a stopped command acts on it only once continued
        then = previous.get(signum)
        if callable(then):
            then(signum, frame)

    for sig in FORWARDED:
        previous[sig] = signal.signal(sig, forward)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait(proc: subprocess.Popen[bytes]) -> int:
    """Wait for ``proc`` to end, doing a shell's part of job control (see the module
    docstring); its return code as :attr:`subprocess.Popen.returncode` gives it."""
    while True:
        tty = _terminal()  # again after a stop: `branchfs run … &` then `fg` gives it to us
        if tty is not None:
            _give_terminal(tty, proc.pid)
        kill_group(proc.pid, signal.SIGCONT)  # stopped reading the terminal before it had it
        _, status = os.waitpid(proc.pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode
        if tty is not None:
            _give_terminal(tty, os.getpgrp())
        os.kill(os.getpid(), signal.SIGSTOP)  # the shell sees the job stopped; `fg` resumes


def _take_terminal_back(pgid: int) -> None:
    """Make this process's group the foreground of its terminal again if ``pgid`` is."""
    if threading.current_thread() is not threading.main_thread():
        return
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd) and os.tcgetpgrp(fd) == pgid:
                _give_terminal(fd, os.getpgrp())
                return


def supervise(proc: subprocess.Popen[bytes]) -> int:
    """Wait for ``proc``, started in a process group of its own (``process_group=0``), as a
    shell waits for a foreground job; then kill what is left in its group. Its exit code
    (``-N`` if signal N ended it). Whatever the forwarded handlers raise (SIGTERM's, say)
    propagates once the command has had :data:`GRACE` seconds to exit and its group is dead.
    """
    try:
        with _forwarding(proc.pid):
            try:
                return _wait(proc)
            except BaseException:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(GRACE)
                raise
    finally:
        _take_terminal_back(proc.pid)
        kill_group(proc.pid)
        if proc.returncode is None:
            proc.kill()
            proc.wait()


__all__ = ["FORWARDED", "GRACE", "kill_group", "supervise"]
