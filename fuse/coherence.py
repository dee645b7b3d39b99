"""Coherence of the mounted view: what the kernel and the daemon cache, and when it goes.

The mounted view answers with long entry and attribute timeouts, so the kernel serves
repeated stats and reads itself; the daemon keeps the mounted tree's inode records, so
getattr and getxattr need no transaction. This module owns both caches' bookkeeping:

* every transaction on a tree of the store goes through :meth:`Coherence.read` /
  :meth:`Coherence.write`, which keep the record cache exact;
* stale tracking: a change that reached the mounted tree by another way than the mounted
  view (an alias under ``.branchfs/``, ``ctl merge``/``reset``, another process) marks the
  whole view or one inode stale, and :meth:`Coherence.take_work` turns that into kernel
  invalidations run off the request loop;
* change notices (:mod:`branchfs.notices`): the store reports the branches this daemon
  changed to :attr:`Coherence.changes`, announced to other daemons after the request, and
  :meth:`Coherence.serve_notifications` answers other processes' notices, in a thread of
  its own.

The request loop and the notice thread share state under the daemon's lock (``lock``);
:attr:`Coherence.changes` is also filled by the flush thread, under its own small lock.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

from branchfs import ReadOnlyError, Store, notices
from branchfs import tree as T
from branchfs.layers import View
from branchfs.records import ROOT_INO, Inode

from .inodes import InodeMap, Key, TreeRef
from .stats import Stats

log = logging.getLogger("branchfs.fuse")
R = TypeVar("R")

#: Names remembered for invalidation before the daemon drops the whole kernel cache instead.
KENTRIES_MAX = 1_000_000
#: Inode records of the mounted tree kept in memory before the cache is dropped whole.
RECORDS_MAX = 200_000

#: Drops kernel caches: ``(entries as (parent, name), inodes)``; never called on the loop.
Invalidator = Callable[[list[tuple[int, bytes]], list[int]], None]
Work = list[Callable[[], None]]


class Coherence:
    """The caches of the mounted view, what makes them stale, and the change notices."""

    def __init__(
        self, store: Store, main: TreeRef, inodes: InodeMap, stats: Stats, lock: threading.RLock
    ) -> None:
        self.store = store
        self.main = main
        self.inodes = inodes
        self.stats = stats
        #: The daemon's lock: the request loop holds it; the notice thread takes it.
        self.lock = lock
        #: Drops kernel caches; the session sets it once the mount exists.
        self.invalidator: Invalidator = lambda _e, _i: None
        #: Other caches of the mounted view to drop with it (readdir listings).
        self.on_forget: list[Callable[[], None]] = []
        #: Records of the mounted tree by engine inode. Kept exact: a write through this
        #: daemon drops every inode its transaction touched, and any other change to the
        #: mounted tree goes through :meth:`forget_main`, which drops the whole cache
        #: before the kernel's.
        self.records: dict[int, Inode] = {}
        #: ``(parent, name)`` pairs the kernel may cache (positive or negative entries).
        self.kentries: set[tuple[int, bytes]] = set()
        #: Branches this daemon changed, to announce to other daemons after the request:
        #: the observer the daemon opened its store with.
        self.changes = notices.Pending()
        #: The mounted view changed behind the kernel's back: drop all of it.
        self.main_stale = False
        #: Engine inodes of the mounted view whose attributes or pages changed elsewhere.
        self.stale_inodes: set[int] = set()

    # -- transactions ---------------------------------------------------------------------------

    def read(self, tree: TreeRef, fn: Callable[[View], R]) -> R:
        """Run ``fn`` in a read transaction on ``tree``."""
        return self.store.read_tree(tree.name, fn, snapshot=tree.snapshot)

    def write(
        self,
        tree: TreeRef,
        fn: Callable[[View], R],
        *,
        alias: bool = False,
        keep: tuple[int, ...] = (),
    ) -> R:
        """Run ``fn`` in a write transaction on ``tree``, keeping the record cache exact.

        ``alias``: the change came through a view under ``.branchfs/``, so the kernel's
        caches of the mounted view do not know it. ``keep``: engine inodes whose records
        the kernel asks for next (a parent whose mtime changed), read at the end of the
        same transaction and cached once it committed. Raises ``ReadOnlyError`` for a
        snapshot, and whatever ``fn`` raises.
        """
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
            kept.extend((ino, v.inode(ino)) for ino in keep)
            return out

        try:
            result = self.store.write_tree(tree.name, run)
        finally:
            self._forget_records(views)
        for ino, rec in kept:
            if rec is not None:
                self.cache_record((tree, ino), rec)
        if alias:
            self.main_stale = True
        return result

    def _forget_records(self, views: list[View]) -> None:
        """Drop cached records of every inode a write transaction read or wrote."""
        records = self.records
        if records:
            for v in views:
                for _layer, ino in v.records:
                    records.pop(ino, None)

    # -- the record cache -----------------------------------------------------------------------

    def record(self, key: Key) -> Inode:
        """The record of ``key`` (ENOENT if gone), from the cache for the mounted tree."""
        tree, eng = key
        if tree != self.main:
            return self.read(tree, lambda v: T.get(v, eng))
        rec = self.records.get(eng)
        if rec is None:
            rec = self.read(tree, lambda v: T.get(v, eng))
            self.cache_record(key, rec)
        return rec

    def cache_record(self, key: Key, rec: Inode) -> None:
        """Keep ``rec`` for the next getattr if ``key`` is in the mounted tree.

        Other trees are not cached: the cache is only dropped when the mounted tree changes.
        """
        tree, eng = key
        if tree != self.main:
            return
        if len(self.records) >= RECORDS_MAX:
            self.records.clear()
        self.records[eng] = rec

    def drop_record(self, key: Key) -> None:
        """Forget the cached record of ``key`` (it changed outside :meth:`write`)."""
        if key[0] == self.main:
            self.records.pop(key[1], None)

    # -- stale tracking -------------------------------------------------------------------------

    def remember(self, parent: int, name: bytes) -> None:
        """Note a name the kernel may cache, to invalidate it when the tree changes."""
        self.kentries.add((parent, name))
        if len(self.kentries) > KENTRIES_MAX:
            self.main_stale = True  # forget everything once rather than grow without bound

    def inode_changed_elsewhere(self, key: Key) -> None:
        """A data or attribute change to ``key`` came through an alias of the mounted tree."""
        if key[0] == self.main:
            self.stale_inodes.add(key[1])

    def take_work(self) -> Work:
        """What must happen before the current request's reply (called after each request).

        Other daemons are told about branches this request changed, and the kernel forgets
        what it cached of the mounted view if a change reached it by another way.
        """
        work: Work = []
        names = self.changes.take()
        if names:
            regs = notices.targets(self.store.path, names)
            if regs:
                work.append(lambda: notices.poke_all(regs, names))
        invalidate = self.invalidator
        if self.main_stale:
            self.main_stale = False
            self.stale_inodes.clear()
            entries, inos = self.forget_main()
            work.append(lambda: invalidate(entries, inos))
        if self.stale_inodes:
            stale = list(self.stale_inodes)
            self.stale_inodes.clear()
            work.append(lambda: invalidate([], stale))
        return work

    def forget_main(self) -> tuple[list[tuple[int, bytes]], list[int]]:
        """Drop the daemon's caches of the mounted view; what the kernel must drop too."""
        self.records.clear()
        for forget in self.on_forget:
            forget()
        entries = list(self.kentries)
        self.kentries.clear()
        inos = self.inodes.main_inodes()
        if ROOT_INO not in inos:
            inos.append(ROOT_INO)
        self.stats.event("invalidations")
        return entries, inos

    # -- notices from other processes -----------------------------------------------------------

    def serve_notifications(self, listener: socket.socket) -> None:
        """Answer change notices from writers in other processes (a thread of its own).

        Takes :attr:`lock` only to drop the daemon's caches; writes the kernel
        invalidations itself, then answers ``ok``. Returns when ``listener`` is closed.
        """
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # the listener was closed: the daemon is stopping
            try:
                with conn:
                    conn.settimeout(notices.NOTIFY_TIMEOUT)
                    notices.answer(conn, self._on_notice)
            except Exception:  # a writer that went away must not stop the daemon
                log.warning("a change notification failed", exc_info=True)

    def _on_notice(self, names: list[str]) -> None:
        """Another process changed ``names``: drop what the kernel caches of the mounted view."""
        if self.main.name in names:
            with self.lock:
                entries, inos = self.forget_main()
            self.invalidator(entries, inos)
