"""``MOUNT/.branchfs/ctl``: one command line in, one JSON answer out, on one descriptor.

A process opens ``ctl``, writes one command line and reads the answer back on the same file
descriptor. The commands are the command line's own verbs (``merge SRC [--into TARGET]``,
``fork SRC NEW``, ``diff A B``, ``status``, ``discard NAME`` …, and ``help``), parsed and run
by the command layer (:mod:`branchfs.commands`), so they answer exactly the JSON that
``branchfs VERB --json`` prints; the mounted branch is the default wherever a verb takes
one. Every answer is a JSON object with ``"ok"``; failures carry ``"error"`` (a kind) and
``"message"``, and a merge with conflicts carries every conflict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from branchfs.commands import CTL, CommandError, Context, Values, Verb, execute, parse_line
from branchfs.commands.answers import error_json


@dataclass
class Request:
    """A parsed command line: the verb and its values."""

    verb: Verb
    values: Values

    @property
    def needs_flush(self) -> bool:
        """Whether buffered writes must reach the store first (anything reading a tree)."""
        return self.verb.flush


def parse(line: str) -> Request | dict[str, Any]:
    """The request on ``line``, or the JSON answer of a line that does not parse."""
    try:
        verb, values = parse_line(line, CTL)
    except CommandError as err:
        return error_json(err)
    return Request(verb, values)


def run(request: Request, ops: Any) -> tuple[dict[str, Any], set[str]]:
    """Run ``request`` for the mount ``ops`` (the daemon's filesystem object: its ``store``,
    ``main`` branch, ``mountpoint`` and ``stats``); the answer, and the branches whose
    trees the request may have changed."""
    ctx = Context(CTL, ops.store.path, current=ops.main.name, store=ops.store, mount=ops)
    try:
        answer = execute(request.verb, ctx, request.values).to_json()
    except CommandError as err:
        answer = error_json(err)
    return answer, request.verb.changes(ctx, request.values)


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
