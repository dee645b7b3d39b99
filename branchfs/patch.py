"""Patches of a change set between two trees (``branchfs diff --patch``), in git's format.

Given two read views of one transaction and the :class:`~branchfs.diff.Change` list between
them, :func:`unified` writes what ``git diff`` writes for the same two trees, so that
``git apply`` (or ``patch -p1``, for text) reproduces the second tree from the first: a
``diff --git`` header per path, git's extended header lines (``new file mode``,
``deleted file mode``, ``old mode``/``new mode``, ``rename from``/``rename to``, ``index``),
hunks from :mod:`difflib` for text, and for anything else ``Binary files … differ`` or, with
``binary``, a ``GIT binary patch`` (``git diff --binary``). Cost: the bytes of the changed
files only, though :mod:`difflib`'s matching grows faster than a file's length (about 1 s
for a 50,000-line file with 200 lines changed, where ``git diff`` takes a few hundredths).

What git's format cannot say is left out, as ``git diff`` leaves it: a permission change
other than the owner's execute bit (git records a file as 100644 or 100755), owners,
extended attributes, times, directories, and special files (FIFOs, sockets, devices), which
git does not track. A path whose type changes (a file becomes a symlink) is a deletion and a
creation, as git writes it. Text is what decodes as UTF-8 and holds no NUL byte (git's test
is the NUL byte alone), up to :data:`TEXT_MAX` bytes.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import os
import stat as st
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from . import tree
from .diff import path_of
from .quoting import quote_path
from .records import ROOT_INO

if TYPE_CHECKING:
    from .diff import Change
    from .layers import View

#: Files larger than this (bytes) are reported like binary files instead of diffed line by line.
TEXT_MAX = 8 << 20

#: git's modes (``S_IFGITLINK`` aside): a regular file with and without the owner's execute
#: bit, and a symlink (git's cache.h, ``create_ce_mode``).
FILE, EXECUTABLE, SYMLINK = 0o100644, 0o100755, 0o120000
#: The object id git writes for a side that does not exist.
NO_OBJECT = "0" * 40
#: Hex digits of an object id in an ``index`` line without ``binary`` (git's default
#: ``core.abbrev`` for a small repository).
ABBREV = 7

#: One side of a path as git sees it: its git mode and its content (a symlink's target).
Side = tuple[int, bytes]


def _node(v: View, path: str) -> int | None:
    """The inode at ``path`` in ``v`` without following a symlink anywhere on the way (as
    git sees a tree: ``d/x`` under a symlink ``d`` does not exist); None if absent."""
    ino = ROOT_INO
    for name in os.fsencode(path).split(b"/"):
        rec = v.inode(ino)
        if rec is None or not st.S_ISDIR(rec.mode):
            return None
        child = v.dirent(ino, name)
        if child is None:
            return None
        ino = child
    return ino


def _side(v: View, path: str) -> Side | None:
    """``path`` in ``v`` as git would track it; None if absent, a directory or a special
    file."""
    ino = _node(v, path)
    rec = None if ino is None else v.inode(ino)
    if ino is None or rec is None:
        return None
    if st.S_ISLNK(rec.mode):
        return SYMLINK, tree.readlink(v, ino)
    if not st.S_ISREG(rec.mode):
        return None
    mode = EXECUTABLE if rec.mode & st.S_IXUSR else FILE
    return mode, tree.read(v, ino, 0, rec.size)


def blob_id(data: bytes) -> str:
    """git's object id (SHA-1, hex) of a blob holding ``data`` (``git hash-object``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _text(data: bytes) -> list[str] | None:
    """The lines of ``data`` ending at ``\n`` only, as git splits them (``str.splitlines``
    also splits at a form feed, a lone CR, U+2028 …); None if it is not UTF-8 text."""
    if len(data) > TEXT_MAX or b"\0" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]  # what follows the last newline (nothing, or a last line)
    return lines if lines[-1] else lines[:-1]


def _literal(data: bytes) -> list[str]:
    """One hunk of a ``GIT binary patch``: ``literal SIZE``, then the zlib-deflated bytes in
    lines of at most 52, each a length character (A-Z: 1-26, a-z: 27-52) and base85 (git's
    alphabet is RFC 1924's, as :func:`base64.b85encode`'s), then an empty line (git's
    diff.c, ``emit_binary_diff_body``)."""
    packed = zlib.compress(data)
    out = [f"literal {len(data)}\n"]
    for i in range(0, len(packed), 52):
        piece = packed[i : i + 52]
        n = len(piece)
        out.append(chr(ord("A") + n - 1 if n <= 26 else ord("a") + n - 27))
        out.append(base64.b85encode(piece, pad=True).decode("ascii") + "\n")
    out.append("\n")
    return out


def _section(path_a: str, path_b: str, a: Side | None, b: Side | None, binary: bool) -> list[str]:
    """One ``diff --git`` section from ``a`` (at ``path_a``) to ``b`` (at ``path_b``); empty
    if git would show nothing."""
    renamed = a is not None and b is not None and path_a != path_b
    if a == b and not renamed:
        return []
    out = [f"diff --git {quote_path('a/' + path_a)} {quote_path('b/' + path_b)}\n"]
    if a is None and b is not None:
        out.append(f"new file mode {b[0]:06o}\n")
    elif b is None and a is not None:
        out.append(f"deleted file mode {a[0]:06o}\n")
    elif a is not None and b is not None and a[0] != b[0]:
        out.append(f"old mode {a[0]:06o}\nnew mode {b[0]:06o}\n")
    old = a[1] if a is not None else b""
    new = b[1] if b is not None else b""
    if renamed:
        if old == new:
            out.append("similarity index 100%\n")
        out.append(f"rename from {quote_path(path_a)}\nrename to {quote_path(path_b)}\n")
    if a is not None and b is not None and old == new:
        return out
    id_a = blob_id(old) if a is not None else NO_OBJECT
    id_b = blob_id(new) if b is not None else NO_OBJECT
    if not binary:
        id_a, id_b = id_a[:ABBREV], id_b[:ABBREV]
    same_mode = a is not None and b is not None and a[0] == b[0]
    out.append(f"index {id_a}..{id_b}" + (f" {a[0]:06o}\n" if same_mode and a else "\n"))
    if not old and not new:
        return out  # an empty file created or deleted: no hunk
    name_a = quote_path(f"a/{path_a}") if a is not None else "/dev/null"
    name_b = quote_path(f"b/{path_b}") if b is not None else "/dev/null"
    # git ends a ---/+++ name holding a space with a tab, so that GNU patch reads it whole
    tab_a, tab_b = ("\t" if " " in n else "" for n in (name_a, name_b))
    la, lb = _text(old), _text(new)
    if la is None or lb is None:
        if binary:
            out += ["GIT binary patch\n", *_literal(new), *_literal(old)]
        else:
            out.append(f"Binary files {name_a} and {name_b} differ\n")
        return out
    for line in difflib.unified_diff(la, lb, name_a + tab_a, name_b + tab_b, lineterm="\n"):
        out.append(line)
        if not line.endswith("\n"):
            out.append("\n\\ No newline at end of file\n")
    return out


def _is_dir(v: View, path: str) -> bool:
    ino = _node(v, path)
    rec = None if ino is None else v.inode(ino)
    return rec is not None and st.S_ISDIR(rec.mode)


def _files_under(v: View, path: str) -> Iterator[str]:
    """Paths of every file and symlink under directory ``path`` of ``v``."""
    top = _node(v, path)
    stack = [] if top is None else [(path, top)]
    while stack:
        parent, ino = stack.pop()
        for name, child in v.list_dir(ino):
            child_path = f"{parent}/{os.fsdecode(name)}"
            if st.S_ISDIR(tree.get(v, child).mode):
                stack.append((child_path, child))
            else:
                yield child_path


def _other_names(v: View, path: str) -> list[str]:
    """The other paths of the file at ``path`` if it has hard links: a change to one name
    is a change to every name, and git tracks each as a file of its own."""
    ino = _node(v, path)
    rec = None if ino is None else v.inode(ino)
    if rec is None or not st.S_ISREG(rec.mode) or len(rec.links) < 2:
        return []
    out = []
    for parent, name in rec.links:
        where = path_of(v, parent) if parent != ROOT_INO else b""
        other = os.fsdecode(where + b"/" + name if where else name)
        if other != path:
            out.append(other)
    return out


def _old_paths(va: View, vb: View, changes: list[Change]) -> dict[str, str]:
    """The path in ``va`` of each path of ``vb`` the patch covers, by path in ``vb``.

    A change names a path of ``vb`` (``deleted``: of ``va``), and a renamed directory is
    one change: the files it holds keep their places under it, and those it still holds
    unchanged are named by no change at all. git has no directory renames, so each of
    them is its own rename, found under the directory's new name.
    """
    by_path: dict[str, str] = {}  # new path -> old path
    moved_dirs: list[tuple[str, str]] = []  # (new, old), longest new first below
    for c in changes:
        if c.kind == "renamed" and c.old_path is not None:
            by_path[c.path] = c.old_path
            if _is_dir(vb, c.path) and _is_dir(va, c.old_path):
                moved_dirs.append((c.path, c.old_path))
    for new_dir, _old in moved_dirs:
        for path in _files_under(vb, new_dir):
            by_path.setdefault(path, path)
    moved_dirs.sort(key=lambda d: -len(d[0]))
    for c in changes:
        if c.kind != "deleted":
            by_path.setdefault(c.path, c.path)
    for path, old in list(by_path.items()):
        if old != path:
            continue  # renamed itself: its old path is known
        for new_dir, old_dir in moved_dirs:
            if path.startswith(new_dir + "/"):
                by_path[path] = old_dir + path[len(new_dir) :]
                break
    for c in changes:
        if c.kind == "deleted":  # a path of va; nothing of vb is there, or a new node is
            by_path.setdefault(c.path, c.path)
    return by_path


def unified(va: View, vb: View, changes: list[Change], *, binary: bool = False) -> str:
    """The patch from tree ``va`` to tree ``vb`` for ``changes`` (see the module's doc);
    ``binary``: binary files as ``GIT binary patch`` hunks with full object ids, as
    ``git diff --binary`` writes them, instead of a line naming them.

    A rename is written as one only where git could see one: its old path holds nothing in
    ``vb``, its new path nothing in ``va``, and it keeps its type. Any other (a rename over
    a file, a new file where the old one was) is what ``git diff`` writes for it: each of
    the two paths changed in place.
    """
    sides: dict[tuple[View, str], Side | None] = {}

    def side(v: View, path: str) -> Side | None:
        key = (v, path)
        if key not in sides:
            sides[key] = _side(v, path)
        return sides[key]

    renames: dict[str, str] = {}  # new path -> old path
    in_place: set[str] = set()
    for new_path, old_path in _old_paths(va, vb, changes).items():
        if old_path == new_path:
            in_place.add(new_path)
            continue
        a, b = side(va, old_path), side(vb, new_path)
        if (
            a is not None
            and b is not None
            and a[0] >> 12 == b[0] >> 12
            and side(vb, old_path) is None
            and side(va, new_path) is None
        ):
            renames[new_path] = old_path
        else:
            in_place.update((old_path, new_path))
    for path in [*in_place, *renames]:
        in_place.update(_other_names(vb, path))
    in_place.difference_update(renames.values())
    in_place.difference_update(renames)
    out: list[str] = []
    for path in sorted(in_place | renames.keys()):
        if path in renames:
            old_path = renames[path]
            out += _section(old_path, path, side(va, old_path), side(vb, path), binary)
            continue
        a, b = side(va, path), side(vb, path)
        if a is not None and b is not None and a[0] >> 12 == b[0] >> 12:
            out += _section(path, path, a, b, binary)
            continue
        # Created, deleted, or a file that became a symlink or back (git writes a deletion,
        # then a creation); a side that is a directory or a special file has no section.
        if a is not None:
            out += _section(path, path, a, None, binary)
        if b is not None:
            out += _section(path, path, None, b, binary)
    return "".join(out)
