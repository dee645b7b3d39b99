"""Verbs that make stores and mounts: ``init``, ``mount`` and ``umount`` (command line only)."""

from __future__ import annotations

import os
import sys

from .spec import CLI, Arg, CommandError, Context, Opt, Outcome, Values, Verb


def _init(_ctx: Context, v: Values) -> Outcome:
    from ..store import Store

    path = str(v.arg("path"))
    if os.path.exists(os.path.join(path, "data.mdb")):
        raise CommandError(f"{path} already holds a store; use it with --store {path}")
    if os.path.exists(path) and not os.path.isdir(path):
        raise CommandError(f"{path} exists and is not a directory")
    if os.path.isdir(path) and os.listdir(path):
        raise CommandError(f"{path} is a directory that is not empty; pick a new or empty one")
    with Store.open(path, create=True) as store:
        store.create_branch("main")
    return Outcome(
        {"store": os.path.abspath(path), "branches": ["main"]},
        f"created store {path} with an empty branch main",
    )


def _mount(ctx: Context, v: Values) -> Outcome:
    from .. import mount as m

    mountpoint = str(v.arg("mountpoint"))
    spath = v.arg("store") or ctx.store_path
    if spath is None:
        ctx.store()  # raises: which store?
    ctx.store_path = os.path.abspath(str(spath))
    branch = str(v.opt("branch") or "main")
    allow_other = bool(v.opt("allow_other"))
    m.check_fuse()
    from .trees import branch_name

    branch_name(ctx.store(), branch)  # BranchNotFound before anything is started
    ctx.close()
    mp = m.check_mountpoint(mountpoint)
    extra = ["--allow-other"] if allow_other else []
    if v.opt("foreground"):
        import importlib

        # The daemon package sits above the engine: import it by name, not statically.
        run = importlib.import_module("branchfs_fuse.daemon").run

        print(
            f"serving {branch!r} of {ctx.store_path} at {mp}; Ctrl-C or umount to stop",
            file=sys.stderr,
        )
        code = run(ctx.store_path, mp, branch, allow_other=allow_other)
        return Outcome({"mountpoint": mp, "branch": branch}, "", code)
    m.start_daemon(ctx.store_path, mp, branch, extra_args=extra)
    who = " (open to other users)" if allow_other else ""
    return Outcome(
        {"mountpoint": mp, "branch": branch, "store": ctx.store_path, "allow_other": allow_other},
        f"mounted branch {branch} of {ctx.store_path} at {mp}{who}",
    )


def _umount(_ctx: Context, v: Values) -> Outcome:
    from .. import mount as m

    mountpoint = str(v.arg("mountpoint"))
    how = m.unmount(mountpoint)
    return Outcome(
        {"mountpoint": os.path.abspath(mountpoint), "how": how},
        f"{'cleaned dead mount' if how == 'dead' else 'unmounted'} {mountpoint}",
    )


VERBS = (
    Verb(
        "init",
        "Create a store at PATH (a new or empty directory) holding an empty branch main.",
        "branchfs init agent.bfs",
        _init,
        (Arg("path", "the store directory to create"),),
        fronts=frozenset({CLI}),
        needs_store=False,
    ),
    Verb(
        "mount",
        "Serve a branch at MOUNTPOINT (an empty directory) until `branchfs umount`; returns "
        "once the mount answers. The mount is private to you unless --allow-other.",
        "branchfs --store agent.bfs mount ./work --branch attempt-1",
        _mount,
        (
            Arg("store", "the store (default: --store, $BRANCHFS_STORE)", optional=True),
            Arg("mountpoint", "an empty directory"),
        ),
        (
            Opt("branch", "The branch to serve (default: main).", metavar="BRANCH", short="b"),
            Opt(
                "foreground",
                "Stay attached until unmounted (Ctrl-C unmounts).",
                flag=True,
                short="f",
            ),
            Opt(
                "allow-other",
                "Let other users (an agent running as another uid) use the mount; the "
                "kernel still checks file permissions. Needs root, or user_allow_other in "
                "/etc/fuse.conf.",
                flag=True,
            ),
        ),
        fronts=frozenset({CLI}),
        needs_store=False,
    ),
    Verb(
        "umount",
        "Flush and unmount MOUNTPOINT, waiting for its daemon to finish; a dead mount (its "
        "daemon killed) or one whose branch is gone is detached as well.",
        "branchfs umount ./work",
        _umount,
        (Arg("mountpoint", "where the branch is mounted"),),
        fronts=frozenset({CLI}),
        needs_store=False,
    ),
)
