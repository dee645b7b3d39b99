"""Unified text diffs of a change set between two trees (``branchfs diff --patch``).

Given two read views of one transaction and the :class:`~branchfs.diff.Change` list between
them, :func:`unified` writes what ``git diff`` would show for it: a ``diff --branchfs``
header per path, ``--- a/PATH`` / ``+++ b/PATH`` and hunks from :mod:`difflib` for text,
``Binary files a/PATH and b/PATH differ`` for anything that is not UTF-8 text (or is
larger than :data:`TEXT_MAX` bytes), ``old mode`` / ``new mode`` lines, and a symlink's
target as its content. Cost: the bytes of the changed files only.
"""

from __future__ import annotations

import difflib
import stat as st
from typing import TYPE_CHECKING

from . import paths, tree
from .quoting import quote_path

if TYPE_CHECKING:
    from .diff import Change
    from .layers import View
    from .records import Inode

#: Files larger than this (bytes) are reported like binary files instead of diffed line by line.
TEXT_MAX = 8 << 20


def _node(v: View, path: str) -> tuple[int, Inode] | None:
    try:
        ino = paths.resolve(v, path, follow_symlinks=False)
        return ino, tree.get(v, ino)
    except OSError:
        return None


def _content(v: View, node: tuple[int, Inode] | None) -> bytes | None:
    """The bytes to compare: a file's data, a symlink's target; None for a directory/none."""
    if node is None:
        return None
    ino, rec = node
    if st.S_ISLNK(rec.mode):
        return tree.readlink(v, ino)
    if st.S_ISREG(rec.mode):
        if rec.size > TEXT_MAX:
            return b"\0binary"  # too big to diff: reported as binary
        return tree.read(v, ino, 0, rec.size)
    return None


def _text(data: bytes) -> list[str] | None:
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None


def _file_patch(
    path_a: str,
    path_b: str,
    a: tuple[int, Inode] | None,
    b: tuple[int, Inode] | None,
    old: bytes | None,
    new: bytes | None,
) -> list[str]:
    out = [f"diff --branchfs {quote_path('a/' + path_a)} {quote_path('b/' + path_b)}\n"]
    mode_a = a[1].mode if a else None
    mode_b = b[1].mode if b else None
    if a is None and mode_b is not None:
        out.append(f"new file mode {mode_b:06o}\n")
    elif b is None and mode_a is not None:
        out.append(f"deleted file mode {mode_a:06o}\n")
    elif mode_a != mode_b:
        out.append(f"old mode {mode_a:06o}\nnew mode {mode_b:06o}\n")
    if path_a != path_b:
        out.append(f"rename from {quote_path(path_a)}\nrename to {quote_path(path_b)}\n")
    if old == new:
        return out
    la = _text(old) if old is not None else []
    lb = _text(new) if new is not None else []
    name_a = quote_path(f"a/{path_a}") if a is not None else "/dev/null"
    name_b = quote_path(f"b/{path_b}") if b is not None else "/dev/null"
    if la is None or lb is None:
        out.append(f"Binary files {name_a} and {name_b} differ\n")
        return out
    for line in difflib.unified_diff(la, lb, name_a, name_b, lineterm="\n"):
        out.append(line)
        if not line.endswith("\n"):
            out.append("\n\\ No newline at end of file\n")
    return out


def unified(va: View, vb: View, changes: list[Change]) -> str:
    """The unified diff from tree ``va`` to tree ``vb`` for ``changes`` (see module doc)."""
    by_path: dict[str, str] = {}  # new path -> old path
    for c in changes:
        if c.kind == "renamed" and c.old_path is not None:
            by_path[c.path] = c.old_path
        else:
            by_path.setdefault(c.path, c.path)
    out: list[str] = []
    for new_path in sorted(by_path):
        old_path = by_path[new_path]
        a = _node(va, old_path)
        b = _node(vb, new_path)
        is_dir = (a is not None and st.S_ISDIR(a[1].mode)) or (
            b is not None and st.S_ISDIR(b[1].mode)
        )
        if is_dir and (a is None or b is None or a[1].mode == b[1].mode):
            continue  # directories have no content; their files are listed themselves
        old, new = _content(va, a), _content(vb, b)
        out += _file_patch(old_path, new_path, a, b, old, new)
    return "".join(out)
