"""Path resolution inside a tree: ``str``/``bytes`` paths to inode numbers, like the kernel.

Paths are relative to the tree's root whether or not they start with ``/``; ``..`` at the
root stays at the root, and an absolute symlink target resolves from the tree's root, so no
path can leave the tree. Symlinks in the middle of a path are followed (at most 40, then
ELOOP), the last component only when asked.
"""

from __future__ import annotations

import errno
import os
import stat as st
from typing import Union

from . import tree
from .errors import os_error
from .layers import View
from .records import ROOT_INO

PathArg = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
MAXSYMLINKS = 40
PATH_MAX = 4096


def encode(path: PathArg) -> bytes:
    """The path as bytes (``str`` goes through ``os.fsencode``); NUL is refused like ``os``."""
    raw = os.fsencode(path)
    if b"\0" in raw:
        raise ValueError("embedded null byte")
    return raw


def parts(raw: bytes) -> list[bytes]:
    """The non-empty components of a byte path (``.`` dropped, ``..`` kept)."""
    if len(raw) >= PATH_MAX:
        raise os_error(errno.ENAMETOOLONG)
    return [p for p in raw.split(b"/") if p and p != b"."]


def _walk(v: View, start: int, comps: list[bytes], follow_last: bool, budget: list[int]) -> int:
    ino = start
    for i, name in enumerate(comps):
        last = i == len(comps) - 1
        if name == b"..":
            ino = tree.parent_of(v, ino)
            continue
        parent = ino
        ino = tree.lookup(v, parent, name)
        if last and not follow_last:
            return ino
        mode = v.mode(ino)
        if mode is not None and st.S_ISLNK(mode):
            budget[0] -= 1
            if budget[0] < 0:
                raise os_error(errno.ELOOP)
            rec = tree.get(v, ino)
            target = rec.inline or b""
            base = ROOT_INO if target.startswith(b"/") else parent
            ino = _walk(v, base, parts(target), True, budget)
            if not last:
                tree.check_dir(v, ino)
        elif not last and (mode is None or not st.S_ISDIR(mode)):
            raise os_error(errno.ENOTDIR)
    return ino


def resolve(v: View, path: PathArg, follow_symlinks: bool = True) -> int:
    """The inode that ``path`` names; OSError (ENOENT, ENOTDIR, ELOOP …) if none.

    A trailing slash follows a final symlink even with ``follow_symlinks=False``, as
    Linux does (``lstat("link-to-dir/")`` is the directory).
    """
    raw = encode(path)
    follow = follow_symlinks or raw.endswith(b"/")
    ino = _walk(v, ROOT_INO, parts(raw), follow, [MAXSYMLINKS])
    if raw.endswith(b"/") and ino != ROOT_INO:
        tree.check_dir(v, ino)
    return ino


def resolve_parent(v: View, path: PathArg, start: int = ROOT_INO) -> tuple[int, bytes]:
    """The directory that would hold ``path`` and the final name, for create/remove calls.

    A relative ``path`` starts at directory ``start`` (the root unless a symlink target is
    being followed); an absolute one at the root. The root itself has no parent entry:
    operating on it is EBUSY (``rmdir /``) or EEXIST (``mkdir /``), which the callers
    decide; here it gives ``(start, b"")``.
    """
    raw = encode(path)
    comps = parts(raw)
    if raw.rstrip(b"/").endswith(b"/.") or raw.rstrip(b"/") == b".":
        comps.append(b".")  # "d/." names d itself: rmdir gives EINVAL, rename EBUSY
    if raw.startswith(b"/"):
        start = ROOT_INO
    if not comps:
        return start, b""
    parent = _walk(v, start, comps[:-1], True, [MAXSYMLINKS])
    tree.check_dir(v, parent)
    return parent, comps[-1]


def must_be_dir(path: PathArg) -> bool:
    """Whether ``path`` can only name a directory: a trailing slash, or ``.``/``..`` last."""
    raw = encode(path)
    return raw.endswith(b"/") or raw.rsplit(b"/", 1)[-1] in (b".", b"..")
