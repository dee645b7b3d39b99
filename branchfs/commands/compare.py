"""Verbs that compare and combine trees: ``diff``, ``status`` and ``merge``.

Their cost follows the changes, never the size of the tree. ``--patch`` adds a patch in
git's format (:mod:`branchfs.patch`; binary files named, or with ``--binary`` as git
binary patches). A refused merge answers exit status 1 with every
conflict in plain words (:func:`.answers.explain_conflicts`) and the target left unchanged.
"""

from __future__ import annotations

from typing import Any

from .spec import EXIT_FAILED, Arg, CommandError, Context, Opt, Outcome, Values, Verb
from .trees import NOTATION, branch_name, tree_ref

PATCH = Opt(
    "patch",
    "Also show the changes as a patch in git's format, which `git apply` applies (binary "
    "files named only, unless --binary).",
    flag=True,
)
BINARY = Opt(
    "binary",
    "With --patch: binary files as git binary patches (as `git diff --binary` writes them), "
    "so that `git apply` applies them too.",
    flag=True,
)


def _change_lines(changes: list[Any]) -> list[str]:
    return [str(c) for c in changes]


def _patch(va: Any, vb: Any, changes: list[Any], v: Values) -> str | None:
    """The patch ``--patch`` asks for (None without it); ``--binary`` alone is a usage error."""
    if not v.opt("patch"):
        if v.opt("binary"):
            raise CommandError("--binary only changes what --patch shows: add --patch")
        return None
    from ..patch import unified

    return unified(va, vb, changes, binary=bool(v.opt("binary")))


def _diff(ctx: Context, v: Values) -> Outcome:
    from ..diff import diff_views

    store = ctx.store()
    a, b = str(v.arg("a")), str(v.arg("b"))
    ra, rb = tree_ref(store, a), tree_ref(store, b)
    with store.meta.read() as txn:
        va, vb = store.engine.ref_view(txn, ra), store.engine.ref_view(txn, rb)
        vb.records = va.records
        changes = diff_views(va, vb)
        text = _patch(va, vb, changes, v)
    data: dict[str, Any] = {"a": a, "b": b, "changes": [c.to_json() for c in changes]}
    if text is not None:
        data["patch"] = text
    human = text if text is not None else "\n".join(_change_lines(changes))
    return Outcome(data, human.rstrip("\n") or f"no differences between {a} and {b}")


def _status(ctx: Context, v: Values) -> Outcome:
    from ..diff import diff_views
    from ..status import base_views

    store = ctx.store()
    branch = branch_name(store, ctx.branch_or_current(v.arg("branch")))
    against = v.opt("against")
    if against is not None:
        against = branch_name(store, against, "--against branch")
    with store.meta.read() as txn:
        base, vb, who = base_views(store, txn, branch, against)
        changes = diff_views(base, vb)
        text = _patch(base, vb, changes, v)
    data: dict[str, Any] = {
        "branch": branch,
        "against": who,
        "changes": [c.to_json() for c in changes],
    }
    since = (
        f"since it last shared a state with {who}"
        if who
        else "(it shares no state with any branch)"
    )
    lines = [f"{branch}: {len(changes)} change{'s' if len(changes) != 1 else ''} {since}"]
    if text is not None:
        data["patch"] = text
        lines.append(text.rstrip("\n"))
    else:
        lines += [f"  {line}" for line in _change_lines(changes)]
    return Outcome(data, "\n".join(lines))


def _merge(ctx: Context, v: Values) -> Outcome:
    store = ctx.store()
    source = str(v.arg("source"))
    target = branch_name(
        store, ctx.branch_or_current(v.opt("into"), "target (--into TARGET)"), "target"
    )
    ref = tree_ref(store, source)
    result = store.merge(
        target, ref, strategy=v.opt("strategy"), conflict_markers=bool(v.opt("markers"))
    )
    from .answers import conflict_json, explain

    data = {
        "target": target,
        "source": source,
        "changes": [c.to_json() for c in result.changes],
        "conflicts": [conflict_json(c) for c in result.conflicts],
        "markers": result.markers,
    }
    n = len(result.changes)
    lines = [f"merged {source} into {target}: {n} change{'s' if n != 1 else ''}"]
    lines += [f"  {c}" for c in result.changes[:50]]
    if n > 50:
        lines.append(f"  … and {n - 50} more (--json lists them all)")
    marked = set(result.markers)
    by_strategy = [c for c in result.conflicts if c.path not in marked]
    if by_strategy:
        lines.append(f"{len(by_strategy)} conflict(s) resolved by --strategy {v.opt('strategy')}:")
        lines += [f"  {explain(c)}" for c in by_strategy]
    if not result.markers:
        return Outcome(data, "\n".join(lines))
    # As `git merge` does: the merge is written, but conflicts are left for a person.
    lines += [f"CONFLICT {explain(c)}" for c in result.conflicts if c.path in marked]
    lines.append(
        f"{len(result.markers)} file(s) hold conflict markers ({', '.join(result.markers)}): "
        "edit them to keep what you want and remove the <<<<<<< ======= >>>>>>> lines"
    )
    return Outcome(data, "\n".join(lines), EXIT_FAILED)


def _merge_changes(ctx: Context, v: Values) -> set[str]:
    t = v.opt("into") or ctx.current
    return {t} if t else set()


VERBS = (
    Verb(
        "diff",
        f"List what differs from tree A to tree B ({NOTATION}).",
        "branchfs diff main attempt-1 --patch",
        _diff,
        (Arg("a", "the tree to compare from"), Arg("b", "the tree to compare to")),
        (PATCH, BINARY),
        flush=True,
    ),
    Verb(
        "status",
        "What BRANCH (default: the mounted one) changed since it last shared a state with "
        "another branch: its fork, or its last merge. That is what merging it would bring.",
        "branchfs status attempt-1 --patch",
        _status,
        (Arg("branch", "the branch (default: the mounted one)", optional=True),),
        (
            Opt(
                "against",
                "Compare with this branch (default: the one BRANCH was forked from or "
                "last merged with).",
                metavar="BRANCH",
            ),
            PATCH,
            BINARY,
        ),
        flush=True,
    ),
    Verb(
        "merge",
        "3-way merge SOURCE (a branch or @SNAPSHOT) into TARGET (default: the mounted "
        "branch). All or nothing: on a conflict TARGET is unchanged and every conflict is "
        "listed (exit status 1).",
        "branchfs merge attempt-1 --into main",
        _merge,
        (Arg("source", "the tree whose changes to bring in"),),
        (
            Opt("into", "The branch to merge into (default: the mounted one).", metavar="TARGET"),
            Opt(
                "strategy",
                "Resolve every conflict one way: ours keeps TARGET's side, theirs takes SOURCE's.",
                choices=("ours", "theirs"),
            ),
            Opt(
                "markers",
                "Write diff3-style conflict markers into text files both sides changed, "
                "instead of refusing; the merge is then written, but exits 1 naming the "
                "files that hold markers, for you to resolve.",
                flag=True,
            ),
        ),
        flush=True,
        changes=_merge_changes,
    ),
)
