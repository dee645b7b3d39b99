"""What best-of works with: attempts, their statuses, the run's result, and a trial.

:class:`Attempt` is one attempt as it goes and at the end, :class:`BestOfResult` what
:func:`branchfs.bestof.best_of` returns, :class:`Trial` what a run or score callable gets
(its branch and tree, and :meth:`Trial.run` to run a command there). :func:`last_number`
is the scoring rule for a score command's output (see :mod:`branchfs.bestof`).
:func:`popen_in_tree` starts a command in an attempt's tree, seen at ``--at`` if given.
No mount, thread or store is handled here: that is :mod:`branchfs.attemptrun`.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal, TypeAlias

from . import run as runmod
from .errors import BranchFSError
from .jsontypes import JSON, JSONObject

if TYPE_CHECKING:
    from .branch import Branch
    from .diff import Change
    from .merge import MergeResult

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
        proc = popen_in_tree(
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


def popen_in_tree(
    command: runmod.Command,
    tree: str,
    at: str | None,
    env: dict[str, str],
    stdout: int | IO[str],
    stderr: int | IO[str],
) -> subprocess.Popen[bytes]:
    """Start ``command`` in ``tree`` (seen at ``at`` if given) in a session of its own.

    Its stdin is ``/dev/null``; ``stdout`` and ``stderr`` are as for ``subprocess.Popen``.
    Raises ``OSError`` if the command cannot be started.
    """
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


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


__all__ = [
    "DONE",
    "Attempt",
    "BestOfError",
    "BestOfResult",
    "ScoreValue",
    "Status",
    "Trial",
    "last_number",
    "one_line",
    "popen_in_tree",
]
