"""The filesystem of a branchfs mount: POSIX calls on the engine's inodes.

Each handler resolves its fuse inode to a tree and an engine inode (:mod:`.inodes`), runs
one transaction through :mod:`branchfs.tree`, and returns what the kernel needs. Engine
errors are ``OSError`` with Linux's errno and become ``FUSEError`` with the same errno;
nothing else reaches the kernel. Writes collect in per-inode buffers (:mod:`.buffers`).
:mod:`.session` decodes the kernel's requests into these calls and runs them one at a time;
work that may block (the store's fsync, telling other daemons, dropping kernel caches) is
queued with :meth:`BranchOps.defer` and runs before the reply, off the request loop.

Caching: the mounted view answers with long entry and attribute timeouts and ``keep_cache``,
so the kernel serves repeated stats and reads itself. When a tree changes behind the
kernel's back (another process, a merge through ``ctl``, a write through an alias under
``.branchfs/``) the daemon drops what the kernel cached, from a worker thread and never
inside the request loop. Views under ``.branchfs/`` use zero timeouts. Directories are
never opened through the daemon: the kernel caches their listings, and READDIR names the
directory by inode.
The daemon keeps the mounted tree's inode records too (getattr, getxattr need no
transaction); that cache is dropped on the same paths as the kernel's.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import socket
import stat as st
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

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
from . import kernel as K
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
FUSEError = K.FUSEError


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


def op(fn: Callable[..., R]) -> Callable[..., R]:
    """Wrap a handler: count it; engine errors become FUSEError with Linux's errno."""

    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(self: BranchOps, *args: Any, **kwargs: Any) -> R:
        counts = self.requests
        counts[name] = counts.get(name, 0) + 1
        if self.behind is not None and name != "write":
            self.settle()  # everything but a write sees the store with every write in it
        try:
            return fn(self, *args, **kwargs)
        except FUSEError:
            raise
        except Exception as exc:
            code = _errno_of(exc)
            if code == errno.EIO:
                log.exception("%s%r failed", name, args[:3])
            raise FUSEError(code) from None

    return wrapper


class FileHandle:
    """An open regular file of some tree."""

    __slots__ = ("append", "fino", "key")

    def __init__(self, fino: int, key: Key, append: bool) -> None:
        self.fino = fino
        self.key = key
        self.append = append


#: A directory listing: ``(name, tree, engine ino)``; tree None means a control node's
#: fuse inode.
Listing = list[tuple[bytes, "TreeRef | None", int]]
#: Directory listings kept for readdir offsets that continue them.
LISTINGS_MAX = 64


class TextHandle:
    """An open read-only control file with fixed content (``.branchfs/store``)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class BranchOps:
    """The filesystem: branch ``branch`` of ``store`` at the root, the control directory too."""

    def __init__(self, store: Store, branch: str, mountpoint: str) -> None:
        self.store = store
        self.main = TreeRef(branch)
        self.mountpoint = mountpoint
        self.inodes = InodeMap(self.main)
        self.handles: dict[int, FileHandle | control.CtlHandle | TextHandle] = {}
        #: Listings by id: a readdir offset is ``id << 32 | position`` (see :meth:`readdir`).
        self.listings: OrderedDict[int, Listing] = OrderedDict()
        self._next_listing = 1
        #: What the current reply points into (a read's store snapshot); see :meth:`replied`.
        self.reply_resources = contextlib.ExitStack()
        #: Blocking work a request queued; the session runs it before replying.
        self.deferred: list[Callable[[], None]] = []
        #: Drops kernel caches: ``(entries, inodes)``; set by the session, called off-loop.
        self.invalidator: Callable[[list[tuple[int, bytes]], list[int]], None] = lambda _e, _i: None
        #: Serialises the request loop with the notification listener.
        self.lock: threading.RLock = threading.RLock()
        #: Whether the kernel left suid/sgid and security.capability clearing to us.
        self.kill_privs = False
        self._next_fh = 1
        self.buffers: dict[Key, WriteBuffer] = {}
        self.buffered = 0
        #: A full buffer being written to the store by the flush thread (write-behind):
        #: the writer goes on while it commits. Every request but a write waits for it.
        self.behind: tuple[Key, Future[None]] | None = None
        self._flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="branchfs-flush")
        #: Errors of write-behind flushes, reported by the next write, flush or fsync.
        self.write_errors: dict[Key, int] = {}
        self.holds: dict[Key, int] = {}
        self.orphans: set[Key] = set()
        self.kentries: set[tuple[int, bytes]] = set()
        self.pending: set[str] = set()
        #: The flush thread adds to ``pending`` while the loop may be taking it.
        self._pending_lock = threading.Lock()
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
        #: other change to the mounted tree goes through :meth:`forget_main`, which
        #: drops the whole cache before the kernel's.
        self.records: dict[int, Inode] = {}

    # -- plumbing -----------------------------------------------------------------------------

    def on_store_change(self, _path: str, names: tuple[str, ...]) -> None:
        """``Store.change_hook`` inside the daemon: remember, propagate after the request."""
        with self._pending_lock:
            self.pending.update(names)

    def negotiated(self, flags: int) -> None:
        """The INIT flags the kernel and the daemon agreed on."""
        self.kill_privs = bool(flags & K.HANDLE_KILLPRIV_V2)

    def defer(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` (it may block) before the current request's reply, off the loop."""
        self.deferred.append(fn)

    def take_work(self) -> list[Callable[[], None]]:
        """What must happen before the current request's reply; called after each request.

        Other daemons are told about branches this request changed, and the kernel forgets
        what it cached of the mounted view if a change reached it by another way.
        """
        work, self.deferred = self.deferred, []
        with self._pending_lock:
            names = tuple(self.pending)
            self.pending.clear()
        if names:
            regs = mount_mod.targets(self.store.path, names)
            if regs:
                work.append(lambda: [mount_mod.poke(r, names) for r in regs] and None)
        if self.main_stale:
            self.main_stale = False
            self.stale_inodes.clear()
            entries, inos = self.forget_main()
            work.append(lambda: self.invalidator(entries, inos))
        if self.stale_inodes:
            stale = list(self.stale_inodes)
            self.stale_inodes.clear()
            work.append(lambda: self.invalidator([], stale))
        return work

    def forget_main(self) -> tuple[list[tuple[int, bytes]], list[int]]:
        """Drop the daemon's caches of the mounted view; what the kernel must drop too."""
        self.records.clear()
        self.listings.clear()
        entries = list(self.kentries)
        self.kentries.clear()
        inos = self.inodes.main_inodes()
        if ROOT_INO not in inos:
            inos.append(ROOT_INO)
        self.stats["invalidations"] = self.stats.get("invalidations", 0) + 1
        return entries, inos

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
                self._cache_record((tree, ino), rec)
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
            self._cache_record(key, rec)
        return rec

    def _cache_record(self, key: Key, rec: Inode) -> None:
        """Keep ``rec`` for the next getattr if ``key`` is in the mounted tree.

        Other trees are not cached: the cache is only dropped when the mounted tree changes.
        """
        tree, eng = key
        if tree != self.main:
            return
        if len(self.records) >= RECORDS_MAX:
            self.records.clear()
        self.records[eng] = rec

    def _key(self, fino: int) -> Key:
        key = self.inodes.resolve(fino)
        if key is None:
            raise FUSEError(errno.EPERM if fino in CONTROL_NODES else errno.ENOENT)
        return key

    def _attrs(self, fino: int, key: Key, rec: Inode) -> K.EntryAttributes:
        a = K.EntryAttributes()
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

    def _control_attrs(self, fino: int) -> K.EntryAttributes:
        a = K.EntryAttributes()
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
            # A new mtime at every look makes the kernel drop its cached listing, which
            # cannot know about branches made elsewhere.
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = time.time_ns()
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
        if fino not in (BRANCHES, SNAPSHOTS):
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
            self._take_buffer(key)
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

    def _take_buffer(self, key: Key, flushing: bool = False) -> WriteBuffer | None:
        """Remove ``key``'s write buffer (to apply it, or because its data is gone)."""
        buf = self.buffers.pop(key, None)
        if buf is not None:
            self.buffered -= buf.nbytes
            if flushing:
                self.stats["flushes"] = self.stats.get("flushes", 0) + 1
        return buf

    def flush_key(self, key: Key) -> None:
        """Write one inode's buffered data to the store (one transaction).

        The buffer is taken first: if the transaction fails, its data is lost and the
        caller hears why.
        """
        self.settle()
        buf = self._take_buffer(key, flushing=True)
        if buf is None:
            return
        tree, ino = key
        rec = self._write(tree, lambda v: _apply(v, ino, buf))
        self._cache_record(key, rec)  # the getattr that follows a close needs no transaction

    def _flush_behind(self, key: Key) -> None:
        """Hand ``key``'s full buffer to the flush thread; the write that filled it returns.

        The writer's next ``write()`` is copied in while this one commits, on the other CPU.
        At most one buffer is in flight, so memory stays bounded.
        """
        self.settle()
        buf = self._take_buffer(key, flushing=True)
        assert buf is not None  # the write that filled it is the caller
        tree, ino = key
        future = self._flusher.submit(
            self.store.write_tree, tree.name, lambda v: _apply(v, ino, buf)
        )
        self.behind = (key, future)

    def settle(self) -> None:
        """Wait for the write-behind flush: afterwards the store holds every write."""
        if self.behind is None:
            return
        key, future = self.behind
        self.behind = None
        try:
            future.result()
        except Exception as exc:  # the write returned long ago: the next write/flush/fsync says
            code = _errno_of(exc)
            if code == errno.EIO:
                log.error("writing %s to the store failed", key, exc_info=exc)
            self.write_errors[key] = code
        if key[0] == self.main:
            self.records.pop(key[1], None)

    def _raise_write_error(self, key: Key) -> None:
        code = self.write_errors.pop(key, None)
        if code is not None:
            raise FUSEError(code)

    def flush_all(self) -> None:
        """Write every buffer to the store."""
        self.settle()
        for key in list(self.buffers):
            try:
                self.flush_key(key)
            except (BranchFSError, OSError):
                log.warning("flushing %s failed", key, exc_info=True)

    def sync_all(self) -> None:
        """Make every write() that returned so far part of the store (before fork, merge …)."""
        self.flush_all()

    def _size(self, key: Key) -> int:
        self.settle()
        rec = self._record(key)
        buf = self.buffers.get(key)
        return max(rec.size, buf.end) if buf is not None else rec.size

    # -- lookup, attributes -------------------------------------------------------------------

    @op
    def lookup(self, parent: int, name: bytes, ctx: K.RequestContext) -> K.EntryAttributes:
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
            neg = K.EntryAttributes()
            neg.st_ino = 0
            neg.entry_timeout = TIMEOUT
            return neg
        if rec is None:
            raise FUSEError(errno.ENOENT)
        self._cache_record((tree, ino), rec)
        fino = self.inodes.fuse_ino(tree, ino, alias)
        return self._entry(parent, name, fino, (tree, ino), rec)

    def _control_lookup(self, parent: int, name: bytes) -> K.EntryAttributes:
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

    def forget(self, inode_list: list[tuple[int, int]]) -> None:
        """The kernel dropped references; unlinked inodes nobody holds are deleted."""
        self.requests["forget"] = self.requests.get("forget", 0) + 1
        try:
            self.settle()
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
    def getattr(self, fino: int, ctx: K.RequestContext) -> K.EntryAttributes:
        """Attributes of ``fino`` (buffered writes included in size and mtime)."""
        if fino in CONTROL_NODES:
            return self._control_attrs(fino)
        key = self._key(fino)
        return self._attrs(fino, key, self._record(key))

    @op
    def setattr(
        self,
        fino: int,
        attr: K.EntryAttributes,
        fields: K.SetattrFields,
        fh: int | None,
        ctx: K.RequestContext,
    ) -> K.EntryAttributes:
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
        buf = self._take_buffer(key, flushing=True)

        kill = self.kill_privs and (fields.update_size or fields.update_uid or fields.update_gid)
        kill_suidgid = fields.kill_suidgid and not fields.update_mode

        def fn(v: View) -> Inode:
            if buf is not None:  # buffered data first, in the same transaction
                _apply(v, eng, buf)
            rec = T.setattr(v, eng, **kw)
            if kill and rec.is_reg:
                _drop_privs(v, eng, kill_suidgid)
                rec = T.get(v, eng)
            return rec

        rec = self._write(tree, fn)
        self._cache_record(key, rec)
        if tree == self.main and fino >= ALIAS_BASE:
            self.stale_inodes.add(eng)  # only this inode's cache in the mounted view
        return self._attrs(fino, key, rec)

    @op
    def readlink(self, fino: int, ctx: K.RequestContext) -> bytes:
        """The target of a symlink."""
        key = self._key(fino)
        return self._read(key[0], lambda v: T.readlink(v, key[1]))

    @op
    def access(self, fino: int, mode: int, ctx: K.RequestContext) -> bool:
        """Existence check; permissions are checked by the kernel (default_permissions)."""
        if fino in CONTROL_NODES:
            return True
        self._record(self._key(fino))
        return True

    @op
    def statfs(self, ctx: K.RequestContext) -> K.StatvfsData:
        """Space of the filesystem holding the store."""
        s = os.statvfs(self.store.path)
        out = K.StatvfsData()
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
        ctx: K.RequestContext,
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
        self._cache_record((tree, ino), rec)
        return self.inodes.fuse_ino(tree, ino, alias), (tree, ino), rec

    @op
    def mkdir(
        self, parent: int, name: bytes, mode: int, ctx: K.RequestContext
    ) -> K.EntryAttributes:
        """mkdir; under ``.branchfs/branches`` it forks, under ``snapshots`` it snapshots."""
        if parent in (BRANCHES, SNAPSHOTS):
            return self._control_mkdir(parent, name)
        fino, key, rec = self._make(parent, name, st.S_IFDIR | (mode & 0o7777), ctx)
        return self._entry(parent, name, fino, key, rec)

    def _control_mkdir(self, parent: int, name: bytes) -> K.EntryAttributes:
        new = name.decode("utf-8", "surrogateescape")
        self.sync_all()
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
    def mknod(
        self, parent: int, name: bytes, mode: int, rdev: int, ctx: K.RequestContext
    ) -> K.EntryAttributes:
        """A regular file, FIFO, socket or device node."""
        fino, key, rec = self._make(parent, name, mode, ctx, rdev=rdev)
        return self._entry(parent, name, fino, key, rec)

    @op
    def symlink(
        self, parent: int, name: bytes, target: bytes, ctx: K.RequestContext
    ) -> K.EntryAttributes:
        """A symbolic link to ``target``."""
        fino, key, rec = self._make(parent, name, st.S_IFLNK | 0o777, ctx, target=target)
        return self._entry(parent, name, fino, key, rec)

    @op
    def link(
        self, fino: int, new_parent: int, new_name: bytes, ctx: K.RequestContext
    ) -> K.EntryAttributes:
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
        self._cache_record((tree, eng), rec)
        return self._entry(new_parent, new_name, fino, (tree, eng), rec)

    @op
    def unlink(self, parent: int, name: bytes, ctx: K.RequestContext) -> None:
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
    def rmdir(self, parent: int, name: bytes, ctx: K.RequestContext) -> None:
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
    def rename(
        self,
        old_parent: int,
        old_name: bytes,
        new_parent: int,
        new_name: bytes,
        flags: int,
        ctx: K.RequestContext,
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

    def _new_fh(self, handle: FileHandle | control.CtlHandle | TextHandle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = handle
        return fh

    @op
    def open(
        self, fino: int, flags: int, ctx: K.RequestContext, *, kill_suidgid: bool = False
    ) -> K.FileInfo:
        """Open a file (O_TRUNC truncates here: the kernel sends it atomically).

        A read-only open asks for no FLUSH at close: it has nothing to flush. A write-only
        open bypasses the page cache: its pages would be dropped by the next ``stat`` anyway
        (auto-invalidation), and skipping them saves the writer a copy.
        """
        if fino == CTL_FILE:
            return K.FileInfo(fh=self._new_fh(control.CtlHandle()), direct_io=True)
        if fino == STORE_FILE:
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise FUSEError(errno.EACCES)
            return K.FileInfo(fh=self._new_fh(TextHandle(self._store_text())), direct_io=True)
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
            self._take_buffer(key)
            if rec.size or self._privileged(rec, kill_suidgid):
                kill = kill_suidgid

                def trunc(v: View) -> None:
                    T.truncate(v, eng, 0)
                    _drop_privs(v, eng, kill)

                self._write(tree, trunc)
                if fino >= ALIAS_BASE and tree == self.main:
                    self.stale_inodes.add(eng)
        self._hold(key)
        fh = self._new_fh(FileHandle(fino, key, bool(flags & os.O_APPEND)))
        write_only = flags & os.O_ACCMODE == os.O_WRONLY
        return K.FileInfo(
            fh=fh, keep_cache=fino < ALIAS_BASE, noflush=not writing, direct_io=write_only
        )

    def _privileged(self, rec: Inode, kill_suidgid: bool) -> bool:
        """Whether writing to ``rec`` must clear privileges (see :func:`_drop_privs`)."""
        if not self.kill_privs:
            return False
        if b"security.capability" in rec.xattrs:
            return True
        return kill_suidgid and bool(rec.mode & (st.S_ISUID | st.S_ISGID))

    @op
    def create(
        self, parent: int, name: bytes, mode: int, flags: int, ctx: K.RequestContext
    ) -> tuple[K.FileInfo, K.EntryAttributes]:
        """Create and open a regular file."""
        fino, key, rec = self._make(parent, name, st.S_IFREG | (mode & 0o7777), ctx)
        attrs = self._entry(parent, name, fino, key, rec)
        self._hold(key)
        fh = self._new_fh(FileHandle(fino, key, bool(flags & os.O_APPEND)))
        write_only = flags & os.O_ACCMODE == os.O_WRONLY
        return K.FileInfo(fh=fh, keep_cache=fino < ALIAS_BASE, direct_io=write_only), attrs

    @op
    def read(self, fh: int, off: int, size: int) -> bytes | list[bytes]:
        """Read (buffered writes of the inode are flushed first, so reads see them).

        File data comes back as pieces for one ``writev``: memoryviews into the store's map,
        valid until :meth:`replied`, so the bytes are copied once, straight to the kernel.
        """
        h = self.handles[fh]
        if isinstance(h, control.CtlHandle):
            line = h.pending()
            if line is not None:
                h.answer += self._run_ctl(line)
            return h.read(size)
        if isinstance(h, TextHandle):
            return h.data[off : off + size]
        assert isinstance(h, FileHandle)
        key = h.key
        if key in self.buffers:
            self.flush_key(key)
        tree = key[0]
        view = self.reply_resources.enter_context(
            self.store.viewing(tree.name, snapshot=tree.snapshot)
        )
        return T.read_pieces(view, key[1], off, size)

    def replied(self) -> None:
        """The reply to the current request is written: let go of what it pointed into."""
        self.reply_resources.close()

    @op
    def write(self, fh: int, off: int, data: bytes, *, kill_suidgid: bool = False) -> int:
        """Buffer a write; large buffers go to the store at once."""
        h = self.handles[fh]
        if isinstance(h, control.CtlHandle):
            h.request += data
            line = h.take_line()
            while line is not None:
                h.answer += self._run_ctl(line)
                line = h.take_line()
            return len(data)
        if not isinstance(h, FileHandle):
            raise FUSEError(errno.EBADF)
        key = h.key
        if key[0].snapshot:
            raise FUSEError(errno.EROFS)
        self._raise_write_error(key)
        if h.append:
            off = self._size(key)
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = WriteBuffer()
        buf.add(off, data)
        if self.kill_privs:
            buf.kill_suidgid = buf.kill_suidgid or kill_suidgid
            buf.drop_privs = True
        self.buffered += len(data)
        if len(data) > self.stats.get("largest_write", 0):
            self.stats["largest_write"] = len(data)
        if buf.nbytes >= FLUSH_BYTES:
            self._flush_behind(key)
        elif self.buffered >= TOTAL_BYTES:
            self.flush_all()
        if h.fino >= ALIAS_BASE and key[0] == self.main:
            self.stale_inodes.add(key[1])
        return len(data)

    @op
    def flush(self, fh: int) -> None:
        """close(): buffered data reaches the store (close-to-open consistency)."""
        h = self.handles.get(fh)
        if isinstance(h, FileHandle):
            self._raise_write_error(h.key)
            if h.key in self.buffers:
                self.flush_key(h.key)

    @op
    def release(self, fh: int) -> None:
        """The last close of an open file.

        Nobody hears a RELEASE's answer, so data that cannot be written now (a full disk)
        is dropped with a warning, and the file is let go whatever happened: a file kept
        held would never free its space.
        """
        h = self.handles.pop(fh, None)
        if isinstance(h, FileHandle):
            key = h.key
            try:
                if key in self.buffers:
                    self.flush_key(key)
            except (BranchFSError, OSError) as exc:  # flush_key took the buffer: it is gone
                log.warning("data written to %s before its last close is lost: %s", key, exc)
            finally:
                if key in self.write_errors and not any(
                    isinstance(o, FileHandle) and o.key == key for o in self.handles.values()
                ):
                    del self.write_errors[key]  # nobody is left to be told
                doomed: list[Key] = []
                self._unhold(key, 1, doomed)
                if doomed:
                    self._drop_orphans(doomed)

    @op
    def fsync(self, fh: int, datasync: bool) -> None:
        """Buffered data to the store, and the store to stable storage."""
        h = self.handles.get(fh)
        if isinstance(h, FileHandle):
            self._raise_write_error(h.key)
            if h.key in self.buffers:
                self.flush_key(h.key)
        self.defer(self.store.sync)

    # -- directories ----------------------------------------------------------------------------

    def _list(self, fino: int) -> Listing:
        """The entries of directory ``fino`` now."""
        if fino == CTL_DIR:
            return [
                (b"branches", None, BRANCHES),
                (b"snapshots", None, SNAPSHOTS),
                (b"ctl", None, CTL_FILE),
                (b"store", None, STORE_FILE),
            ]
        if fino in (BRANCHES, SNAPSHOTS):
            snap = fino == SNAPSHOTS
            names = self.store.snapshots() if snap else self.store.branches()
            return [(os.fsencode(n), TreeRef(n, snap), ROOT_INO) for n in names]
        if fino in CONTROL_NODES:
            raise FUSEError(errno.ENOTDIR)
        tree, eng = self._key(fino)

        def fn(v: View) -> list[tuple[bytes, int]]:
            T.get_dir(v, eng)
            return v.list_dir(eng)

        listing = self._read(tree, fn)
        hide = fino == ROOT_INO
        return [(n, tree, i) for n, i in listing if not (hide and n == CONTROL_NAME)]

    def _listing(self, fino: int, offset: int) -> tuple[int, Listing]:
        """The listing an offset continues (a new one at offset 0), and its id."""
        lid = offset >> 32
        listing = self.listings.get(lid) if offset else None
        if listing is None:
            if not offset:
                lid = self._next_listing
                self._next_listing = lid + 1 if lid < (1 << 30) else 1
            listing = self._list(fino)  # a continued listing that aged out is taken anew
            self.listings[lid] = listing
            while len(self.listings) > LISTINGS_MAX:
                self.listings.popitem(last=False)
        else:
            self.listings.move_to_end(lid)
        return lid, listing

    @op
    def readdir(self, fino: int, offset: int, out: K.DirBuffer) -> None:
        """Entries with their attributes (readdirplus), from a listing taken at offset 0.

        Directories have no open handle (the kernel opens them itself), so an offset names
        both a listing and a position in it: ``listing id << 32 | position``. Position 1 is
        after ``.``, 2 after ``..``, ``k + 3`` after entry ``k``; each ``opendir``/
        ``rewinddir`` starts at 0 and gets a new listing, so entries never repeat or vanish
        while a directory is read and changed at once.
        """
        lid, entries = self._listing(fino, offset)
        base = lid << 32
        start = offset & 0xFFFFFFFF
        if start < 1:
            if not out.add_dot(b".", fino, base | 1):
                return
            start = 1
        if start < 2:
            if not out.add_dot(b"..", fino, base | 2):
                return
            start = 2
        alias = fino >= ALIAS_BASE
        i = start - 2
        while i < len(entries):
            name, tree, num = entries[i]
            if tree is None:
                if not out.add(name, self._control_attrs(num), base | (i + 3)):
                    return
                if out.plus:
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
                efino = self.inodes.fuse_ino(batch_tree, eng, alias)
                key = (batch_tree, eng)
                if not out.add(ename, self._attrs(efino, key, rec), base | (i + k + 3)):
                    return
                if out.plus:  # the kernel took a reference and may cache the name
                    self.inodes.looked_up(efino)
                    self._hold(key)
                    if not alias:
                        self._remember(fino, ename)
            i = j

    @op
    def fsyncdir(self, fino: int, datasync: bool) -> None:
        """Make the store durable."""
        self.defer(self.store.sync)

    @op
    def syncfs(self) -> None:
        """sync(2) on the mount: every buffer to the store, the store to stable storage."""
        self.flush_all()
        self.defer(self.store.sync)

    # -- extended attributes --------------------------------------------------------------------

    @op
    def getxattr(self, fino: int, name: bytes, ctx: K.RequestContext) -> bytes:
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
    def setxattr(
        self, fino: int, name: bytes, value: bytes, flags: int, ctx: K.RequestContext
    ) -> None:
        """Set an extended attribute (XATTR_CREATE / XATTR_REPLACE honoured)."""
        if fino in CONTROL_NODES:
            raise FUSEError(errno.EPERM)
        tree, eng = self._key(fino)
        self._write(tree, lambda v: T.setxattr(v, eng, name, value, flags), fino)

    @op
    def listxattr(self, fino: int, ctx: K.RequestContext) -> list[bytes]:
        """Names of the extended attributes."""
        if fino in CONTROL_NODES:
            return []
        return sorted(self._record(self._key(fino)).xattrs)

    @op
    def removexattr(self, fino: int, name: bytes, ctx: K.RequestContext) -> None:
        """Remove an extended attribute (ENODATA if unset)."""
        if fino in CONTROL_NODES:
            raise FUSEError(errno.EPERM)
        tree, eng = self._key(fino)
        self._write(tree, lambda v: T.removexattr(v, eng, name), fino)

    # -- the control file -----------------------------------------------------------------------

    def _run_ctl(self, line: str) -> bytes:
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
            self.sync_all()
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
        self._flusher.shutdown()
        self.reply_resources.close()
        if self.orphans:
            self._drop_orphans(list(self.orphans))
            self.orphans.clear()
        self.store.sync()

    def serve_notifications(self, listener: socket.socket) -> None:
        """Answer change notices from writers in other processes (a thread of its own)."""
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # the listener was closed: the daemon is stopping
            try:
                with conn:
                    conn.settimeout(mount_mod.NOTIFY_TIMEOUT)
                    self._answer_notification(conn)
            except Exception:  # a writer that went away must not stop the daemon
                log.warning("a change notification failed", exc_info=True)

    def _answer_notification(self, conn: socket.socket) -> None:
        data = mount_mod.recv_line(conn)
        if not data.endswith(b"\n"):
            return  # the writer went away before it finished
        try:
            names = json.loads(data)["changed"]
        except (ValueError, KeyError, TypeError):
            conn.sendall(b"bad\n")
            return
        if self.main.name in names:
            with self.lock:
                entries, inos = self.forget_main()
            self.invalidator(entries, inos)
        conn.sendall(b"ok\n")


def _apply(v: View, ino: int, buf: WriteBuffer) -> Inode:
    """Write a buffer's segments into ``ino`` and give it the buffer's mtime; its record."""
    for offset, data in buf.segments:
        T.write(v, ino, offset, data)
    if buf.drop_privs:
        _drop_privs(v, ino, buf.kill_suidgid)
    return T.setattr(v, ino, mtime_ns=buf.mtime_ns, ctime_ns=buf.mtime_ns)


def _drop_privs(v: View, ino: int, kill_suidgid: bool) -> None:
    """What a write or truncate must clear once the kernel left it to us (KILLPRIV_V2).

    ``security.capability`` goes on any write, as Linux does; set-user-ID, and set-group-ID
    on a group-executable file, go when the writer lacks CAP_FSETID (``kill_suidgid``).
    """
    rec = v.inode(ino)
    if rec is None:
        return
    if b"security.capability" in rec.xattrs:
        T.removexattr(v, ino, b"security.capability")
    if kill_suidgid:
        mode = rec.mode & ~st.S_ISUID
        if rec.mode & st.S_IXGRP:
            mode &= ~st.S_ISGID
        if mode != rec.mode:
            T.setattr(v, ino, mode=mode & 0o7777)
