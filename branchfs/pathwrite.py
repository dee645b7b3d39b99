"""The writing half of the path API: :class:`WritableTree`, a :class:`~branchfs.pathtree.PathTree`
that creates, writes, removes and renames by path, changes attributes and opens files.

``Branch`` is a ``WritableTree`` with a name in a store's refs; a snapshot is one whose
writes raise ``EROFS``. Every call is one write transaction through the tree's store
(:class:`~branchfs.pathtree.TreeHost`); files are changed with :mod:`branchfs.tree` and
:mod:`branchfs.attrs`. New files and directories get the process's umask, as ``open(2)``
and ``mkdir(2)`` apply it. Errors are those of ``os``, with the path.
"""

from __future__ import annotations

import errno
import io
import os
import stat as st
from typing import BinaryIO, cast

from . import attrs, paths, tree
from .errors import os_error
from .fileobj import RawBranchFile, parse_mode
from .layers import View
from .paths import PathArg
from .pathtree import PathTree
from .records import ROOT_INO


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


class WritableTree(PathTree):
    """A tree written by path with os/pathlib-like methods; every call is one transaction.

    Paths are relative to the tree's root (a leading ``/`` is allowed and means the same).
    """

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
            replaced, orphan, _dirs = tree.rename_in(v, sp, sn, dp, dn, flags)
            if replaced is not None and orphan is not None:  # no handle holds it in this API
                v.delete_inode(replaced, tree.has_extents(orphan))

        self._at(src, op, write=True)

    replace = rename

    def symlink(self, target: PathArg, path: PathArg) -> None:
        """``os.symlink(target, path)``: make ``path`` a symlink pointing at ``target``."""
        raw_target = paths.encode(target)

        def op(v: View) -> None:
            parent, name = _new_name(v, path)
            tree.make_node(
                v, parent, name, st.S_IFLNK | 0o777, os.geteuid(), os.getegid(), target=raw_target
            )

        self._at(path, op, write=True)

    def link(self, src: PathArg, dst: PathArg) -> None:
        """``os.link(src, dst)``: a hard link ``dst`` to ``src``; like link(2) on Linux (and
        ``os.link`` there), a symlink ``src`` is linked itself, not its target."""

        def op(v: View) -> None:
            ino = paths.resolve(v, src, False)
            parent, name = _new_name(v, dst)
            tree.link(v, ino, parent, name)

        self._at(dst, op, write=True)

    def chmod(self, path: PathArg, mode: int, *, follow_symlinks: bool = True) -> None:
        """``os.chmod``."""
        self._at(
            path,
            lambda v: attrs.setattr(v, paths.resolve(v, path, follow_symlinks), mode=mode),
            write=True,
        )

    def chown(self, path: PathArg, uid: int, gid: int, *, follow_symlinks: bool = True) -> None:
        """``os.chown`` (-1 leaves an id unchanged)."""
        self._at(
            path,
            lambda v: attrs.setattr(v, paths.resolve(v, path, follow_symlinks), uid=uid, gid=gid),
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
            lambda v: attrs.setattr(
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
            lambda v: attrs.setxattr(v, paths.resolve(v, path, follow_symlinks), key, value, flags),
            write=True,
        )

    def removexattr(
        self, path: PathArg, name: str | bytes, *, follow_symlinks: bool = True
    ) -> None:
        """``os.removexattr``."""
        key = os.fsencode(name)
        self._at(
            path,
            lambda v: attrs.removexattr(v, paths.resolve(v, path, follow_symlinks), key),
            write=True,
        )


def _new_name(v: View, path: PathArg) -> tuple[int, bytes]:
    """The parent and name of ``path``, a new name for symlink(2) or link(2): EEXIST for
    the root, and ENOENT for ``name/`` that does not exist (Linux refuses a trailing slash
    on a new non-directory, as ``symlink("t", "new/")`` shows)."""
    parent, name = paths.resolve_parent(v, path)
    if not name:
        raise os_error(errno.EEXIST)
    if name not in (b".", b"..") and paths.must_be_dir(path) and v.dirent(parent, name) is None:
        raise os_error(errno.ENOENT)
    return parent, name
