"""The command language of ``MOUNT/.branchfs/ctl``: one line in, one JSON answer out.

A process opens ``ctl``, writes one command line and reads the answer back on the same file
descriptor. Commands (the mounted branch is the default target)::

    merge SRC [--into TARGET] [--strategy ours|theirs] [--markers]
    reset SNAP [--branch B]          fork SRC NEW          discard NAME
    snapshot NAME [--branch B]       diff A B              branches        snapshots
    stats [--reset]                  (requests that reached the daemon, by operation)

Every answer is a JSON object with ``"ok"``; failures carry ``"error"`` (a message) and a
merge with conflicts carries every conflict, never just an errno.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import branchfs
from branchfs import BranchFSError, MergeConflict, Store

USAGE = (
    "commands: merge SRC [--into TARGET] [--strategy ours|theirs] [--markers]; "
    "reset SNAP [--branch B]; fork SRC NEW; discard NAME; snapshot NAME [--branch B]; "
    "diff A B; branches; snapshots; stats [--reset]"
)


@dataclass
class Command:
    """A parsed command line, and which branches it changes the content of."""

    verb: str
    args: list[str]
    opts: dict[str, str | bool] = field(default_factory=dict)

    def changes(self, mounted: str) -> set[str]:
        """Branches whose trees this command changes (the daemon invalidates those)."""
        if self.verb == "merge":
            return {str(self.opts.get("into", mounted))}
        if self.verb == "reset":
            return {str(self.opts.get("branch", mounted))}
        return set()

    @property
    def needs_flush(self) -> bool:
        """Whether buffered writes must reach the store first (anything reading a tree)."""
        return self.verb in ("merge", "reset", "fork", "snapshot", "diff")


class UsageError(ValueError):
    """A command line that does not parse."""


_FLAGS = {"--markers": "markers", "--reset": "reset"}
_OPTIONS = {"--into": "into", "--strategy": "strategy", "--branch": "branch"}
_ARITY = {
    "merge": 1,
    "reset": 1,
    "fork": 2,
    "discard": 1,
    "snapshot": 1,
    "diff": 2,
    "branches": 0,
    "snapshots": 0,
    "stats": 0,
}


def parse(line: str) -> Command:
    """Parse one command line; :class:`UsageError` with a helpful message if it is wrong."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"cannot parse {line!r}: {exc}") from None
    if not words:
        raise UsageError(f"empty command; {USAGE}")
    verb, rest = words[0], words[1:]
    if verb not in _ARITY:
        raise UsageError(f"unknown command {verb!r}; {USAGE}")
    args: list[str] = []
    opts: dict[str, str | bool] = {}
    i = 0
    while i < len(rest):
        word = rest[i]
        if word in _FLAGS:
            opts[_FLAGS[word]] = True
        elif word in _OPTIONS:
            if i + 1 >= len(rest):
                raise UsageError(f"{word} needs a value; {USAGE}")
            opts[_OPTIONS[word]] = rest[i + 1]
            i += 1
        elif word.startswith("--") and "=" in word and word.split("=", 1)[0] in _OPTIONS:
            key, value = word.split("=", 1)
            opts[_OPTIONS[key]] = value
        elif word.startswith("--"):
            raise UsageError(f"unknown option {word!r}; {USAGE}")
        else:
            args.append(word)
        i += 1
    if len(args) != _ARITY[verb]:
        raise UsageError(f"{verb} takes {_ARITY[verb]} argument(s), got {len(args)}; {USAGE}")
    strategy = opts.get("strategy")
    if strategy is not None and strategy not in ("ours", "theirs"):
        raise UsageError(f"--strategy must be ours or theirs, not {strategy!r}")
    return Command(verb, args, opts)


def _conflict_json(c: Any) -> dict[str, Any]:
    return {"path": c.path, "kind": c.kind, "ours": c.ours, "theirs": c.theirs}


def _change_json(c: Any) -> dict[str, Any]:
    to_json = getattr(c, "to_json", None)
    if to_json is not None:
        return dict(to_json())
    return {"path": c.path, "kind": c.kind, "old_path": getattr(c, "old_path", None)}


def run(store: Store, mounted: str, cmd: Command) -> dict[str, Any]:
    """Execute ``cmd`` against ``store`` (``mounted`` is the branch this mount serves)."""
    handler: Callable[[Store, str, Command], dict[str, Any]] = _HANDLERS[cmd.verb]
    try:
        return {"ok": True, **handler(store, mounted, cmd)}
    except MergeConflict as exc:
        return {
            "ok": False,
            "error": "conflict",
            "message": str(exc).splitlines()[0],
            "conflicts": [_conflict_json(c) for c in exc.conflicts],
        }
    except (BranchFSError, OSError, ValueError) as exc:
        return {"ok": False, "error": type(exc).__name__, "message": str(exc)}


def _merge(store: Store, mounted: str, cmd: Command) -> dict[str, Any]:
    target = str(cmd.opts.get("into", mounted))
    strategy = cmd.opts.get("strategy")
    result = store.merge(
        target,
        cmd.args[0],
        strategy=str(strategy) if strategy else None,
        conflict_markers=bool(cmd.opts.get("markers", False)),
    )
    return {
        "target": target,
        "source": cmd.args[0],
        "changes": [_change_json(c) for c in result.changes],
        "conflicts": [_conflict_json(c) for c in result.conflicts],
    }


def _reset(store: Store, mounted: str, cmd: Command) -> dict[str, Any]:
    branch = str(cmd.opts.get("branch", mounted))
    store.reset(branch, cmd.args[0])
    return {"branch": branch, "snapshot": cmd.args[0]}


def _fork(store: Store, mounted: str, cmd: Command) -> dict[str, Any]:
    src, new = cmd.args
    if src.startswith("@"):
        store.fork_snapshot(src[1:], new)
    else:
        store.fork(src, new)
    return {"source": src, "branch": new}


def _discard(store: Store, mounted: str, cmd: Command) -> dict[str, Any]:
    name = cmd.args[0]
    if name == mounted:
        raise branchfs.BranchFSError(
            f"{name!r} is the branch this mount serves; unmount it before discarding it"
        )
    store.discard(name)
    return {"branch": name}


def _snapshot(store: Store, mounted: str, cmd: Command) -> dict[str, Any]:
    branch = str(cmd.opts.get("branch", mounted))
    store.snapshot(branch, cmd.args[0])
    return {"branch": branch, "snapshot": cmd.args[0]}


def _diff(store: Store, mounted: str, cmd: Command) -> dict[str, Any]:
    a, b = cmd.args
    return {"a": a, "b": b, "changes": [_change_json(c) for c in store.diff(a, b)]}


def _branches(store: Store, mounted: str, cmd: Command) -> dict[str, Any]:
    return {"branches": store.branches(), "mounted": mounted}


def _snapshots(store: Store, mounted: str, cmd: Command) -> dict[str, Any]:
    return {"snapshots": store.snapshots()}


_HANDLERS: dict[str, Callable[[Store, str, Command], dict[str, Any]]] = {
    "merge": _merge,
    "reset": _reset,
    "fork": _fork,
    "discard": _discard,
    "snapshot": _snapshot,
    "diff": _diff,
    "branches": _branches,
    "snapshots": _snapshots,
}


def encode(answer: dict[str, Any]) -> bytes:
    """The answer as one line of JSON."""
    return json.dumps(answer, default=str).encode() + b"\n"


class CtlHandle:
    """One open file descriptor on ``ctl``: the command written so far and its answer."""

    __slots__ = ("answer", "pos", "request")

    def __init__(self) -> None:
        self.request = bytearray()
        self.answer = b""
        self.pos = 0

    def take_line(self) -> str | None:
        """The complete command line written so far (None until a newline arrives)."""
        if b"\n" not in self.request:
            return None
        line, _, rest = bytes(self.request).partition(b"\n")
        self.request = bytearray(rest)
        return line.decode("utf-8", "surrogateescape")

    def pending(self) -> str | None:
        """A command written without a trailing newline (run when the answer is read)."""
        if not self.request.strip():
            return None
        line = bytes(self.request).decode("utf-8", "surrogateescape")
        self.request = bytearray()
        return line

    def read(self, size: int) -> bytes:
        """The next ``size`` bytes of the answer (a cursor, whatever the file offset)."""
        out = self.answer[self.pos : self.pos + size]
        self.pos += len(out)
        return out
