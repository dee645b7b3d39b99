"""The pyfuse3 ``Operations`` of a branchfs mount: POSIX calls on the engine's inodes.

Each handler resolves its fuse inode to a tree and an engine inode (:mod:`.inodes`), runs
one transaction through :mod:`branchfs.tree`, and returns what the kernel needs. Engine
errors are ``OSError`` with Linux's errno and become ``FUSEError`` with the same errno;
nothing else reaches the kernel. Writes collect in per-inode buffers (:mod:`.buffers`).

Caching: the mounted view answers with long entry and attribute timeouts and ``keep_cache``,
so the kernel serves repeated stats and reads itself. When a tree changes behind the
kernel's back (another process, a merge through ``ctl``, a write through an alias under
``.branchfs/``) the daemon drops what the kernel cached, from a worker thread and never
inside the request that caused it. Views under ``.branchfs/`` use zero timeouts.
The daemon keeps the mounted tree's inode records too (getattr, getxattr need no
transaction); that cache is dropped on the same paths as the kernel's.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat as st
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3
import trio

from branchfs import (
    BranchExists,
    BranchFSError,
    BranchNotFound,
    InvalidName,
    ReadOnlyError,
    Store,
)
from branchfs import mount as mount_mod
from branchfs import tree as T
from branchfs.layers import View
from branchfs.meta import U64, U64x2
from branchfs.records import ROOT_INO, Inode

from . import control
from .buffers import FLUSH_BYTES, TOTAL_BYTES, WriteBuffer
from .inodes import (
    ALIAS_BASE,
    BRANCHES,
    CONTROL_NODES,
    CTL_DIR,
    CTL_FILE,
    SNAPSHOTS,
    STORE_FILE,
    InodeMap,
    Key,
    TreeRef,
)

log = logging.getLogger("branchfs.fuse")
R = TypeVar("R")

#: Entry and attribute timeout of the mounted view (changes from elsewhere are invalidated).
TIMEOUT = 600.0
CONTROL_NAME = b".branchfs"
#: Names remembered for invalidation before the daemon drops the whole kernel cache instead.
KENTRIES_MAX = 1_000_000
#: Inode records of the mounted tree kept in memory before the cache is dropped whole.
RECORDS_MAX = 200_000
FUSEError = pyfuse3.FUSEError


def _errno_of(exc: BaseException) -> int:
    if isinstance(exc, BranchNotFound):
        return errno.ENOENT
    if isinstance(exc, BranchExists):
        return errno.EEXIST
    if isinstance(exc, InvalidName):
        return errno.EINVAL
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if isinstance(exc, BranchFSError):
        return errno.EPERM
    return errno.EIO


def op(fn: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Wrap a handler: engine errors become FUSEError; changes are propagated afterwards."""

    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: BranchOps, *args: Any) -> R:
        counts = self.requests
        counts[name] = counts.get(name, 0) + 1
        try:
            return await fn(self, *args)
        except FUSEError:
            raise
        except Exception as exc:
            code = _errno_of(exc)
            if code == errno.EIO:
                log.exception("%s%r failed", fn.__name__, args[:3])
            raise FUSEError(code) from None
        finally:
            if self.pending or self.main_stale or self.stale_inodes:
                try:
                    await self.after_change()
                except Exception:  # an escaping exception would stop pyfuse3's loop
                    log.exception("propagating a change after %s failed", name)

    return wrapper


class FileHandle:
    """An open regular file of some tree."""

    __slots__ = ("append", "fino", "key")

    def __init__(self, fino: int, key: Key, append: bool) -> None:
        self.fino = fino
        self.key = key
        self.append = append


class DirHandle:
    """An open directory: its entries as they were when it was opened (or rewound).

    ``entries`` holds ``(name, tree, engine ino)``; ``tree`` None means the number is
    already a fuse inode (a control node).
    """

    __slots__ = ("entries", "fino", "fresh")

    def __init__(self, fino: int) -> None:
        self.fino = fino
        self.fresh = True
        self.entries: list[tuple[bytes, TreeRef | None, int]] = []


class TextHandle:
    """An open read-only control file with fixed content (``.branchfs/store``)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class BranchOps(pyfuse3.Operations):
    """The filesystem: branch ``branch`` of ``store`` at the root, the control directory too."""

    supports_dot_lookup = False
    enable_acl = False

    def __init__(
        self, store: Store, branch: str, mountpoint: str, *, writeback: bool = False
    ) -> None:
        super().__init__()
        self.store = store
        self.main = TreeRef(branch)
        self.mountpoint = mountpoint
        self.enable_writeback_cache = writeback
        self.inodes = InodeMap(self.main)
        self.handles: dict[int, FileHandle | DirHandle | control.CtlHandle | TextHandle] = {}
        self._next_fh = 1
        self.buffers: dict[Key, WriteBuffer] = {}
        self.buffered = 0
        self.holds: dict[Key, int] = {}
        self.orphans: set[Key] = set()
        self.kentries: set[tuple[int, bytes]] = set()
        self.pending: set[str] = set()
        self.main_stale = False
        self.stale_inodes: set[int] = set()
        self.started_ns = time.time_ns()
        self.uid = os.geteuid()
        self.gid = os.getegid()
        self.stats: dict[str, int] = {}
        #: Requests that reached the daemon, by operation (``stats`` on .branchfs/ctl).
        self.requests: dict[str, int] = {}
        self.xattr_names: dict[bytes, int] = {}
        #: Records of the mounted tree by engine inode, so getattr and getxattr (the kernel
        #: asks security.capability before every write()) need no transaction. Kept exact:
        #: a write through this daemon drops every inode its transaction touched, and any
        #: other change to the mounted tree goes through :meth:`invalidate_main`, which
        #: drops the whole cache before the kernel's.
        self.records: dict[int, Inode] = {}

    # -- plumbing -----------------------------------------------------------------------------

    def on_store_change(self, _path: str, names: tuple[str, ...]) -> None:
        """``Store.change_hook`` inside the daemon: remember, propagate after the request."""
        self.pending.update(names)

    async def after_change(self) -> None:
        """Tell other daemons about changed branches and drop stale kernel caches."""
        if self.pending:
            names = tuple(self.pending)
            self.pending.clear()
            regs = mount_mod.targets(self.store.path, names)
            if regs:
                await trio.to_thread.run_sync(
                    lambda: [mount_mod.poke(r, names) for r in regs], abandon_on_cancel=True
                )
        if self.main_stale:
            self.main_stale = False
            self.stale_inodes.clear()
            await self.invalidate_main()
        if self.stale_inodes:
            inos = list(self.stale_inodes)
            self.stale_inodes.clear()
            await trio.to_thread.run_sync(_invalidate, [], inos)

    async def invalidate_main(self) -> None:
        """Make the kernel forget every entry, attribute and page of the mounted view."""
        self.records.clear()
        entries = list(self.kentries)
        self.kentries.clear()
        inos = self.inodes.main_inodes()
        if ROOT_INO not in inos:
            inos.append(ROOT_INO)
        self.stats["invalidations"] = self.stats.get("invalidations", 0) + 1
        await trio.to_thread.run_sync(_invalidate, entries, inos)

    def _read(self, tree: TreeRef, fn: Callable[[View], R]) -> R:
        return self.store.read_tree(tree.name, fn, snapshot=tree.snapshot)

    def _write(
        self, tree: TreeRef, fn: Callable[[View], R], fino: int = 0, keep: tuple[int, ...] = ()
    ) -> R:
        if tree.snapshot:
            raise ReadOnlyError(
                "snapshots are read-only; fork a branch from the snapshot to edit it"
            )
        if tree != self.main:
            return self.store.write_tree(tree.name, fn)
        views: list[View] = []
        kept: list[tuple[int, Inode | None]] = []

        def run(v: View) -> R:
            views.append(v)
            kept.clear()
            out = fn(v)
            # Records the kernel asks for next (a directory whose mtime changed): read at
            # the end of the same transaction, cached once it committed.
            kept.extend((ino, v.inode(ino)) for ino in keep)
            return out

        try:
            result = self.store.write_tree(tree.name, run)
        finally:
            self._forget_records(views)
        for ino, rec in kept:
            if rec is not None:
                self._cache_record(ino, rec)
        if fino >= ALIAS_BASE:
            self.main_stale = True  # the mounted view's kernel caches do not know this change
        return result

    def _forget_records(self, views: list[View]) -> None:
        """Drop cached records of every inode a write transaction read or wrote."""
        records = self.records
        if records:
            for v in views:
                for _layer, ino in v.records:
                    records.pop(ino, None)

    def _record(self, key: Key) -> Inode:
        """The record of ``key`` (ENOENT if gone), from the cache for the mounted tree."""
        tree, eng = key
        if tree != self.main:
            return self._read(tree, lambda v: T.get(v, eng))
        rec = self.records.get(eng)
        if rec is None:
            rec = self._read(tree, lambda v: T.get(v, eng))
            self._cache_record(eng, rec)
        return rec

    def _cache_record(self, eng: int, rec: Inode) -> None:
        if len(self.records) >= RECORDS_MAX:
            self.records.clear()
        self.records[eng] = rec

    def _key(self, fino: int) -> Key:
        key = self.inodes.resolve(fino)
        if key is None:
            raise FUSEError(errno.EPERM if fino in CONTROL_NODES else errno.ENOENT)
        return key

    def _timeout(self, fino: int) -> float:
        return TIMEOUT if fino < ALIAS_BASE else 0.0

    def _attrs(self, fino: int, key: Key, rec: Inode) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = fino
        a.entry_timeout = a.attr_timeout = TIMEOUT if fino < ALIAS_BASE else 0.0
        a.st_mode = rec.mode
        a.st_nlink = rec.nlink
        a.st_uid = rec.uid
        a.st_gid = rec.gid
        a.st_rdev = rec.rdev
        size = rec.size
        mtime = rec.mtime_ns
        ctime = rec.ctime_ns
        buf = self.buffers.get(key)
        if buf is not None:
            size = max(size, buf.end)
            mtime = ctime = max(mtime, buf.mtime_ns)
        a.st_size = size
        a.st_blksize = 65536
        a.st_blocks = (size + 511) // 512
        a.st_atime_ns = rec.atime_ns
        a.st_mtime_ns = mtime
        a.st_ctime_ns = ctime
        return a

    def _entry(self, parent: int, name: bytes, fino: int, key: Key, rec: Inode) -> Any:
        """Attributes for a reply that gives the kernel a new reference on ``fino``."""
        self.inodes.looked_up(fino)
        self.holds[key] = self.holds.get(key, 0) + 1
        if fino < ALIAS_BASE and parent < ALIAS_BASE:
            self._remember(parent, name)
        return self._attrs(fino, key, rec)

    def _remember(self, parent: int, name: bytes) -> None:
        """Note a name the kernel may cache, to invalidate it when the tree changes."""
        self.kentries.add((parent, name))
        if len(self.kentries) > KENTRIES_MAX:
            self.main_stale = True  # forget everything once rather than grow without bound

    def _control_attrs(self, fino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = fino
        if fino == CTL_DIR:
            a.entry_timeout = a.attr_timeout = TIMEOUT
            a.st_mode = st.S_IFDIR | 0o755
            a.st_nlink = 2
        elif fino in (BRANCHES, SNAPSHOTS):
            a.entry_timeout = TIMEOUT
            a.attr_timeout = 0.0
            a.st_mode = st.S_IFDIR | 0o755
            a.st_nlink = 2
        elif fino == CTL_FILE:
            a.entry_timeout = TIMEOUT
            a.attr_timeout = 0.0
            a.st_mode = st.S_IFREG | 0o600
            a.st_nlink = 1
        else:
            a.entry_timeout = a.attr_timeout = TIMEOUT
            a.st_mode = st.S_IFREG | 0o444
            a.st_nlink = 1
            a.st_size = len(self._store_text())
        a.st_uid = self.uid
        a.st_gid = self.gid
        a.st_blksize = 4096
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self.started_ns
        return a

    def _store_text(self) -> bytes:
        return os.fsencode(self.store.path) + b"\n"

    def _hold(self, key: Key, n: int = 1) -> None:
        self.holds[key] = self.holds.get(key, 0) + n

    def _unhold(self, key: Key, n: int, doomed: list[Key]) -> None:
        left = self.holds.get(key, 0) - n
        if left > 0:
            self.holds[key] = left
            return
        self.holds.pop(key, None)
        if key in self.orphans:
            self.orphans.discard(key)
            doomed.append(key)

    def _drop_orphans(self, doomed: list[Key]) -> None:
        """Delete unlinked inodes whose last reference (name, lookup, open file) went away."""
        by_tree: dict[TreeRef, list[int]] = {}
        for key in doomed:
            buf = self.buffers.pop(key, None)
            if buf is not None:
                self.buffered -= buf.nbytes
            by_tree.setdefault(key[0], []).append(key[1])
            if key[0] == self.main:
                self.records.pop(key[1], None)

        for tree, inos in by_tree.items():

            def fn(v: View, inos: list[int] = inos) -> None:
                for ino in inos:
                    T.forget_orphan(v, ino)

            try:
                self.store.write_tree(tree.name, fn)
            except (BranchFSError, OSError):
                log.warning("could not drop orphans of %s", tree.name, exc_info=True)

    def _orphaned(self, v: View, tree: TreeRef, ino: int | None) -> bool:
        """After an unlink or rename dropped ``ino``'s last name: keep it if still held."""
        if ino is None:
            return False
        rec = v.inode(ino)
        if rec is None or rec.links:
            return False
        if self.holds.get((tree, ino)):
            return True
        T.forget_orphan(v, ino)
        return False

    # -- write buffers ------------------------------------------------------------------------

    def flush_key(self, key: Key) -> None:
        """Write one inode's buffered data to the store (one transaction)."""
        buf = self.buffers.pop(key, None)
        if buf is None:
            return
        self.buffered -= buf.nbytes
        tree, ino = key

        self.stats["flushes"] = self.stats.get("flushes", 0) + 1
        rec = self._write(tree, lambda v: _apply(v, ino, buf))
        if tree == self.main:
            self._cache_record(ino, rec)  # the getattr that follows a close needs no transaction

    def flush_all(self) -> None:
        """Write every buffer to the store."""
        for key in list(self.buffers):
            try:
                self.flush_key(key)
            except (BranchFSError, OSError):
                log.warning("flushing %s failed", key, exc_info=True)

    async def sync_all(self) -> None:
        """Make every write() that returned so far part of the store (before fork, merge …)."""
        if self.enable_writeback_cache:
            # Dirty pages still in the kernel come back as write requests while we wait.
            await trio.to_thread.run_sync(_syncfs, self.mountpoint)
        self.flush_all()

    def _size(self, key: Key) -> int:
        rec = self._record(key)
        buf = self.buffers.get(key)
        return max(rec.size, buf.end) if buf is not None else rec.size

    # -- lookup, attributes -------------------------------------------------------------------

    @op
    async def lookup(
        self, parent: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """Resolve ``name`` in ``parent``; ENOENT answers of the mounted view are cached."""
        if parent >= ALIAS_BASE and parent in CONTROL_NODES:
            return self._control_lookup(parent, name)
        if parent == ROOT_INO and name == CONTROL_NAME:
            self.inodes.looked_up(CTL_DIR)
            return self._control_attrs(CTL_DIR)
        key = self._key(parent)
        tree, peng = key
        alias = parent >= ALIAS_BASE

        def fn(v: View) -> tuple[int, Inode | None]:
            ino = T.lookup(v, peng, name)
            return ino, v.inode(ino)

        try:
            ino, rec = self._read(tree, fn)
        except FileNotFoundError:
            if alias:
                raise
            self._remember(parent, name)
            neg = pyfuse3.EntryAttributes()
            neg.st_ino = 0
            neg.entry_timeout = TIMEOUT
            return neg
        if rec is None:
            raise FUSEError(errno.ENOENT)
        if tree == self.main:
            self._cache_record(ino, rec)
        fino = self.inodes.fuse_ino(tree, ino, alias)
        return self._entry(parent, name, fino, (tree, ino), rec)

    def _control_lookup(self, parent: int, name: bytes) -> pyfuse3.EntryAttributes:
        if parent == CTL_DIR:
            fino = {b"branches": BRANCHES, b"snapshots": SNAPSHOTS, b"ctl": CTL_FILE}.get(name)
            if name == b"store":
                fino = STORE_FILE
            if fino is None:
                raise FUSEError(errno.ENOENT)
            self.inodes.looked_up(fino)
            return self._control_attrs(fino)
        if parent not in (BRANCHES, SNAPSHOTS):
            raise FUSEError(errno.ENOTDIR)
        tree = TreeRef(name.decode("utf-8", "surrogateescape"), parent == SNAPSHOTS)
        rec = self._read(tree, lambda v: T.get(v, ROOT_INO))
        fino = self.inodes.alias(tree, ROOT_INO)
        return self._entry(parent, name, fino, (tree, ROOT_INO), rec)

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        """The kernel dropped references; unlinked inodes nobody holds are deleted."""
        self.requests["forget"] = self.requests.get("forget", 0) + 1
        try:
            doomed: list[Key] = []
            for fino, n in inode_list:
                key = self.inodes.resolve(fino)
                self.inodes.forget(fino, n)
                if key is not None:
                    self._unhold(key, n, doomed)
            if doomed:
                self._drop_orphans(doomed)
        except Exception:  # forget must not raise (it answers no request)
            log.exception("forget failed")

    @op
    async def getattr(self, fino: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """Attributes of ``fino`` (buffered writes included in size and mtime)."""
        if fino in CONTROL_NODES:
            return self._control_attrs(fino)
        key = self._key(fino)
        return self._attrs(fino, key, self._record(key))

    @op
    async def setattr(
        self,
        fino: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        """chmod, chown, truncate and utimens in one transaction."""
        if fino in CONTROL_NODES:
            if fino == CTL_FILE and fields.update_size and not fields.update_mode:
                return self._control_attrs(fino)
            raise FUSEError(errno.EPERM)
        key = self._key(fino)
        tree, eng = key
        kw: dict[str, int] = {}
        if fields.update_size:
            kw["size"] = attr.st_size
        if fields.update_mode:
            kw["mode"] = attr.st_mode
        if fields.update_uid:
            kw["uid"] = attr.st_uid
        if fields.update_gid:
            kw["gid"] = attr.st_gid
        if fields.update_atime:
            kw["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            kw["mtime_ns"] = attr.st_mtime_ns
        if fields.update_ctime:
            kw["ctime_ns"] = attr.st_ctime_ns
        buf = self.buffers.pop(key, None)
        if buf is not None:
            self.buffered -= buf.nbytes
            self.stats["flushes"] = self.stats.get("flushes", 0) + 1

        def fn(v: View) -> Inode:
            if buf is not None:  # buffered data first, in the same transaction
                _apply(v, eng, buf)
            return T.setattr(v, eng, **kw)

        rec = self._write(tree, fn)
        if tree == self.main:
            self._cache_record(eng, rec)
            if fino >= ALIAS_BASE:
                self.stale_inodes.add(eng)  # only this inode's cache in the mounted view
        return self._attrs(fino, key, rec)

    @op
    async def readlink(self, fino: int, ctx: pyfuse3.RequestContext) -> bytes:
        """The target of a symlink."""
        key = self._key(fino)
        return self._read(key[0], lambda v: T.readlink(v, key[1]))

    @op
    async def access(self, fino: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        """Existence check; permissions are checked by the kernel (default_permissions)."""
        if fino in CONTROL_NODES:
            return True
        self._record(self._key(fino))
        return True

    @op
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """Space of the filesystem holding the store."""
        s = os.statvfs(self.store.path)
        out = pyfuse3.StatvfsData()
        out.f_bsize = s.f_bsize
        out.f_frsize = s.f_frsize
        out.f_blocks = s.f_blocks
        out.f_bfree = s.f_bfree
        out.f_bavail = s.f_bavail
        out.f_files = s.f_files or 1 << 32
        out.f_ffree = s.f_ffree or 1 << 31
        out.f_favail = s.f_favail or 1 << 31
        out.f_namemax = T.NAME_MAX
        return out

    # -- creating and removing names ------------------------------------------------------------

    def _parent(self, parent: int) -> tuple[TreeRef, int, bool]:
        if parent in CONTROL_NODES:
            raise FUSEError(errno.EPERM)
        tree, peng = self._key(parent)
        return tree, peng, parent >= ALIAS_BASE

    def _make(
        self,
        parent: int,
        name: bytes,
        mode: int,
        ctx: pyfuse3.RequestContext,
        rdev: int = 0,
        target: bytes | None = None,
    ) -> tuple[int, Key, Inode]:
        if parent == ROOT_INO and name == CONTROL_NAME:
            raise FUSEError(errno.EEXIST)
        tree, peng, alias = self._parent(parent)
        ino, rec = self._write(
            tree,
            lambda v: T.make_node(v, peng, name, mode, ctx.uid, ctx.gid, rdev=rdev, target=target),
            parent,
            (peng,),
        )
        if tree == self.main:
            self._cache_record(ino, rec)
        return self.inodes.fuse_ino(tree, ino, alias), (tree, ino), rec

    @op
    async def mkdir(
        self, parent: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """mkdir; under ``.branchfs/branches`` it forks, under ``snapshots`` it snapshots."""
        if parent in (BRANCHES, SNAPSHOTS):
            return await self._control_mkdir(parent, name)
        fino, key, rec = self._make(parent, name, st.S_IFDIR | (mode & 0o7777), ctx)
        return self._entry(parent, name, fino, key, rec)

    async def _control_mkdir(self, parent: int, name: bytes) -> pyfuse3.EntryAttributes:
        new = name.decode("utf-8", "surrogateescape")
        await self.sync_all()
        if parent == BRANCHES:
            self.store.fork(self.main.name, new)
            tree = TreeRef(new)
        else:
            self.store.snapshot(self.main.name, new)
            tree = TreeRef(new, True)
        rec = self._read(tree, lambda v: T.get(v, ROOT_INO))
        fino = self.inodes.alias(tree, ROOT_INO)
        return self._entry(parent, name, fino, (tree, ROOT_INO), rec)

    @op
    async def mknod(
        self, parent: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """A regular file, FIFO, socket or device node."""
        fino, key, rec = self._make(parent, name, mode, ctx, rdev=rdev)
        return self._entry(parent, name, fino, key, rec)

    @op
    async def symlink(
        self, parent: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """A symbolic link to ``target``."""
        fino, key, rec = self._make(parent, name, st.S_IFLNK | 0o777, ctx, target=target)
        return self._entry(parent, name, fino, key, rec)

    @op
    async def link(
        self, fino: int, new_parent: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """A hard link; EXDEV across trees."""
        if fino in CONTROL_NODES:
            raise FUSEError(errno.EPERM)
        if new_parent == ROOT_INO and new_name == CONTROL_NAME:
            raise FUSEError(errno.EEXIST)
        tree, eng = self._key(fino)
        ptree, peng, _alias = self._parent(new_parent)
        if ptree != tree:
            raise FUSEError(errno.EXDEV)
        rec = self._write(tree, lambda v: T.link(v, eng, peng, new_name), new_parent, (peng,))
        if tree == self.main:
            self._cache_record(eng, rec)
        return self._entry(new_parent, new_name, fino, (tree, eng), rec)

    @op
    async def unlink(self, parent: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        """Remove a name; an inode still open or known to the kernel lives on as an orphan."""
        if parent in CONTROL_NODES:
            raise FUSEError(errno.EISDIR if parent in (BRANCHES, SNAPSHOTS) else errno.EPERM)
        if parent == ROOT_INO and name == CONTROL_NAME:
            raise FUSEError(errno.EISDIR)
        tree, peng, _alias = self._parent(parent)

        def fn(v: View) -> tuple[int, bool]:
            ino = T.unlink(v, peng, name, keep_orphan=True)
            return ino, self._orphaned(v, tree, ino)

        ino, kept = self._write(tree, fn, parent, (peng,))
        if kept:
            self.orphans.add((tree, ino))

    @op
    async def rmdir(self, parent: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        """Remove an empty directory; under ``.branchfs`` discard a branch or snapshot."""
        if parent in (BRANCHES, SNAPSHOTS):
            ref = name.decode("utf-8", "surrogateescape")
            if parent == BRANCHES:
                if ref == self.main.name:
                    raise FUSEError(errno.EBUSY)
                self.store.discard(ref)
            else:
                self.store.delete_snapshot(ref)
            return
        if parent in CONTROL_NODES or (parent == ROOT_INO and name == CONTROL_NAME):
            raise FUSEError(errno.EPERM if parent != ROOT_INO else errno.EBUSY)
        tree, peng, _alias = self._parent(parent)
        self._write(tree, lambda v: T.rmdir(v, peng, name), parent, (peng,))

    @op
    async def rename(
        self,
        old_parent: int,
        old_name: bytes,
        new_parent: int,
        new_name: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        """rename/renameat2 (NOREPLACE, EXCHANGE); EXDEV between trees."""
        for p, n in ((old_parent, old_name), (new_parent, new_name)):
            if p in CONTROL_NODES or (p == ROOT_INO and n == CONTROL_NAME):
                raise FUSEError(errno.EXDEV if p in CONTROL_NODES else errno.EBUSY)
        tree, op_eng, _a = self._parent(old_parent)
        ntree, np_eng, _b = self._parent(new_parent)
        if ntree != tree:
            raise FUSEError(errno.EXDEV)

        def fn(v: View) -> tuple[int | None, bool]:
            replaced = T.rename(v, op_eng, old_name, np_eng, new_name, flags)
            return replaced, self._orphaned(v, tree, replaced)

        replaced, kept = self._write(tree, fn, old_parent, (op_eng, np_eng))
        if kept and replaced is not None:
            self.orphans.add((tree, replaced))

    # -- files ----------------------------------------------------------------------------------

    def _new_fh(self, handle: FileHandle | DirHandle | control.CtlHandle | TextHandle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = handle
        return fh

    @op
    async def open(self, fino: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        """Open a file (O_TRUNC truncates here: the kernel sends it atomically)."""
        if fino == CTL_FILE:
            return pyfuse3.FileInfo(fh=self._new_fh(control.CtlHandle()), direct_io=True)
        if fino == STORE_FILE:
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise FUSEError(errno.EACCES)
            return pyfuse3.FileInfo(fh=self._new_fh(TextHandle(self._store_text())), direct_io=True)
        if fino in CONTROL_NODES:
            raise FUSEError(errno.EISDIR)
        key = self._key(fino)
        tree, eng = key
        writing = flags & os.O_ACCMODE != os.O_RDONLY
        if tree.snapshot and (writing or flags & os.O_TRUNC):
            raise FUSEError(errno.EROFS)
        rec = self._record(key)
        if rec.is_dir:
            raise FUSEError(errno.EISDIR)
        if flags & os.O_TRUNC:  # Linux truncates even with O_RDONLY
            buf = self.buffers.pop(key, None)
            if buf is not None:
                self.buffered -= buf.nbytes
            if rec.size:
                self._write(tree, lambda v: T.truncate(v, eng, 0))
                if fino >= ALIAS_BASE and tree == self.main:
                    self.stale_inodes.add(eng)
        self._hold(key)
        fh = self._new_fh(FileHandle(fino, key, bool(flags & os.O_APPEND)))
        return pyfuse3.FileInfo(fh=fh, keep_cache=fino < ALIAS_BASE)

    @op
    async def create(
        self, parent: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        """Create and open a regular file."""
        fino, key, rec = self._make(parent, name, st.S_IFREG | (mode & 0o7777), ctx)
        attrs = self._entry(parent, name, fino, key, rec)
        self._hold(key)
        fh = self._new_fh(FileHandle(fino, key, bool(flags & os.O_APPEND)))
        return pyfuse3.FileInfo(fh=fh, keep_cache=fino < ALIAS_BASE), attrs

    @op
    async def read(self, fh: int, off: int, size: int) -> bytes:
        """Read (buffered writes of the inode are flushed first, so reads see them)."""
        h = self.handles[fh]
        if isinstance(h, control.CtlHandle):
            line = h.pending()
            if line is not None:
                h.answer += await self._run_ctl(line)
            return h.read(size)
        if isinstance(h, TextHandle):
            return h.data[off : off + size]
        assert isinstance(h, FileHandle)
        key = h.key
        if key in self.buffers:
            self.flush_key(key)
        return self._read(key[0], lambda v: T.read(v, key[1], off, size))

    @op
    async def write(self, fh: int, off: int, data: bytes) -> int:
        """Buffer a write; large buffers go to the store at once."""
        h = self.handles[fh]
        if isinstance(h, control.CtlHandle):
            h.request += data
            line = h.take_line()
            while line is not None:
                h.answer += await self._run_ctl(line)
                line = h.take_line()
            return len(data)
        if not isinstance(h, FileHandle):
            raise FUSEError(errno.EBADF)
        key = h.key
        if key[0].snapshot:
            raise FUSEError(errno.EROFS)
        if self.enable_writeback_cache:
            # The kernel already gathered these pages (up to 1 MiB a request) and decides
            # append offsets itself: commit at once, so close() needs no FLUSH request.
            if key in self.buffers:
                self.flush_key(key)
            self._write(key[0], lambda v: T.write(v, key[1], off, data))
            if h.fino >= ALIAS_BASE and key[0] == self.main:
                self.stale_inodes.add(key[1])
            if len(data) > self.stats.get("largest_write", 0):
                self.stats["largest_write"] = len(data)
            return len(data)
        if h.append:
            off = self._size(key)
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = WriteBuffer()
        buf.add(off, data)
        self.buffered += len(data)
        if len(data) > self.stats.get("largest_write", 0):
            self.stats["largest_write"] = len(data)
        if buf.nbytes >= FLUSH_BYTES:
            self.flush_key(key)
        elif self.buffered >= TOTAL_BYTES:
            self.flush_all()
        if h.fino >= ALIAS_BASE and key[0] == self.main:
            self.stale_inodes.add(key[1])
        return len(data)

    @op
    async def flush(self, fh: int) -> None:
        """close(): buffered data reaches the store (close-to-open consistency)."""
        h = self.handles.get(fh)
        if isinstance(h, FileHandle) and h.key in self.buffers:
            self.flush_key(h.key)
        if self.enable_writeback_cache:
            # Writes are committed as they arrive; ENOSYS tells the kernel to stop sending
            # FLUSH on every close() (it still writes dirty pages back before close returns).
            raise FUSEError(errno.ENOSYS)

    @op
    async def release(self, fh: int) -> None:
        """The last close of an open file."""
        h = self.handles.pop(fh, None)
        if isinstance(h, FileHandle):
            if h.key in self.buffers:
                self.flush_key(h.key)
            doomed: list[Key] = []
            self._unhold(h.key, 1, doomed)
            if doomed:
                self._drop_orphans(doomed)

    @op
    async def fsync(self, fh: int, datasync: bool) -> None:
        """Buffered data to the store, and the store to stable storage."""
        h = self.handles.get(fh)
        if isinstance(h, FileHandle) and h.key in self.buffers:
            self.flush_key(h.key)
        await trio.to_thread.run_sync(self.store.sync)

    # -- directories ----------------------------------------------------------------------------

    @op
    async def opendir(self, fino: int, ctx: pyfuse3.RequestContext) -> int:
        """Open a directory; its listing is taken now and on each rewind."""
        h = DirHandle(fino)
        self._list(h)
        return self._new_fh(h)

    def _list(self, h: DirHandle) -> None:
        fino = h.fino
        if fino == CTL_DIR:
            h.entries = [
                (b"branches", None, BRANCHES),
                (b"snapshots", None, SNAPSHOTS),
                (b"ctl", None, CTL_FILE),
                (b"store", None, STORE_FILE),
            ]
            return
        if fino in (BRANCHES, SNAPSHOTS):
            snap = fino == SNAPSHOTS
            names = self.store.snapshots() if snap else self.store.branches()
            h.entries = [(os.fsencode(n), TreeRef(n, snap), ROOT_INO) for n in names]
            return
        if fino in CONTROL_NODES:
            raise FUSEError(errno.ENOTDIR)
        tree, eng = self._key(fino)

        def fn(v: View) -> list[tuple[bytes, int]]:
            T.get_dir(v, eng)
            return v.list_dir(eng)

        listing = self._read(tree, fn)
        hide = fino == ROOT_INO
        h.entries = [(n, tree, i) for n, i in listing if not (hide and n == CONTROL_NAME)]

    @op
    async def readdir(self, fh: int, start: int, token: pyfuse3.ReaddirToken) -> None:
        """Entries with their attributes (readdirplus), from the handle's listing."""
        h = self.handles[fh]
        assert isinstance(h, DirHandle)
        if start == 0 and not h.fresh:
            self._list(h)  # rewinddir(): a new listing
        h.fresh = False
        entries = h.entries
        parent = h.fino
        # "." and ".." come first (offsets 1 and 2); the kernel takes no reference on them.
        if start < 1:
            if not pyfuse3.readdir_reply(token, b".", self._dot_attrs(parent), 1):
                return
            start = 1
        if start < 2:
            if not pyfuse3.readdir_reply(token, b"..", self._dot_attrs(parent), 2):
                return
            start = 2
        if start - 2 >= len(entries):
            return
        alias = parent >= ALIAS_BASE
        i = start - 2
        while i < len(entries):
            name, tree, num = entries[i]
            if tree is None:
                if not pyfuse3.readdir_reply(token, name, self._control_attrs(num), i + 3):
                    return
                self.inodes.looked_up(num)
                i += 1
                continue
            # One read transaction per batch of entries of the same tree.
            batch_tree = tree
            j = i
            while j < len(entries) and entries[j][1] == batch_tree:
                j += 1
            chunk = entries[i:j]
            recs = self._read(batch_tree, lambda v, chunk=chunk: [v.inode(e[2]) for e in chunk])
            for k, ((ename, _t, eng), rec) in enumerate(zip(chunk, recs, strict=True)):
                if rec is None:
                    continue  # removed since the listing was taken
                fino = self.inodes.fuse_ino(batch_tree, eng, alias)
                key = (batch_tree, eng)
                attrs = self._attrs(fino, key, rec)
                if not pyfuse3.readdir_reply(token, ename, attrs, i + k + 3):
                    return
                self.inodes.looked_up(fino)
                self._hold(key)
                if not alias:
                    self._remember(parent, ename)
            i = j

    def _dot_attrs(self, fino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = fino
        a.st_mode = st.S_IFDIR | 0o755
        return a

    async def releasedir(self, fh: int) -> None:
        """Drop a directory handle."""
        self.handles.pop(fh, None)

    @op
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        """Make the store durable."""
        await trio.to_thread.run_sync(self.store.sync)

    # -- extended attributes --------------------------------------------------------------------

    @op
    async def getxattr(self, fino: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        """An extended attribute (ENODATA if unset)."""
        self.xattr_names[name] = self.xattr_names.get(name, 0) + 1
        if fino in CONTROL_NODES:
            raise FUSEError(errno.ENODATA)
        key = self._key(fino)
        T.check_xattr_name(name)
        value = self._record(key).xattrs.get(name)
        if value is None:
            raise FUSEError(errno.ENODATA)
        return value

    @op
    async def setxattr(
        self, fino: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        """Set an extended attribute (pyfuse3 checked XATTR_CREATE / XATTR_REPLACE)."""
        if fino in CONTROL_NODES:
            raise FUSEError(errno.EPERM)
        tree, eng = self._key(fino)
        self._write(tree, lambda v: T.setxattr(v, eng, name, value), fino)

    @op
    async def listxattr(self, fino: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        """Names of the extended attributes."""
        if fino in CONTROL_NODES:
            return []
        return sorted(self._record(self._key(fino)).xattrs)

    @op
    async def removexattr(self, fino: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        """Remove an extended attribute (ENODATA if unset)."""
        if fino in CONTROL_NODES:
            raise FUSEError(errno.EPERM)
        tree, eng = self._key(fino)
        self._write(tree, lambda v: T.removexattr(v, eng, name), fino)

    # -- the control file -----------------------------------------------------------------------

    async def _run_ctl(self, line: str) -> bytes:
        try:
            cmd = control.parse(line)
        except control.UsageError as exc:
            return control.encode({"ok": False, "error": "usage", "message": str(exc)})
        if cmd.verb == "stats":
            answer = {"ok": True, "requests": dict(self.requests), **self.stats}
            answer["getxattr_names"] = {k.decode(): v for k, v in self.xattr_names.items()}
            if cmd.opts.get("reset"):
                self.requests.clear()
            return control.encode(answer)
        if cmd.needs_flush:
            await self.sync_all()
        self.records.clear()
        answer = control.run(self.store, self.main.name, cmd)
        if answer.get("ok") and self.main.name in cmd.changes(self.main.name):
            self.main_stale = True
        return control.encode(answer)

    # -- life cycle ---------------------------------------------------------------------------

    def clean_orphans(self) -> int:
        """Delete inodes left unlinked-but-open by a daemon that died; returns how many."""

        def fn(v: View) -> int:
            assert v.top is not None
            prefix = U64.pack(v.top)
            cur = v.txn.cursor(db=v.inodes)
            doomed = []
            if cur.set_range(prefix):
                for k, raw in cur:
                    if bytes(k[:8]) != prefix:
                        break
                    if not raw:
                        continue
                    ino = U64x2.unpack(bytes(k[:16]))[1]
                    if ino != ROOT_INO and not Inode.decode(bytes(raw)).links:
                        doomed.append(ino)
            for ino in doomed:
                T.forget_orphan(v, ino)
            return len(doomed)

        return self.store.write_tree(self.main.name, fn)

    def shutdown(self) -> None:
        """After the kernel let go: flush everything, drop orphans, make the store durable."""
        self.flush_all()
        if self.orphans:
            self._drop_orphans(list(self.orphans))
            self.orphans.clear()
        self.store.sync()

    async def serve_notifications(self, listener: trio.socket.SocketType) -> None:
        """Answer change notifications from writers in other processes."""
        async with trio.open_nursery() as nursery:
            while True:
                conn, _ = await listener.accept()
                nursery.start_soon(self._notification, conn)

    async def _notification(self, conn: trio.socket.SocketType) -> None:
        try:
            await self._answer_notification(conn)
        except Exception:  # a writer that went away must not stop the daemon
            log.warning("a change notification failed", exc_info=True)

    async def _answer_notification(self, conn: trio.socket.SocketType) -> None:
        import json

        with conn:
            data = b""
            while not data.endswith(b"\n"):
                part = await conn.recv(4096)
                if not part:
                    return
                data += part
            try:
                names = json.loads(data)["changed"]
            except (ValueError, KeyError, TypeError):
                await conn.send(b"bad\n")
                return
            if self.main.name in names:
                await self.invalidate_main()
            await conn.send(b"ok\n")


def _apply(v: View, ino: int, buf: WriteBuffer) -> Inode:
    """Write a buffer's segments into ``ino`` and give it the buffer's mtime; its record."""
    for offset, data in buf.segments:
        T.write(v, ino, offset, data)
    return T.setattr(v, ino, mtime_ns=buf.mtime_ns, ctime_ns=buf.mtime_ns)


def _syncfs(path: str) -> None:
    """syncfs(2) without holding the GIL (pyfuse3.syncfs holds it: the loop would stall)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
    finally:
        os.close(fd)


def _invalidate(entries: list[tuple[int, bytes]], inos: list[int]) -> None:
    """Drop kernel dentries and inode caches (runs in a worker thread: it may block)."""
    for parent, name in entries:
        with contextlib.suppress(OSError):
            pyfuse3.invalidate_entry(parent, name)
    for ino in inos:
        with contextlib.suppress(OSError):
            pyfuse3.invalidate_inode(ino)
