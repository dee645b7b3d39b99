"""Verbs that run programs in branches: ``run`` and ``best-of`` (command line only).

The work is done by :mod:`branchfs.run` and :mod:`branchfs.bestof`; this module parses the
words, draws best-of's live table on a terminal (rich) and words the answers. Neither verb
is offered on ``.branchfs/ctl``: they mount branches and run programs for as long as those
take, which is not a daemon's job.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .spec import CLI, EXIT_FAILED, Arg, CommandError, Context, Opt, Outcome, Values, Verb
from .trees import branch_name

if TYPE_CHECKING:
    from ..bestof import Attempt, BestOfResult

#: Exit status for a command killed by signal N, as shells report it.
SIGNAL_BASE = 128


class Terminated(BaseException):
    """SIGTERM or SIGHUP reached ``run`` or ``best-of``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def ended_like_ctrl_c() -> Iterator[None]:
    """SIGTERM and SIGHUP (``timeout``, ``kill``, a closing terminal) end the block as
    Ctrl-C does: the command is stopped, the tree unmounted and its mount point removed
    on the way out, then the process exits 128 + the signal's number. By default they
    ended the process at once, leaving the mount and its daemon behind, and the branch
    could not be discarded while that daemon ran."""

    def stop(signum: int, _frame: object) -> None:
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    except Terminated as exc:
        print(f"branchfs: stopped by signal {exc.signum}; the branch is unmounted", file=sys.stderr)
        sys.exit(SIGNAL_BASE + exc.signum)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(ctx: Context, v: Values) -> Outcome:
    from ..run import CommandNotExecutable, CommandNotFound, run

    store = ctx.store()
    branch = branch_name(store, ctx.branch_or_current(v.arg("branch")))
    if not v.rest:
        raise CommandError(f"run needs a command after the branch: branchfs run {branch} -- CMD …")
    with ended_like_ctrl_c():
        try:
            done = run(store, branch, v.rest, at=v.opt("at"), foreground=True)
        except CommandNotFound:
            # As a shell says it: 127 not found, 126 found but not executable.
            raise CommandError(f"command not found: {v.rest[0]}", 127, "CommandNotFound") from None
        except CommandNotExecutable as exc:
            raise CommandError(
                f"cannot execute {v.rest[0]}: {exc.strerror}", 126, "CommandNotExecutable"
            ) from None
    code = done.returncode if done.returncode >= 0 else SIGNAL_BASE - done.returncode
    return Outcome({"branch": branch, "command": v.rest, "exit_status": code}, "", code)


def _number(v: Values, key: str, kind: type[int] | type[float], what: str) -> Any:
    raw = v.opt(key)
    if raw is None:
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise CommandError(f"--{key} takes {what}, not {raw!r}") from None
    if value <= 0:
        raise CommandError(f"--{key} must be more than 0, not {raw}")
    return value


_STYLE = {
    "won": "bold green",
    "passed": "green",
    "failed": "red",
    "timeout": "yellow",
    "error": "red",
    "cancelled": "dim",
}


class LiveTable:
    """A table of the attempts on stderr, redrawn four times a second while best-of runs."""

    def __init__(self, n: int) -> None:
        from rich.console import Console
        from rich.live import Live

        self.n = n
        self.attempts: dict[int, Attempt] = {}
        self.lock = threading.Lock()
        self.live = Live(
            get_renderable=self.render,
            console=Console(stderr=True),
            refresh_per_second=4,
            transient=True,
        )

    def update(self, attempt: Attempt) -> None:
        """best-of's ``on_update``: remember the attempt (the next redraw shows it)."""
        with self.lock:
            self.attempts[attempt.index] = attempt

    def render(self) -> Any:
        """The table as it is now."""
        from rich.table import Table

        table = Table(title=f"best of {self.n}", title_justify="left", expand=False)
        for col in ("#", "branch", "status", "score", "time", "changes", "note"):
            table.add_column(col, justify="right" if col in ("#", "score", "time") else "left")
        now = time.monotonic()
        with self.lock:
            rows = [self.attempts.get(i) for i in range(1, self.n + 1)]
        for i, a in enumerate(rows, 1):
            if a is None:
                table.add_row(str(i), "", "pending", "", "", "", "")
                continue
            took = a.duration if a.duration is not None else None
            if took is None and a.started is not None:
                took = now - a.started
            table.add_row(
                str(i),
                a.branch,
                f"[{_STYLE.get(a.status, '')}]{a.status}" if a.status in _STYLE else a.status,
                "" if a.score is None else f"{a.score:g}",
                "" if took is None else f"{took:.1f} s",
                str(len(a.changes)) if a.done and a.status != "cancelled" else "",
                a.error or "",
            )
        return table


def summary(result: BestOfResult) -> str:
    """What best-of did, for people: one line, a table of the attempts, where the logs are."""
    n = len(result.attempts)
    if result.winner is not None:
        w = result.winner
        others = "kept" if result.kept else "discarded"
        head = (
            f"best of {n} from {result.base}: attempt {w.index} won (score {w.score:g}) and was "
            f"merged into {result.base}; the {'other ' if n > 1 else ''}attempts were {others}"
        )
        if n == 1:
            head = f"best of 1 from {result.base}: attempt 1 passed and was merged"
    elif result.error:
        head = f"best of {n} from {result.base}: {result.error}"
    else:
        head = f"best of {n} from {result.base}: no attempt passed; {result.base} is untouched"
    rows = [["#", "branch", "status", "score", "time", "changes", "note"]]
    for a in result.attempts:
        rows.append(
            [
                str(a.index),
                a.branch,
                a.status,
                "-" if a.score is None else f"{a.score:g}",
                "-" if a.duration is None else f"{a.duration:.1f} s",
                str(len(a.changes)),
                a.error or "",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [head, ""]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]  # fmt: skip
    lines += ["", f"logs: {result.log_dir}"]
    return "\n".join(lines)


def _best_of(ctx: Context, v: Values) -> Outcome:
    from .. import trace

    trace.mark("cli parsed")
    raw_n = str(v.arg("n"))
    try:
        n = int(raw_n)
    except ValueError:
        raise CommandError(f"N is the number of attempts, a whole number, not {raw_n!r}") from None
    command = v.opt("run")
    if not command:
        raise CommandError(
            "best-of needs --run CMD, the command each attempt runs; example: "
            "branchfs best-of 4 --run 'make fix' --score 'pytest -q >&2'"
        )
    timeout = _number(v, "timeout", float, "seconds")
    jobs = _number(v, "jobs", int, "a whole number of attempts")
    from ..spawner import Spawner
    from ..store import Store  # noqa: F401  (the engine, imported here: the zygote inherits it)

    # Forked once the engine is imported, and before the store is opened and the live
    # table's thread started, the zygote is a copy of this process: it imports the mount
    # daemon on the other core while this process imports best-of, opens the store and
    # forks the attempts (the two take about as long).
    spawner = Spawner()
    if n > 0:
        spawner.warm()
    table = None
    try:
        from ..bestof import best_of

        store = ctx.store()
        base = branch_name(store, ctx.current_or_main(v.opt("from"), "--from branch"))
        if ctx.front == CLI and not v.opt("json") and sys.stderr.isatty() and n > 0:
            table = LiveTable(n)
            table.live.start()
        with ended_like_ctrl_c():
            result = best_of(
                store,
                n,
                str(command),
                score=v.opt("score"),
                base=base,
                at=v.opt("at"),
                timeout=timeout,
                jobs=jobs,
                keep=bool(v.opt("keep")),
                log_dir=v.opt("logs"),
                on_update=table.update if table is not None else None,
                spawner=spawner,
            )
    finally:
        spawner.close()
        if table is not None:
            table.live.stop()
    return Outcome(result.to_json(), summary(result), 0 if result.ok else EXIT_FAILED)


VERBS = (
    Verb(
        "run",
        "Run CMD with BRANCH mounted as its working tree (its own daemon); the exit status "
        "is CMD's. With --at PATH, CMD sees the branch at PATH in a private mount namespace "
        "while every other process still sees PATH as it was.",
        "branchfs run attempt-1 --at /work/app -- pytest -q",
        _run,
        (
            Arg(
                "branch",
                "the branch to run in (default: the mount you are inside)",
                optional=True,
            ),
            Arg("command", "the command and its arguments", rest=True),
        ),
        (
            Opt(
                "at",
                "Show the branch to CMD alone at this absolute path (created if missing).",
                metavar="PATH",
            ),
        ),
        fronts=frozenset({CLI}),
        data=False,
    ),
    Verb(
        "best-of",
        "Fork N attempts from a branch, run --run CMD in each in parallel (each in its own "
        "mounted tree, with BRANCHFS_ATTEMPT and BRANCHFS_BRANCH set and its output in a "
        "log), score them (an attempt fails if CMD or --score CMD exits nonzero; of the "
        "rest the highest last number --score CMD prints wins, 0 if none), merge the best "
        "and discard the rest. Commands run in the attempt's tree: give a script outside it "
        "by its absolute path. Exit 1 if none passed (the branch is untouched); Ctrl-C "
        "leaves no mount, branch or process behind.",
        "branchfs best-of 4 --run \"$PWD/agent-step.sh\" --score 'pytest -q >&2' --timeout 600",
        _best_of,
        (Arg("n", "how many attempts"),),
        (
            Opt(
                "run",
                "The command each attempt runs (a shell command, in the attempt's tree: "
                "give a script outside it by its absolute path).",
                metavar="CMD",
            ),
            Opt(
                "score",
                "The command that scores an attempt, run in its tree: a nonzero exit fails "
                "the attempt; else the last number it prints wins (higher is better, 0 if "
                "none). For pytest use 'pytest -q >&2': its exit status decides.",
                metavar="CMD",
            ),
            Opt(
                "from", "The branch to fork from and merge into (default: main).", metavar="BRANCH"
            ),
            Opt(
                "at",
                "Every attempt sees its own tree at this absolute path (private mount namespaces).",
                metavar="PATH",
            ),
            Opt("timeout", "Kill an attempt's process group after S seconds.", metavar="S"),
            Opt("jobs", "At most J attempts at once (default: all N).", metavar="J"),
            Opt("keep", "Keep every attempt's branch instead of discarding it.", flag=True),
            Opt(
                "logs",
                "Where the attempts' logs go (default: STORE/logs/bestof-ID).",
                metavar="DIR",
            ),
        ),
        fronts=frozenset({CLI}),
    ),
)


__all__ = ["VERBS", "LiveTable", "summary"]
