"""Verbs that copy between a real directory and a tree: ``import`` and ``export``
(command line only: the paths are the caller's, not the mount daemon's)."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable

from .spec import CLI, Arg, CommandError, Context, Opt, Outcome, Values, Verb, no_progress
from .trees import NOTATION, SNAPSHOT, branch_name, tree_ref


def _count(path: str, limit: int = 2_000_000) -> int:
    """Entries under ``path`` that are not directories (symlinks are not followed)."""
    n = 0
    stack = [path]
    while stack and n < limit:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    else:
                        n += 1
        except OSError:
            continue
    return n


def _directory(mode_of: Callable[[], int], failed: Callable[[str], str], not_dir: str) -> None:
    """:class:`CommandError` unless ``mode_of()`` (a stat's ``st_mode``) is a directory's:
    ``failed(reason)`` if the stat fails (its errno's words: missing, not reachable),
    ``not_dir`` if it is no directory."""
    try:
        is_dir = stat.S_ISDIR(mode_of())
    except OSError as exc:
        raise CommandError(
            failed((exc.strerror or str(exc)).lower()),
            kind=type(exc).__name__,
            extra={"errno": exc.errno},
        ) from None
    if not is_dir:
        raise CommandError(not_dir, kind="NotADirectoryError", extra={"errno": errno.ENOTDIR})


def _import(ctx: Context, v: Values) -> Outcome:
    store = ctx.store()
    source = str(v.arg("dir"))
    _directory(
        lambda: os.stat(source).st_mode,
        lambda why: f"cannot import {source}: {why}",
        f"{source} is not a directory; import copies a directory's contents",
    )
    branch = branch_name(store, ctx.current_or_main(v.opt("branch"), "--branch"))
    dest = v.opt("to") or ""
    if os.path.isabs(dest):
        raise CommandError(
            f"--to {dest} is absolute; --to names a directory inside the branch, relative "
            "to its root (e.g. --to vendor/lib)",
            kind="InvalidPath",
        )
    t0 = time.monotonic()
    total = _count(source) if ctx.progress is not no_progress else None
    with ctx.progress(f"import into {branch}", total) as step:
        files = store.branch(branch).import_dir(source, dest, progress=step)
    secs = time.monotonic() - t0
    where = f"{branch}:{dest}" if dest else branch
    return Outcome(
        {
            "branch": branch,
            "source": os.path.abspath(source),
            "to": dest,
            "files": files,
            "seconds": round(secs, 3),
        },
        f"imported {_files(files)} from {source} into {where} in {secs:.1f} s",
    )


def _export(ctx: Context, v: Values) -> Outcome:
    store = ctx.store()
    word, dest = str(v.arg("tree")), str(v.arg("dir"))
    ref = tree_ref(store, word)
    tree = store.snapshot_tree(ref[1:]) if ref.startswith(SNAPSHOT) else store.branch(ref)
    sub = v.opt("path") or ""
    if sub:  # a path in the tree, which a bare "No such file or directory: sub" would not say
        _directory(
            lambda: tree.stat(sub).st_mode,
            lambda why: f"--path {sub}: {why} in {word}",
            f"--path {sub} is not a directory in {word}; --path names one to export",
        )
    t0 = time.monotonic()
    with ctx.progress(f"export {word}", None) as step:
        files = tree.export_dir(dest, sub, progress=step)
    secs = time.monotonic() - t0
    return Outcome(
        {"tree": word, "dir": os.path.abspath(dest), "files": files, "seconds": round(secs, 3)},
        f"exported {_files(files)} of {word} to {dest} in {secs:.1f} s",
    )


def _files(count: int) -> str:
    return f"{count:,} file" if count == 1 else f"{count:,} files"


VERBS = (
    Verb(
        "import",
        "Copy the real directory DIR (modes, times, links, xattrs; symlinks never followed) "
        "into a branch (default: main, or the mounted one). Like `cp -a DIR/. TREE/`, it adds "
        "and overwrites: files already in the branch stay, even those since deleted from DIR "
        "(for an exact copy, import into a branch that is empty).",
        "branchfs import ./myproject --branch main",
        _import,
        (Arg("dir", "the directory to copy in"),),
        (
            Opt("branch", "The branch to copy into.", metavar="BRANCH", short="b"),
            Opt(
                "to",
                "A directory inside the branch to copy into, relative to its root (default: "
                "the root); an absolute path or one leaving the branch ('..') is refused.",
                metavar="PATH",
            ),
        ),
        fronts=frozenset({CLI}),
    ),
    Verb(
        "export",
        f"Copy TREE ({NOTATION}) into the real directory DIR (created, or empty).",
        "branchfs export @v1 ./release",
        _export,
        (Arg("tree", "the branch or @snapshot to copy out"), Arg("dir", "where to write it")),
        (Opt("path", "Only this directory of the tree.", metavar="PATH"),),
        fronts=frozenset({CLI}),
    ),
)
