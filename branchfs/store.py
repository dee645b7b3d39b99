"""The public API: :class:`Store` (branches, snapshots, gc, fsck) and :class:`Branch` (files).

This layer holds no storage logic: each method opens one LMDB transaction, resolves paths
and calls :mod:`branchfs.tree`, :mod:`branchfs.refs`, :mod:`branchfs.diff` or
:mod:`branchfs.merge`. Errors are those of ``os`` (with the path) or
:class:`~branchfs.errors.BranchFSError` subclasses.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat as st
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast, overload

import lmdb

from . import paths, tree
from .engine import Engine
from .errors import NotAStore, ReadOnlyError, StoreCorrupt, os_error, with_path
from .fileobj import RawBranchFile, parse_mode
from .layers import View
from .meta import Meta, open_meta, release_meta
from .notices import Observer, notify_mounts
from .paths import PathArg
from .records import ROOT_INO, Inode, Stat
from .refs import Refs

if TYPE_CHECKING:
    import subprocess

    from .compact import CompactReport
    from .diff import Change
    from .fsck import FsckReport
    from .gc import GcReport
    from .merge import MergeResult
    from .run import Command, Stream
    from .transfer import Progress

T = TypeVar("T")


def _process_umask() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


_UMASK = _process_umask()


class Store:
    """A branchfs store: one directory holding any number of branches and snapshots.

    Open it with :meth:`Store.open`; use it as a context manager or call :meth:`close`.
    Opening the same store twice in one process shares one LMDB environment.
    """

    def __init__(self, meta: Meta, observer: Observer | None = None) -> None:
        #: Told ``(store_path, branch_names)`` after a call changed those branches' trees
        #: (see :mod:`branchfs.notices`): by default the mount daemons serving them.
        self.observer: Observer = notify_mounts if observer is None else observer
        self._meta: Meta | None = meta
        self.path = meta.path
        self.engine = Engine(meta)
        self.layers = self.engine.layers
        self.chunks = self.engine.chunks
        self.refs: Refs = self.engine.refs

    @classmethod
    def open(
        cls,
        path: PathArg,
        create: bool = False,
        *,
        map_size: int | None = None,
        max_map_size: int | None = None,
        observer: Observer | None = None,
    ) -> Store:
        """Open the store at ``path``; with ``create=True`` make it if it does not exist.

        ``map_size`` is the initial LMDB map (address space, grown on demand) and
        ``max_map_size`` the limit past which writes fail with ENOSPC, in bytes.
        ``observer`` is told which branches each call changed (default: the mount daemons
        serving them, :func:`branchfs.notices.notify_mounts`).
        """
        kwargs: dict[str, int] = {}
        if map_size is not None:
            kwargs["map_size"] = map_size
        if max_map_size is not None:
            kwargs["max_map_size"] = max_map_size
        return cls(open_meta(os.fsdecode(path), create=create, **kwargs), observer)

    @classmethod
    def check(cls, path: PathArg) -> FsckReport:
        """fsck the store at ``path``: ``Store.open(path).fsck()``, except that a store too
        damaged to open (truncated, a broken header) is reported, not raised."""
        from .fsck import FsckReport, Problem

        try:
            store = cls.open(path)
        except (StoreCorrupt, NotAStore) as exc:
            return FsckReport(problems=[Problem("unreadable", os.fsdecode(path), str(exc))])
        with store:
            return store.fsck()

    @property
    def meta(self) -> Meta:
        """The open LMDB environment (raises if the store was closed)."""
        if self._meta is None:
            raise ValueError("operation on a closed Store")
        return self._meta

    def close(self) -> None:
        """Release this handle; the environment closes with the last handle in the process."""
        if self._meta is not None:
            release_meta(self._meta)
            self._meta = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<branchfs.Store {self.path!r}>"

    # -- transactions bound to a tree ---------------------------------------------------------

    def read_tree(self, name: str, fn: Callable[[View], T], *, snapshot: bool = False) -> T:
        """Run ``fn`` on a read-only view of branch (or snapshot) ``name``."""
        with self.meta.read() as txn:
            return fn(self.engine.view(txn, name, snapshot))

    @contextmanager
    def viewing(self, name: str, *, snapshot: bool = False) -> Iterator[View]:
        """A read-only view of ``name`` whose chunk bytes are memoryviews into the map.

        Nothing is copied out of the store, and nothing read may be used after the block:
        the mount reads file data this way and writes it to the kernel inside the block.
        """
        with self.meta.read(buffers=True) as txn:
            yield self.engine.view(txn, name, snapshot)

    def write_tree(self, name: str, fn: Callable[[View], T], *, snapshot: bool = False) -> T:
        """Run ``fn`` on a writable view of branch ``name`` in one atomic transaction."""
        result = self.meta.write(lambda txn: fn(self.engine.view(txn, name, snapshot)))
        self._changed(name)
        return result

    def _changed(self, *names: str) -> None:
        """Tell the observer that ``names``' trees changed (by default: a stat if no mount)."""
        self.observer(self.path, names)

    # -- branches and snapshots -------------------------------------------------------------

    def create_branch(self, name: str) -> Branch:
        """Create a branch holding an empty tree (its root owned by the calling user)."""
        uid, gid = os.geteuid(), os.getegid()
        self.meta.write(lambda txn: self.refs.create_branch(txn, name, uid, gid))
        return Branch(self, name)

    def branch(self, name: str) -> Branch:
        """The branch called ``name``; :class:`BranchNotFound` if there is none."""
        with self.meta.read() as txn:
            self.refs.branch(txn, name)
        return Branch(self, name)

    def snapshot_tree(self, name: str) -> Snapshot:
        """The read-only tree of snapshot ``name``; :class:`BranchNotFound` if there is none."""
        with self.meta.read() as txn:
            self.refs.snapshot(txn, name)
        return Snapshot(self, name)

    def branches(self) -> list[str]:
        """The names of all branches, sorted."""
        with self.meta.read() as txn:
            return [b.name for b in self.refs.branches(txn)]

    def snapshots(self) -> list[str]:
        """The names of all snapshots, sorted."""
        with self.meta.read() as txn:
            return [s.name for s in self.refs.snapshots(txn)]

    def fork(self, source: str, new: str) -> Branch:
        """Make branch ``new`` an independent writable copy of ``source`` now: O(1)."""
        self.meta.write(lambda txn: self.refs.fork(txn, source, new))
        return Branch(self, new)

    def fork_snapshot(self, snapshot: str, new: str) -> Branch:
        """Make branch ``new`` a writable copy of snapshot ``snapshot``: O(1)."""

        def op(txn: lmdb.Transaction) -> None:
            layer = self.refs.snapshot(txn, snapshot).layer
            self.refs.branch_from_layer(txn, new, layer)

        self.meta.write(op)
        return Branch(self, new)

    def snapshot(self, branch: str, name: str) -> Snapshot:
        """Freeze ``branch``'s current tree under the name ``name``: O(1)."""
        self.meta.write(lambda txn: self.refs.take_snapshot(txn, branch, name))
        return Snapshot(self, name)

    def reset(self, branch: str, snapshot: str) -> None:
        """Make ``branch``'s tree snapshot ``snapshot`` again: O(1)."""

        def op(txn: lmdb.Transaction) -> None:
            layer = self.refs.snapshot(txn, snapshot).layer
            self.refs.reset(txn, branch, layer)

        self.meta.write(op)
        self._changed(branch)

    def discard(self, branch: str) -> None:
        """Remove ``branch``. Small layers only it used go at once, and a small layer left
        with a single child is squashed (bounded work); the rest comes back at :meth:`gc`."""
        from .gc import tidy_after_discard

        def op(txn: lmdb.Transaction) -> None:
            rec = self.refs.discard(txn, branch)
            tidy_after_discard(txn, self.engine, rec.top)

        self.meta.write(op)
        self._changed(branch)

    def delete_snapshot(self, name: str) -> None:
        """Remove snapshot ``name``; its space comes back at the next :meth:`gc`."""
        self.meta.write(lambda txn: self.refs.delete_snapshot(txn, name))

    # -- diff, merge, maintenance ------------------------------------------------------------

    def diff(self, a: str, b: str) -> list[Change]:
        """What differs from branch (or snapshot) ``a`` to ``b``; cost follows the changes."""
        from .diff import diff_refs

        with self.meta.read() as txn:
            return diff_refs(self.engine, txn, a, b)

    def merge(
        self,
        target: str,
        source: str,
        *,
        strategy: str | None = None,
        conflict_markers: bool = False,
    ) -> MergeResult:
        """3-way merge ``source`` into ``target``; see :func:`branchfs.merge.merge`."""
        from .merge import merge

        result = merge(
            self.engine, target, source, strategy=strategy, conflict_markers=conflict_markers
        )
        self._changed(target)  # a refused merge (MergeConflict) changed nothing: no notice
        return result

    def gc(self) -> GcReport:
        """Reclaim discarded branches' layers and unreferenced chunks; safe beside writers."""
        from .gc import collect

        return collect(self.engine)

    def compact(self) -> CompactReport:
        """Give the store's free pages back to the filesystem; safe beside other processes.

        LMDB reuses freed pages but never shrinks ``data.mdb``; this rewrites it without
        them (see :mod:`branchfs.compact`). Run it after a :meth:`gc` that freed a lot
        (``GcReport.bytes_freed``). Needs free disk space for the copy (at most the live
        data). :class:`StoreLocked` if a gc or a compaction is running.
        """
        from .compact import compact

        report = compact(self.meta)
        self._changed(*self.branches())  # idle mounts re-open the new file now
        return report

    def fsck(self) -> FsckReport:
        """Check the whole store; the report's ``.ok`` is False if anything is wrong."""
        from .fsck import check

        return check(self.engine)

    def sync(self) -> None:
        """Make everything done so far durable on disk (survives power loss)."""
        self.meta.sync()


@dataclass(frozen=True)
class DirEntry:
    """One entry of :meth:`Branch.scandir`, shaped like ``os.DirEntry``."""

    name: str
    path: str
    ino: int
    mode: int
    _branch: Branch

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


class Branch:
    """A named writable tree with pathlib/os-like methods; every call is one transaction.

    Paths are relative to the branch root (a leading ``/`` is allowed and means the same).
    """

    _snapshot = False

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name
        self._kept = False

    def __repr__(self) -> str:
        return f"<branchfs.{type(self).__name__} {self.name!r} of {self.store.path!r}>"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Branch)
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
            path, lambda v: tree.getxattr(v, paths.resolve(v, path, follow_symlinks), key)
        )

    def listxattr(self, path: PathArg = "", *, follow_symlinks: bool = True) -> list[str]:
        """Names of the extended attributes of ``path``."""
        names = self._at(path, lambda v: tree.listxattr(v, paths.resolve(v, path, follow_symlinks)))
        return [os.fsdecode(n) for n in names]

    # -- writing ----------------------------------------------------------------------------

    def _create(self, v: View, path: PathArg, mode: int, exclusive: bool, truncate: bool) -> int:
        """The inode of file ``path``, created (mode & ~umask) if missing."""
        parent, name = paths.resolve_parent(v, path)
        if not name or paths.must_be_dir(path):
            raise os_error(errno.EISDIR)
        hops = paths.MAXSYMLINKS
        while (existing := v.dirent(parent, name)) is not None:
            if exclusive:
                raise os_error(errno.EEXIST)
            rec = tree.get(v, existing)
            if rec.is_dir:
                raise os_error(errno.EISDIR)
            if not rec.is_link:
                if truncate and rec.size:
                    tree.truncate(v, existing, 0)
                return existing
            # O_CREAT follows a symlink, creating its target if that is missing.
            hops -= 1
            if hops < 0:
                raise os_error(errno.ELOOP)
            target = rec.inline or b""
            if not target:
                raise os_error(errno.ENOENT)
            parent, name = paths.resolve_parent(v, target, parent)
            if not name or paths.must_be_dir(target):
                raise os_error(errno.EISDIR)
        ino, _rec = tree.make_node(
            v, parent, name, st.S_IFREG | (mode & ~_UMASK & 0o7777), os.geteuid(), os.getegid()
        )
        return ino

    def _makedirs_parent(self, path: PathArg) -> None:
        parent = os.path.dirname(paths.encode(path).rstrip(b"/"))
        if parent:
            self.makedirs(parent, exist_ok=True)

    def write_bytes(self, path: PathArg, data: bytes, *, parents: bool = False) -> int:
        """Replace the content of file ``path`` with ``data`` (creating it, and with
        ``parents=True`` its missing directories). Returns the number of bytes written."""
        payload = bytes(data)

        def op(v: View) -> int:
            ino = self._create(v, path, 0o666, False, True)
            if payload:
                tree.write(v, ino, 0, payload)
            return len(payload)

        try:
            return self._at(path, op, write=True)
        except FileNotFoundError:
            if not parents:
                raise
        self._makedirs_parent(path)
        return self._at(path, op, write=True)

    def write_text(
        self, path: PathArg, text: str, encoding: str = "utf-8", *, parents: bool = False
    ) -> int:
        """Replace the content of file ``path`` with ``text`` encoded."""
        self.write_bytes(path, text.encode(encoding), parents=parents)
        return len(text)

    def open(self, path: PathArg, mode: str = "rb", buffering: int = -1) -> BinaryIO:
        """Open file ``path`` as a binary file object (modes r, w, a, x with + and b).

        The object reads, writes, seeks and truncates like ``open(path, "rb+")``'s; with
        ``buffering=0`` it is unbuffered (a raw file object). Raises what ``open`` would.
        """
        readable, writable, create, trunc, append, exclusive = parse_mode(mode)

        def op(v: View) -> int:
            if writable:
                tree.writable(v)  # open(O_WRONLY) on a read-only tree is EROFS at once
            if create:
                return self._create(v, path, 0o666, exclusive, trunc)
            ino = paths.resolve(v, path)
            return ino

        def check(v: View) -> tuple[int, int]:
            ino = op(v)
            rec = tree.get(v, ino)
            if rec.is_dir:
                raise os_error(errno.EISDIR)  # builtin open() refuses directories too
            return ino, rec.size

        ino, size = self._at(path, check, write=create or trunc)
        raw = RawBranchFile(
            self, ino, os.fsdecode(path), readable=readable, writable=writable, append=append
        )
        if append:
            raw.seek(size)  # like open(): an appending file starts at its end
        if buffering == 0:
            return cast(BinaryIO, raw)
        size = buffering if buffering > 1 else 1 << 20
        if readable and writable:
            return io.BufferedRandom(raw, size)
        if writable:
            return io.BufferedWriter(cast(io.RawIOBase, raw), size)
        return io.BufferedReader(raw, size)

    def mkdir(
        self, path: PathArg, mode: int = 0o777, *, parents: bool = False, exist_ok: bool = False
    ) -> None:
        """``os.mkdir`` (or ``os.makedirs`` with ``parents=True``)."""
        if parents:
            self.makedirs(path, mode, exist_ok=exist_ok)
            return

        def op(v: View) -> None:
            parent, name = paths.resolve_parent(v, path)
            if not name:
                raise os_error(errno.EEXIST)
            tree.make_node(
                v, parent, name, st.S_IFDIR | (mode & ~_UMASK & 0o7777), os.geteuid(), os.getegid()
            )

        try:
            self._at(path, op, write=True)
        except FileExistsError:
            if not (exist_ok and self.isdir(path)):
                raise

    def makedirs(self, path: PathArg, mode: int = 0o777, exist_ok: bool = False) -> None:
        """``os.makedirs``: create ``path`` and every missing parent, in one transaction."""

        def op(v: View) -> None:
            comps = paths.parts(paths.encode(path))
            ino = ROOT_INO
            created = False
            for i, name in enumerate(comps):
                if name == b"..":
                    ino = tree.parent_of(v, ino)
                    continue
                child = v.dirent(ino, name)
                if child is None:
                    child, _ = tree.make_node(
                        v,
                        ino,
                        name,
                        st.S_IFDIR | (mode & ~_UMASK & 0o7777),
                        os.geteuid(),
                        os.getegid(),
                    )
                    created = True
                else:
                    child = paths.resolve(v, b"/".join(comps[: i + 1]))
                    if not tree.get(v, child).is_dir:
                        # os.makedirs: the leaf existing as a file is EEXIST, a parent ENOTDIR
                        raise os_error(errno.EEXIST if i == len(comps) - 1 else errno.ENOTDIR)
                ino = child
            if not created and not exist_ok:
                raise os_error(errno.EEXIST)

        self._at(path, op, write=True)

    def remove(self, path: PathArg) -> None:
        """``os.remove``: delete a file or symlink (not a directory)."""

        def op(v: View) -> None:
            parent, name = paths.resolve_parent(v, path)
            if not name:
                raise os_error(errno.EISDIR)
            if paths.must_be_dir(path):
                rec = tree.get(v, tree.lookup(v, parent, name))
                raise os_error(errno.EISDIR if rec.is_dir else errno.ENOTDIR)
            tree.unlink(v, parent, name)

        self._at(path, op, write=True)

    unlink = remove

    def rmdir(self, path: PathArg) -> None:
        """``os.rmdir``: delete an empty directory."""

        def op(v: View) -> None:
            parent, name = paths.resolve_parent(v, path)
            if not name:
                raise os_error(errno.EBUSY)
            tree.rmdir(v, parent, name)

        self._at(path, op, write=True)

    def rmtree(self, path: PathArg) -> None:
        """``shutil.rmtree``: delete ``path`` and everything under it, in one transaction."""

        def op(v: View) -> None:
            parent, name = paths.resolve_parent(v, path)
            if not name:
                tree.remove_tree(v, ROOT_INO)
                return
            ino = tree.lookup(v, parent, name)
            rec = tree.get(v, ino)
            if not rec.is_dir:
                raise os_error(errno.ENOTDIR)
            tree.remove_tree(v, ino)
            tree.rmdir(v, parent, name)

        self._at(path, op, write=True)

    def rename(self, src: PathArg, dst: PathArg, *, flags: int = 0) -> None:
        """``os.rename`` (``flags`` takes RENAME_NOREPLACE / RENAME_EXCHANGE from tree)."""

        def op(v: View) -> None:
            sp, sn = paths.resolve_parent(v, src)
            dp, dn = paths.resolve_parent(v, dst)
            if not sn or not dn:
                raise os_error(errno.EBUSY)
            dots = (b".", b"..")
            if (
                (paths.must_be_dir(src) or paths.must_be_dir(dst))
                and sn not in dots
                and dn not in dots
                and not tree.get(v, tree.lookup(v, sp, sn)).is_dir
                and not (flags & tree.RENAME_NOREPLACE and v.dirent(dp, dn) is not None)
            ):
                raise os_error(errno.ENOTDIR)
            replaced = tree.rename(v, sp, sn, dp, dn, flags)
            if replaced is not None:
                tree.forget_orphan(v, replaced)  # no open handle can hold it in this API

        self._at(src, op, write=True)

    replace = rename

    def symlink(self, target: PathArg, path: PathArg) -> None:
        """``os.symlink(target, path)``: make ``path`` a symlink pointing at ``target``."""
        raw_target = paths.encode(target)

        def op(v: View) -> None:
            parent, name = paths.resolve_parent(v, path)
            if not name:
                raise os_error(errno.EEXIST)
            if (
                name not in (b".", b"..")
                and paths.must_be_dir(path)
                and v.dirent(parent, name) is None
            ):
                raise os_error(errno.ENOENT)
            tree.make_node(
                v, parent, name, st.S_IFLNK | 0o777, os.geteuid(), os.getegid(), target=raw_target
            )

        self._at(path, op, write=True)

    def link(self, src: PathArg, dst: PathArg) -> None:
        """``os.link(src, dst)``: a hard link ``dst`` to ``src``; like link(2) on Linux (and
        ``os.link`` there), a symlink ``src`` is linked itself, not its target."""

        def op(v: View) -> None:
            ino = paths.resolve(v, src, False)
            parent, name = paths.resolve_parent(v, dst)
            if not name:
                raise os_error(errno.EEXIST)
            if (
                name not in (b".", b"..")
                and paths.must_be_dir(dst)
                and v.dirent(parent, name) is None
            ):
                raise os_error(errno.ENOENT)
            tree.link(v, ino, parent, name)

        self._at(dst, op, write=True)

    def chmod(self, path: PathArg, mode: int, *, follow_symlinks: bool = True) -> None:
        """``os.chmod``."""
        self._at(
            path,
            lambda v: tree.setattr(v, paths.resolve(v, path, follow_symlinks), mode=mode),
            write=True,
        )

    def chown(self, path: PathArg, uid: int, gid: int, *, follow_symlinks: bool = True) -> None:
        """``os.chown`` (-1 leaves an id unchanged)."""
        self._at(
            path,
            lambda v: tree.setattr(v, paths.resolve(v, path, follow_symlinks), uid=uid, gid=gid),
            write=True,
        )

    def utime(
        self,
        path: PathArg,
        times: tuple[float, float] | None = None,
        *,
        ns: tuple[int, int] | None = None,
        follow_symlinks: bool = True,
    ) -> None:
        """``os.utime``: set atime and mtime (seconds in ``times`` or nanoseconds in ``ns``)."""
        if times is not None and ns is not None:
            raise ValueError("utime: you may specify either 'times' or 'ns' but not both")
        if ns is None:
            if times is None:
                t = tree.now_ns()
                ns = (t, t)
            else:
                ns = (int(times[0] * 1e9), int(times[1] * 1e9))
        at, mt = ns
        self._at(
            path,
            lambda v: tree.setattr(
                v, paths.resolve(v, path, follow_symlinks), atime_ns=at, mtime_ns=mt
            ),
            write=True,
        )

    def truncate(self, path: PathArg, length: int) -> None:
        """``os.truncate``: cut file ``path`` short or extend it with zeros."""
        self._at(path, lambda v: tree.truncate(v, paths.resolve(v, path), length), write=True)

    def setxattr(
        self,
        path: PathArg,
        name: str | bytes,
        value: bytes,
        flags: int = 0,
        *,
        follow_symlinks: bool = True,
    ) -> None:
        """``os.setxattr``."""
        key = os.fsencode(name)
        self._at(
            path,
            lambda v: tree.setxattr(v, paths.resolve(v, path, follow_symlinks), key, value, flags),
            write=True,
        )

    def removexattr(
        self, path: PathArg, name: str | bytes, *, follow_symlinks: bool = True
    ) -> None:
        """``os.removexattr``."""
        key = os.fsencode(name)
        self._at(
            path,
            lambda v: tree.removexattr(v, paths.resolve(v, path, follow_symlinks), key),
            write=True,
        )

    # -- copying in and out -------------------------------------------------------------------

    def import_dir(self, source: PathArg, dest: PathArg = "", *, progress: Progress = None) -> int:
        """Copy the real directory ``source`` into ``dest`` of this branch; returns files copied.

        Modes, owners, times, symlinks (copied, never followed), hard links and xattrs are
        kept.
        """
        from .transfer import import_dir

        return import_dir(self, source, dest, progress=progress)

    def export_dir(self, dest: PathArg, source: PathArg = "", *, progress: Progress = None) -> int:
        """Copy ``source`` of this branch into the real directory ``dest``; returns files copied."""
        from .transfer import export_dir

        return export_dir(self, dest, source, progress=progress)

    # -- branch operations --------------------------------------------------------------------

    def fork(self, new: str) -> Branch:
        """A new branch ``new``: an independent copy of this one as it is now (O(1))."""
        return self.store.fork(self.name, new)

    def snapshot(self, name: str) -> Snapshot:
        """Freeze this branch's current tree as snapshot ``name`` (O(1))."""
        return self.store.snapshot(self.name, name)

    def reset(self, snapshot: str) -> None:
        """Make this branch's tree snapshot ``snapshot`` again (O(1))."""
        self.store.reset(self.name, snapshot)

    def discard(self) -> None:
        """Remove this branch; its space comes back at the next gc."""
        self.store.discard(self.name)

    def diff(self, other: Branch | str) -> list[Change]:
        """What differs from this tree to ``other``'s."""
        return self.store.diff(self._ref(), _ref_of(other))

    def merge(
        self,
        source: Branch | str,
        *,
        strategy: str | None = None,
        conflict_markers: bool = False,
    ) -> MergeResult:
        """3-way merge ``source`` into this branch; raises MergeConflict on conflicts."""
        return self.store.merge(
            self.name, _ref_of(source), strategy=strategy, conflict_markers=conflict_markers
        )

    # -- running commands; a branch as a context manager ---------------------------------------

    def run(
        self,
        command: Command,
        *,
        at: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        stdin: Stream = None,
        stdout: Stream = None,
        stderr: Stream = None,
        capture_output: bool = False,
        check: bool = False,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``command`` (argv list or shell string) with this branch mounted as its tree.

        Like :func:`subprocess.run`; see :func:`branchfs.run.run` for ``at`` (the tree seen
        at a fixed path by the command alone), the environment and the errors.
        """
        from .run import run

        return run(
            self.store,
            self.name,
            command,
            at=at,
            env=env,
            timeout=timeout,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            capture_output=capture_output,
            check=check,
        )

    def keep(self) -> Branch:
        """Keep this branch when its ``with`` block ends (see :meth:`__exit__`); returns it."""
        self._kept = True
        return self

    def __enter__(self) -> Branch:
        return self

    def __exit__(self, *exc: object) -> None:
        """Discard the branch at the end of a ``with`` block unless :meth:`keep` was called
        (an attempt merged or thrown away, either way gone); a branch already gone is fine."""
        if self._kept or self._snapshot:
            return
        from .errors import BranchNotFound

        with contextlib.suppress(BranchNotFound):
            self.discard()

    def _ref(self) -> str:
        return self.name


class Snapshot(Branch):
    """A read-only tree named by a snapshot; writing to it raises ``EROFS``."""

    _snapshot = True

    def fork(self, new: str) -> Branch:
        """A new writable branch ``new`` holding this snapshot's tree."""
        return self.store.fork_snapshot(self.name, new)

    def snapshot(self, name: str) -> Snapshot:
        """Snapshots are already frozen: EROFS; fork one to get a branch."""
        raise ReadOnlyError("a snapshot cannot be snapshotted; fork it to a branch first")

    def _ref(self) -> str:
        return "@" + self.name


def _ref_of(obj: Branch | str) -> str:
    if isinstance(obj, Snapshot):
        return "@" + obj.name
    if isinstance(obj, Branch):
        return obj.name
    return obj


__all__ = ["Branch", "DirEntry", "Inode", "Snapshot", "Store"]
