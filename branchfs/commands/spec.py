"""What a verb is: its arguments and options, how it runs, and what it answers.

A verb is declared once, as a :class:`Verb`, and served by two front ends that share this
declaration: the click command line (:mod:`branchfs.cli`) and a mount's ``.branchfs/ctl``
file (:mod:`branchfs_fuse.control`). Both parse words into the same :class:`Values`, call
the same ``run`` with a :class:`Context`, and print the same :class:`Outcome` — its JSON
form, or its human form on a terminal. This module imports nothing heavy: building the
command line's help must not load the engine.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..store import Store

# The declarations (Arg, Opt, Verb) are compared by identity and never printed: their
# dataclasses make only __init__ and the frozen guards, not __eq__ and __repr__ (one exec per
# generated method: ~0.5 ms of every start for each class).

#: Exit statuses (docs/architecture.md, "The command layer"): success, a conflict or failed
#: check, a usage error or bad input.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

#: The two front ends a verb may be offered on.
CLI = "cli"
CTL = "ctl"


class CommandError(Exception):
    """A verb could not do what was asked: one line saying what was wrong and what to do.

    ``code`` is the exit status (:data:`EXIT_USAGE` unless told), ``kind`` the ``error``
    field of the JSON answer, ``extra`` more fields for it (a merge's conflicts …).
    """

    def __init__(
        self,
        message: str,
        code: int = EXIT_USAGE,
        kind: str = "usage",
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.kind = kind
        self.extra = extra or {}


@dataclass(frozen=True, eq=False, repr=False)
class Arg:
    """A positional argument. An ``optional`` one is filled only when enough words are
    given, counting from the left (``snapshot [BRANCH] NAME``); left out, it is None and the
    verb falls back to the current branch. A ``rest`` argument, always the last, takes every
    word after the first ``--`` (a command to run: ``run [BRANCH] -- CMD …``) into
    :attr:`Values.rest`; without a ``--``, every word after the other arguments."""

    name: str
    help: str
    optional: bool = False
    rest: bool = False

    @property
    def metavar(self) -> str:
        """How usage lines show it: ``NAME``, ``[NAME]`` or ``-- NAME …``."""
        if self.rest:
            return f"-- {self.name.upper()} …"
        return f"[{self.name.upper()}]" if self.optional else self.name.upper()


@dataclass(frozen=True, eq=False, repr=False)
class Opt:
    """An option ``--NAME VALUE`` (or a ``flag`` ``--NAME``); ``choices`` limit its value."""

    name: str
    help: str
    flag: bool = False
    choices: tuple[str, ...] | None = None
    metavar: str = "VALUE"
    short: str | None = None

    @property
    def key(self) -> str:
        """The key of its value in :class:`Values` (``--allow-other`` -> ``allow_other``)."""
        return self.name.replace("-", "_")


#: The ``--json`` flag, offered by every verb whose output is data.
JSON = Opt("json", "Print the answer as one JSON object (what .branchfs/ctl answers).", flag=True)


@dataclass
class Values:
    """Parsed arguments (by ``Arg.name``) and options (by ``Opt.key``) of one invocation."""

    args: dict[str, str | None] = field(default_factory=dict)
    opts: dict[str, Any] = field(default_factory=dict)
    rest: list[str] = field(default_factory=list)

    def arg(self, name: str) -> str | None:
        """The positional argument ``name`` (None when an optional one was left out)."""
        return self.args.get(name)

    def opt(self, key: str, default: Any = None) -> Any:
        """The option ``key`` (False for an absent flag, ``default`` for an absent value)."""
        value = self.opts.get(key)
        return default if value is None else value


@dataclass
class Outcome:
    """What a verb answers: ``data`` (the JSON form, without ``ok``), ``text`` (the human
    form, lines without a final newline) and the exit status ``code``."""

    data: dict[str, Any]
    text: str = ""
    code: int = EXIT_OK

    def to_json(self) -> dict[str, Any]:
        """The JSON answer: ``{"ok": true, ...}`` (``ok`` is false when ``code`` is not 0)."""
        return {"ok": self.code == EXIT_OK, **self.data}


Progress = Callable[[str, int | None], AbstractContextManager[Callable[[int], object]]]


def no_progress(_label: str, _total: int | None) -> AbstractContextManager[Callable[[int], object]]:
    """A progress meter that shows nothing (``ctl``, ``--json``, output that is not a tty)."""
    return nullcontext(lambda _done: None)


class Context:
    """Where a verb runs: the store, the current branch, and what the front end offers.

    ``store_path`` is None when no store could be found (``why`` says what to do); the store
    is opened on first use and closed by :meth:`close`. ``current`` is the branch a verb
    works on when none is named: the mounted branch for ``ctl``, the branch of the mount
    the working directory is inside for the command line. ``front`` is :data:`CLI` or
    :data:`CTL`; ``mount`` is the daemon's filesystem object when ``ctl`` runs the verb.
    """

    def __init__(
        self,
        front: str,
        store_path: str | None,
        *,
        current: str | None = None,
        store: Store | None = None,
        why: str = "",
        progress: Progress = no_progress,
        mount: Any = None,
        no_current: str = "",
    ) -> None:
        self.front = front
        self.store_path = store_path
        self.current = current
        #: Why there is no current branch although the verb runs inside a mount (in a
        #: snapshot's view): then no verb falls back to a branch of its own choosing.
        self.no_current = no_current
        self.why = why
        self.progress = progress
        self.mount = mount
        self._store = store
        self._owned = False

    def store(self) -> Store:
        """The open store; :class:`CommandError` if there is none or it cannot be opened."""
        if self._store is not None:
            return self._store
        if self.store_path is None:
            raise CommandError(
                self.why
                or "which store? pass --store PATH, set BRANCHFS_STORE, or run inside a mount"
            )
        from ..store import Store

        path = self.store_path
        if not os.path.exists(path):
            raise CommandError(
                f"no store at {path}; create one with `branchfs init {path}`", kind="StoreNotFound"
            )
        self._store = Store.open(path)
        self._owned = True
        return self._store

    def branch_or_current(self, given: str | None, what: str = "BRANCH") -> str:
        """``given``, else the current branch, else a usage error asking for ``what``."""
        if given:
            return given
        if self.current:
            return self.current
        if self.no_current:
            raise CommandError(f"name the {what}: {self.no_current}")
        raise CommandError(f"name the {what} (or run this inside a branchfs mount)")

    def current_or_main(self, given: str | None, what: str = "BRANCH") -> str:
        """``given``, else the current branch, else ``main`` (outside any mount); inside a
        snapshot's view a usage error asking for ``what``."""
        if given or self.current or not self.no_current:
            return given or self.current or "main"
        raise CommandError(f"name the {what}: {self.no_current}")

    def close(self) -> None:
        """Close the store if this context opened it."""
        if self._owned and self._store is not None:
            self._store.close()
            self._store = None
            self._owned = False


Run = Callable[[Context, Values], Outcome]


@dataclass(frozen=True, eq=False, repr=False)
class Verb:
    """One command, declared once for every front end.

    ``run`` does the work and returns an :class:`Outcome`; it raises
    :class:`CommandError` (or an engine error, mapped by :func:`.answers.failure`) when it
    cannot. ``fronts`` says where it is offered; ``changes`` names the branches whose trees
    it may change (a mount drops its caches of those); ``flush`` says whether a mount must
    hand its buffered writes to the store first (anything that reads or freezes a tree).
    ``data`` says whether its output is data (then it takes ``--json``).
    """

    name: str
    summary: str
    example: str
    run: Run
    args: tuple[Arg, ...] = ()
    opts: tuple[Opt, ...] = ()
    fronts: frozenset[str] = frozenset({CLI, CTL})
    flush: bool = False
    data: bool = True
    needs_store: bool = True
    changes: Callable[[Context, Values], set[str]] = lambda _ctx, _values: set()

    @property
    def all_opts(self) -> tuple[Opt, ...]:
        """Its options, with ``--json`` where the output is data."""
        return (*self.opts, JSON) if self.data else self.opts

    @property
    def usage(self) -> str:
        """``NAME ARGS [--option VALUE] …``, as ``help`` shows it."""
        parts = [self.name, *(a.metavar for a in self.args)]
        for o in self.opts:
            if o.choices:
                parts.append(f"[--{o.name} {'|'.join(o.choices)}]")
            elif o.flag:
                parts.append(f"[--{o.name}]")
            else:
                parts.append(f"[--{o.name} {o.metavar}]")
        return " ".join(parts)

    def bind(self, words: list[str], opts: dict[str, Any]) -> Values:
        """Assign positional ``words`` to the arguments; :class:`CommandError` on a wrong count.

        Required arguments are filled first; optional ones take the extra words, from the
        left.
        """
        if self.args and self.args[-1].rest:
            head = len(self.args) - 1
            if "--" in words:  # the words before it are the arguments, optional ones too
                cut = words.index("--")
                values = replace(self, args=self.args[:head]).bind(words[:cut], opts)
                values.rest = list(words[cut + 1 :])
                return values
            if len(words) <= head:
                want = " ".join(a.metavar for a in self.args)
                raise CommandError(
                    f"{self.name} takes {want}, got {len(words)} word(s); example: {self.example}"
                )
            values = replace(self, args=self.args[:head]).bind(words[:head], opts)
            values.rest = list(words[head:])
            return values
        required = sum(1 for a in self.args if not a.optional)
        if len(words) < required or len(words) > len(self.args):
            want = " ".join(a.metavar for a in self.args) or "no arguments"
            raise CommandError(
                f"{self.name} takes {want}, got {len(words)} word(s); example: {self.example}"
            )
        spare = len(words) - required
        values = Values(opts=dict(opts))
        it: Iterator[str] = iter(words)
        for a in self.args:
            if a.optional:
                if spare > 0:
                    values.args[a.name] = next(it)
                    spare -= 1
                else:
                    values.args[a.name] = None
            else:
                values.args[a.name] = next(it)
        for o in self.all_opts:
            values.opts.setdefault(o.key, False if o.flag else None)
            value = values.opts[o.key]
            if o.choices and value is not None and value not in o.choices:
                raise CommandError(
                    f"--{o.name} must be one of {', '.join(o.choices)}, not {value!r}"
                )
        return values
