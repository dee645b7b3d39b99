"""The bridge between the kernel's requests and the mount's nodes (go-fuse's ``fs/bridge``).

:class:`Bridge` is the filesystem object :mod:`.session` calls, one decoded request at a
time. It owns the kernel's bookkeeping: the fuse inode table and lookup counts
(:mod:`.inodes`), what the kernel holds of each inode (so that orphans go at the last
hold, :mod:`.orphans`), open file handles, and readdir listings (:mod:`.listings`). It
sends each request to the node kind that answers it: the trees (:class:`.nodes.TreeNodes`)
or the control directory (:class:`.ctldir.ControlDir`). Write buffers are
:mod:`.writeback`'s, cache coherence :mod:`.coherence`'s.

Every handler is wrapped (:func:`op`): it is counted for ``ctl stats``, waits for a
write-behind commit unless it is a write, and turns any exception into ``FUSEError`` with
Linux's errno; nothing else reaches the kernel. Work that may block (the store's fsync,
telling other daemons, dropping kernel caches) is queued with :meth:`Bridge.defer` and
runs before the reply, off the request loop. The request loop holds :attr:`Bridge.lock`
while a handler runs.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import stat as st
import threading
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

from branchfs import BranchFSError, Store
from branchfs.records import ROOT_INO

from . import dac
from . import kernel as K
from .coherence import Coherence, Work
from .ctldir import ControlDir, CtlHandle, TextHandle
from .errors import errno_of
from .inodes import (
    ALIAS_BASE,
    BRANCHES,
    CONTROL_NODES,
    CTL_DIR,
    FIRST_DYNAMIC,
    SNAPSHOTS,
    Holds,
    InodeMap,
    Key,
    TreeRef,
)
from .listings import Listings
from .nodes import CONTROL_NAME, TIMEOUT, Entry, FileHandle, TreeNodes
from .stats import Stats
from .writeback import SEALED_FIRST, SEALED_SAFE, WriteBack

log = logging.getLogger("branchfs.fuse")
P = ParamSpec("P")
R = TypeVar("R")

#: The caller of a request that does not say who it is.
NOBODY = K.RequestContext(-1, -1, 0)

#: The answer to a lookup of a name that is not there: a negative entry the kernel keeps
#: for the mounted view's timeout (shared: never changed).
NEGATIVE = K.EntryAttributes()
NEGATIVE.entry_timeout = TIMEOUT
#: The same, not to be cached (in a directory :func:`.dac.guarded`).
NEGATIVE_UNCACHED = K.EntryAttributes()

Handle = FileHandle | CtlHandle | TextHandle


def op(fn: Callable[Concatenate[Bridge, P], R]) -> Callable[Concatenate[Bridge, P], R]:
    """Wrap a handler: count it; engine errors become FUSEError with Linux's errno."""
    name = fn.__name__
    settles = name != "write"
    sealed_safe = name in SEALED_SAFE or name in SEALED_FIRST

    def wrapper(self: Bridge, /, *args: P.args, **kwargs: P.kwargs) -> R:
        counts = self.requests
        counts[name] = counts.get(name, 0) + 1
        wb = self.wb
        if settles and wb.behind is not None:
            wb.settle()  # everything but a write sees the store with every write in it
        if wb.sealed and not sealed_safe:
            wb.flush_sealed()
        try:
            return fn(self, *args, **kwargs)
        except K.FUSEError:
            raise
        except Exception as exc:
            code = errno_of(exc)
            if code == errno.EIO:
                log.exception("%s%r failed", name, args[:3])
            raise K.FUSEError(code) from None

    functools.update_wrapper(wrapper, fn)
    return wrapper


class Bridge:
    """The filesystem: branch ``branch`` of ``store`` at the root, the control directory too."""

    def __init__(self, store: Store, branch: str, mountpoint: str) -> None:
        self.store = store
        self.main = TreeRef(branch)
        self.mountpoint = mountpoint
        #: Serialises the request loop with the notice listener.
        self.lock = threading.RLock()
        self.stats = Stats()
        #: Requests that reached the daemon, by operation (``stats`` on .branchfs/ctl).
        self.requests = self.stats.requests
        self.inodes = InodeMap(self.main)
        self.holds = Holds()
        self.coherence = Coherence(store, self.main, self.inodes, self.stats, self.lock)
        self.group = self.coherence.group
        self.wb = WriteBack(store, self.coherence, self.stats)
        self.group.before_commit = self.wb.apply_all
        self.wb.is_open = self.holds.is_open
        self.tree = TreeNodes(store, self.main, self.inodes, self.holds, self.coherence, self.wb)
        self.ctl = ControlDir(store, self.main, self.coherence, self.wb, self.stats, mountpoint)
        self.handles: dict[int, Handle] = {}
        #: The daemon's permission checks, on a mount without ``default_permissions``.
        self.checks: dac.KernelChecks = dac.KernelChecks()
        self._next_fh = 1
        self.listings = Listings(
            self.ctl, self.tree, self.inodes, self.holds, self.coherence, self._viewing
        )
        self.coherence.on_forget.append(self.listings.clear)
        #: What the current reply points into (a read's store snapshot); see :meth:`replied`.
        self.reply_resources = contextlib.ExitStack()
        #: Whether :attr:`reply_resources` holds anything (a read's snapshot).
        self._holding = False
        #: Blocking work a request queued; the session runs it before replying.
        self.deferred: Work = []

    # -- plumbing -------------------------------------------------------------------------------

    def negotiated(self, flags: int) -> None:
        """The INIT flags the kernel and the daemon agreed on."""
        self.tree.kill_privs = bool(flags & K.HANDLE_KILLPRIV_V2)

    def defer(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` (it may block) before the current request's reply, off the loop."""
        self.deferred.append(fn)

    def take_work(self) -> Work:
        """What must happen before the current request's reply; called after each request.

        Commits the batch when it is due (:mod:`.groupcommit`), or when another process has
        waited for it a whole batch window on a busy mount, and the write buffers when they
        are due with no batch open (:meth:`.writeback.WriteBack.push`).
        """
        group = self.group
        if group.wanted and group.overdue():
            self._settle_for_others()
        elif group.due():
            group.commit()
        elif self.wb.buffers and self.wb.overdue():
            self.wb.push()
        if self.wb.batch_lost():
            self.coherence.lost_batch()
        if not self.deferred and not self.coherence.busy():
            return []  # the common case, without asking the coherence module for lists
        work, self.deferred = self.deferred, []
        return work + self.coherence.take_work()

    def _settle_for_others(self) -> None:
        """Another process waits: every buffer to the store, commit, let it go."""
        self.wb.flush_all()  # its API call sees every file closed before it
        self.group.commit()
        self.group.answer()

    def idle(self) -> Work:
        """No request for the poll window, or the batch is due: commit it.

        Returns work for the worker thread (change notices), with no reply to send.
        """
        with self.lock:
            if self.group.wanted:
                self._settle_for_others()
            elif self.wb.buffers and not self.group.batch_open():
                self.wb.push()  # nothing left in memory once the flush thread is done
            else:
                self.group.commit()  # with every buffer (before_commit)
            return self.take_work()

    def remaining_ms(self) -> int:
        """How long the loop may sleep before the batch or the write buffers are due (ms);
        -1 with neither."""
        wait = self.group.remaining_ms()
        if self.wb.buffers:
            left = self.wb.remaining_ms()
            wait = left if wait < 0 else min(wait, left)
        return wait

    def _commit_for_sync(self) -> None:
        """fsync, fsyncdir, syncfs: commit the batch, then sync the store before the reply.

        Every write buffer, open files' too, goes into that commit (a batch may not be open
        to carry them: an fsync of the mount's root directory after writes only). A batch
        whose commit failed earlier is reported here, once, as the kernel reports a failed
        writeback.
        """
        self.wb.apply_all()
        self.group.commit()
        code = self.group.take_error()
        if code:
            raise K.FUSEError(code)
        self.defer(self.store.sync)

    def replied(self) -> None:
        """The reply to the current request is written: let go of what it pointed into."""
        if self._holding:
            self._holding = False
            self.reply_resources.close()

    def _entry(self, parent: int, name: bytes, entry: Entry) -> K.EntryAttributes:
        """Attributes for a reply that gives the kernel a new reference on ``entry``."""
        self.inodes.looked_up(entry.fino)
        self.holds.hold(entry.key)
        self.coherence.remember(entry.key[0], parent, name)
        attrs = self.tree.attrs(entry.fino, entry.key, entry.rec)
        if self.checks.uncached(parent):
            attrs.entry_timeout = 0.0
        return attrs

    def _viewing(self, fino: int) -> None:
        """Something inside the view ``fino`` belongs to is about to be given to the kernel:
        from now on other processes' changes to its branch must reach this daemon
        (:meth:`.coherence.Coherence.view`). Until then the kernel holds only the view's
        root, whose attributes it keeps for a second."""
        key = self.inodes.resolve(fino)
        if key is not None and key[0].name not in self.coherence.viewed:
            self.coherence.view(key[0])

    def _new_fh(self, handle: Handle, info: K.FileInfo) -> K.FileInfo:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = handle
        info.fh = fh
        return info

    def _unhold(self, keys: list[tuple[Key, int]]) -> None:
        """The kernel let go of ``n`` holds on each key; orphans left unheld are deleted."""
        doomed: list[Key] = []
        for key, n in keys:
            self.holds.unhold(key, n, doomed)
        if doomed:
            self.tree.orphans.drop_orphans(doomed)

    # -- lookup and attributes ------------------------------------------------------------------

    @op
    def lookup(self, parent: int, name: bytes, ctx: K.RequestContext) -> K.EntryAttributes:
        """Resolve ``name`` in ``parent``; ENOENT answers of the mounted view are cached."""
        if parent >= ALIAS_BASE and parent in CONTROL_NODES:
            found = self.ctl.lookup(parent, name)
            if isinstance(found, TreeRef):
                rec = self.tree.root_record(found)  # ENOENT first: no registry read for it
                link = self.ctl.server_link(found)
                if link is None:
                    return self._entry(parent, name, self.tree.root_entry(found, rec))
                found = link
            self.inodes.looked_up(found)
            return self.ctl.attrs(found)
        if parent == ROOT_INO and name == CONTROL_NAME:
            self.inodes.looked_up(CTL_DIR)
            return self.ctl.attrs(CTL_DIR)
        if parent >= FIRST_DYNAMIC:
            self._viewing(parent)
        self.checks.require(parent, dac.MAY_EXEC, ctx)
        tree, entry = self.tree.lookup(parent, name)
        if entry is None:
            self.coherence.remember(tree, parent, name)
            return NEGATIVE_UNCACHED if self.checks.uncached(parent) else NEGATIVE
        return self._entry(parent, name, entry)

    def forget(self, inode_list: list[tuple[int, int]]) -> None:
        """The kernel dropped references; unlinked inodes nobody holds are deleted."""
        self.stats.request("forget")
        try:
            self.wb.settle()
            keys: list[tuple[Key, int]] = []
            for fino, n in inode_list:
                key = self.inodes.resolve(fino)
                gone = self.inodes.forget(fino, n)
                if key is not None:
                    keys.append((key, n))
                    if gone and key[1] == ROOT_INO and key[0] != self.main:
                        # The kernel holds nothing of that view any more: a child pins
                        # its parent, so the root goes last.
                        self.coherence.unview(key[0])
            self._unhold(keys)
        except Exception:  # forget must not raise (it answers no request)
            log.exception("forget failed")

    @op
    def getattr(self, fino: int, ctx: K.RequestContext) -> K.EntryAttributes:
        """Attributes of ``fino`` (buffered writes included in size and mtime)."""
        if fino in CONTROL_NODES:
            return self.ctl.attrs(fino)
        return self.tree.getattr(fino)

    @op
    def setattr(
        self, fino: int, fields: K.SetattrFields, ctx: K.RequestContext
    ) -> K.EntryAttributes:
        """chmod, chown, truncate and utimens in one transaction."""
        if fino in CONTROL_NODES:
            return self.ctl.setattr(fino, fields)
        fields = self.checks.setattr(fino, fields, ctx)
        return self.tree.setattr(fino, fields, ctx)

    @op
    def readlink(self, fino: int, ctx: K.RequestContext) -> bytes:
        """The target of a symlink."""
        if fino in CONTROL_NODES:
            return self.ctl.readlink(fino)
        return self.tree.readlink(fino)

    @op
    def access(self, fino: int, mode: int, ctx: K.RequestContext) -> bool:
        """Existence, and the permission where the kernel leaves it to the daemon."""
        if fino not in CONTROL_NODES:
            self.tree.access(fino)
        self.checks.access(fino, mode, ctx)
        return True

    @op
    def statfs(self, ctx: K.RequestContext) -> K.StatvfsData:
        """Space of the filesystem holding the store."""
        return self.tree.statfs()

    # -- creating and removing names ------------------------------------------------------------

    @op
    def mkdir(
        self, parent: int, name: bytes, mode: int, ctx: K.RequestContext
    ) -> K.EntryAttributes:
        """mkdir; under ``.branchfs/branches`` it forks, under ``snapshots`` it snapshots."""
        if parent in (BRANCHES, SNAPSHOTS):
            tree = self.ctl.mkdir(parent, name)
            return self._entry(parent, name, self.tree.root_entry(tree))
        self.checks.require(parent, dac.CHANGE, ctx)
        entry = self.tree.make(parent, name, st.S_IFDIR | (mode & 0o7777), ctx)
        return self._entry(parent, name, entry)

    @op
    def mknod(
        self, parent: int, name: bytes, mode: int, rdev: int, ctx: K.RequestContext
    ) -> K.EntryAttributes:
        """A regular file, FIFO, socket or device node."""
        self.checks.require(parent, dac.CHANGE, ctx)
        return self._entry(parent, name, self.tree.make(parent, name, mode, ctx, rdev=rdev))

    @op
    def symlink(
        self, parent: int, name: bytes, target: bytes, ctx: K.RequestContext
    ) -> K.EntryAttributes:
        """A symbolic link to ``target``."""
        self.checks.require(parent, dac.CHANGE, ctx)
        entry = self.tree.make(parent, name, st.S_IFLNK | 0o777, ctx, target=target)
        return self._entry(parent, name, entry)

    @op
    def link(
        self, fino: int, new_parent: int, new_name: bytes, ctx: K.RequestContext
    ) -> K.EntryAttributes:
        """A hard link; EXDEV across trees."""
        self.checks.link(fino, new_parent, ctx)
        return self._entry(new_parent, new_name, self.tree.link(fino, new_parent, new_name))

    @op
    def unlink(self, parent: int, name: bytes, ctx: K.RequestContext) -> None:
        """Remove a name; an inode still open or known to the kernel lives on as an orphan."""
        if parent in CONTROL_NODES:
            self.ctl.unlink(parent, name)
        self.checks.remove(parent, name, ctx)
        self.tree.unlink(parent, name)

    @op
    def rmdir(self, parent: int, name: bytes, ctx: K.RequestContext) -> None:
        """Remove an empty directory; under ``.branchfs`` discard a branch or snapshot."""
        if parent in (BRANCHES, SNAPSHOTS):
            self.ctl.rmdir(parent, name)
            return
        if parent in CONTROL_NODES:
            raise K.FUSEError(errno.EPERM)
        self.checks.remove(parent, name, ctx)
        self.tree.rmdir(parent, name)

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
        self.checks.rename(old_parent, old_name, new_parent, new_name, flags, ctx)
        self.tree.rename(old_parent, old_name, new_parent, new_name, flags)

    # -- files ----------------------------------------------------------------------------------

    @op
    def open(
        self, fino: int, flags: int, ctx: K.RequestContext, *, kill_suidgid: bool = False
    ) -> K.FileInfo:
        """Open a file; see :meth:`.nodes.TreeNodes.open` and :meth:`.ctldir.ControlDir.open`."""
        handle: Handle
        if fino in CONTROL_NODES:
            handle, info = self.ctl.open(fino, flags)
        else:
            self.checks.open(fino, flags, ctx)
            handle, info = self.tree.open(fino, flags, ctx, kill_suidgid)
        return self._new_fh(handle, info)

    @op
    def create(
        self, parent: int, name: bytes, mode: int, flags: int, ctx: K.RequestContext
    ) -> tuple[K.FileInfo, K.EntryAttributes]:
        """Create and open a regular file."""
        self.checks.require(parent, dac.CHANGE, ctx)
        entry = self.tree.make(parent, name, st.S_IFREG | (mode & 0o7777), ctx)
        attrs = self._entry(parent, name, entry)
        handle, info = self.tree.opened(entry, flags)
        return self._new_fh(handle, info), attrs

    @op
    def tmpfile(
        self, parent: int, mode: int, flags: int, ctx: K.RequestContext
    ) -> tuple[K.FileInfo, K.EntryAttributes]:
        """``open(dir, O_TMPFILE)``: create and open a file that has no name."""
        self.checks.require(parent, dac.CHANGE, ctx)
        entry = self.tree.make_unnamed(parent, mode, ctx)
        self.inodes.looked_up(entry.fino)
        self.holds.hold(entry.key)
        attrs = self.tree.attrs(entry.fino, entry.key, entry.rec)
        handle, info = self.tree.opened(entry, flags)
        return self._new_fh(handle, info), attrs

    @op
    def read(self, fh: int, off: int, size: int) -> bytes | list[bytes | memoryview]:
        """Read (buffered writes of the inode are flushed first, so reads see them).

        File data comes back as pieces for one ``writev``: memoryviews into the store's map,
        valid until :meth:`replied`, so the bytes are copied once, straight to the kernel.
        """
        h = self.handles[fh]
        if isinstance(h, FileHandle):
            self._holding = True
            return self.tree.read(h, off, size, self.reply_resources)
        return self.ctl.read(h, off, size)

    @op
    def write(
        self,
        fh: int,
        off: int,
        data: bytes,
        ctx: K.RequestContext | None = None,
        *,
        kill_suidgid: bool = False,
    ) -> int:
        """Buffer a write; large buffers go to the store at once. ``kill_suidgid``: the
        writer lacks CAP_FSETID (``ctx`` says who it is)."""
        h = self.handles[fh]
        if isinstance(h, FileHandle):
            return self.tree.write(h, off, data, ctx or NOBODY, kill_suidgid)
        return self.ctl.write(h, data)

    @op
    def flush(self, fh: int) -> None:
        """close(): buffered data reaches the store (close-to-open consistency)."""
        h = self.handles.get(fh)
        if isinstance(h, FileHandle):
            self.tree.flush(h)

    @op
    def release(self, fh: int) -> None:
        """The last close of an open file.

        In the mounted tree the file's buffer goes to the store with the other closed ones,
        in one transaction before the batch commits (:meth:`.writeback.WriteBack.close`);
        in a view under ``.branchfs/`` at once. Nobody hears a RELEASE's answer, so data
        that cannot be written (a full disk) is dropped with a warning, and the file is let
        go whatever happened: a file kept held would never free its space. The next fsync
        or syncfs reports the loss (:meth:`.writeback.WriteBack.lost`).
        """
        h = self.handles.pop(fh, None)
        if not isinstance(h, FileHandle):
            return
        key = h.key
        try:
            if key in self.wb.buffers:
                if h.fino < ALIAS_BASE:
                    self.wb.close(key)
                else:
                    self.wb.flush(key)
        except (BranchFSError, OSError) as exc:  # flush took the buffer: it is gone
            self.wb.lost(key, exc)  # the next fsync or syncfs reports it
        finally:
            if key in self.wb.write_errors and not any(
                isinstance(o, FileHandle) and o.key == key for o in self.handles.values()
            ):
                self.wb.forget_error(key)  # nobody is left to be told
            self.holds.close(key)
            self._unhold([(key, 1)])

    @op
    def fsync(self, fh: int, datasync: bool) -> None:
        """Buffered data to the store, and the store to stable storage."""
        h = self.handles.get(fh)
        if isinstance(h, FileHandle):
            self.tree.flush(h)
        self._commit_for_sync()

    # -- directories ----------------------------------------------------------------------------

    @op
    def readdir(
        self, fino: int, offset: int, out: K.DirBuffer, ctx: K.RequestContext = NOBODY
    ) -> None:
        """Entries with their attributes (readdirplus): see :meth:`.listings.Listings.readdir`."""
        self.checks.listing(fino, offset, ctx)
        self.listings.readdir(fino, offset, out, uncached=self.checks.uncached(fino))

    @op
    def fsyncdir(self, fino: int, datasync: bool) -> None:
        """Make the store durable: every call that returned, and every ``write()`` to files
        still open, committed and synced. This is how a user syncs the whole mount
        (``sync MOUNTPOINT``, ``os.fsync`` of the root directory): the kernel never sends
        :meth:`syncfs` to a FUSE daemon (see its docstring)."""
        self._commit_for_sync()

    @op
    def syncfs(self) -> None:
        """FUSE_SYNCFS: every buffer to the store, the store to stable storage.

        Linux (6.18) sends it only to a filesystem whose connection sets ``sync_fs``, which
        only virtiofs does (fs/fuse/inode.c ``fuse_sync_fs``, fs/fuse/virtio_fs.c), so
        ``syncfs(2)`` and ``sync(1)`` never reach this daemon; :meth:`fsyncdir` does."""
        self.wb.flush_all()
        self._commit_for_sync()

    # -- extended attributes --------------------------------------------------------------------

    @op
    def getxattr(self, fino: int, name: bytes, ctx: K.RequestContext) -> bytes | None:
        """An extended attribute; None if unset (ENODATA)."""
        names = self.stats.xattr_names
        names[name] = names.get(name, 0) + 1
        if fino in CONTROL_NODES:
            return None
        self.checks.xattr(fino, name, ctx, write=False)
        return self.tree.getxattr(fino, name)

    @op
    def setxattr(
        self, fino: int, name: bytes, value: bytes, flags: int, ctx: K.RequestContext
    ) -> None:
        """Set an extended attribute (XATTR_CREATE / XATTR_REPLACE honoured)."""
        if fino in CONTROL_NODES:
            raise K.FUSEError(errno.EPERM)
        self.checks.xattr(fino, name, ctx, write=True)
        self.tree.setxattr(fino, name, value, flags)

    @op
    def listxattr(self, fino: int, ctx: K.RequestContext) -> list[bytes]:
        """Names of the extended attributes."""
        if fino in CONTROL_NODES:
            return []
        return self.tree.listxattr(fino)

    @op
    def removexattr(self, fino: int, name: bytes, ctx: K.RequestContext) -> None:
        """Remove an extended attribute (ENODATA if unset)."""
        if fino in CONTROL_NODES:
            raise K.FUSEError(errno.EPERM)
        self.checks.xattr(fino, name, ctx, write=True)
        self.tree.removexattr(fino, name)

    # -- life cycle -----------------------------------------------------------------------------

    def clean_orphans(self) -> int:
        """Delete inodes left unlinked-but-open by a daemon that died; returns how many."""
        return self.tree.orphans.clean_orphans()

    def shutdown(self) -> None:
        """After the kernel let go: flush everything, drop orphans, make the store durable."""
        self.wb.shutdown()
        self.reply_resources.close()
        if self.holds.orphans:
            self.tree.orphans.drop_orphans(list(self.holds.orphans))
            self.holds.orphans.clear()
        self.group.stop()
        self.store.sync()
