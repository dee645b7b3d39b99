"""Reading a tree through paths: :class:`PathTree`, the read side of ``Branch`` and
``Snapshot`` (stat, exists, read_bytes, listdir, scandir, walk, readlink, xattrs), and
:class:`DirEntry`.

Each call runs one read transaction through the store the tree belongs to (any object with
the :class:`TreeHost` methods, a ``Store``), resolves the path with :mod:`branchfs.paths` and
reads with :mod:`branchfs.tree`. Errors are those of ``os``, with the path.
"""

from __future__ import annotations

import os
import stat as st
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, overload

from . import attrs, paths, tree
from .errors import with_path
from .layers import View
from .paths import PathArg
from .records import Stat

T = TypeVar("T")


class TreeHost(Protocol):
    """What a tree needs of its store: one transaction per call on a named tree."""

    @property
    def path(self) -> str:
        """The store's directory."""
        ...

    def read_tree(self, name: str, fn: Callable[[View], T], *, snapshot: bool = False) -> T:
        """Run ``fn`` on a read-only view of branch (or snapshot) ``name``."""
        ...

    def write_tree(self, name: str, fn: Callable[[View], T], *, snapshot: bool = False) -> T:
        """Run ``fn`` on a writable view of branch ``name`` in one atomic transaction."""
        ...


@dataclass(frozen=True)
class DirEntry:
    """One entry of :meth:`Branch.scandir`, shaped like ``os.DirEntry``."""

    name: str
    path: str
    ino: int
    mode: int
    _branch: PathTree

    def inode(self) -> int:
        """The entry's inode number."""
        return self.ino

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        """Whether the entry is a directory (following a symlink unless told not to)."""
        if follow_symlinks and st.S_ISLNK(self.mode):
            return self._branch.isdir(self.path)
        return st.S_ISDIR(self.mode)

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        """Whether the entry is a regular file (following a symlink unless told not to)."""
        if follow_symlinks and st.S_ISLNK(self.mode):
            return self._branch.isfile(self.path)
        return st.S_ISREG(self.mode)

    def is_symlink(self) -> bool:
        """Whether the entry is a symbolic link."""
        return st.S_ISLNK(self.mode)

    def stat(self, *, follow_symlinks: bool = True) -> Stat:
        """The entry's stat result."""
        return self._branch.stat(self.path, follow_symlinks=follow_symlinks)


def _join(base: str | bytes, name: bytes) -> Any:
    if isinstance(base, bytes):
        return base.rstrip(b"/") + b"/" + name if base else name
    text = os.fsdecode(name)
    return base.rstrip("/") + "/" + text if base else text


class PathTree:
    """A named tree of a store seen through paths, like ``os`` and ``pathlib``; every call is
    one transaction. The read side; :class:`~branchfs.Branch` adds writing and branch work.

    Paths are relative to the tree's root (a leading ``/`` is allowed and means the same).
    """

    _snapshot = False

    def __init__(self, store: TreeHost, name: str) -> None:
        self.store = store
        self.name = name
        self._kept = False

    def __repr__(self) -> str:
        return f"<branchfs.{type(self).__name__} {self.name!r} of {self.store.path!r}>"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, PathTree)
            and type(other) is type(self)
            and other.store.path == self.store.path
            and other.name == self.name
        )

    def __hash__(self) -> int:
        return hash((self.store.path, self.name, self._snapshot))

    # -- plumbing ---------------------------------------------------------------------------

    def read_view(self, fn: Callable[[View], T]) -> T:
        """Run ``fn`` on a read-only view of this tree (one read transaction)."""
        return self.store.read_tree(self.name, fn, snapshot=self._snapshot)

    def write_view(self, fn: Callable[[View], T]) -> T:
        """Run ``fn`` on a writable view of this tree in one atomic write transaction."""
        return self.store.write_tree(self.name, fn, snapshot=self._snapshot)

    def _at(self, path: PathArg, fn: Callable[[View], T], write: bool = False) -> T:
        try:
            return self.write_view(fn) if write else self.read_view(fn)
        except OSError as exc:
            raise with_path(exc, path) from None

    # -- reading ----------------------------------------------------------------------------

    def stat(self, path: PathArg = "", *, follow_symlinks: bool = True) -> Stat:
        """``os.stat`` of ``path``."""

        def op(v: View) -> Stat:
            ino = paths.resolve(v, path, follow_symlinks)
            return Stat.of(ino, tree.get(v, ino))

        return self._at(path, op)

    def lstat(self, path: PathArg) -> Stat:
        """``os.lstat`` of ``path`` (a symlink itself, not its target)."""
        return self.stat(path, follow_symlinks=False)

    def exists(self, path: PathArg) -> bool:
        """Whether ``path`` exists (following symlinks, like ``os.path.exists``)."""
        try:
            self.stat(path)
        except (OSError, ValueError):
            return False
        return True

    def lexists(self, path: PathArg) -> bool:
        """Whether ``path`` exists, a broken symlink included."""
        try:
            self.lstat(path)
        except (OSError, ValueError):
            return False
        return True

    def isdir(self, path: PathArg) -> bool:
        """Whether ``path`` is a directory (following symlinks)."""
        try:
            return st.S_ISDIR(self.stat(path).st_mode)
        except (OSError, ValueError):
            return False

    def isfile(self, path: PathArg) -> bool:
        """Whether ``path`` is a regular file (following symlinks)."""
        try:
            return st.S_ISREG(self.stat(path).st_mode)
        except (OSError, ValueError):
            return False

    def islink(self, path: PathArg) -> bool:
        """Whether ``path`` is a symbolic link."""
        try:
            return st.S_ISLNK(self.lstat(path).st_mode)
        except (OSError, ValueError):
            return False

    def read_bytes(self, path: PathArg) -> bytes:
        """The whole content of file ``path``."""

        def op(v: View) -> bytes:
            ino = paths.resolve(v, path)
            rec = tree.get(v, ino)
            return tree.read(v, ino, 0, rec.size)

        return self._at(path, op)

    def read_text(self, path: PathArg, encoding: str = "utf-8", errors: str = "strict") -> str:
        """The content of file ``path`` decoded as text."""
        return self.read_bytes(path).decode(encoding, errors)

    @overload
    def readlink(self, path: bytes) -> bytes: ...
    @overload
    def readlink(self, path: str | os.PathLike[str] | os.PathLike[bytes]) -> str: ...
    def readlink(self, path: PathArg) -> str | bytes:
        """The target of symlink ``path`` (``bytes`` for a ``bytes`` path, else ``str``)."""

        def op(v: View) -> bytes:
            return tree.readlink(v, paths.resolve(v, path, False))

        target = self._at(path, op)
        return target if isinstance(path, bytes) else os.fsdecode(target)

    @overload
    def listdir(self, path: bytes) -> list[bytes]: ...
    @overload
    def listdir(self, path: str | os.PathLike[str] | os.PathLike[bytes] = "") -> list[str]: ...
    def listdir(self, path: PathArg = "") -> list[str] | list[bytes]:
        """Names in directory ``path``, sorted (``bytes`` for a ``bytes`` path, else ``str``)."""

        def op(v: View) -> list[tuple[bytes, int]]:
            ino = paths.resolve(v, path)
            tree.get_dir(v, ino)
            return v.list_dir(ino)

        names = [n for n, _i in self._at(path, op)]
        return names if isinstance(path, bytes) else [os.fsdecode(n) for n in names]

    def scandir(self, path: PathArg = "") -> Iterator[DirEntry]:
        """Entries of directory ``path`` with their type, like ``os.scandir``."""

        def op(v: View) -> list[tuple[bytes, int, int]]:
            ino = paths.resolve(v, path)
            tree.get_dir(v, ino)
            out = []
            for name, child in v.list_dir(ino):
                rec = v.inode(child)
                if rec is not None:
                    out.append((name, child, rec.mode))
            return out

        base: Any = path if isinstance(path, bytes) else os.fsdecode(path)
        for name, child, mode in self._at(path, op):
            shown: Any = name if isinstance(path, bytes) else os.fsdecode(name)
            yield DirEntry(shown, _join(base, name), child, mode, self)

    @overload
    def walk(
        self, top: bytes, topdown: bool = True
    ) -> Iterator[tuple[bytes, list[bytes], list[bytes]]]: ...
    @overload
    def walk(
        self, top: str | os.PathLike[str] | os.PathLike[bytes] = "", topdown: bool = True
    ) -> Iterator[tuple[str, list[str], list[str]]]: ...
    def walk(
        self, top: PathArg = "", topdown: bool = True
    ) -> Iterator[tuple[Any, list[Any], list[Any]]]:
        """Like ``os.walk``: (dirpath, dirnames, filenames) for each directory under ``top``.

        Names are ``bytes`` for a ``bytes`` top, else ``str``.
        """
        dirs: list[Any] = []
        files: list[Any] = []
        for entry in self.scandir(top):
            (dirs if entry.is_dir() else files).append(entry.name)
        base: Any = top if isinstance(top, bytes) else os.fsdecode(top)
        if topdown:
            yield base, dirs, files
        for d in dirs:
            sub = _join(base, os.fsencode(d))
            if not self.islink(sub):  # os.walk lists a symlink to a directory, never enters it
                yield from self.walk(sub, topdown)
        if not topdown:
            yield base, dirs, files

    def getxattr(self, path: PathArg, name: str | bytes, *, follow_symlinks: bool = True) -> bytes:
        """The value of extended attribute ``name`` of ``path``."""
        key = os.fsencode(name)
        return self._at(
            path, lambda v: attrs.getxattr(v, paths.resolve(v, path, follow_symlinks), key)
        )

    def listxattr(self, path: PathArg = "", *, follow_symlinks: bool = True) -> list[str]:
        """Names of the extended attributes of ``path``."""
        names = self._at(
            path, lambda v: attrs.listxattr(v, paths.resolve(v, path, follow_symlinks))
        )
        return [os.fsdecode(n) for n in names]
