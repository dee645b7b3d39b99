"""Best-of-N: fork N attempts, run a command in each in parallel, merge the best, drop the rest.

:func:`best_of` is what ``branchfs best-of`` calls. For each attempt it forks a branch from
the base (O(1)), mounts it at a private directory with a daemon of its own (so attempts do
not queue behind one another), and runs the command there, or at a fixed path that only the
attempt sees (``at``, see :mod:`branchfs.run`). Each command runs in a session and process
group of its own with its output in a log file; at its timeout the whole group is killed
(SIGKILL) and the attempt scored failed. Then each attempt is scored:

* with a score command: it must exit 0, else the attempt fails whatever it printed; then
  its score is the last number it prints on stdout (a whitespace- or punctuation-delimited
  token such as ``12``, ``-3.5`` or ``1e3``; digits glued to letters, as in ``0.12s``, do
  not count), higher wins, or 0 if it prints none;
* without one: the run command's exit status: 0 passes with score 0, anything else fails.

A run command that fails, times out or cannot start fails its attempt whatever its score
would be; so does a score command that exits nonzero. Failed attempts rank below every
passing one: they are never merged. (pytest's summary ends with its warning or skip
counts, so to score a suite by its outcome send its report to the log: ``pytest -q >&2``;
its exit status then decides.) Commands run with the attempt's tree as their working
directory: a script outside the tree must be given by its absolute path (a shell's 127,
not found, or 126, not executable, says so in the attempt's status line).

The best passing attempt (ties: the lowest attempt number) is merged into the
base (3-way, so merge rules apply), and every attempt's branch is discarded unless
``keep``. If no attempt passes, the base is left untouched. On Ctrl-C or any error every
attempt's process group is killed, every mount unmounted and every attempt's branch
discarded before the exception goes on.

This module owns the run as a whole (arguments, forking, the worker threads, the choice
of the winner, merge and cleanup); one attempt's life is :mod:`branchfs.attemptrun`'s and
the values it reports are :mod:`branchfs.trials`'.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from . import run as runmod
from . import trace
from .attemptrun import Runner, RunSpec, ScoreSpec, check_spec
from .errors import BranchFSError, MergeConflict
from .spawner import Spawner
from .trials import Attempt, BestOfError, BestOfResult, Status, Trial, last_number

if TYPE_CHECKING:
    from .merge import MergeResult
    from .store import Store


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
    spawner: Spawner | None = None,
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
    the winner and the cleanup are described in the module docstring. ``spawner`` starts
    the attempts' mount daemons (default: a new one); best-of closes it once every
    attempt's tree is unmounted. Pass one warmed before your process starts threads of
    its own (as the command line does before its live table) so that its zygote is a fork.

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
    check_spec("run", run)
    if score is not None:
        check_spec("score", score)
    if not mount and not (callable(run) and (score is None or callable(score))):
        raise BestOfError("commands need a mounted tree: mount=False works with callables only")
    target = runmod.resolve_at(at) if at is not None else None
    if target is not None:
        runmod.check_namespaces()
    if mount:
        # The zygote imports the daemon while this process opens the store and forks.
        spawner = spawner if spawner is not None else Spawner()
        spawner.warm()
    elif spawner is not None:
        spawner.close()
        spawner = None
    owned = not isinstance(store, Store)
    try:
        s = Store.open(os.fspath(store)) if not isinstance(store, Store) else store
    except BaseException:
        if spawner is not None:
            spawner.close()
        raise
    trace.mark("store open")
    try:
        s.branch(base)  # BranchNotFound before anything is forked
        token = secrets.token_hex(3)
        logs = Path(log_dir) if log_dir is not None else Path(s.path, "logs", f"bestof-{token}")
        attempts = [
            Attempt(i, f"bestof-{token}-{i}", logs / f"attempt-{i}.log") for i in range(1, n + 1)
        ]
        state = Runner(s, base, attempts, run, score, target, timeout, spawner, env, on_update)
        started = time.monotonic()
        return _drive(state, jobs or n, keep, logs, started)
    finally:
        if spawner is not None:
            spawner.close()
        if owned:
            s.close()
        trace.mark("best-of done")


def _drive(state: Runner, jobs: int, keep: bool, logs: Path, started: float) -> BestOfResult:
    s, base = state.store, state.base
    forked: list[Attempt] = []
    threads: list[threading.Thread] = []
    with _sigterm_as_interrupt(), contextlib.ExitStack() as stack:
        if state.at is not None:
            stack.enter_context(runmod.at_path(state.at))
        if state.spawner is not None:
            stack.callback(state.spawner.close)
        try:
            for attempt in state.attempts:
                s.fork(base, attempt.branch)
                forked.append(attempt)
            trace.mark("forked")
            first_wave = min(jobs, len(state.attempts))
            for _ in range(first_wave):
                t = threading.Thread(target=state.worker, name="branchfs-bestof", daemon=True)
                t.start()
                threads.append(t)
            # While the attempts run, load what the end needs (merge, diff: tens of ms).
            while not state.wait_started(first_wave, 0.5):
                if not any(t.is_alive() for t in threads):
                    break
            _preload()
            for t in threads:
                t.join()
            trace.mark("attempts done")
            if state.spawner is not None:
                state.spawner.close()  # every tree is unmounted: let the zygote go meanwhile
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


def _preload() -> None:
    """Import what scoring and merging use, so that the end of a run does not pay for it."""
    from . import diff, merge  # noqa: F401

    trace.mark("preloaded")


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


def _finish(state: Runner, keep: bool, logs: Path, started: float) -> BestOfResult:
    s, base = state.store, state.base
    passed = [a for a in state.attempts if a.status == "passed" and a.score is not None]
    winner = max(passed, key=lambda a: (a.score or 0.0, -a.index)) if passed else None
    merge: MergeResult | None = None
    error: str | None = None
    if winner is not None:
        try:
            merge = s.merge(base, winner.branch)
            trace.mark("merged")
            state.set(winner, "won")
        except MergeConflict as exc:
            clashes = "; ".join(str(c) for c in exc.conflicts[:5])
            more = f"; … and {len(exc.conflicts) - 5} more" if len(exc.conflicts) > 5 else ""
            error = (
                f"the winner, attempt {winner.index}, conflicts with {base}, which changed "
                f"meanwhile; {base} is unchanged and {winner.branch} is kept: {clashes}{more}. "
                f"To resolve, merge it yourself: `branchfs merge {winner.branch} --into "
                f"{base}` with --strategy ours|theirs or --markers"
            )
    with _no_interrupts():
        for attempt in state.attempts:
            if keep or (attempt is winner and merge is None):
                continue
            _discard(s, attempt.branch)
    trace.mark("discarded")
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
