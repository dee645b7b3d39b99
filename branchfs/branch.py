"""Branches and snapshots as named trees: :class:`Branch` (import and export, fork, merge,
run, a ``with`` block that discards an attempt) and :class:`Snapshot` (read-only), over the
path API of :class:`~branchfs.pathwrite.WritableTree` (writing) and
:class:`~branchfs.pathtree.PathTree` (reading).

Every call is one transaction through the store the branch belongs to (a ``Store``, seen
through :class:`StoreAPI` so that this module does not import the store). Errors are those
of ``os`` (with the path) or :class:`~branchfs.errors.BranchFSError` subclasses.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Literal, Protocol, overload

from .errors import BranchNotFound, InvalidPath, ReadOnlyError
from .paths import PathArg
from .pathtree import TreeHost
from .pathwrite import WritableTree

if TYPE_CHECKING:
    import subprocess

    from .diff import Change
    from .merge import MergeResult
    from .run import Command, Stream
    from .transfer import Progress


class StoreAPI(TreeHost, Protocol):
    """What a branch needs of its store besides transactions: the branch operations."""

    def fork(self, source: str, new: str) -> Branch:
        """Make branch ``new`` a copy of ``source``."""
        ...

    def fork_snapshot(self, snapshot: str, new: str) -> Branch:
        """Make branch ``new`` a copy of snapshot ``snapshot``."""
        ...

    def snapshot(self, branch: str, name: str) -> Snapshot:
        """Freeze ``branch`` as snapshot ``name``."""
        ...

    def reset(self, branch: str, snapshot: str) -> None:
        """Make ``branch`` snapshot ``snapshot`` again."""
        ...

    def discard(self, branch: str, *, force: bool = False) -> None:
        """Remove ``branch`` (``BranchBusy`` while a mount serves it, unless ``force``)."""
        ...

    def staged(self, branch: str) -> AbstractContextManager[Branch]:
        """A hidden copy of ``branch`` to build in, published as ``branch`` at the end."""
        ...

    def diff(self, a: str, b: str) -> list[Change]:
        """What differs from ``a`` to ``b``."""
        ...

    def patch(self, a: str, b: str, *, binary: bool = False) -> str:
        """What differs from ``a`` to ``b``, as a patch in git's format."""
        ...

    def merge(
        self,
        target: str,
        source: str,
        *,
        strategy: str | None = None,
        conflict_markers: bool = False,
    ) -> MergeResult:
        """3-way merge ``source`` into ``target``."""
        ...


class Branch(WritableTree):
    """A named writable tree with pathlib/os-like methods; every call is one transaction.

    Paths are relative to the branch root (a leading ``/`` is allowed and means the same).
    """

    store: StoreAPI

    def __init__(self, store: StoreAPI, name: str) -> None:
        super().__init__(store, name)
        self._kept = False
        #: Whether a ``with`` block discards it at the end: only for a branch made by
        #: :meth:`fork` (set by the store), never for one looked up or created by name.
        self._attempt = False

    @classmethod
    def forked(cls, store: StoreAPI, name: str) -> Branch:
        """Branch ``name`` just made by a fork: a ``with`` block discards it at its end."""
        b = cls(store, name)
        b._attempt = True
        return b

    # -- copying in and out -------------------------------------------------------------------

    def import_dir(self, source: PathArg, dest: PathArg = "", *, progress: Progress = None) -> int:
        """Copy the real directory ``source`` into ``dest`` of this branch; returns files copied.

        Modes, owners, times, symlinks (copied, never followed), hard links and xattrs are
        kept. It adds and overwrites, as ``cp -a source/. dest/`` does: files already in
        the branch stay, even those deleted from ``source`` since an earlier import. All or
        nothing: the copy is built in a hidden layer and published with one
        ref update at the end (:meth:`Store.staged`), so an import that fails or is
        interrupted changes nothing visible (gc reclaims what it wrote);
        :class:`~branchfs.errors.BranchChanged` if the branch changed meanwhile;
        :class:`~branchfs.errors.InvalidPath` if ``dest`` leaves the branch (``../etc``).
        """
        from .transfer import import_dir

        rel = os.fsdecode(dest).lstrip("/")  # a leading / is the branch root
        if posixpath.normpath(rel or ".").split("/")[0] == "..":
            raise InvalidPath(
                f"cannot import to {os.fsdecode(dest)!r}: it leaves the branch; name a "
                "directory inside it (relative to its root, without '..')"
            )

        if self._snapshot:
            return import_dir(self, source, dest, progress=progress)  # EROFS, as any write
        with self.store.staged(self.name) as hidden:
            return import_dir(hidden, source, dest, progress=progress)

    def export_dir(self, dest: PathArg, source: PathArg = "", *, progress: Progress = None) -> int:
        """Copy ``source`` of this branch into the real directory ``dest``; returns files copied."""
        from .export import export_dir

        return export_dir(self, dest, source, progress=progress)

    # -- branch operations --------------------------------------------------------------------

    def fork(self, new: str) -> Branch:
        """A new branch ``new``: an independent copy of this one as it is now (O(1))."""
        return self.store.fork(self.name, new)

    def snapshot(self, name: str) -> Snapshot:
        """Freeze this branch's current tree as snapshot ``name`` (O(1))."""
        return self.store.snapshot(self.name, name)

    def reset(self, snapshot: str) -> None:
        """Make this branch's tree snapshot ``snapshot`` again (O(1))."""
        self.store.reset(self.name, snapshot)

    def discard(self, *, force: bool = False) -> None:
        """Remove this branch; its space comes back at the next gc. A branch that a mount
        serves raises ``BranchBusy``, and a root branch (not forked) or the store's last
        branch ``BranchIsRoot``, unless ``force`` (see :meth:`Store.discard`)."""
        self.store.discard(self.name, force=force)

    def diff(self, other: Branch | str) -> list[Change]:
        """What differs from this tree to ``other``'s."""
        return self.store.diff(self._ref(), _ref_of(other))

    def patch(self, other: Branch | str, *, binary: bool = False) -> str:
        """What differs from this tree to ``other``'s as a patch in git's format: ``git
        apply`` turns a copy of this tree (``export_dir``) into ``other``'s. ``binary``:
        binary files as git binary patches (``git diff --binary``) instead of a line naming
        them, which ``git apply`` refuses. Permissions other than the execute bit, owners,
        times, extended attributes, empty directories and special files are not in it, as
        git tracks none of them (see :mod:`branchfs.patch`)."""
        return self.store.patch(self._ref(), _ref_of(other), binary=binary)

    def merge(
        self,
        source: Branch | str,
        *,
        strategy: str | None = None,
        conflict_markers: bool = False,
    ) -> MergeResult:
        """3-way merge ``source`` into this branch; raises MergeConflict on conflicts."""
        return self.store.merge(
            self.name, _ref_of(source), strategy=strategy, conflict_markers=conflict_markers
        )

    # -- running commands; a branch as a context manager ---------------------------------------

    @overload
    def run(
        self,
        command: Command,
        *,
        at: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        stdin: Stream = None,
        stdout: Stream = None,
        stderr: Stream = None,
        capture_output: bool = False,
        check: bool = False,
        text: Literal[False] = False,
    ) -> subprocess.CompletedProcess[bytes]: ...
    @overload
    def run(
        self,
        command: Command,
        *,
        at: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        stdin: Stream = None,
        stdout: Stream = None,
        stderr: Stream = None,
        capture_output: bool = False,
        check: bool = False,
        text: Literal[True],
    ) -> subprocess.CompletedProcess[str]: ...
    @overload
    def run(
        self,
        command: Command,
        *,
        at: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        stdin: Stream = None,
        stdout: Stream = None,
        stderr: Stream = None,
        capture_output: bool = False,
        check: bool = False,
        text: bool,
    ) -> subprocess.CompletedProcess[bytes] | subprocess.CompletedProcess[str]: ...
    def run(
        self,
        command: Command,
        *,
        at: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        stdin: Stream = None,
        stdout: Stream = None,
        stderr: Stream = None,
        capture_output: bool = False,
        check: bool = False,
        text: bool = False,
    ) -> subprocess.CompletedProcess[bytes] | subprocess.CompletedProcess[str]:
        """Run ``command`` (argv list or shell string) with this branch mounted as its tree.

        Like :func:`subprocess.run` (``text=True`` gives ``str`` output); see
        :func:`branchfs.run.run` for ``at`` (the tree seen at a fixed path by the command
        alone), the environment and the errors.
        """
        from .run import run

        return run(
            self.store.path,
            self.name,
            command,
            at=at,
            env=env,
            timeout=timeout,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            capture_output=capture_output,
            check=check,
            text=text,
        )

    def keep(self) -> Branch:
        """Keep this branch when its ``with`` block ends (see :meth:`__exit__`); returns it."""
        self._kept = True
        return self

    def __enter__(self) -> Branch:
        return self

    def __exit__(self, *exc: object) -> None:
        """At the end of a ``with`` block, discard a branch made by :meth:`fork` unless
        :meth:`keep` was called (an attempt merged or thrown away, either way gone); a
        branch already gone is fine. A branch got by name (``store.branch("main")``,
        ``create_branch``) is left as it is."""
        if self._kept or self._snapshot or not self._attempt:
            return

        with contextlib.suppress(BranchNotFound):
            self.discard()

    def _ref(self) -> str:
        return self.name


class Snapshot(Branch):
    """A read-only tree named by a snapshot; writing to it raises ``EROFS``."""

    _snapshot = True

    def fork(self, new: str) -> Branch:
        """A new writable branch ``new`` holding this snapshot's tree."""
        return self.store.fork_snapshot(self.name, new)

    def snapshot(self, name: str) -> Snapshot:
        """Snapshots are already frozen: EROFS; fork one to get a branch."""
        raise ReadOnlyError("a snapshot cannot be snapshotted; fork it to a branch first")

    def _ref(self) -> str:
        return "@" + self.name


def _ref_of(obj: Branch | str) -> str:
    if isinstance(obj, Snapshot):
        return "@" + obj.name
    if isinstance(obj, Branch):
        return obj.name
    return obj
