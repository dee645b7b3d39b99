"""Branches and snapshots as path APIs: :class:`Branch` (writing, import and export, fork,
merge, run) and :class:`Snapshot` (read-only), over :class:`~branchfs.pathtree.PathTree`.

Every call is one transaction through the store the branch belongs to (a ``Store``, seen
through :class:`StoreAPI` so that this module does not import the store); files are changed
with :mod:`branchfs.tree`. Errors are those of ``os`` (with the path) or
:class:`~branchfs.errors.BranchFSError` subclasses.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import posixpath
import stat as st
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, BinaryIO, Protocol, cast

from . import paths, tree
from .errors import BranchNotFound, InvalidPath, ReadOnlyError, os_error
from .fileobj import RawBranchFile, parse_mode
from .layers import View
from .paths import PathArg
from .pathtree import PathTree, TreeHost
from .records import ROOT_INO

if TYPE_CHECKING:
    import subprocess

    from .diff import Change
    from .merge import MergeResult
    from .run import Command, Stream
    from .transfer import Progress


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


class StoreAPI(TreeHost, Protocol):
    """What a branch needs of its store besides transactions: the branch operations."""

    def fork(self, source: str, new: str) -> Branch:
        """Make branch ``new`` a copy of ``source``."""
        ...

    def fork_snapshot(self, snapshot: str, new: str) -> Branch:
        """Make branch ``new`` a copy of snapshot ``snapshot``."""
        ...

    def snapshot(self, branch: str, name: str) -> Snapshot:
        """Freeze ``branch`` as snapshot ``name``."""
        ...

    def reset(self, branch: str, snapshot: str) -> None:
        """Make ``branch`` snapshot ``snapshot`` again."""
        ...

    def discard(self, branch: str, *, force: bool = False) -> None:
        """Remove ``branch`` (``BranchBusy`` while a mount serves it, unless ``force``)."""
        ...

    def staged(self, branch: str) -> AbstractContextManager[Branch]:
        """A hidden copy of ``branch`` to build in, published as ``branch`` at the end."""
        ...

    def diff(self, a: str, b: str) -> list[Change]:
        """What differs from ``a`` to ``b``."""
        ...

    def merge(
        self,
        target: str,
        source: str,
        *,
        strategy: str | None = None,
        conflict_markers: bool = False,
    ) -> MergeResult:
        """3-way merge ``source`` into ``target``."""
        ...


class Branch(PathTree):
    """A named writable tree with pathlib/os-like methods; every call is one transaction.

    Paths are relative to the branch root (a leading ``/`` is allowed and means the same).
    """

    store: StoreAPI

    def __init__(self, store: StoreAPI, name: str) -> None:
        super().__init__(store, name)
        self._kept = False
        #: Whether a ``with`` block discards it at the end: only for a branch made by
        #: :meth:`fork` (set by the store), never for one looked up or created by name.
        self._attempt = False

    @classmethod
    def forked(cls, store: StoreAPI, name: str) -> Branch:
        """Branch ``name`` just made by a fork: a ``with`` block discards it at its end."""
        b = cls(store, name)
        b._attempt = True
        return b

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
        kept. It adds and overwrites, as ``cp -a source/. dest/`` does: files already in
        the branch stay, even those deleted from ``source`` since an earlier import. All or
        nothing: the copy is built in a hidden layer and published with one
        ref update at the end (:meth:`Store.staged`), so an import that fails or is
        interrupted changes nothing visible (gc reclaims what it wrote);
        :class:`~branchfs.errors.BranchChanged` if the branch changed meanwhile;
        :class:`~branchfs.errors.InvalidPath` if ``dest`` leaves the branch (``../etc``).
        """
        from .transfer import import_dir

        rel = os.fsdecode(dest).lstrip("/")  # a leading / is the branch root
        if posixpath.normpath(rel or ".").split("/")[0] == "..":
            raise InvalidPath(
                f"cannot import to {os.fsdecode(dest)!r}: it leaves the branch; name a "
                "directory inside it (relative to its root, without '..')"
            )

        if self._snapshot:
            return import_dir(self, source, dest, progress=progress)  # EROFS, as any write
        with self.store.staged(self.name) as hidden:
            return import_dir(hidden, source, dest, progress=progress)

    def export_dir(self, dest: PathArg, source: PathArg = "", *, progress: Progress = None) -> int:
        """Copy ``source`` of this branch into the real directory ``dest``; returns files copied."""
        from .export import export_dir

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

    def discard(self, *, force: bool = False) -> None:
        """Remove this branch; its space comes back at the next gc. A branch that a mount
        serves raises ``BranchBusy``, and a root branch (not forked) or the store's last
        branch ``BranchIsRoot``, unless ``force`` (see :meth:`Store.discard`)."""
        self.store.discard(self.name, force=force)

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
            self.store.path,
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
        """At the end of a ``with`` block, discard a branch made by :meth:`fork` unless
        :meth:`keep` was called (an attempt merged or thrown away, either way gone); a
        branch already gone is fine. A branch got by name (``store.branch("main")``,
        ``create_branch``) is left as it is."""
        if self._kept or self._snapshot or not self._attempt:
            return

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
