"""The command layer: every verb of ``branchfs`` and ``.branchfs/ctl``, declared once.

Each verb lives in one module below as a :class:`~.spec.Verb` (its arguments, the API call,
its JSON and human answers); :data:`MODULES` lists those modules. To add a verb, write a
module with a ``VERBS`` tuple and add its name here: the command line and ``ctl`` both pick
it up. Front ends call :func:`parse_line` (``ctl``'s words) or build their own parser from
the declarations (click), then :func:`execute`.
"""

from __future__ import annotations

import importlib
import shlex
from typing import Any

from .spec import CLI, CTL, EXIT_OK, CommandError, Context, Outcome, Values, Verb

#: The modules that declare verbs, in the order ``help`` lists them.
MODULES = ("mounting", "copying", "refs", "compare", "attempts", "upkeep", "control")

_verbs: dict[str, Verb] | None = None


def all_verbs() -> dict[str, Verb]:
    """Every declared verb by name (modules imported once; none of them imports the engine)."""
    global _verbs
    if _verbs is None:
        found: dict[str, Verb] = {}
        for name in MODULES:
            mod = importlib.import_module(f"{__name__}.{name}")
            for verb in mod.VERBS:
                if verb.name in found:
                    raise RuntimeError(f"verb {verb.name!r} is declared twice")
                found[verb.name] = verb
        _verbs = found
    return _verbs


def verbs(front: str) -> list[Verb]:
    """The verbs offered on ``front`` (:data:`~.spec.CLI` or :data:`~.spec.CTL`)."""
    return [v for v in all_verbs().values() if front in v.fronts]


def lookup(name: str, front: str) -> Verb:
    """The verb ``name`` on ``front``; :class:`CommandError` naming the ones there are."""
    verb = all_verbs().get(name)
    if verb is None or front not in verb.fronts:
        offered = ", ".join(v.name for v in verbs(front))
        where = "" if verb is None else f" (it is a command-line verb: `branchfs {name}`)"
        raise CommandError(f"unknown command {name!r}{where}; commands: {offered}; try `help`")
    return verb


def parse_line(line: str, front: str = CTL) -> tuple[Verb, Values]:
    """Parse one command line (``merge attempt-1 --into main``) into a verb and its values."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise CommandError(f"cannot parse {line!r}: {exc}") from None
    if not words:
        raise CommandError("empty command; write `help` to list the commands")
    verb = lookup(words[0], front)
    by_name = {f"--{o.name}": o for o in verb.all_opts}
    by_name.update({f"-{o.short}": o for o in verb.all_opts if o.short})
    args: list[str] = []
    opts: dict[str, Any] = {}
    rest = words[1:]
    i = 0
    while i < len(rest):
        word = rest[i]
        key, eq, value = word.partition("=")
        opt = by_name.get(key if eq else word)
        if opt is None and word.startswith("-") and word != "-":
            if word in ("-h", "--help"):
                raise CommandError(_usage_line(verb))
            raise CommandError(f"{verb.name}: unknown option {word!r}; usage: {_usage_line(verb)}")
        if opt is None:
            args.append(word)
        elif opt.flag:
            opts[opt.key] = True
        elif eq:
            opts[opt.key] = value
        else:
            if i + 1 >= len(rest):
                raise CommandError(f"--{opt.name} needs a value; usage: {_usage_line(verb)}")
            opts[opt.key] = rest[i + 1]
            i += 1
        i += 1
    return verb, verb.bind(args, opts)


def _usage_line(verb: Verb) -> str:
    return f"{verb.usage}  (example: {verb.example})"


def execute(verb: Verb, ctx: Context, values: Values) -> Outcome:
    """Run ``verb``; any failure comes back as a :class:`CommandError` (see :mod:`.answers`)
    whose message names what ``ctx.front`` offers (flags and verbs, not Python names)."""
    try:
        return verb.run(ctx, values)
    except (Exception, KeyboardInterrupt) as exc:
        from .answers import failure, for_front  # only a failure needs it

        err = failure(exc)
        err.message = for_front(err.message, ctx.front)
        raise err from None


__all__ = [
    "CLI",
    "CTL",
    "EXIT_OK",
    "MODULES",
    "CommandError",
    "Context",
    "Outcome",
    "Values",
    "Verb",
    "all_verbs",
    "execute",
    "lookup",
    "parse_line",
    "verbs",
]
