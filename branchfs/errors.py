"""The exception hierarchy of branchfs and helpers to raise Linux's own ``OSError``s.

Filesystem mistakes (a missing file, a non-empty directory) are reported exactly as ``os``
would report them: an ``OSError`` subclass with ``errno`` and the path set. Everything that
is about branchfs itself (branches, stores, merges) derives from :class:`BranchFSError`.
"""

from __future__ import annotations

import errno as _errno
import os
import re
from dataclasses import dataclass
from typing import Any


class BranchFSError(Exception):
    """Base class of every error that branchfs raises about its own objects."""


class BranchNotFound(BranchFSError, LookupError):
    """No branch (or snapshot) of that name exists in the store."""


class BranchExists(BranchFSError):
    """A branch or snapshot of that name already exists."""


class InvalidName(BranchFSError, ValueError):
    """A branch or snapshot name is not allowed (empty, too long, ``/``, NUL, ``.``, ``..``)."""


class InvalidPath(BranchFSError, ValueError):
    """A path given for a place inside a branch leaves the branch (a ``..`` component), or
    is absolute where a path relative to the branch is asked for (``import --to``)."""


class StoreNotFound(BranchFSError, FileNotFoundError):
    """The path does not hold a store (and ``create`` was not asked for)."""


class NotAStore(BranchFSError):
    """The path exists but is not a branchfs store (a foreign directory or file)."""


class StoreCorrupt(BranchFSError, OSError):
    """Stored data does not match its digest, or a record cannot be decoded.

    It is an ``OSError`` with ``errno.EIO`` so that file-level callers see what a failing
    disk would give them.
    """

    def __init__(self, message: str) -> None:
        OSError.__init__(self, _errno.EIO, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class StoreLocked(BranchFSError):
    """Another process holds a lock this operation needs (for example a running gc)."""


class ReadersFull(StoreLocked, OSError):
    """Every LMDB reader slot of the store is held by a live process (``errno.EAGAIN``).

    Each open read transaction holds one slot (1,024 per store). Slots of processes that
    died are cleared automatically; this is raised only when live processes hold them all,
    and the message names them.
    """

    def __init__(self, message: str) -> None:
        OSError.__init__(self, _errno.EAGAIN, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class StoreVersionError(BranchFSError):
    """The store was written by a newer (or unknown) format version of branchfs."""


class BranchBusy(BranchFSError, OSError):
    """A branch that a mount daemon serves cannot be discarded from under it (``EBUSY``).

    ``mountpoints`` lists where it is mounted. Unmount it first, or discard with
    ``force=True``, which flushes and unmounts those mounts cleanly before discarding.
    """

    def __init__(self, message: str, mountpoints: list[str]) -> None:
        OSError.__init__(self, _errno.EBUSY, message)
        self.message = message
        self.mountpoints = mountpoints

    def __str__(self) -> str:
        return self.message


class BranchIsRoot(BranchFSError):
    """Discarding this branch would lose a tree that no other branch or snapshot came from:
    a root branch (made by ``init``, ``import`` or ``create_branch``, not forked from
    another) or the store's last branch. ``force=True`` (``--force``) discards it anyway."""


class BranchChanged(BranchFSError):
    """A branch changed while a hidden build for it ran (an import), so nothing was
    published; the build is dropped. Run it again, or build into a fork and merge that."""


class ReadOnlyError(BranchFSError, OSError):
    """A write was attempted on a snapshot; snapshots are read-only (``EROFS``)."""

    def __init__(self, message: str) -> None:
        OSError.__init__(self, _errno.EROFS, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Conflict:
    """One thing a merge could not decide: ``kind`` at ``path``, with both sides' versions.

    ``kind`` is one of ``content``, ``modify/delete``, ``add/add``, ``type``,
    ``rename/rename``, ``cycle``, ``mode``, ``xattr``. ``ours`` and ``theirs`` describe
    each side (a short text: ``"deleted"``, ``"file 12 bytes"``, a mode, a new path …).
    """

    path: str
    kind: str
    ours: Any
    theirs: Any

    def __str__(self) -> str:
        what = _CONFLICT_WORDS.get(self.kind, "both sides changed it in ways that clash")
        ref = _GIT_BRANCH_REF.search(self.path)
        if ref is not None and self.kind in ("content", "add/add"):
            what = (
                f"both sides made a new git commit on branch {ref.group(1)!r}; merge the two "
                "commits with git itself, or keep one side's history"
            )
        return f"{self.path}: {what} ({self.kind}; ours: {self.ours}; theirs: {self.theirs})"


#: A git branch ref inside a tree: both sides moving it means both sides committed.
_GIT_BRANCH_REF = re.compile(r"(?:^|/)\.git/refs/heads/(.+)$")

#: Each conflict kind in plain words (what clashed).
_CONFLICT_WORDS = {
    "content": "both sides changed the same lines differently",
    "modify/delete": "one side changed it, the other deleted it",
    "add/add": "both sides created it with different contents",
    "type": "it is a different kind of file on each side (file, directory, symlink)",
    "rename/rename": "both sides moved it, to different places",
    "cycle": "the two sides' moves would put this directory inside itself",
    "mode": "both sides changed its permission bits or owner differently",
    "xattr": "both sides changed the same extended attribute differently",
}


class MountError(BranchFSError):
    """A mount or unmount could not be done; the message says why and what to do (the
    daemon's ``fusermount3`` refusal included)."""


class BranchMounted(MountError):
    """A branch that a daemon already serves cannot be mounted a second time.

    One file is one file whatever path reaches it (locks exclude only within one kernel
    identity), so a branch has at most one mount: use ``mountpoint`` (where it is mounted
    now, served by process ``pid``), or unmount it first.
    """

    def __init__(self, branch: str, mountpoint: str, pid: int, *, view: bool = False) -> None:
        where = (
            f"in use through {mountpoint} (daemon pid {pid} has a file of it open); work "
            "there, or close its files first"
            if view
            else f"already mounted at {mountpoint} (daemon pid {pid}); use that mount, or "
            f"unmount it first (`branchfs umount {mountpoint}`)"
        )
        super().__init__(
            f"branch {branch!r} is {where}: a second mount would be a second copy of every "
            "file to the kernel, whose locks would not exclude each other"
        )
        self.branch = branch
        self.mountpoint = mountpoint
        self.pid = pid


class MergeConflict(BranchFSError):
    """A merge found conflicts; the target was left exactly as it was.

    ``conflicts`` lists every :class:`Conflict`. The message says, in plain words, what
    clashed and the ways to resolve it: edit either branch and merge again, take one side
    for every conflict (``strategy="ours"``/``"theirs"``, ``--strategy`` on the command
    line), write conflict markers into text files (``conflict_markers=True``), or give the
    paths a merge rule in the target's ``.branchfs-merge`` file.
    """

    def __init__(self, target: str, source: str, conflicts: list[Conflict]) -> None:
        self.target = target
        self.source = source
        self.conflicts = conflicts
        lines = "\n".join(f"  {c}" for c in conflicts[:20])
        more = f"\n  … and {len(conflicts) - 20} more" if len(conflicts) > 20 else ""
        super().__init__(
            f"merging {source!r} into {target!r} found {len(conflicts)} conflict(s); "
            f"{target!r} is unchanged:\n{lines}{more}\n"
            f"To resolve: edit either branch and merge again; or keep one side for every "
            f"conflict with strategy='ours' or 'theirs' (--strategy ours|theirs); or write "
            f"conflict markers into text files with conflict_markers=True; or give these "
            f"paths a rule (ours, theirs, union, exclude) in the .branchfs-merge file of "
            f"{target!r}."
        )


def os_error(code: int, path: Any = None) -> OSError:
    """Build the ``OSError`` subclass that ``os`` raises for ``code`` (e.g. FileNotFoundError)."""
    if path is None:
        return OSError(code, os.strerror(code))
    return OSError(code, os.strerror(code), path)


def with_path(err: OSError, path: Any) -> OSError:
    """Return ``err`` re-raised with ``path`` as its filename, keeping its errno and type."""
    if isinstance(err, BranchFSError) or err.errno is None:
        return err
    return OSError(err.errno, err.strerror or os.strerror(err.errno), path)
