"""Verbs of ``.branchfs/ctl`` alone: ``help`` (the commands it speaks) and ``stats`` (the
requests that reached the mount's daemon, by operation)."""

from __future__ import annotations

from .spec import CTL, Arg, CommandError, Context, Opt, Outcome, Values, Verb


def _help(_ctx: Context, v: Values) -> Outcome:
    from . import lookup, verbs

    name = v.arg("command")
    if name:
        verb = lookup(name, CTL)
        rows = [verb]
    else:
        rows = verbs(CTL)
    data = {
        "commands": [
            {"name": r.name, "usage": r.usage, "summary": r.summary, "example": r.example}
            for r in rows
        ]
    }
    lines = [f"{r.usage}\n    {r.summary}" for r in rows]
    if not name:
        lines.append("a tree is a branch NAME or a snapshot @NAME; answers are one JSON line")
    return Outcome(data, "\n".join(lines))


def _stats(ctx: Context, v: Values) -> Outcome:
    if ctx.mount is None:
        raise CommandError("stats answers only through a mount's .branchfs/ctl")
    data = ctx.mount.ctl_stats(reset=bool(v.opt("reset")))
    return Outcome(data, "\n".join(f"{k}: {n}" for k, n in sorted(data["requests"].items())))


VERBS = (
    Verb(
        "help",
        "List the commands ctl speaks, or describe COMMAND.",
        "help merge",
        _help,
        (Arg("command", "one command to describe", optional=True),),
        fronts=frozenset({CTL}),
        needs_store=False,
    ),
    Verb(
        "stats",
        "The requests that reached this mount's daemon, by operation.",
        "stats --reset",
        _stats,
        opts=(Opt("reset", "Start counting again from zero.", flag=True),),
        fronts=frozenset({CTL}),
        needs_store=False,
    ),
)
