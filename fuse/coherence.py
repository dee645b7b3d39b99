"""Coherence of every view: what the kernel and the daemon cache, and when it goes.

Every view (the mounted tree, and each branch and snapshot under ``.branchfs/``) answers
with long entry and attribute timeouts, so the kernel serves repeated stats, lookups and
reads itself; the daemon also keeps the mounted tree's inode records, so getattr and
getxattr need no transaction. Each tree has one kernel identity per daemon (the mounted
branch's entry under ``branches/`` is a symlink to the root), so a change made through a
view is one the kernel saw. This module owns the bookkeeping of both caches:

* every transaction on a tree of the store goes through :meth:`Coherence.read` /
  :meth:`Coherence.write`, which keep the record cache exact;
* stale tracking: a change that reached a tree another way (``ctl merge``/``reset``,
  another process) marks that tree stale, and :meth:`Coherence.take_work` turns that into
  kernel invalidations of the names and inodes of that view, run off the request loop;
* change notices (:mod:`branchfs.notices`): the store reports the branches this daemon
  changed to :attr:`Coherence.changes`, announced to other daemons once the batch holding
  the change is committed, and :meth:`Coherence.serve_notifications` answers other
  processes' notices, in a thread of its own: ``changed`` (drop caches) and ``settle``
  (wait until every call served is committed, see :mod:`.groupcommit`).

The request loop and the notice thread share state under the daemon's lock (``lock``);
:attr:`Coherence.changes` is also filled by the flush thread, under its own small lock.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from threading import get_ident as _get_ident
from typing import TypeVar

import lmdb

from branchfs import ReadOnlyError, Store, notices
from branchfs import tree as T
from branchfs.layers import View
from branchfs.records import ROOT_INO, Inode
from branchfs.refs import check_ref_name

from .groupcommit import GroupCommit
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
        #: ``(parent, name)`` pairs the kernel may cache (positive or negative entries),
        #: by the tree they name something in.
        self.kentries: dict[TreeRef, set[tuple[int, bytes]]] = {}
        self._nkentries = 0
        #: Branches this daemon changed, to announce to other daemons after the request:
        #: the observer the daemon opened its store with.
        self.changes = notices.Pending()
        #: Trees changed behind the kernel's back: drop all of their views.
        self.stale: set[TreeRef] = set()
        #: Branches the kernel has views of, besides the mounted one; other processes'
        #: changes to them must reach this daemon (see :attr:`on_view`).
        self.viewed: set[str] = set()
        #: Called with every branch name in :attr:`viewed` when one is added (the daemon
        #: re-registers, so that notices of those branches reach it).
        self.on_view: Callable[[tuple[str, ...]], None] = lambda _names: None
        #: The branches shown under ``.branchfs/branches/`` with a file open in them now
        #: (set by the daemon from the bridge's handles): a discard asks (:meth:`_on_busy`).
        self.open_views: Callable[[], set[str]] = set
        #: The request loop's open batch of writes and when to commit it.
        self.group = GroupCommit(store.meta)
        #: The mounted branch's record as last read (raw bytes) and its top layer: a
        #: transaction whose record is the same bytes reuses the top (see :meth:`main_view`).
        self._branch_key = check_ref_name(main.name)
        self._branch_raw: bytes | None = None
        self._branch_top = 0
        #: The same for branch views: name -> (record key, record bytes, top layer).
        self._views: dict[str, tuple[bytes, bytes, int]] = {}
        #: :meth:`settle_others`' last answer: the registry listing it read (the same list
        #: object while the registry is unchanged), the names asked about, and whether
        #: another daemon serves one of them.
        self._served: tuple[list[notices.Registration], tuple[str, ...], bool] | None = None
        #: The loop's batches (``Meta.batches``), and the mounted branch's chain as checked
        #: in the open batch ``_chain_batch`` at its write count ``_chain_writes``.
        self._batches = store.meta.batches
        self._chain_batch: lmdb.Transaction | None = None
        self._chain_writes = 0
        self._chain: tuple[int, ...] = ()
        self._main_names = (main.name,)

    # -- transactions ---------------------------------------------------------------------------

    def read(self, tree: TreeRef, fn: Callable[[View], R]) -> R:
        """Run ``fn`` in a read transaction on ``tree``."""
        if tree is self.main or tree == self.main:
            # Store.read_tree, with the view set up from the cached branch record. The
            # settler is not asked: the mounted branch is the one it never asks about.
            batches = self._batches
            txn = batches.txn
            if txn is not None and batches.owner == _get_ident():
                return fn(self.main_view(txn))  # the loop's open batch: Meta.read, inlined
            with self.store.meta.read() as txn:
                return fn(self.main_view(txn))
        if tree.snapshot:
            return self.store.read_tree(tree.name, fn, snapshot=True)
        store = self.store
        store.settler(store.path, (tree.name,))
        with store.meta.read() as txn:
            return fn(self.branch_view(txn, tree.name))

    def branch_view(self, txn: lmdb.Transaction, name: str) -> View:
        """Branch ``name``'s view in ``txn`` (a view under ``.branchfs/branches/``), set up
        from the branch record's last bytes as :meth:`main_view` does, so that a request in
        a branch view costs what one in the mounted view does (the same `git status` sent
        the same 14,951 requests to both, and a view's took 1.25x the loop's CPU before).
        ``BranchNotFound`` if the branch is gone."""
        store = self.store
        meta = store.meta
        cached = self._views.get(name)
        key = check_ref_name(name) if cached is None else cached[0]
        raw = txn.get(key, db=meta.branches_db)
        if raw is None or cached is None or raw != cached[1]:
            view = store.engine.view(txn, name)  # BranchNotFound if gone
            if raw is not None:
                if len(self._views) >= 256:
                    self._views.clear()  # a bound; each entry is one record's bytes
                self._views[name] = (key, bytes(raw), view.chain[0])
            return view
        chain = store.engine.layers.chain(txn, cached[2])
        return View(meta, store.chunks, txn, chain, True)

    def main_view(self, txn: lmdb.Transaction) -> View:
        """The mounted branch's view in ``txn``, what ``Engine.view`` gives, for less.

        The branch record is read in every transaction (a fork or a reset in this daemon's
        own batch, or by another process, changes its top layer); when its bytes are those
        of the last transaction the top layer decoded then is reused, and the layer chain
        comes from the layer index's cache (checked against the topology token as always).
        Measured in process: 1.6 µs of CPU where ``Engine.view`` takes 2.7. ``BranchNotFound``
        if the branch is gone.

        Inside the loop's open batch (``txn`` is the batch or a call nested in it) not even
        that: while a batch is open this process holds LMDB's writer and the environment's
        lock, so only writes into that batch change the store, and the chain checked at the
        batch's write count :attr:`_chain_writes` holds until the count moves (:meth:`write`
        moves the mark past its own calls, which never touch branch or layer records).
        """
        store = self.store
        batches = self._batches
        batch = batches.txn
        if (
            batch is not None
            and batch is self._chain_batch
            and batches.writes == self._chain_writes
            and batches.owner == _get_ident()
        ):
            return View(store.meta, store.chunks, txn, self._chain, True)
        meta = store.meta
        raw = txn.get(self._branch_key, db=meta.branches_db)
        if raw is None or raw != self._branch_raw:
            view = store.engine.view(txn, self.main.name)  # BranchNotFound if gone
            self._branch_raw = None if raw is None else bytes(raw)
            self._branch_top = view.chain[0]
        else:
            chain = store.engine.layers.chain(txn, self._branch_top)
            view = View(meta, store.chunks, txn, chain, True)
        if batch is not None and batches.owner == _get_ident():
            self._chain_batch, self._chain_writes, self._chain = batch, batches.writes, view.chain
        else:
            self._chain_batch = None
        return view

    def write(self, tree: TreeRef, fn: Callable[[View], R]) -> R:
        """Run ``fn`` in a write transaction on ``tree``, keeping the record cache exact:
        every record the transaction read or wrote is dropped from it. Callers that know
        what a record now is (the parent whose mtime a create or unlink moved, which the
        kernel asks for next) cache it again (:meth:`cache_record`). Raises
        ``ReadOnlyError`` for a snapshot, and whatever ``fn`` raises.
        """
        if tree.snapshot:
            raise ReadOnlyError(
                "snapshots are read-only; fork a branch from the snapshot to edit it"
            )
        if tree != self.main:
            # Other processes ask only the daemons serving a branch to settle: a write to
            # another tree (under .branchfs/) is committed at once, with the batch before it.
            other = self.store.write_tree(tree.name, fn)
            self.group.commit()
            return other
        views: list[View] = []

        def run(txn: lmdb.Transaction) -> R:
            v = self.main_view(txn)
            views.append(v)
            return fn(v)

        # Store.write_tree, with the view of :meth:`main_view`; the settler is not asked
        # (see :meth:`read`).
        store = self.store
        batches = self._batches
        try:
            result = store.meta.write(run)
        finally:
            self._forget_records(views)
        if batches.txn is self._chain_batch and batches.writes == self._chain_writes + 1:
            self._chain_writes += 1  # our own call: the chain checked before it holds
        store.observer(store.path, self._main_names)
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

    def remember(self, tree: TreeRef, parent: int, name: bytes) -> None:
        """Note a name in ``tree`` the kernel may cache, to invalidate it when it changes."""
        names = self.kentries.get(tree)
        if names is None:
            names = self.kentries[tree] = set()
        if (parent, name) not in names:
            names.add((parent, name))
            self._nkentries += 1
            if self._nkentries > KENTRIES_MAX:
                self.stale.update(self.kentries)  # forget once rather than grow without bound

    def view(self, tree: TreeRef) -> None:
        """The kernel got a view of ``tree`` (its root under ``.branchfs/``).

        Called before the tree is read for the reply, so that a change committed after the
        read is announced to this daemon.
        """
        if tree.snapshot or tree == self.main or tree.name in self.viewed:
            return
        self.viewed.add(tree.name)
        self.on_view(tuple(sorted(self.viewed)))

    def unview(self, tree: TreeRef) -> None:
        """The kernel forgot the root of ``tree``'s view: notices of it are not needed."""
        names = self.kentries.pop(tree, set())
        self._nkentries -= len(names)
        if tree.name in self.viewed and not tree.snapshot:
            self.viewed.discard(tree.name)
            self.on_view(tuple(sorted(self.viewed)))

    def changed(self, tree: TreeRef) -> None:
        """``tree`` changed behind the kernel's back (``ctl merge``/``reset``)."""
        self.stale.add(tree)

    def lost_batch(self) -> None:
        """A batch of the loop's did not commit (a full disk): what this daemon and the
        kernel cache of the mounted tree may show its calls, so both drop it. The kernel's
        names are dropped from a thread of their own, not before the current request's
        reply: an UNLINK holds its directory's lock until answered, and an invalidation in
        that directory waits for the lock (a deadlock in ``make bench-fuse``)."""
        entries, inos = self.forget_tree(self.main)
        threading.Thread(target=self.invalidator, args=(entries, inos), daemon=True).start()

    def busy(self) -> bool:
        """Whether :meth:`take_work` may have something to do (a cheap test, per request)."""
        if self.stale:
            return True
        return self._batches.txn is None and self.changes.waiting()

    def take_work(self) -> Work:
        """What must happen before the current request's reply (called after each request).

        Other daemons are told about branches this request changed, and the kernel forgets
        what it cached of the views of trees changed by another way.
        """
        work: Work = []
        names: tuple[str, ...] = ()
        if not self.store.meta.batch_open:  # other daemons hear of changes once committed
            names = self.changes.take()
        if names:
            regs = notices.targets(self.store.path, names)
            if regs:
                work.append(lambda: notices.poke_all(regs, names))
        if self.stale:
            stale, self.stale = self.stale, set()
            drops = [self.forget_tree(tree) for tree in stale]
            invalidate = self.invalidator

            def run() -> None:
                for entries, inos in drops:
                    invalidate(entries, inos)

            work.append(run)
        return work

    def settle_others(self, path: str, names: tuple[str, ...]) -> None:
        """``Store.settler`` inside the daemon: other daemons commit before we read.

        The mounted branch itself is not asked about (that would cost a socket round trip
        per request): two daemons serving one branch see each other's calls within the
        batch window. Before asking, the loop commits its own batch, and
        :attr:`.GroupCommit.calling_out` lets a daemon that asks us meanwhile go on.
        """
        if len(names) == 1 and names[0] == self.main.name:
            return  # the common case: a call on the mounted branch alone
        main = self.main.name
        others = names if len(names) == 1 else tuple(n for n in names if n != main)
        # Only a daemon serving one of them batches calls on it: one that merely shows it
        # as a view commits every write there at once (:meth:`write`), so is not asked.
        # Every request of a branch view comes here: the answer is kept for as long as the
        # registry's listing is (one stat of its directory, see notices.registrations).
        regs = notices.registrations(path)
        served = self._served
        if served is None or served[0] is not regs or served[1] != others:
            me = os.getpid()
            busy = any(r.pid != me and r.branch in others for r in regs)
            served = self._served = (regs, others, busy)
        if not served[2]:
            return
        group = self.group
        if threading.get_ident() != self.store.meta.batch_owner:
            notices.settle_mounts(path, others)
            return
        group.commit()
        group.calling_out = True
        try:
            notices.settle_mounts(path, others)
        finally:
            group.calling_out = False

    def forget_main(self) -> tuple[list[tuple[int, bytes]], list[int]]:
        """Drop the daemon's caches of the mounted view; what the kernel must drop too."""
        return self.forget_tree(self.main)

    def forget_tree(self, tree: TreeRef) -> tuple[list[tuple[int, bytes]], list[int]]:
        """Drop the daemon's caches of ``tree``'s view: the names and inodes the kernel must
        drop too (entries as ``(parent, name)``, fuse inodes)."""
        if tree == self.main:
            self.records.clear()
        for forget in self.on_forget:
            forget()
        names = self.kentries.pop(tree, set())
        self._nkentries -= len(names)
        inos = self.inodes.tree_inodes(tree)
        if tree == self.main and ROOT_INO not in inos:
            inos.append(ROOT_INO)
        self.stats.event("invalidations")
        return list(names), inos

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
                    notices.answer(conn, self._on_notice, self._on_settle, self._on_busy)
            except Exception:  # a writer that went away must not stop the daemon
                log.warning("a change notification failed", exc_info=True)

    def _on_settle(self, names: list[str]) -> None:
        """Another process's call on ``names`` sees every call this daemon served."""
        if self.main.name in names and not self.group.wait_committed(notices.NOTIFY_TIMEOUT):
            log.warning("another process's call went on without this mount's latest calls")
            self.stats.event("settle_timeouts")

    def _on_busy(self, names: list[str]) -> list[str]:
        """Those of ``names`` that have a file open through this mount's views."""
        open_now = self.open_views()
        return [n for n in names if n in open_now]

    def _on_notice(self, names: list[str]) -> None:
        """Another process changed ``names``: drop what the kernel caches of their views."""
        for name in names:
            if name != self.main.name and name not in self.viewed:
                continue
            with self.lock:
                entries, inos = self.forget_tree(TreeRef(name))
            self.invalidator(entries, inos)
