"""The control directory ``MOUNT/.branchfs``: a node kind of its own, beside the trees.

Not listed in the mounted root, reachable by name (like ZFS's ``.zfs``)::

    .branchfs/branches/NAME/    every branch, a full read-write tree
    .branchfs/snapshots/NAME/   every snapshot, read-only
    .branchfs/ctl               write one command line, read its JSON answer back
    .branchfs/store             the store's path, one line

``mkdir branches/NEW`` forks the mounted branch, ``mkdir snapshots/NAME`` snapshots it,
``rmdir`` discards.

One file is one file whatever path reaches it (contract 3 of docs/architecture.md), so a
branch is never shown through two kernel identities where one will do:
``branches/<mounted branch>`` is a symlink to ``../..`` (the mount root), and
``branches/B`` for a branch that another daemon serves is a symlink to that daemon's mount
(through ``/proc/PID/root`` if it runs in another mount namespace). Locks (``flock``,
POSIX, OFD), which the kernel keeps per inode, then exclude across those paths.

The command language of ``ctl`` is :mod:`.control`'s; this module owns the nodes, their
attributes, and the per-descriptor state of ``ctl`` and ``store``.
"""

from __future__ import annotations

import errno
import os
import stat as st
import time
from collections.abc import Iterable
from typing import Any

from branchfs import Store, notices
from branchfs.records import ROOT_INO

from . import control
from . import kernel as K
from .coherence import Coherence
from .inodes import (
    BRANCHES,
    CONTROL_NODES,
    CTL_DIR,
    CTL_FILE,
    FIRST_LINK,
    SELF_LINK,
    SNAPSHOTS,
    STORE_FILE,
    Listing,
    TreeRef,
)
from .stats import Stats
from .writeback import WriteBack

#: Entry and attribute timeout of the control nodes that never change.
TIMEOUT = 600.0
#: Attribute timeout of ``branches`` and ``snapshots`` (s): how old their listing may be.
LISTING_TIMEOUT = 1.0
#: Where ``branches/<mounted branch>`` leads: the mount root, seen from ``branches``.
SELF_TARGET = b"../.."


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
        mountpoint: str = "",
    ) -> None:
        self.store = store
        self.mountpoint = mountpoint
        self.main = main
        self.co = coherence
        self.wb = writeback
        self.stats = stats
        self.started_ns = time.time_ns()
        self.uid = os.geteuid()
        self.gid = os.getegid()
        #: Symlink nodes by target, and back: the mount root, and other daemons' mounts.
        self.links: dict[bytes, int] = {SELF_TARGET: SELF_LINK}
        self.targets: dict[int, bytes] = {SELF_LINK: SELF_TARGET}

    def _link(self, target: bytes) -> int:
        fino = self.links.get(target)
        if fino is None:
            fino = FIRST_LINK + len(self.links) - 1
            self.links[target] = fino
            self.targets[fino] = target
        return fino

    def served_elsewhere(self, names: Iterable[str]) -> dict[str, int]:
        """Branches among ``names`` that lead to a mount: symlink node by branch name.

        The mounted branch leads to this mount's root. Another branch leads to the mount of
        the live daemon serving it (a branch has at most one, ``BranchMounted``): its
        mountpoint, or ``/proc/PID/root/MOUNTPOINT`` for a daemon in another mount namespace
        (:func:`branchfs.notices.mount_root`). A daemon whose ``/proc`` this one cannot read
        (another user's) is not followed: the branch is shown here.
        """
        found = {n: SELF_LINK for n in names if n == self.main.name}
        others = [n for n in names if n != self.main.name]
        regs = notices.targets(self.store.path, tuple(others))
        for r in sorted(regs, key=lambda r: r.pid):
            if r.branch in others and r.branch not in found and r.alive():
                root = notices.mount_root(r)
                if root is not None:
                    found[r.branch] = self._link(os.fsencode(root))
        return found

    def readlink(self, fino: int) -> bytes:
        """The target of a control symlink (EINVAL for any other control node)."""
        target = self.targets.get(fino)
        if target is None:
            raise K.FUSEError(errno.EINVAL)
        return target

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
            a.attr_timeout = LISTING_TIMEOUT
            a.st_mode = st.S_IFDIR | 0o755
            a.st_nlink = 2
            # A new mtime at every look makes the kernel drop its cached listing, which
            # cannot know about branches made elsewhere; looks come at most once a
            # LISTING_TIMEOUT, so a path walk through here rarely costs a request.
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = time.time_ns()
        elif fino == CTL_FILE:
            a.entry_timeout = TIMEOUT
            a.attr_timeout = 0.0
            a.st_mode = st.S_IFREG | 0o600
            a.st_nlink = 1
        elif fino in self.targets:
            # The mount root stays where it is; another daemon's mount may go.
            a.entry_timeout = a.attr_timeout = TIMEOUT if fino == SELF_LINK else 0.0
            a.st_mode = st.S_IFLNK | 0o777
            a.st_nlink = 1
            a.st_size = len(self.targets[fino])
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
        ref = name.decode("utf-8", "surrogateescape")
        if parent == BRANCHES and ref == self.main.name:
            return SELF_LINK
        return TreeRef(ref, parent == SNAPSHOTS)

    def server_link(self, tree: TreeRef) -> int | None:
        """The symlink node that ``branches/NAME`` is when another daemon serves branch
        ``tree`` (see :meth:`served_elsewhere`), else None: the tree is shown here."""
        if tree.snapshot:
            return None
        return self.served_elsewhere([tree.name]).get(tree.name)

    def listing(self, fino: int) -> Listing:
        """The entries of control directory ``fino`` now (ENOTDIR for a control file)."""
        if fino == CTL_DIR:
            return [
                (b"branches", None, BRANCHES),
                (b"snapshots", None, SNAPSHOTS),
                (b"ctl", None, CTL_FILE),
                (b"store", None, STORE_FILE),
            ]
        if fino == SNAPSHOTS:
            names = self.store.snapshots()
            return [(os.fsencode(n), TreeRef(n, True), ROOT_INO) for n in names]
        if fino == BRANCHES:
            names = self.store.branches()
            links = self.served_elsewhere(names)
            return [
                (os.fsencode(n), None, links[n])
                if n in links
                else (os.fsencode(n), TreeRef(n), ROOT_INO)
                for n in names
            ]
        raise K.FUSEError(errno.ENOTDIR)

    def mkdir(self, parent: int, name: bytes) -> TreeRef:
        """Fork (under ``branches``) or snapshot (under ``snapshots``) the mounted branch.

        Every ``write()`` that returned before is in it (buffers are flushed first). Raises
        ``BranchExists``, ``InvalidName`` (the bridge maps them to EEXIST, EINVAL).
        """
        new = name.decode("utf-8", "surrogateescape")
        self.wb.flush_all()
        self.co.group.commit()
        try:
            if parent == BRANCHES:
                self.store.fork(self.main.name, new)
                return TreeRef(new)
            self.store.snapshot(self.main.name, new)
            return TreeRef(new, True)
        finally:
            self.co.group.commit()  # other processes see the new branch at once

    def unlink(self, parent: int, name: bytes) -> None:
        """``rm`` of a name under ``branches``/``snapshots``: EBUSY for a branch that is
        served (a symlink here), else EISDIR (a tree is a directory); EPERM elsewhere."""
        if parent not in (BRANCHES, SNAPSHOTS):
            raise K.FUSEError(errno.EPERM)
        ref = name.decode("utf-8", "surrogateescape")
        if parent == BRANCHES and self.served_elsewhere([ref]):
            raise K.FUSEError(errno.EBUSY)
        raise K.FUSEError(errno.EISDIR)

    def rmdir(self, parent: int, name: bytes) -> None:
        """Discard a branch (EBUSY for one a daemon serves) or delete a snapshot."""
        ref = name.decode("utf-8", "surrogateescape")
        self.co.group.commit()
        try:
            if parent == BRANCHES:
                if self.served_elsewhere([ref]):
                    raise K.FUSEError(errno.EBUSY)
                self.store.discard(ref)
            else:
                self.store.delete_snapshot(ref)
        finally:
            self.co.group.commit()

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
        request = control.parse(line)
        if not isinstance(request, control.Request):
            return control.encode(request)
        if request.needs_flush:
            self.wb.flush_all()
        self.co.group.commit()  # every command runs on a committed store, outside a batch
        self.co.records.clear()
        try:
            answer, changed = control.run(request, self)
        finally:
            self.co.group.commit()
        if answer.get("ok"):
            for name in changed:
                self.co.changed(TreeRef(name))
        return control.encode(answer)

    def ctl_stats(self, *, reset: bool = False) -> dict[str, Any]:
        """``ctl stats``: the requests that reached the daemon, by operation, and events."""
        answer: dict[str, Any] = {"requests": dict(self.stats.requests), **self.stats.events}
        answer["getxattr_names"] = {k.decode(): v for k, v in self.stats.xattr_names.items()}
        names = K.OPCODE_NAMES
        answer["loop_ns"] = {names.get(k, str(k)): v for k, v in self.stats.loop_ns.items()}
        answer["cpu_ns"] = {names.get(k, str(k)): v for k, v in self.stats.cpu_ns.items()}
        group = self.co.group
        answer["batches"] = group.commits
        answer["batch_apply_ns"] = group.apply_ns
        answer["batch_commit_ns"] = group.commit_ns
        if reset:
            self.stats.reset()
            group.commits = group.apply_ns = group.commit_ns = 0
        return answer
