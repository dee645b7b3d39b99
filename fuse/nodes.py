"""POSIX behaviour of the trees a mount shows: the mounted branch and the views under
``.branchfs/branches/`` and ``.branchfs/snapshots/``.

Each handler resolves its fuse inode to a tree and an engine inode (:mod:`.inodes`), runs
one transaction through :mod:`branchfs.tree` (by way of :class:`.coherence.Coherence`, which
keeps the caches exact) and returns what the bridge needs to answer the kernel. Errors are
``OSError`` with Linux's errno (from the engine) or ``FUSEError``; the bridge turns them
into the reply. Kernel bookkeeping (lookup counts, handles, listings) is the bridge's;
write buffers are :mod:`.writeback`'s.

Renames and links between trees are EXDEV, so ``mv`` copies between branches; snapshots
are EROFS. An inode whose last name goes while the kernel still holds it lives on as an
*orphan* (a record without links) until the last hold goes (:mod:`.orphans`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from typing import NamedTuple

from branchfs import Store
from branchfs import attrs as A
from branchfs import tree as T
from branchfs.layers import View
from branchfs.records import ROOT_INO, Inode

from . import dac
from . import kernel as K
from .buffers import apply_buffer
from .coherence import Coherence
from .inodes import ALIAS_BASE, CONTROL_NODES, Holds, InodeMap, Key, Listing, TreeRef
from .orphans import Orphans
from .privs import SETID, cleared_mode, drop_privs, in_group
from .writeback import WriteBack

log = logging.getLogger("branchfs.fuse")

#: Entry and attribute timeout of the mounted view (changes from elsewhere are invalidated).
TIMEOUT = 600.0
#: Entry and attribute timeout of a view's root (s): a branch may be discarded, or start
#: being served by another daemon (its entry then becomes a symlink), without a notice; and
#: notices of a branch reach the daemon only once the kernel looks inside its view
#: (``Bridge._viewing``), so until then the root's attributes must not stay long.
VIEW_ROOT_TIMEOUT = 1.0
#: The control directory's name in the mounted tree's root (hidden from listings).
CONTROL_NAME = b".branchfs"
#: Block size reported to ``stat``: one chunk.
BLKSIZE = 65536
#: The record cache of a tree that has none (every tree but the mounted one).
_NO_RECORDS: dict[int, Inode] = {}


class FileHandle:
    """An open regular file of some tree."""

    __slots__ = ("append", "fino", "key")

    def __init__(self, fino: int, key: Key, append: bool) -> None:
        self.fino = fino
        self.key = key
        self.append = append


class Entry(NamedTuple):
    """A node a reply hands the kernel a reference to: fuse inode, identity, record."""

    fino: int
    key: Key
    rec: Inode


class TreeNodes:
    """The POSIX handlers over the trees of one store, on fuse inode numbers."""

    def __init__(
        self,
        store: Store,
        main: TreeRef,
        inodes: InodeMap,
        holds: Holds,
        coherence: Coherence,
        writeback: WriteBack,
    ) -> None:
        self.store = store
        self.main = main
        self.inodes = inodes
        self.holds = holds
        self.co = coherence
        self.wb = writeback
        self.orphans = Orphans(store, main, holds, coherence, writeback)
        #: Whether the kernel left suid/sgid and security.capability clearing to us.
        self.kill_privs = False

    # -- identities and attributes --------------------------------------------------------------

    def key(self, fino: int) -> Key:
        """The tree and engine inode of ``fino``; EPERM for a control node, else ENOENT."""
        key = self.inodes.resolve(fino)
        if key is None:
            raise K.FUSEError(errno.EPERM if fino in CONTROL_NODES else errno.ENOENT)
        return key

    def attrs(self, fino: int, key: Key, rec: Inode) -> K.EntryAttributes:
        """Attributes of ``rec`` as ``fino``, buffered writes included in size and mtime.

        Every view gets long timeouts: what changes behind the kernel's back is invalidated
        (:mod:`.coherence`).
        """
        eng = key[1]
        timeout = VIEW_ROOT_TIMEOUT if eng == ROOT_INO and key[0] != self.main else TIMEOUT
        links = rec.links
        nlink = 0  # a deleted file still held
        if links or eng == ROOT_INO:  # Inode.nlink, inlined
            nlink = 1 if rec.mode & 0o170000 == 0o040000 else len(links)
        buf = self.wb.buffers.get(key) if self.wb.buffers else None
        if buf is None:
            size = rec.size
            return K.EntryAttributes(
                fino,
                timeout,
                timeout,
                rec.mode,
                nlink,
                rec.uid,
                rec.gid,
                rec.rdev,
                size,
                BLKSIZE,
                (size + 511) // 512,
                rec.atime_ns,
                rec.mtime_ns,
                rec.ctime_ns,
            )
        final = buf.attrs
        if final is not None:  # folded SETATTRs: the record as the flush will leave it
            mode, uid, gid = final.mode, final.uid, final.gid
            size, mtime, ctime = final.size, final.mtime_ns, final.ctime_ns
            atime = final.atime_ns
        else:
            mode, uid, gid = rec.mode, rec.uid, rec.gid
            size = max(rec.size, buf.end)
            mtime = ctime = max(rec.mtime_ns, buf.mtime_ns)
            atime = rec.atime_ns
        return K.EntryAttributes(
            fino,
            timeout,
            timeout,
            mode,
            nlink,
            uid,
            gid,
            rec.rdev,
            size,
            BLKSIZE,
            (size + 511) // 512,
            atime,
            mtime,
            ctime,
        )

    def _parent(self, parent: int) -> tuple[TreeRef, int, bool]:
        if parent in CONTROL_NODES:
            raise K.FUSEError(errno.EPERM)
        tree, peng = self.key(parent)
        return tree, peng, parent >= ALIAS_BASE

    # -- lookup and attributes ------------------------------------------------------------------

    def lookup(self, parent: int, name: bytes) -> tuple[TreeRef, Entry | None]:
        """``name`` in ``parent``: its tree, and the entry or None when there is no such
        name (a negative entry the kernel may cache)."""
        tree, peng = self.key(parent)
        if name == b"." or name == b"..":

            def special(v: View) -> tuple[int, Inode | None]:
                ino = T.lookup(v, peng, name)
                return ino, v.inode(ino)

            try:
                ino, rec = self.co.read(tree, special)
            except FileNotFoundError:
                return tree, None
        else:
            # T.lookup without its exception for a name that is not there (most lookups
            # of tar, git and pip): the parent's record is checked only then, from the
            # record cache when it holds it (exact for the mounted tree, see coherence).
            cached = self.co.records if tree is self.main else _NO_RECORDS

            def fn(v: View) -> tuple[int, Inode | None]:
                ino = v.dirent(peng, name)
                if ino is None:
                    prec = cached.get(peng) or v.inode(peng)
                    if prec is None:
                        return -1, None  # the parent is gone: a negative entry as well
                    if not prec.is_dir:
                        raise K.FUSEError(errno.ENOTDIR)
                    return 0, None
                return ino, v.inode(ino)

            ino, rec = self.co.read(tree, fn)
            if ino <= 0:
                if not ino and len(name) > T.NAME_MAX:
                    raise K.FUSEError(errno.ENAMETOOLONG)
                return tree, None
        if rec is None:
            raise K.FUSEError(errno.ENOENT)
        self.co.cache_record((tree, ino), rec)
        return tree, Entry(self.inodes.fuse_ino(tree, ino, parent >= ALIAS_BASE), (tree, ino), rec)

    def root_entry(self, tree: TreeRef, rec: Inode | None = None) -> Entry:
        """The root of ``tree`` as seen under ``.branchfs/`` (ENOENT if no such tree);
        ``rec``: its record, if already read (:meth:`root_record`)."""
        if rec is None:
            rec = self.root_record(tree)
        return Entry(self.inodes.alias(tree, ROOT_INO), (tree, ROOT_INO), rec)

    def root_record(self, tree: TreeRef) -> Inode:
        """The record of ``tree``'s root; ``BranchNotFound`` (ENOENT) if no such tree."""
        return self.co.read(tree, lambda v: T.get(v, ROOT_INO))

    def getattr(self, fino: int) -> K.EntryAttributes:
        """Attributes of ``fino``."""
        if fino < ALIAS_BASE and not self.holds.gone:  # the mounted view, from the cache
            rec = self.co.records.get(fino)
            if rec is not None:
                return self.attrs(fino, (self.main, fino), rec)
        key = self.key(fino)
        return self.attrs(fino, key, self._record(key))

    def _record(self, key: Key) -> Inode:
        """The record of ``key``, or of one deleted that the kernel still holds (its
        ``Holds.gone`` copy: an ``O_PATH`` descriptor, ``/proc/self/fd``); else ENOENT."""
        gone = self.holds.gone.get(key) if self.holds.gone else None
        return self.co.record(key) if gone is None else gone

    def child_record(self, parent: int, name: bytes) -> Inode | None:
        """The record ``name`` in ``parent`` names, or None."""
        tree, peng = self.key(parent)
        return self.co.read(
            tree, lambda v: None if (i := v.dirent(peng, name)) is None else v.inode(i)
        )

    def record(self, fino: int) -> Inode:
        """The record of ``fino`` (mode and owner for a permission check); ENOENT if gone."""
        # The mounted tree's fino is its engine inode, and its cached records are exact.
        rec = self.co.records.get(fino) if fino < ALIAS_BASE and not self.holds.gone else None
        return rec if rec is not None else self._record(self.key(fino))

    def setattr(
        self, fino: int, fields: K.SetattrFields, ctx: K.RequestContext
    ) -> K.EntryAttributes:
        """chmod, chown, truncate and utimens in one transaction, buffered data first."""
        key = self.key(fino)
        tree, eng = key
        kw = fields.changes()
        chowned = fields.uid is not None or fields.gid is not None
        if key in self.wb.buffers and fino < ALIAS_BASE:
            folded = self.wb.fold(key, self.co.record(key), kw, self.kill_privs and chowned)
            if folded is not None:
                return self.attrs(fino, key, folded)
            if key in self.wb.sealed:
                self.wb.flush(key)  # the checks below read the record as it now is
        buf = self.wb.take(key, flushing=True)
        kill = self.kill_privs and (fields.size is not None or chowned)
        kill_suidgid = fields.kill_suidgid and fields.mode is None
        # A chown asks to clear set-IDs whatever the caller (FATTR_KILL_SUIDGID); Linux
        # keeps set-group-ID on a file not group-executable for a caller in the file's
        # group or holding CAP_FSETID (fs/attr.c setattr_should_drop_sgid).
        member = (
            not kill_suidgid
            or self._member(key, ctx)
            or (chowned and dac.capable(ctx, self.co.record(key), dac.CAP_FSETID))
        )

        def fn(v: View) -> Inode:
            if buf is not None:  # buffered data first, in the same transaction
                apply_buffer(v, eng, buf)
            rec = A.setattr(v, eng, **kw)
            if kill and rec.is_reg:
                drop_privs(v, eng, kill_suidgid, member)
                rec = T.get(v, eng)
            return rec

        rec = self.co.write(tree, fn)
        self.co.cache_record(key, rec)
        return self.attrs(fino, key, rec)

    def readlink(self, fino: int) -> bytes:
        """The target of a symlink."""
        tree, eng = self.key(fino)
        gone = self.holds.gone.get((tree, eng)) if self.holds.gone else None
        if gone is not None:  # readlinkat(fd, "") of an O_PATH fd, target since unlinked
            if not gone.is_link:
                raise K.FUSEError(errno.EINVAL)
            return gone.inline or b""
        return self.co.read(tree, lambda v: T.readlink(v, eng))

    def access(self, fino: int) -> None:
        """Existence check; permissions are checked by the kernel (default_permissions)."""
        self._record(self.key(fino))

    def statfs(self) -> K.StatvfsData:
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

    def make(
        self,
        parent: int,
        name: bytes,
        mode: int,
        ctx: K.RequestContext,
        rdev: int = 0,
        target: bytes | None = None,
    ) -> Entry:
        """A new node (file, directory, symlink, FIFO, socket, device) owned by the caller."""
        if parent == ROOT_INO and name == CONTROL_NAME:
            raise K.FUSEError(errno.EEXIST)
        tree, peng, alias = self._parent(parent)
        uid, gid = ctx.uid, ctx.gid
        ino, rec, prec = self.co.write(
            tree,
            lambda v: T.make_node_in(v, peng, name, mode, uid, gid, rdev=rdev, target=target),
        )
        co = self.co
        co.cache_record((tree, ino), rec)
        co.cache_record((tree, peng), prec)  # the kernel asks for it next (its mtime moved)
        return Entry(self.inodes.fuse_ino(tree, ino, alias), (tree, ino), rec)

    def make_unnamed(self, parent: int, mode: int, ctx: K.RequestContext) -> Entry:
        """``O_TMPFILE``: a regular file without a name in directory ``parent``, an orphan
        from the start (deleted at its last release unless ``linkat`` names it)."""
        tree, peng, alias = self._parent(parent)
        ino, rec = self.co.write(tree, lambda v: T.make_unnamed(v, peng, mode, ctx.uid, ctx.gid))
        self.holds.orphans.add((tree, ino))
        self.co.cache_record((tree, ino), rec)
        return Entry(self.inodes.fuse_ino(tree, ino, alias), (tree, ino), rec)

    def link(self, fino: int, new_parent: int, new_name: bytes) -> Entry:
        """A hard link; EXDEV across trees."""
        if fino in CONTROL_NODES:
            raise K.FUSEError(errno.EPERM)
        if new_parent == ROOT_INO and new_name == CONTROL_NAME:
            raise K.FUSEError(errno.EEXIST)
        tree, eng = self.key(fino)
        ptree, peng, _alias = self._parent(new_parent)
        if ptree != tree:
            raise K.FUSEError(errno.EXDEV)

        def fn(v: View, applied: Inode | None) -> tuple[Inode, Inode]:
            return T.link_in(v, eng, peng, new_name, applied)

        rec, prec = self.wb.write_after_sealed(tree, fn, last=eng)
        co = self.co
        co.cache_record((tree, eng), rec)
        co.cache_record((tree, peng), prec)  # the kernel asks for it next (its mtime moved)
        return Entry(fino, (tree, eng), rec)

    def unlink(self, parent: int, name: bytes) -> None:
        """Remove a name; an inode still open or known to the kernel lives on as an orphan."""
        if parent == ROOT_INO and name == CONTROL_NAME:
            raise K.FUSEError(errno.EISDIR)
        tree, peng, _alias = self._parent(parent)

        def fn(v: View, _applied: Inode | None) -> tuple[int, bool, Inode | None, Inode]:
            # A file that Orphans.orphaned would delete at once is deleted by the unlink itself:
            # its record is not put without links first (rm -rf's common case).
            target = v.dirent(peng, name)
            if target is not None and not self.holds.is_open((tree, target)):
                rec = v.inode_for_write(target)
                if rec is not None and (rec.is_reg or rec.is_link):
                    ino, prec = T.unlink_in(v, peng, name, known=(target, rec))
                    gone = None if rec.links else self.orphans.gone((tree, ino), rec)
                    return ino, False, gone, prec
            ino, prec = T.unlink_in(v, peng, name, keep_orphan=True)
            return ino, *self.orphans.orphaned(v, tree, ino), prec

        ino, kept, gone, prec = self.wb.write_after_sealed(tree, fn)
        self.co.cache_record((tree, peng), prec)
        if kept:
            self.holds.orphans.add((tree, ino))
        elif gone is not None:
            self.holds.gone[(tree, ino)] = gone

    def rmdir(self, parent: int, name: bytes) -> None:
        """Remove an empty directory; one still held by the kernel (open, or a working
        directory) lives on as an empty orphan, like a file."""
        if parent == ROOT_INO and name == CONTROL_NAME:
            raise K.FUSEError(errno.EBUSY)
        tree, peng, _alias = self._parent(parent)

        def fn(v: View) -> tuple[int, bool, Inode]:
            ino, prec = T.rmdir_in(v, peng, name, keep_orphan=True)
            # a directory is never deleted held
            return ino, self.orphans.orphaned(v, tree, ino)[0], prec

        ino, kept, prec = self.co.write(tree, fn)
        self.co.cache_record((tree, peng), prec)
        if kept:
            self.holds.orphans.add((tree, ino))

    def rename(
        self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int
    ) -> None:
        """rename/renameat2 (NOREPLACE, EXCHANGE); EXDEV between trees."""
        for p, n in ((old_parent, old_name), (new_parent, new_name)):
            if p in CONTROL_NODES or (p == ROOT_INO and n == CONTROL_NAME):
                raise K.FUSEError(errno.EXDEV if p in CONTROL_NODES else errno.EBUSY)
        tree, op_eng, _alias = self._parent(old_parent)
        ntree, np_eng, _b = self._parent(new_parent)
        if ntree != tree:
            raise K.FUSEError(errno.EXDEV)

        def fn(v: View, _applied: Inode | None) -> tuple[int | None, bool, Inode | None, T.Touched]:
            replaced, orphan, touched = T.rename_in(v, op_eng, old_name, np_eng, new_name, flags)
            if replaced is None or orphan is None:
                return None, False, None, touched
            return replaced, *self.orphans.replaced(v, tree, replaced, orphan), touched

        replaced, kept, gone, touched = self.wb.write_after_sealed(tree, fn)
        for ino, rec in touched:
            self.co.cache_record((tree, ino), rec)
        if replaced is not None:
            if kept:
                self.holds.orphans.add((tree, replaced))
            elif gone is not None:
                self.holds.gone[(tree, replaced)] = gone

    # -- files ----------------------------------------------------------------------------------

    def open(
        self, fino: int, flags: int, ctx: K.RequestContext, kill_suidgid: bool
    ) -> tuple[FileHandle, K.FileInfo]:
        """Open a file (O_TRUNC truncates here: the kernel sends it atomically).

        No open of the mounted view asks for FLUSH at close: buffered writes are committed
        at RELEASE, which the closing process does not wait for. Close-to-open still holds:
        this daemon's reads and stats see its buffers, and another process's API call asks
        the daemon to settle first (:mod:`.groupcommit`), which serves the RELEASE the
        kernel queued before. Views under ``.branchfs/`` keep FLUSH for written files:
        other processes ask only the daemon that serves a branch. A write-only
        open bypasses the page cache: its pages would be dropped by the next ``stat`` anyway
        (auto-invalidation), and skipping them saves the writer a copy. The returned
        ``FileInfo`` has no ``fh`` yet: the bridge numbers handles.
        """
        key = self.key(fino)
        tree, eng = key
        writing = flags & os.O_ACCMODE != os.O_RDONLY
        if tree.snapshot and (writing or flags & os.O_TRUNC):
            raise K.FUSEError(errno.EROFS)
        rec = self.co.record(key)
        if rec.is_dir:
            raise K.FUSEError(errno.EISDIR)
        if flags & os.O_TRUNC:  # Linux truncates even with O_RDONLY
            self.wb.take(key)
            if rec.size or self._privileged(rec, kill_suidgid):
                member = not kill_suidgid or in_group(ctx, rec.gid)

                def trunc(v: View) -> None:
                    T.truncate(v, eng, 0)
                    drop_privs(v, eng, kill_suidgid, member)

                self.co.write(tree, trunc)
        self.holds.open(key)
        write_only = flags & os.O_ACCMODE == os.O_WRONLY
        main = fino < ALIAS_BASE
        info = K.FileInfo(keep_cache=True, noflush=main or not writing, direct_io=write_only)
        return FileHandle(fino, key, bool(flags & os.O_APPEND)), info

    def _privileged(self, rec: Inode, kill_suidgid: bool) -> bool:
        """Whether writing to ``rec`` must clear privileges (see :mod:`.privs`)."""
        if not self.kill_privs:
            return False
        if b"security.capability" in rec.xattrs:
            return True
        return kill_suidgid and bool(rec.mode & SETID)

    def _member(self, key: Key, ctx: K.RequestContext) -> bool:
        """Whether the caller is in ``key``'s group (only asked when set-group-ID matters)."""
        return in_group(ctx, self.co.record(key).gid)

    def opened(self, entry: Entry, flags: int) -> tuple[FileHandle, K.FileInfo]:
        """The handle of a file just created (CREATE), held like any open file."""
        self.holds.open(entry.key)
        write_only = flags & os.O_ACCMODE == os.O_WRONLY
        main = entry.fino < ALIAS_BASE
        info = K.FileInfo(0, True, write_only, main)  # fh, keep_cache, direct_io, noflush
        return FileHandle(entry.fino, entry.key, bool(flags & os.O_APPEND)), info

    def read(
        self, h: FileHandle, off: int, size: int, resources: contextlib.ExitStack
    ) -> list[bytes | memoryview]:
        """``size`` bytes at ``off`` (buffered writes of the inode are flushed first).

        The pieces are memoryviews into the store's map, for one ``writev``; the read's
        store snapshot goes into ``resources``, to be closed once the reply is written.
        """
        key = h.key
        if key in self.wb.buffers:
            self.wb.flush(key)
        tree = key[0]
        view = resources.enter_context(self.store.viewing(tree.name, snapshot=tree.snapshot))
        return T.read_pieces(view, key[1], off, size)

    def write(
        self, h: FileHandle, off: int, data: bytes, ctx: K.RequestContext, kill_suidgid: bool
    ) -> int:
        """Buffer a write (at the end for O_APPEND); large buffers go to the store at once.

        A writer without CAP_FSETID clears set-user/group-ID at its first write, in its own
        transaction, so that the writer's ``fstat`` shows it at once (Linux clears them in
        ``write()`` itself); later writes into the same buffer find nothing to clear.
        """
        key = h.key
        if key[0].snapshot:
            raise K.FUSEError(errno.EROFS)
        self.wb.raise_error(key)
        if key in self.wb.sealed:
            self.wb.flush(key)  # attributes were folded after these data: they go first
        if kill_suidgid and self.kill_privs and not self.wb.kills_suidgid(key):
            self._clear_setid(h, ctx)
        self.wb.write(key, off, data, h.append, self.kill_privs, kill_suidgid)
        return len(data)

    def _clear_setid(self, h: FileHandle, ctx: K.RequestContext) -> None:
        """Clear set-user/group-ID of ``h``'s file now, for a write without CAP_FSETID."""
        key = h.key
        rec = self.co.record(key)
        if not rec.mode & SETID:
            return
        member = in_group(ctx, rec.gid)
        if rec.mode == (mode := cleared_mode(rec, True, member)):
            return
        tree, eng = key
        self.wb.settle()  # a write-behind commit of earlier writes goes first
        new = self.co.write(tree, lambda v: A.setattr(v, eng, mode=mode & 0o7777))
        self.co.cache_record(key, new)

    def flush(self, h: FileHandle) -> None:
        """close(): buffered data reaches the store (close-to-open consistency)."""
        self.wb.raise_error(h.key)
        if h.key in self.wb.buffers:
            self.wb.flush(h.key)

    # -- directories and extended attributes ----------------------------------------------------

    def list_dir(self, fino: int) -> Listing:
        """``(name, tree, engine ino)`` of each entry of directory ``fino`` now."""
        tree, eng = self.key(fino)

        def fn(v: View) -> list[tuple[bytes, int]]:
            T.get_dir(v, eng)
            return v.list_dir(eng)

        listing = self.co.read(tree, fn)
        hide = fino == ROOT_INO
        return [(n, tree, i) for n, i in listing if not (hide and n == CONTROL_NAME)]

    def records(self, tree: TreeRef, inos: list[int]) -> list[Inode | None]:
        """The records of ``inos`` in ``tree`` (None where removed), in one transaction."""
        return self.co.read(tree, lambda v: [v.inode(i) for i in inos])

    def getxattr(self, fino: int, name: bytes) -> bytes | None:
        """An extended attribute; None if unset (ENODATA: the kernel asks every chown and
        every buffered write for ``security.capability``, so it is no exception)."""
        key = self.key(fino)
        A.check_xattr_name(name)
        return self._record(key).xattrs.get(name)

    def setxattr(self, fino: int, name: bytes, value: bytes, flags: int) -> None:
        """Set an extended attribute (XATTR_CREATE / XATTR_REPLACE honoured)."""
        tree, eng = self.key(fino)
        self.co.write(tree, lambda v: A.setxattr(v, eng, name, value, flags))

    def listxattr(self, fino: int) -> list[bytes]:
        """Names of the extended attributes."""
        return sorted(self._record(self.key(fino)).xattrs)

    def removexattr(self, fino: int, name: bytes) -> None:
        """Remove an extended attribute (ENODATA if unset)."""
        tree, eng = self.key(fino)
        self.co.write(tree, lambda v: A.removexattr(v, eng, name))
