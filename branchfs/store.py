"""The public API's entry point: :class:`Store` (branches, snapshots, diff, merge, gc, fsck).

This layer holds no storage logic: each method opens one LMDB transaction and calls
:mod:`branchfs.refs`, :mod:`branchfs.diff`, :mod:`branchfs.merge`, :mod:`branchfs.gc` … on
the store's :class:`~branchfs.engine.Engine`; the trees themselves are
:class:`~branchfs.branch.Branch` and :class:`~branchfs.branch.Snapshot`. After a call
changed branches, the store tells its observer (:mod:`branchfs.notices`). Errors are
:class:`~branchfs.errors.BranchFSError` subclasses, or those of ``os``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar, cast

import lmdb

from . import notices
from .branch import Branch, Snapshot
from .engine import Engine
from .envs import open_meta, release_meta
from .errors import BranchBusy, BranchIsRoot, NotAStore, StoreCorrupt
from .layers import View
from .meta import Meta
from .notices import Observer, notify_mounts, settle_mounts
from .paths import PathArg
from .pathtree import DirEntry
from .records import Inode
from .refs import Refs, check_ref_name

if TYPE_CHECKING:
    from .branch import StoreAPI
    from .compact import CompactReport
    from .diff import Change
    from .fsck import FsckReport
    from .gc import GcReport
    from .merge import MergeResult

T = TypeVar("T")


class Store:
    """A branchfs store: one directory holding any number of branches and snapshots.

    Open it with :meth:`Store.open`; use it as a context manager or call :meth:`close`.
    Opening the same store twice in one process shares one LMDB environment.
    """

    def __init__(self, meta: Meta, observer: Observer | None = None) -> None:
        #: Told ``(store_path, branch_names)`` after a call changed those branches' trees
        #: (see :mod:`branchfs.notices`): by default the mount daemons serving them.
        self.observer: Observer = notify_mounts if observer is None else observer
        #: Called ``(store_path, branch_names)`` before a call reads or changes those
        #: branches, so that the mount daemons serving them first commit the calls they
        #: grouped (contract 3 of docs/architecture.md: another process's call sees every
        #: call to a mount that returned before it); a daemon sets its own
        #: (fuse/coherence.py).
        self.settler: Observer = settle_mounts
        #: The mountpoint of this process (a mount daemon) if it has a file of the branch
        #: named open through its ``.branchfs/branches/``, else None: the daemon sets it,
        #: and :meth:`discard` asks.
        self.open_views: Callable[[str], str | None] = lambda _name: None
        self._meta: Meta | None = meta
        self.path = meta.path
        self.engine = Engine(meta)
        self.layers = self.engine.layers
        self.chunks = self.engine.chunks
        self.refs: Refs = self.engine.refs

    @classmethod
    def open(
        cls,
        path: PathArg,
        create: bool = False,
        *,
        map_size: int | None = None,
        max_map_size: int | None = None,
        observer: Observer | None = None,
    ) -> Store:
        """Open the store at ``path``; with ``create=True`` make it if it does not exist.

        ``map_size`` is the initial LMDB map (address space, grown on demand) and
        ``max_map_size`` the limit past which writes fail with ENOSPC, in bytes.
        ``observer`` is told which branches each call changed (default: the mount daemons
        serving them, :func:`branchfs.notices.notify_mounts`).
        """
        kwargs: dict[str, int] = {}
        if map_size is not None:
            kwargs["map_size"] = map_size
        if max_map_size is not None:
            kwargs["max_map_size"] = max_map_size
        return cls(open_meta(os.fsdecode(path), create=create, **kwargs), observer)

    @classmethod
    def check(cls, path: PathArg) -> FsckReport:
        """fsck the store at ``path``: ``Store.open(path).fsck()``, except that a store too
        damaged to open (truncated, a broken header) is reported, not raised."""
        from .fsck import FsckReport, Problem

        try:
            store = cls.open(path)
        except (StoreCorrupt, NotAStore) as exc:
            return FsckReport(problems=[Problem("unreadable", os.fsdecode(path), str(exc))])
        with store:
            return store.fsck()

    @property
    def meta(self) -> Meta:
        """The open LMDB environment (raises if the store was closed)."""
        if self._meta is None:
            raise ValueError("operation on a closed Store")
        return self._meta

    def close(self) -> None:
        """Release this handle; the environment closes with the last handle in the process."""
        if self._meta is not None:
            release_meta(self._meta)
            self._meta = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<branchfs.Store {self.path!r}>"

    # -- transactions bound to a tree ---------------------------------------------------------

    def read_tree(self, name: str, fn: Callable[[View], T], *, snapshot: bool = False) -> T:
        """Run ``fn`` on a read-only view of branch (or snapshot) ``name``."""
        if not snapshot:
            self.settler(self.path, (name,))
        with self.meta.read() as txn:
            return fn(self.engine.view(txn, name, snapshot))

    @contextmanager
    def viewing(self, name: str, *, snapshot: bool = False) -> Iterator[View]:
        """A read-only view of ``name`` whose chunk bytes are memoryviews into the map.

        Nothing is copied out of the store, and nothing read may be used after the block:
        the mount reads file data this way and writes it to the kernel inside the block.
        """
        if not snapshot:
            self.settler(self.path, (name,))
        with self.meta.read(buffers=True) as txn:
            yield self.engine.view(txn, name, snapshot)

    def write_tree(self, name: str, fn: Callable[[View], T], *, snapshot: bool = False) -> T:
        """Run ``fn`` on a writable view of branch ``name`` in one atomic transaction."""
        self.settler(self.path, (name,))
        result = self.meta.write(lambda txn: fn(self.engine.view(txn, name, snapshot)))
        self._changed(name)
        return result

    @contextmanager
    def staged(self, branch: str) -> Iterator[Branch]:
        """A hidden copy of ``branch`` to build in, published as ``branch`` when the block
        ends (one ref update), dropped if it raises; see :mod:`branchfs.staging`.

        The yielded tree is written in as many transactions as the builder likes; nothing
        shows in ``branch`` (or its mounts) until the end. :class:`BranchChanged` at the end
        (nothing published) if ``branch`` was written to, reset, merged into or discarded
        meanwhile.
        """
        from .staging import Stage

        stage = Stage(
            self.engine,
            branch,
            lambda names: self.settler(self.path, names),
            lambda names: self._changed(*names),
        )
        try:
            yield Branch(cast("StoreAPI", stage), branch)
        except BaseException:
            stage.abandon()
            raise
        stage.publish()

    def _changed(self, *names: str) -> None:
        """Tell the observer that ``names``' trees changed (by default: a stat if no mount)."""
        self.observer(self.path, names)

    # -- branches and snapshots -------------------------------------------------------------

    def create_branch(self, name: str) -> Branch:
        """Create a branch holding an empty tree (its root owned by the calling user)."""
        _str_names(name)
        uid, gid = os.geteuid(), os.getegid()
        self.meta.write(lambda txn: self.refs.create_branch(txn, name, uid, gid))
        return Branch(self, name)

    def branch(self, name: str) -> Branch:
        """The branch called ``name``; :class:`BranchNotFound` if there is none."""
        _str_names(name)
        with self.meta.read() as txn:
            self.refs.branch(txn, name)
        return Branch(self, name)

    def snapshot_tree(self, name: str) -> Snapshot:
        """The read-only tree of snapshot ``name``; :class:`BranchNotFound` if there is none."""
        _str_names(name, what="snapshot")
        with self.meta.read() as txn:
            self.refs.snapshot(txn, name)
        return Snapshot(self, name)

    def branches(self) -> list[str]:
        """The names of all branches, sorted."""
        with self.meta.read() as txn:
            return [b.name for b in self.refs.branches(txn)]

    def snapshots(self) -> list[str]:
        """The names of all snapshots, sorted."""
        with self.meta.read() as txn:
            return [s.name for s in self.refs.snapshots(txn)]

    def fork(self, source: str, new: str) -> Branch:
        """Make branch ``new`` an independent writable copy of ``source`` now: O(1)."""
        _str_names(source, new)
        self.settler(self.path, (source,))
        self.meta.write(lambda txn: self.refs.fork(txn, source, new))
        return Branch.forked(self, new)

    def fork_snapshot(self, snapshot: str, new: str) -> Branch:
        """Make branch ``new`` a writable copy of snapshot ``snapshot``: O(1)."""
        _str_names(snapshot, new)

        def op(txn: lmdb.Transaction) -> None:
            layer = self.refs.snapshot(txn, snapshot).layer
            self.refs.branch_from_layer(txn, new, layer)

        self.meta.write(op)
        return Branch.forked(self, new)

    def snapshot(self, branch: str, name: str) -> Snapshot:
        """Freeze ``branch``'s current tree under the name ``name``: O(1)."""
        _str_names(branch, name)
        self.settler(self.path, (branch,))
        self.meta.write(lambda txn: self.refs.take_snapshot(txn, branch, name))
        return Snapshot(self, name)

    def reset(self, branch: str, snapshot: str) -> None:
        """Make ``branch``'s tree snapshot ``snapshot`` again: O(1)."""
        _str_names(branch, snapshot)
        self.settler(self.path, (branch,))

        def op(txn: lmdb.Transaction) -> None:
            layer = self.refs.snapshot(txn, snapshot).layer
            self.refs.reset(txn, branch, layer)

        self.meta.write(op)
        self._changed(branch)

    def discard(self, branch: str, *, force: bool = False) -> None:
        """Remove ``branch``. Small layers only it used go at once, and a small layer left
        with a single child is squashed (bounded work); the rest comes back at :meth:`gc`.

        A branch that a mount daemon serves is not discarded from under it: that raises
        :class:`~branchfs.errors.BranchBusy` (``EBUSY``) naming the mountpoints, unless
        ``force``, which first flushes and cleanly unmounts each of them (waiting for the
        daemon to exit), so nothing the mount acknowledged is lost. The mount registry is
        read inside the write transaction that deletes the branch, and daemons register
        inside one that checks the branch exists (:meth:`register_mount`): LMDB's single
        writer orders the two, so a mount starting meanwhile either keeps the branch
        (``BranchBusy``) or fails to start (the branch is gone), never serves a deleted one.

        A root branch (not forked from another branch or snapshot: one made by
        :meth:`create_branch`, ``init`` or ``import``) or the store's last branch raises
        :class:`~branchfs.errors.BranchIsRoot` (nothing else holds its tree), unless
        ``force``, which discards it anyway.
        """
        _str_names(branch)
        if not force:
            self._not_open_in_views(branch)

        # Imported here, not with the module: a process that never discards (every
        # `branchfs fork` …) would pay ~1 ms to import gc, against ~1 us per discard here.
        from .gc import tidy_after_discard

        loss: str | None = None

        def op(txn: lmdb.Transaction) -> list[notices.Registration]:
            nonlocal loss
            regs = notices.serving(self.path, branch)
            loss = None if force else self.refs.loss_if_discarded(txn, branch)
            if not regs:
                if loss is not None:
                    raise BranchIsRoot(
                        f"branch {branch!r} {loss}; discard it anyway with force=True"
                    )
                rec = self.refs.discard(txn, branch)
                tidy_after_discard(txn, self.engine, rec.top)
            return regs

        for _attempt in range(3):  # forced: a mount may start again after we unmounted
            regs = self.meta.write(op)
            if not regs:
                self._changed(branch)
                return
            from .mount import release  # most processes never see a mount

            where = ", ".join(r.mountpoint for r in regs)
            if not force and loss is not None:
                # --force would unmount it and then lose its files too: say so first.
                raise BranchBusy(
                    f"branch {branch!r} cannot be discarded now: {regs[0].user()}; and it "
                    f"{loss}, so --force (force=True) would unmount it and lose them",
                    [r.mountpoint for r in regs],
                )
            if not force:
                raise BranchBusy(
                    f"branch {branch!r} cannot be discarded now: {regs[0].user()}; or "
                    "discard it with --force (force=True), which flushes and unmounts it",
                    [r.mountpoint for r in regs],
                )
            for reg in regs:
                release(reg, branch)
        raise BranchBusy(
            f"branch {branch!r} was mounted again each time it was unmounted (now at "
            f"{where}); stop what mounts it, then discard it",
            [r.mountpoint for r in regs],
        )

    def _not_open_in_views(self, branch: str) -> None:
        """:class:`~branchfs.errors.BranchBusy` if a mount shows ``branch`` under
        ``.branchfs/branches/`` with a file of it open: writes to that file would fail."""
        mine = self.open_views(branch)
        where = [mine] if mine else []
        where += [r.mountpoint for r in notices.open_through_views(self.path, branch)]
        if not where:
            return
        with self.meta.read() as txn:
            loss = self.refs.loss_if_discarded(txn, branch)
        force = (
            f"and it {loss}, so --force (force=True) would lose them"
            if loss
            else "or discard it with --force (force=True), after which writes to that file fail"
        )
        raise BranchBusy(
            f"branch {branch!r} cannot be discarded now: a file of it is open through "
            f"{where[0]}/.branchfs/branches/{branch} (or that mount's daemon does not answer); "
            f"close it first, {force}",
            where,
        )

    def register_mount(self, branch: str, register: Callable[[], T]) -> T:
        """Run ``register`` (a daemon recording that it serves ``branch``, see
        :func:`branchfs.notices.register`) inside a write transaction that first checks that
        ``branch`` exists; returns what it returns.

        :class:`~branchfs.errors.BranchNotFound` if the branch is gone (a :meth:`discard`
        won the race: see there). ``register`` may run more than once; it must be
        idempotent (rewriting the same registration is).
        """

        def op(txn: lmdb.Transaction) -> T:
            self.refs.branch(txn, branch)
            return register()

        return self.meta.write(op)

    def delete_snapshot(self, name: str) -> None:
        """Remove snapshot ``name``; its space comes back at the next :meth:`gc`."""
        _str_names(name, what="snapshot")
        self.meta.write(lambda txn: self.refs.delete_snapshot(txn, name))

    # -- diff, merge, maintenance ------------------------------------------------------------

    def diff(self, a: str, b: str) -> list[Change]:
        """What differs from branch (or snapshot) ``a`` to ``b``; cost follows the changes."""
        from .diff import diff_refs  # not with the module: see discard

        self.settler(self.path, (a, b))
        with self.meta.read() as txn:
            return diff_refs(self.engine, txn, a, b)

    def patch(self, a: str, b: str, *, binary: bool = False) -> str:
        """What differs from ``a`` to ``b`` as a patch in git's format, which ``git apply``
        applies to a copy of ``a``; ``binary``: binary files as git binary patches (see
        :func:`branchfs.patch.unified`). Cost: the changes and the bytes of changed files."""
        from .diff import diff_views
        from .patch import unified

        self.settler(self.path, (a, b))
        with self.meta.read() as txn:
            va, vb = self.engine.ref_view(txn, a), self.engine.ref_view(txn, b)
            vb.records = va.records
            return unified(va, vb, diff_views(va, vb), binary=binary)

    def merge(
        self,
        target: str,
        source: str,
        *,
        strategy: str | None = None,
        conflict_markers: bool = False,
    ) -> MergeResult:
        """3-way merge ``source`` into ``target``; see :func:`branchfs.merge.merge`."""
        from .merge import merge

        self.settler(self.path, (target, source))
        result = merge(
            self.engine, target, source, strategy=strategy, conflict_markers=conflict_markers
        )
        self._changed(target)  # a refused merge (MergeConflict) changed nothing: no notice
        return result

    def gc(self) -> GcReport:
        """Reclaim discarded branches' layers and unreferenced chunks; safe beside writers."""
        from .gc import collect

        return collect(self.engine)

    def compact(self) -> CompactReport:
        """Give the store's free pages back to the filesystem; safe beside other processes.

        LMDB reuses freed pages but never shrinks ``data.mdb``; this rewrites it without
        them (see :mod:`branchfs.compact`). Run it after a :meth:`gc` that freed a lot
        (``GcReport.bytes_freed``). Needs free disk space for the copy (at most the live
        data). :class:`StoreLocked` if a gc or a compaction is running.
        """
        from .compact import compact

        report = compact(self.meta)
        self._changed(*self.branches())  # idle mounts re-open the new file now
        return report

    def fsck(self) -> FsckReport:
        """Check the whole store; the report's ``.ok`` is False if anything is wrong."""
        from .fsck import check

        return check(self.engine)

    def sync(self) -> None:
        """Make everything done so far durable on disk (survives power loss)."""
        self.meta.sync()


__all__ = ["Branch", "DirEntry", "Inode", "Snapshot", "Store"]


def _str_names(*names: object, what: str = "branch") -> None:
    """Refuse a name that is not a str as the name check does (:class:`InvalidName`), before
    it reaches a compiled module, whose ``str`` parameters would raise TypeError."""
    for name in names:
        if type(name) is not str:
            check_ref_name(name, what)
