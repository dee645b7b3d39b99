"""How failures are answered, the same way on every front end.

:func:`failure` turns whatever a verb raised — a :class:`~.spec.CommandError`, an engine
:class:`~branchfs.errors.BranchFSError`, an ``OSError`` — into one :class:`CommandError`:
a one-line message that says what was wrong and what to do, an exit status (1 for a
conflict or a failed check, 2 for a usage error or bad input) and the ``error`` kind of
the JSON answer. :func:`explain_conflicts` words a merge conflict in plain language.
:func:`for_front` words a message for the front end that shows it: the engine's messages
are written for Python callers (``force=True``, ``export_dir``), and a user of the command
line or of ``ctl`` is told the flags and verbs they type instead.
"""

from __future__ import annotations

import os
import re
from typing import Any

from .spec import CTL, EXIT_FAILED, EXIT_USAGE, CommandError

#: Engine errors that mean "the store refused or failed", not "you typed something wrong".
_FAILED = ("StoreCorrupt", "StoreLocked")


def failure(exc: BaseException) -> CommandError:
    """The :class:`CommandError` that answers ``exc`` (see the module docstring)."""
    from ..errors import BranchFSError, MergeConflict

    if isinstance(exc, CommandError):
        return exc
    if isinstance(exc, MergeConflict):
        return CommandError(
            explain_conflicts(exc.target, exc.source, exc.conflicts),
            EXIT_FAILED,
            "conflict",
            {
                "target": exc.target,
                "source": exc.source,
                "conflicts": [conflict_json(c) for c in exc.conflicts],
            },
        )
    if isinstance(exc, BranchFSError):
        kind = type(exc).__name__
        text = str(exc).splitlines()[0] if str(exc) else kind
        extra = (
            {"mountpoints": list(getattr(exc, "mountpoints", []))} if kind == "BranchBusy" else {}
        )
        return CommandError(text, EXIT_FAILED if kind in _FAILED else EXIT_USAGE, kind, extra)
    if isinstance(exc, OSError):
        where = f": {_path_text(exc.filename)}" if exc.filename else ""
        text = f"{exc.strerror or exc}{where}"
        return CommandError(text, EXIT_USAGE, type(exc).__name__, {"errno": exc.errno})
    if isinstance(exc, KeyboardInterrupt):
        return CommandError("interrupted", 130, "interrupted")
    raise exc


def _path_text(name: object) -> str:
    """A filename as the path it is: a bytes or PathLike one is not shown as b'…'."""
    if isinstance(name, (str, bytes, os.PathLike)):
        return os.fsdecode(name)
    return str(name)


#: The engine's words for Python callers, and what a user of the command line types instead.
_API_WORDS = (
    (re.compile(r" or Store\.open\(path, create=True\)"), ""),
    (re.compile(r"`branchfs init PATH`"), "`branchfs init DIRECTORY`"),
    (
        re.compile(r"list them with store\.(branches|snapshots)\(\) or (`branchfs \w+`)"),
        r"\2 lists them",
    ),
    (re.compile(r" \(force=True\)"), ""),
    (re.compile(r"\bforce=True\b"), "--force"),
    (re.compile(r"\bconflict_markers=True\b"), "--markers"),
    (
        re.compile(r"strategy='ours' or 'theirs' \(--strategy ours\|theirs\)"),
        "--strategy ours|theirs",
    ),
    (re.compile(r"\bexport_dir\b"), "`branchfs export`"),
    (re.compile(r"\bimport_dir\b"), "`branchfs import`"),
)

#: A shell command naming a verb: on ``ctl`` it is written as the ctl line.
_SHELL_VERB = re.compile(r"`branchfs (?P<verb>[a-z-]+)")


def for_front(message: str, front: str) -> str:
    """``message`` in the words of ``front``: command-line flags and ``branchfs`` commands
    instead of the Python API's names; on ``ctl``, ``branchfs VERB`` written as the ctl
    verb it also is (a command-line-only verb, ``umount`` or ``init``, stays a shell
    command)."""
    for pattern, words in _API_WORDS:
        message = pattern.sub(words, message)
    if front == CTL:
        from . import all_verbs

        def ctl_verb(m: re.Match[str]) -> str:
            verb = all_verbs().get(m.group("verb"))
            return f"`{m.group('verb')}" if verb is not None and CTL in verb.fronts else m.group(0)

        message = _SHELL_VERB.sub(ctl_verb, message)
    return message


def error_json(err: CommandError) -> dict[str, Any]:
    """The JSON answer of a failure: ``{"ok": false, "error": KIND, "message": …, …}``."""
    return {"ok": False, "error": err.kind, "message": err.message, **err.extra}


def conflict_json(c: Any) -> dict[str, Any]:
    """One :class:`~branchfs.errors.Conflict` as JSON, with its plain-words explanation."""
    return {
        "path": c.path,
        "kind": c.kind,
        "ours": c.ours,
        "theirs": c.theirs,
        "explanation": explain(c),
    }


_GIT_REF = re.compile(r"(?:^|/)\.git/refs/heads/(?P<branch>.+)$")

_KIND_WORDS = {
    "content": "both sides changed its content in the same place",
    "modify/delete": "one side changed it and the other deleted it",
    "add/add": "both sides created it, with different content",
    "type": "the sides made it different kinds of thing (file, directory, symlink)",
    "rename/rename": "both sides moved it, to different places",
    "cycle": "the moves on the two sides would put a directory inside itself",
    "mode": "both sides changed its permissions or owner, differently",
    "xattr": "both sides changed the same extended attribute, differently",
}


def explain(c: Any) -> str:
    """One conflict in plain words: ``PATH: what clashed``."""
    m = _GIT_REF.search(c.path)
    if m and c.kind in ("content", "add/add"):
        return (
            f"{c.path}: both sides made a new git commit on branch {m.group('branch')!r} "
            "(each tree's git history moved on its own)"
        )
    words = _KIND_WORDS.get(c.kind, f"a {c.kind} conflict")
    return f"{c.path}: {words} (ours: {c.ours}; theirs: {c.theirs})"


def explain_conflicts(target: str, source: str, conflicts: list[Any]) -> str:
    """The message of a refused merge: a headline, each conflict, and how to resolve them."""
    n = len(conflicts)
    head = (
        f"merging {source!r} into {target!r} stopped at {n} conflict{'s' if n != 1 else ''}; "
        f"{target!r} is unchanged"
    )
    lines = [head, *(f"  {explain(c)}" for c in conflicts[:20])]
    if n > 20:
        lines.append(f"  … and {n - 20} more (--json lists them all)")
    how = (
        f"to resolve: --strategy ours keeps {target}'s side of every conflict, "
        f"--strategy theirs takes {source}'s, --markers writes conflict markers into text "
        "files; a merge rule for a path (.branchfs-merge) decides it every time"
    )
    refs = [m for m in (_GIT_REF.search(c.path) for c in conflicts) if m]
    if refs:
        how += git_commits_advice(target, source, refs[0].string[: refs[0].start()])
    lines.append(how)
    return "\n".join(lines)


def git_commits_advice(target: str, source: str, repo: str) -> str:
    """How to merge two git commits that clash on their branch ref (``repo``: the
    repository's directory in the tree, ``""`` at its root).

    ``--strategy ours`` keeps the target's ref and brings the source's objects, and its
    files too, which the target's git sees as local changes: ``git merge`` then refuses
    ("Your local changes … would be overwritten", "untracked working tree files would be
    overwritten"). So the target's own uncommitted work is put aside first (``git stash
    -u``), the files the merge brought are dropped (``reset --hard``, ``clean -fd``: they
    are back to the target's commit; the source keeps them), and git merges the commit.
    """
    where = f"{target}'s tree" + (f" (in {repo})" if repo else "")
    return (
        f"; for git commits on both sides: in {where} first commit or `git stash -u` "
        f"any uncommitted work; merge with --strategy ours (it brings {source}'s git "
        f"objects, and its files, which git in {target} does not know yet); then in "
        f"{where} run `git reset --hard`, `git clean -fd` (back to {target}'s commit), "
        f"`git merge SHA` with {source}'s commit (`git rev-parse HEAD` in {source}'s "
        "tree), and `git stash pop` if you stashed"
    )
