"""The control directory ``MOUNT/.branchfs``: a node kind of its own, beside the trees.

Not listed in the mounted root, reachable by name (like ZFS's ``.zfs``)::

    .branchfs/branches/NAME/    every branch, a full read-write tree
    .branchfs/snapshots/NAME/   every snapshot, read-only
    .branchfs/ctl               write one command line, read its JSON answer back
    .branchfs/store             the store's path, one line

``mkdir branches/NEW`` forks the mounted branch, ``mkdir snapshots/NAME`` snapshots it,
``rmdir`` discards. The command language of ``ctl`` is :mod:`.control`'s; this module owns
the nodes, their attributes, and the per-descriptor state of ``ctl`` and ``store``.
"""

from __future__ import annotations

import errno
import os
import stat as st
import time

from branchfs import Store
from branchfs.records import ROOT_INO

from . import control
from . import kernel as K
from .coherence import Coherence
from .inodes import (
    BRANCHES,
    CONTROL_NODES,
    CTL_DIR,
    CTL_FILE,
    SNAPSHOTS,
    STORE_FILE,
    Listing,
    TreeRef,
)
from .stats import Stats
from .writeback import WriteBack

#: Entry and attribute timeout of the control nodes that never change.
TIMEOUT = 600.0


class TextHandle:
    """An open read-only control file with fixed content (``.branchfs/store``)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


CtlHandle = control.CtlHandle


class ControlDir:
    """The nodes of ``.branchfs``: their attributes, names, listings and files."""

    def __init__(
        self,
        store: Store,
        main: TreeRef,
        coherence: Coherence,
        writeback: WriteBack,
        stats: Stats,
    ) -> None:
        self.store = store
        self.main = main
        self.co = coherence
        self.wb = writeback
        self.stats = stats
        self.started_ns = time.time_ns()
        self.uid = os.geteuid()
        self.gid = os.getegid()

    def attrs(self, fino: int) -> K.EntryAttributes:
        """Attributes of control node ``fino`` (owned by the daemon's user)."""
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
            a.st_size = len(self.store_text())
        a.st_uid = self.uid
        a.st_gid = self.gid
        a.st_blksize = 4096
        if fino not in (BRANCHES, SNAPSHOTS):
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self.started_ns
        return a

    def store_text(self) -> bytes:
        """The content of ``.branchfs/store``: the store's path and a newline."""
        return os.fsencode(self.store.path) + b"\n"

    def lookup(self, parent: int, name: bytes) -> int | TreeRef:
        """``name`` in control directory ``parent``: a control node, or a tree's root.

        ENOENT for an unknown name (a tree that does not exist fails when its root is read),
        ENOTDIR under a control file.
        """
        if parent == CTL_DIR:
            fino = {
                b"branches": BRANCHES,
                b"snapshots": SNAPSHOTS,
                b"ctl": CTL_FILE,
                b"store": STORE_FILE,
            }.get(name)
            if fino is None:
                raise K.FUSEError(errno.ENOENT)
            return fino
        if parent not in (BRANCHES, SNAPSHOTS):
            raise K.FUSEError(errno.ENOTDIR)
        return TreeRef(name.decode("utf-8", "surrogateescape"), parent == SNAPSHOTS)

    def listing(self, fino: int) -> Listing:
        """The entries of control directory ``fino`` now (ENOTDIR for a control file)."""
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
        raise K.FUSEError(errno.ENOTDIR)

    def mkdir(self, parent: int, name: bytes) -> TreeRef:
        """Fork (under ``branches``) or snapshot (under ``snapshots``) the mounted branch.

        Every ``write()`` that returned before is in it (buffers are flushed first). Raises
        ``BranchExists``, ``InvalidName`` (the bridge maps them to EEXIST, EINVAL).
        """
        new = name.decode("utf-8", "surrogateescape")
        self.wb.flush_all()
        if parent == BRANCHES:
            self.store.fork(self.main.name, new)
            return TreeRef(new)
        self.store.snapshot(self.main.name, new)
        return TreeRef(new, True)

    def rmdir(self, parent: int, name: bytes) -> None:
        """Discard a branch (EBUSY for the mounted one) or delete a snapshot."""
        ref = name.decode("utf-8", "surrogateescape")
        if parent == BRANCHES:
            if ref == self.main.name:
                raise K.FUSEError(errno.EBUSY)
            self.store.discard(ref)
        else:
            self.store.delete_snapshot(ref)

    def open(self, fino: int, flags: int) -> tuple[CtlHandle | TextHandle, K.FileInfo]:
        """Open ``ctl`` (a fresh command state) or ``store`` (read-only: EACCES otherwise);
        EISDIR for the directories. No ``fh`` yet: the bridge numbers handles."""
        if fino == CTL_FILE:
            return control.CtlHandle(), K.FileInfo(direct_io=True)
        if fino == STORE_FILE:
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise K.FUSEError(errno.EACCES)
            return TextHandle(self.store_text()), K.FileInfo(direct_io=True)
        assert fino in CONTROL_NODES
        raise K.FUSEError(errno.EISDIR)

    def setattr(self, fino: int, fields: K.SetattrFields) -> K.EntryAttributes:
        """Only ``O_TRUNC`` of ``ctl`` (a no-op, so that shells can ``>`` into it); EPERM."""
        if fino == CTL_FILE and fields.size is not None and fields.mode is None:
            return self.attrs(fino)
        raise K.FUSEError(errno.EPERM)

    def read(self, h: CtlHandle | TextHandle, off: int, size: int) -> bytes:
        """The answer read so far on a ``ctl`` descriptor (running a command written without
        a newline first), or a slice of a fixed text."""
        if isinstance(h, TextHandle):
            return h.data[off : off + size]
        line = h.pending()
        if line is not None:
            h.answer += self.run(line)
        return h.read(size)

    def write(self, h: CtlHandle | TextHandle, data: bytes) -> int:
        """Command bytes written to ``ctl``: each complete line runs at once. EBADF for text."""
        if isinstance(h, TextHandle):
            raise K.FUSEError(errno.EBADF)
        h.request += data
        line = h.take_line()
        while line is not None:
            h.answer += self.run(line)
            line = h.take_line()
        return len(data)

    def run(self, line: str) -> bytes:
        """Run one ``ctl`` command line; its JSON answer line (errors included)."""
        try:
            cmd = control.parse(line)
        except control.UsageError as exc:
            return control.encode({"ok": False, "error": "usage", "message": str(exc)})
        if cmd.verb == "stats":
            answer = {"ok": True, "requests": dict(self.stats.requests), **self.stats.events}
            answer["getxattr_names"] = {k.decode(): v for k, v in self.stats.xattr_names.items()}
            if cmd.opts.get("reset"):
                self.stats.requests.clear()
            return control.encode(answer)
        if cmd.needs_flush:
            self.wb.flush_all()
        self.co.records.clear()
        answer = control.run(self.store, self.main.name, cmd)
        if answer.get("ok") and self.main.name in cmd.changes(self.main.name):
            self.co.main_stale = True
        return control.encode(answer)
