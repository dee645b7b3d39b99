"""Best-of-N: fork N attempts, run a command in each in parallel, merge the best, drop the rest.

:func:`best_of` is what ``branchfs best-of`` calls. For each attempt it forks a branch from
the base (O(1)), mounts it at a private directory with a daemon of its own (so attempts do
not queue behind one another), and runs the command there, or at a fixed path that only the
attempt sees (``at``, see :mod:`branchfs.run`). Each command runs in a session and process
group of its own with its output in a log file; at its timeout the whole group is killed
(SIGKILL) and the attempt scored failed. Then each attempt is scored:

* with a score command: the last number it prints on stdout (a token such as ``12``,
  ``-3.5`` or ``1e3``; digits glued to letters, as in ``0.12s``, do not count), higher wins;
  if it prints no number, its exit status decides: 0 passes with score 0, anything else
  fails;
* without one: the run command's exit status: 0 passes with score 0, anything else fails.

A run command that fails, times out or cannot start fails its attempt whatever its score
would be. The best passing attempt (ties: the lowest attempt number) is merged into the
base (3-way, so merge rules apply), and every attempt's branch is discarded unless
``keep``. If no attempt passes, the base is left untouched. On Ctrl-C or any error every
attempt's process group is killed, every mount unmounted and every attempt's branch
discarded before the exception goes on.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal, TypeAlias

from . import run as runmod
from .errors import BranchFSError, MergeConflict
from .jsontypes import JSON, JSONObject
from .spawner import Spawner

if TYPE_CHECKING:
    from .branch import Branch
    from .diff import Change
    from .merge import MergeResult
    from .store import Store

#: Where an attempt is: the first five while it runs, the last six once it is done.
Status = Literal[
    "pending",
    "starting",
    "running",
    "scoring",
    "won",
    "passed",
    "failed",
    "timeout",
    "error",
    "cancelled",
]
#: Statuses of an attempt that is over.
DONE: frozenset[str] = frozenset({"won", "passed", "failed", "timeout", "error", "cancelled"})

#: A score callable's answer: a number (higher wins), True (passes with 0), False/None (fails).
ScoreValue: TypeAlias = float | int | bool | None

_NUMBER = re.compile(rb"(?<![\w.])[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])")


class BestOfError(BranchFSError):
    """best-of was asked for something it cannot do (the message says what to change)."""


def last_number(output: bytes) -> float | None:
    """The last number printed in ``output`` (see the module docstring), or None."""
    found = _NUMBER.findall(output)
    if not found:
        return None
    try:
        return float(found[-1])
    except ValueError:
        return None


@dataclass
class Attempt:
    """One attempt of a best-of run, as it goes (read it in ``on_update``) and at the end.

    ``duration`` is the run command's wall time in seconds; ``exit_status`` its exit status
    (None when it did not end by itself); ``changes`` what the attempt changed relative to
    the base (filled once its tree is unmounted); ``error`` why it failed, in one line;
    ``tree`` where its branch is mounted while it runs; ``started`` a ``time.monotonic()``.
    """

    index: int
    branch: str
    log: Path
    status: Status = "pending"
    score: float | None = None
    exit_status: int | None = None
    duration: float | None = None
    changes: list[Change] = field(default_factory=list)
    error: str | None = None
    started: float | None = None
    tree: str | None = None

    @property
    def done(self) -> bool:
        """Whether the attempt is over."""
        return self.status in DONE

    def to_json(self) -> JSONObject:
        """A plain dict for JSON output (duration in seconds)."""
        changes: list[JSON] = [{"kind": c.kind, "path": c.path} for c in self.changes]
        return {
            "attempt": self.index,
            "branch": self.branch,
            "status": self.status,
            "score": self.score,
            "exit_status": self.exit_status,
            "duration": None if self.duration is None else round(self.duration, 3),
            "changes": changes,
            "log": str(self.log),
            "error": self.error,
        }


@dataclass
class BestOfResult:
    """What :func:`best_of` did.

    ``winner`` is the merged attempt (None if none passed); ``merge`` the merge's result;
    ``kept`` whether the attempts' branches were kept; ``duration`` the whole run in
    seconds; ``error`` why the winner could not be merged (a conflict), else None.
    """

    base: str
    attempts: list[Attempt]
    winner: Attempt | None
    merge: MergeResult | None
    duration: float
    log_dir: Path
    kept: bool
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether a winner was merged into the base."""
        return self.winner is not None and self.merge is not None

    def to_json(self) -> JSONObject:
        """A plain dict for JSON output."""
        attempts: list[JSON] = [a.to_json() for a in self.attempts]
        return {
            "base": self.base,
            "winner": None if self.winner is None else self.winner.index,
            "merged": self.ok,
            "kept": self.kept,
            "duration": round(self.duration, 3),
            "log_dir": str(self.log_dir),
            "error": self.error,
            "attempts": attempts,
        }


@dataclass
class Trial:
    """What a run or score callable gets: its attempt, its branch, and where its tree is.

    ``path`` is the attempt's mounted tree (None with ``mount=False``); ``log`` the
    attempt's log file, open for text. :meth:`run` runs a command in the tree.
    """

    index: int
    branch: Branch
    path: Path | None
    log: IO[str]
    at: str | None
    env: dict[str, str]

    def run(
        self,
        command: runmod.Command,
        *,
        timeout: float | None = None,
        capture_output: bool = False,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``command`` in this attempt's tree (at ``at`` if best-of has one).

        Output goes to the attempt's log unless captured. Raises
        ``subprocess.TimeoutExpired`` past ``timeout`` seconds (its group is killed).
        """
        if self.path is None:
            raise BestOfError("this attempt has no mounted tree (best_of was given mount=False)")
        self.log.flush()
        proc = _popen(
            command,
            str(self.path),
            self.at,
            self.env,
            subprocess.PIPE if capture_output else self.log,
            subprocess.PIPE if capture_output else subprocess.STDOUT,
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            runmod.kill_group(proc.pid)
            proc.communicate()
            raise
        finally:
            runmod.kill_group(proc.pid)
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _popen(
    command: runmod.Command,
    tree: str,
    at: str | None,
    env: dict[str, str],
    stdout: int | IO[str],
    stderr: int | IO[str],
) -> subprocess.Popen[bytes]:
    """Start ``command`` in ``tree`` (seen at ``at`` if given), in a session of its own."""
    argv = runmod.argv_of(command)
    cwd = tree
    if at is not None:
        argv = runmod.wrap_at(tree, at, argv)
        env = runmod.at_env(env)
        cwd = "/"
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
    )


#: How an attempt ended: its status and why (one line), or None.
Outcome: TypeAlias = tuple[Status, str | None]
RunSpec: TypeAlias = str | Sequence[str] | Callable[[Trial], object]
ScoreSpec: TypeAlias = str | Sequence[str] | Callable[[Trial], ScoreValue]


class _Run:
    """The shared state of one best-of run: attempts, live process groups, cancellation."""

    def __init__(
        self,
        store: Store,
        base: str,
        attempts: list[Attempt],
        run: RunSpec,
        score: ScoreSpec | None,
        at: str | None,
        timeout: float | None,
        mount: bool,
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
        self.mount = mount
        self.env = dict(os.environ if env is None else env)
        self.on_update = on_update
        self.cancelled = threading.Event()
        self.lock = threading.Lock()
        self.groups: set[int] = set()
        self.queue = list(attempts)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        # One zygote forks every attempt's daemon: N mounts, one interpreter start.
        self.spawner = Spawner() if mount else None

    # -- bookkeeping ------------------------------------------------------------------------

    def set(self, attempt: Attempt, status: Status, error: str | None = None) -> None:
        attempt.status = status
        if error is not None:
            attempt.error = error
        if self.on_update is not None:
            with contextlib.suppress(Exception):
                self.on_update(attempt)

    def next_attempt(self) -> Attempt | None:
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
        while (attempt := self.next_attempt()) is not None:
            if self.cancelled.is_set():
                self.set(attempt, "cancelled")
                continue
            try:
                self.attempt(attempt)
            except Exception as exc:  # one attempt's failure is not the run's
                self.set(attempt, "error", _one_line(exc))

    def attempt(self, attempt: Attempt) -> None:
        self.set(attempt, "starting")
        status, why = self.attempt_in_tree(attempt)
        # Unmounted: every write is in the store, and the branch can be diffed or discarded.
        if status not in ("cancelled", "error"):
            attempt.changes = self.store.diff(self.base, attempt.branch)
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
                    return "error", _one_line(exc)
                attempt.tree = str(path)
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
                raise _Cancelled
            proc = _popen(command, str(trial.path), self.at, trial.env, stdout, trial.log)
            self.groups.add(proc.pid)
            self.procs[proc.pid] = proc
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
                return "failed", _one_line(exc)
            if self.timeout is not None and time.monotonic() - (attempt.started or 0) > (
                self.timeout
            ):
                return "timeout", f"took longer than {self.timeout:g} s"
            if answer is False:
                return "failed", "the run callable returned False"
            return None
        try:
            pid = self.spawn(trial, spec, trial.log)
        except _Cancelled:
            return "cancelled", "interrupted"
        except OSError as exc:
            trial.log.write(f"branchfs: cannot start the command: {exc}\n")
            return "error", f"cannot start the command: {exc}"
        status, _ = self.wait(pid, self.timeout)
        attempt.exit_status = status
        if status is None:
            trial.log.write(f"\nbranchfs: killed at the timeout ({self.timeout:g} s)\n")
            return "timeout", f"killed at the timeout ({self.timeout:g} s)"
        if status == runmod.SETUP_FAILED and self.at is not None:
            return "error", f"could not bind the tree at {self.at} (see the log)"
        if status != 0:
            return "failed", f"the command exited with status {status}"
        return None

    def score_step(self, trial: Trial, attempt: Attempt) -> Outcome:
        spec = self.score_spec
        if spec is None:
            attempt.score = 0.0
            return "passed", None
        if callable(spec):
            try:
                value = spec(trial)
            except Exception as exc:
                trial.log.write(traceback.format_exc())
                return "failed", f"the score callable raised: {_one_line(exc)}"
            if value is None or value is False:
                return "failed", "the score callable said it failed"
            attempt.score = 0.0 if value is True else float(value)
            return "passed", None
        trial.log.write("\n--- score ---\n")
        try:
            pid = self.spawn(trial, spec, subprocess.PIPE)
        except _Cancelled:
            return "cancelled", None
        status, out = self.wait(pid, self.timeout)
        trial.log.write(out.decode(errors="replace"))
        if status is None:
            return "timeout", f"the score command passed the timeout ({self.timeout:g} s)"
        number = last_number(out)
        if number is not None:
            attempt.score = number
            return "passed", None
        elif status == 0:
            attempt.score = 0.0
            return "passed", None
        else:
            return "failed", f"the score command exited with status {status}"


class _Cancelled(Exception):
    pass


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_spec(name: str, spec: object) -> None:
    if callable(spec):
        return
    if isinstance(spec, str):
        if not spec.strip():
            raise BestOfError(f"the {name} command is empty")
        return
    if isinstance(spec, Sequence) and spec and all(isinstance(a, str) for a in spec):
        return
    raise BestOfError(f"{name} must be a shell string, an argv list of str, or a callable")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """In the main thread, let SIGTERM clean up like Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Let cleanup finish: Ctrl-C and SIGTERM are ignored for the block (main thread only).

    Blocking the signals would not do: the kernel hands them to another thread, and Python
    raises them in the main thread anyway. So the handlers are swapped for a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def best_of(
    store: Store | str | os.PathLike[str],
    n: int,
    run: RunSpec,
    *,
    score: ScoreSpec | None = None,
    base: str = "main",
    at: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    jobs: int | None = None,
    keep: bool = False,
    log_dir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    mount: bool = True,
    on_update: Callable[[Attempt], None] | None = None,
) -> BestOfResult:
    """Fork ``n`` attempts from ``base``, run ``run`` in each, merge the best, drop the rest.

    ``run`` and ``score`` are a shell string, an argv list, or a callable taking a
    :class:`Trial` (``run`` fails by raising or returning False; ``score`` returns a number,
    higher wins, True to pass with 0, or False/None to fail). Commands run in the attempt's
    own mounted tree, or at ``at`` seen by them alone, with ``BRANCHFS_ATTEMPT`` (1..n),
    ``BRANCHFS_BRANCH``, ``BRANCHFS_STORE`` and ``BRANCHFS_TREE`` in their environment and
    their output in ``log_dir/attempt-I.log`` (default ``STORE/logs/bestof-ID``).
    ``timeout`` (seconds) applies to each command; a command past it has its process group
    killed and its attempt fails (a callable cannot be killed: it is waited for, then
    failed). At most ``jobs`` attempts run at once (default all ``n``). ``on_update`` is
    called from worker threads whenever an attempt changes status. Scoring, the choice of
    the winner and the cleanup are described in the module docstring.

    Returns a :class:`BestOfResult`; raises :class:`BestOfError` for bad arguments,
    :class:`~branchfs.BranchNotFound` if ``base`` does not exist,
    :class:`~branchfs.run.NamespaceError` if ``at`` cannot work here, and
    ``KeyboardInterrupt`` after cleaning up if interrupted.
    """
    from .store import Store

    if n < 1:
        raise BestOfError(f"best-of needs at least one attempt (got {n})")
    if jobs is not None and jobs < 1:
        raise BestOfError(f"--jobs must be at least 1 (got {jobs})")
    if timeout is not None and timeout <= 0:
        raise BestOfError(f"--timeout must be a positive number of seconds (got {timeout:g})")
    _check_spec("run", run)
    if score is not None:
        _check_spec("score", score)
    if not mount and not (callable(run) and (score is None or callable(score))):
        raise BestOfError("commands need a mounted tree: mount=False works with callables only")
    target = runmod.resolve_at(at) if at is not None else None
    if target is not None:
        runmod.check_namespaces()
    owned = not isinstance(store, Store)
    s = Store.open(os.fspath(store)) if not isinstance(store, Store) else store
    try:
        s.branch(base)  # BranchNotFound before anything is forked
        token = secrets.token_hex(3)
        logs = Path(log_dir) if log_dir is not None else Path(s.path, "logs", f"bestof-{token}")
        attempts = [
            Attempt(i, f"bestof-{token}-{i}", logs / f"attempt-{i}.log") for i in range(1, n + 1)
        ]
        state = _Run(s, base, attempts, run, score, target, timeout, mount, env, on_update)
        started = time.monotonic()
        return _drive(state, jobs or n, keep, logs, started)
    finally:
        if owned:
            s.close()


def _drive(state: _Run, jobs: int, keep: bool, logs: Path, started: float) -> BestOfResult:
    s, base = state.store, state.base
    forked: list[Attempt] = []
    threads: list[threading.Thread] = []
    with _sigterm_as_interrupt(), contextlib.ExitStack() as stack:
        if state.at is not None:
            stack.enter_context(runmod.at_path(state.at))
        if state.spawner is not None:
            stack.callback(state.spawner.close)
            state.spawner.warm()  # it imports the daemon while we fork
        try:
            for attempt in state.attempts:
                s.fork(base, attempt.branch)
                forked.append(attempt)
            for _ in range(min(jobs, len(state.attempts))):
                t = threading.Thread(target=state.worker, name="branchfs-bestof", daemon=True)
                t.start()
                threads.append(t)
            for t in threads:
                t.join()
            return _finish(state, keep, logs, started)
        except BaseException:
            with _no_interrupts():
                state.cancel()
                for t in threads:
                    t.join()
                for attempt in forked:
                    if not attempt.done:
                        state.set(attempt, "cancelled")
                    with contextlib.suppress(BranchFSError):
                        _discard(s, attempt.branch)
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def _discard(store: Store, branch: str) -> None:
    """Discard an attempt's branch once its daemon is gone.

    Every worker has unmounted its tree and waited for its daemon before this runs, but a
    daemon's registration can outlive its unmount by a moment; a discard refused as busy
    is therefore retried for up to 5 s, then forced (which unmounts cleanly itself). A
    branch already gone is fine.
    """
    from .errors import BranchBusy, BranchNotFound

    deadline = time.monotonic() + 5.0
    while True:
        try:
            store.discard(branch, force=time.monotonic() > deadline)
            return
        except BranchNotFound:
            return
        except BranchBusy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _finish(state: _Run, keep: bool, logs: Path, started: float) -> BestOfResult:
    s, base = state.store, state.base
    passed = [a for a in state.attempts if a.status == "passed" and a.score is not None]
    winner = max(passed, key=lambda a: (a.score or 0.0, -a.index)) if passed else None
    merge: MergeResult | None = None
    error: str | None = None
    if winner is not None:
        try:
            merge = s.merge(base, winner.branch)
            state.set(winner, "won")
        except MergeConflict as exc:
            error = (
                f"the winner, attempt {winner.index}, conflicts with {base}, which changed "
                f"meanwhile; its branch {winner.branch} is kept: {_one_line(exc)}"
            )
    with _no_interrupts():
        for attempt in state.attempts:
            if keep or (attempt is winner and merge is None):
                continue
            _discard(s, attempt.branch)
    return BestOfResult(
        base, state.attempts, winner if merge is not None else None, merge,
        time.monotonic() - started, logs, keep, error,
    )  # fmt: skip


__all__ = [
    "Attempt",
    "BestOfError",
    "BestOfResult",
    "Status",
    "Trial",
    "best_of",
    "last_number",
]
