"""Verbs on names: ``branches``, ``snapshots``, ``fork``, ``discard``, ``snapshot``, ``reset``.

Each is O(1) in the size of the tree (the engine re-points layers). See
:mod:`branchfs.commands.spec` for how a verb is declared and served.
"""

from __future__ import annotations

import time

from .spec import Arg, Context, Opt, Outcome, Values, Verb
from .trees import SNAPSHOT, branch_name, snapshot_name, tree_ref


def _mounts(ctx: Context) -> dict[str, list[str]]:
    from ..notices import registrations

    out: dict[str, list[str]] = {}
    for reg in registrations(ctx.store().path):
        if reg.alive():
            out.setdefault(reg.branch, []).append(reg.mountpoint)
    return out


def _branches(ctx: Context, _v: Values) -> Outcome:
    names = ctx.store().branches()
    mounts = {b: sorted(m) for b, m in _mounts(ctx).items() if b in names}
    lines = []
    for name in names:
        mark = "*" if name == ctx.current else " "
        where = f"  (mounted at {', '.join(mounts[name])})" if name in mounts else ""
        lines.append(f"{mark} {name}{where}")
    return Outcome(
        {"branches": names, "mounts": mounts, "current": ctx.current},
        "\n".join(lines) or "no branches (create one with `branchfs fork`)",
    )


def _snapshots(ctx: Context, _v: Values) -> Outcome:
    store = ctx.store()
    with store.meta.read() as txn:
        recs = store.refs.snapshots(txn)
    rows = [
        {"name": r.name, "ref": SNAPSHOT + r.name, "branch": r.branch, "created_ns": r.created_ns}
        for r in recs
    ]
    lines = [
        f"{SNAPSHOT}{r.name}  from {r.branch}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r.created_ns / 1e9))}"
        for r in recs
    ]
    return Outcome({"snapshots": rows}, "\n".join(lines) or "no snapshots")


def _fork(ctx: Context, v: Values) -> Outcome:
    store = ctx.store()
    source, new = str(v.arg("source")), str(v.arg("new"))
    ref = tree_ref(store, source)
    if ref.startswith(SNAPSHOT):
        store.fork_snapshot(ref[1:], new)
    else:
        store.fork(ref, new)
    return Outcome({"source": source, "branch": new}, f"forked {source} as {new}")


def _discard(ctx: Context, v: Values) -> Outcome:
    store = ctx.store()
    word = str(v.arg("branch"))
    if word.startswith(SNAPSHOT):
        # A snapshot only names a frozen layer: a branch forked from it reaches the same
        # layers through its own parent links (gc marks from every branch), so deleting the
        # name loses nothing any other tree still shows; nothing to refuse.
        snap = snapshot_name(store, word)
        store.delete_snapshot(snap)
        return Outcome({"snapshot": snap}, f"discarded {SNAPSHOT}{snap}")
    name = branch_name(store, word)
    if ctx.mount is not None and name == ctx.current:
        from .spec import CommandError

        raise CommandError(
            f"{name!r} is the branch this mount serves; unmount it "
            f"(`branchfs umount {ctx.mount.mountpoint}`) before discarding it",
            kind="BranchBusy",
            extra={"mountpoints": [ctx.mount.mountpoint]},
        )
    from ..notices import serving

    force = bool(v.opt("force"))
    unmounted = [r.mountpoint for r in serving(store.path, name)] if force else []
    store.discard(name, force=force)
    text = f"discarded {name}"
    if unmounted:
        text += f" (first flushed and unmounted {', '.join(unmounted)})"
    return Outcome({"branch": name, "unmounted": list(unmounted)}, text)


def _both_named(ctx: Context, v: Values, verb: str, second: str, example: str) -> str:
    """The BRANCH of ``verb [BRANCH] SECOND``: given, or the mounted one; if neither, a
    usage error that says the one word given was taken as ``second``."""
    given = v.arg("branch")
    if given or ctx.current:
        return ctx.branch_or_current(given)
    from .spec import CommandError

    why = ctx.no_current or "it may be left out only inside a mount of it"
    raise CommandError(
        f"{verb} takes BRANCH {second}, and {v.arg(second.lower())!r} was taken as the "
        f"{second}: name the branch too ({why}); example: {example}"
    )


def _snapshot(ctx: Context, v: Values) -> Outcome:
    store = ctx.store()
    branch = branch_name(
        store, _both_named(ctx, v, "snapshot", "NAME", "branchfs snapshot main before-refactor")
    )
    name = str(v.arg("name"))
    store.snapshot(branch, name)
    return Outcome(
        {"branch": branch, "snapshot": name, "ref": SNAPSHOT + name},
        f"snapshot {SNAPSHOT}{name} of {branch}",
    )


def _reset(ctx: Context, v: Values) -> Outcome:
    store = ctx.store()
    branch = branch_name(
        store, _both_named(ctx, v, "reset", "SNAPSHOT", "branchfs reset main @before-refactor")
    )
    snap = snapshot_name(store, str(v.arg("snapshot")))
    store.reset(branch, snap)
    return Outcome({"branch": branch, "snapshot": snap}, f"{branch} is {SNAPSHOT}{snap} again")


def _discarded(_ctx: Context, v: Values) -> set[str]:
    word = str(v.arg("branch") or "")
    return {word} if word and not word.startswith(SNAPSHOT) else set()


def _reset_changes(ctx: Context, v: Values) -> set[str]:
    b = v.arg("branch") or ctx.current
    return {b} if b else set()


VERBS = (
    Verb(
        "branches",
        "List the branches (and where each is mounted).",
        "branchfs branches --json",
        _branches,
    ),
    Verb(
        "snapshots",
        "List the snapshots; name one as @NAME wherever a tree is asked for.",
        "branchfs snapshots",
        _snapshots,
    ),
    Verb(
        "fork",
        "Make NEW an independent writable copy of SOURCE (a branch, or @SNAPSHOT), in O(1).",
        "branchfs fork main attempt-1",
        _fork,
        (
            Arg("source", "the tree to copy: a branch NAME or a snapshot @NAME"),
            Arg("new", "the new branch's name"),
        ),
        flush=True,
    ),
    Verb(
        "discard",
        "Remove BRANCH, or the snapshot @NAME; the space no other branch or snapshot uses "
        "comes back at the next gc. A branch is refused unless --force when a mount or a run "
        "uses it (--force first flushes and unmounts it), and when it is a root branch (not "
        "forked from another, such as main) or the last branch, whose files nothing else "
        "holds.",
        "branchfs discard attempt-2",
        _discard,
        (Arg("branch", "the branch to remove, or a snapshot @NAME"),),
        (
            Opt(
                "force",
                "Discard even a root or last branch; flush and unmount every mount serving "
                "BRANCH first.",
                flag=True,
            ),
        ),
        changes=_discarded,
    ),
    Verb(
        "snapshot",
        "Freeze BRANCH's tree (default: the mounted branch) as the read-only snapshot @NAME.",
        "branchfs snapshot main before-refactor",
        _snapshot,
        (
            Arg("branch", "the branch to freeze (default: the mounted one)", optional=True),
            Arg("name", "the snapshot's name"),
        ),
        flush=True,
    ),
    Verb(
        "reset",
        "Make BRANCH's tree (default: the mounted branch) SNAPSHOT's again, in O(1).",
        "branchfs reset main @before-refactor",
        _reset,
        (
            Arg("branch", "the branch to reset (default: the mounted one)", optional=True),
            Arg("snapshot", "the snapshot, @NAME (the @ may be left out here)"),
        ),
        flush=True,
        changes=_reset_changes,
    ),
)
