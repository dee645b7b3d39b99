"""Running one best-of attempt: mount its tree, run its command, score it, unmount.

:class:`Runner` holds one best-of run's shared state (the attempts still to start, the
live process groups, cancellation, the zygote that forks the mount daemons). Worker
threads call :meth:`Runner.worker`, which takes attempts off the queue one by one and
takes each from "starting" to a final status; :meth:`Runner.cancel` stops everything.
Choosing the winner, merging and discarding are :mod:`branchfs.bestof`'s.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypeAlias

from . import run as runmod
from . import trace
from .errors import BranchFSError
from .spawner import Spawner
from .trials import (
    Attempt,
    BestOfError,
    ScoreValue,
    Status,
    Trial,
    last_number,
    one_line,
    popen_in_tree,
)

if TYPE_CHECKING:
    from .store import Store

#: How an attempt ended: its status and why (one line), or None.
Outcome: TypeAlias = tuple[Status, str | None]
RunSpec: TypeAlias = str | Sequence[str] | Callable[[Trial], object]
ScoreSpec: TypeAlias = str | Sequence[str] | Callable[[Trial], ScoreValue]


class Runner:
    """The shared state of one best-of run: attempts, live process groups, cancellation.

    ``spawner`` forks the attempts' mount daemons (None: no tree is mounted, callables
    only); its owner closes it.
    """

    def __init__(
        self,
        store: Store,
        base: str,
        attempts: list[Attempt],
        run: RunSpec,
        score: ScoreSpec | None,
        at: str | None,
        timeout: float | None,
        spawner: Spawner | None,
        env: Mapping[str, str] | None,
        on_update: Callable[[Attempt], None] | None,
    ) -> None:
        self.store = store
        self.base = base
        self.attempts = attempts
        self.run_spec = run
        self.score_spec = score
        self.at = at
        self.timeout = timeout
        self.mount = spawner is not None
        self.env = dict(os.environ if env is None else env)
        self.on_update = on_update
        self.cancelled = threading.Event()
        self.lock = threading.Lock()
        self.groups: set[int] = set()
        self.queue = list(attempts)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        # One zygote forks every attempt's daemon: N mounts, one interpreter start.
        self.spawner = spawner
        self.started = threading.Condition(self.lock)
        self.under_way: set[int] = set()  # attempts that got to "running", or ended

    # -- bookkeeping ------------------------------------------------------------------------

    def set(self, attempt: Attempt, status: Status, error: str | None = None) -> None:
        """Move ``attempt`` to ``status`` (with why, for a failure) and tell ``on_update``."""
        attempt.status = status
        if error is not None:
            attempt.error = error
        if status == "running" or attempt.done:
            with self.started:
                self.under_way.add(attempt.index)
                self.started.notify_all()
        if self.on_update is not None:
            with contextlib.suppress(Exception):
                self.on_update(attempt)

    def wait_started(self, count: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until ``count`` attempts have started their command
        (or ended); whether they have, or the run was cancelled."""
        with self.started:
            if len(self.under_way) < count and not self.cancelled.is_set():
                self.started.wait(timeout)
            return len(self.under_way) >= count or self.cancelled.is_set()

    def next_attempt(self) -> Attempt | None:
        """The next attempt to start, or None when every one has been taken."""
        with self.lock:
            return self.queue.pop(0) if self.queue else None

    def cancel(self) -> None:
        """Stop everything: no new attempt starts, every live process group is killed."""
        self.cancelled.set()
        with self.lock:
            groups = list(self.groups)
        for pgid in groups:
            runmod.kill_group(pgid)

    # -- one attempt ------------------------------------------------------------------------

    def worker(self) -> None:
        """A worker thread's loop: take attempts and take each to its end (never raises)."""
        while (attempt := self.next_attempt()) is not None:
            if self.cancelled.is_set():
                self.set(attempt, "cancelled")
                continue
            try:
                self.attempt(attempt)
            except Exception as exc:  # one attempt's failure is not the run's
                self.set(attempt, "error", one_line(exc))

    def attempt(self, attempt: Attempt) -> None:
        """Take one attempt from "starting" to its final status, with what it changed."""
        self.set(attempt, "starting")
        status, why = self.attempt_in_tree(attempt)
        trace.mark("unmounted", attempt=attempt.index)
        # Unmounted: every write is in the store, and the branch can be diffed or discarded.
        if status not in ("cancelled", "error"):
            attempt.changes = self.store.diff(self.base, attempt.branch)
            trace.mark("diffed", attempt=attempt.index)
        self.set(attempt, status, why)

    def attempt_in_tree(self, attempt: Attempt) -> Outcome:
        """Mount the attempt, run and score it; its final status (set by the caller)."""
        attempt.log.parent.mkdir(parents=True, exist_ok=True)
        with open(attempt.log, "w", buffering=1) as log, contextlib.ExitStack() as stack:
            path: Path | None = None
            if self.mount:
                try:
                    path = stack.enter_context(
                        runmod.private_tree(
                            self.store.path, attempt.branch, "branchfs-attempt-", self.spawner
                        )
                    )
                except BranchFSError as exc:
                    log.write(f"branchfs: {exc}\n")
                    return "error", one_line(exc)
                attempt.tree = str(path)
                trace.mark("mounted", attempt=attempt.index)
                seen = f", seen at {self.at}" if self.at else ""
                log.write(f"# branchfs: attempt {attempt.index}, branch {attempt.branch}, ")
                log.write(f"tree {path}{seen}\n")
            env = dict(self.env)
            env.update(
                BRANCHFS_ATTEMPT=str(attempt.index),
                BRANCHFS_BRANCH=attempt.branch,
                BRANCHFS_STORE=self.store.path,
                BRANCHFS_TREE=self.at or (str(path) if path is not None else ""),
            )
            trial = Trial(attempt.index, self.store.branch(attempt.branch), path, log, self.at, env)
            if self.cancelled.is_set():
                return "cancelled", None
            attempt.started = time.monotonic()
            self.set(attempt, "running")
            outcome = self.run_step(trial, attempt)
            attempt.duration = time.monotonic() - attempt.started
            if self.cancelled.is_set():
                return "cancelled", None
            if outcome is not None:
                return outcome
            self.set(attempt, "scoring")
            return self.score_step(trial, attempt)

    def spawn(self, trial: Trial, command: str | Sequence[str], stdout: int | IO[str]) -> int:
        """Start ``command`` in the trial's tree in a session of its own; its pid (= pgid)."""
        assert trial.path is not None
        trial.log.flush()
        with self.lock:
            if self.cancelled.is_set():
                raise Cancelled
            proc = popen_in_tree(command, str(trial.path), self.at, trial.env, stdout, trial.log)
            self.groups.add(proc.pid)
            self.procs[proc.pid] = proc
        trace.mark("spawned", attempt=trial.index)
        return proc.pid

    def wait(self, pid: int, timeout: float | None) -> tuple[int | None, bytes]:
        """Wait for a spawned command; (exit status or None at the timeout, its stdout).

        At the timeout, or once the command ends, its whole process group is killed.
        """
        with self.lock:
            proc = self.procs.pop(pid)
        try:
            out, _ = proc.communicate(timeout=timeout)
            status: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            runmod.kill_group(pid)
            out, _ = proc.communicate()
            status = None
        finally:
            runmod.kill_group(pid)
            with self.lock:
                self.groups.discard(pid)
        return status, out or b""

    def run_step(self, trial: Trial, attempt: Attempt) -> Outcome | None:
        """Run the attempt's command; (status, why) if it failed, None if it passed."""
        spec = self.run_spec
        if callable(spec):
            try:
                answer = spec(trial)
            except Exception as exc:
                trial.log.write(traceback.format_exc())
                return "failed", one_line(exc)
            if self.timeout is not None and time.monotonic() - (attempt.started or 0) > (
                self.timeout
            ):
                return "timeout", f"took longer than {self.timeout:g} s"
            if answer is False:
                return "failed", "the run callable returned False"
            return None
        try:
            pid = self.spawn(trial, spec, trial.log)
        except Cancelled:
            return "cancelled", "interrupted"
        except OSError as exc:
            trial.log.write(f"branchfs: cannot start the command: {exc}\n")
            return "error", f"cannot start the command: {exc}"
        status, _ = self.wait(pid, self.timeout)
        trace.mark("command exited", attempt=attempt.index)
        attempt.exit_status = status
        if status is None:
            trial.log.write(f"\nbranchfs: killed at the timeout ({self.timeout:g} s)\n")
            return "timeout", f"killed at the timeout ({self.timeout:g} s)"
        if status == runmod.SETUP_FAILED and self.at is not None:
            return "error", f"could not bind the tree at {self.at} (see the log)"
        if status != 0:
            return "failed", f"the command exited with status {status}{_hint(status)}"
        return None

    def score_step(self, trial: Trial, attempt: Attempt) -> Outcome:
        """Score a passed attempt (the rules are :mod:`branchfs.bestof`'s); its outcome."""
        spec = self.score_spec
        if spec is None:
            attempt.score = 0.0
            return "passed", None
        if callable(spec):
            try:
                value = spec(trial)
            except Exception as exc:
                trial.log.write(traceback.format_exc())
                return "failed", f"the score callable raised: {one_line(exc)}"
            if value is None or value is False:
                return "failed", "the score callable said it failed"
            attempt.score = 0.0 if value is True else float(value)
            return "passed", None
        trial.log.write("\n--- score ---\n")
        try:
            pid = self.spawn(trial, spec, subprocess.PIPE)
        except Cancelled:
            return "cancelled", None
        status, out = self.wait(pid, self.timeout)
        trial.log.write(out.decode(errors="replace"))
        if status is None:
            return "timeout", f"the score command passed the timeout ({self.timeout:g} s)"
        if status != 0:
            # A failing score command fails its attempt whatever it printed: pytest's
            # "1 failed, 7 passed" must not outrank a later "7 passed".
            return "failed", f"the score command exited with status {status}{_hint(status)}"
        number = last_number(out)
        attempt.score = 0.0 if number is None else number
        return "passed", None


def _hint(status: int) -> str:
    """Why a shell says 126 or 127 (POSIX ``sh``: not executable, not found), or ""."""
    if status not in (126, 127):
        return ""
    what = "was not found" if status == 127 else "is not executable"
    return (
        f": the command {what} in the attempt's tree, its working directory "
        "(give a script outside the tree by its absolute path)"
    )


class Cancelled(Exception):
    """A command was not started: the run was cancelled first."""


def check_spec(name: str, spec: object) -> None:
    """Raise :class:`BestOfError` unless ``spec`` is a shell string, an argv or a callable."""
    if callable(spec):
        return
    if isinstance(spec, str):
        if not spec.strip():
            raise BestOfError(f"the {name} command is empty")
        return
    if isinstance(spec, Sequence) and spec and all(isinstance(a, str) for a in spec):
        return
    raise BestOfError(f"{name} must be a shell string, an argv list of str, or a callable")


__all__ = ["Cancelled", "Outcome", "RunSpec", "Runner", "ScoreSpec", "check_spec"]
