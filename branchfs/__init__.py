"""branchfs: a copy-on-write branching filesystem for Python.

Fork a working tree in microseconds, let each attempt edit its own copy, diff them, merge
the winner back with a real 3-way merge and discard the rest::

    import branchfs

    with branchfs.Store.open("agent.bfs", create=True) as store:
        main = store.create_branch("main")
        main.write_bytes("src/app.py", b"print(1)\\n", parents=True)
        attempt = main.fork("attempt-1")
        attempt.write_bytes("src/app.py", b"print(2)\\n")
        main.merge(attempt)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .branch import Branch, Snapshot
from .errors import (
    BranchBusy,
    BranchExists,
    BranchFSError,
    BranchNotFound,
    Conflict,
    InvalidName,
    MergeConflict,
    NotAStore,
    ReadersFull,
    ReadOnlyError,
    StoreCorrupt,
    StoreLocked,
    StoreNotFound,
    StoreVersionError,
)
from .pathtree import DirEntry
from .store import Store

if TYPE_CHECKING:
    from .bestof import Attempt, BestOfResult, Trial, best_of
    from .diff import Change
    from .fsck import FsckReport
    from .gc import GcReport
    from .merge import MergeResult
    from .mount import ctl, mounted

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Heavier modules load on first use, so `import branchfs` stays quick for the CLI.
    if name == "Change":
        from .diff import Change

        return Change
    if name == "MergeResult":
        from .merge import MergeResult

        return MergeResult
    if name == "FsckReport":
        from .fsck import FsckReport

        return FsckReport
    if name == "GcReport":
        from .gc import GcReport

        return GcReport
    if name == "mounted":
        from .mount import mounted

        return mounted
    if name == "ctl":
        from .mount import ctl

        return ctl
    if name in ("best_of", "BestOfResult", "Attempt", "Trial"):
        from . import bestof

        return getattr(bestof, name)
    raise AttributeError(f"module 'branchfs' has no attribute {name!r}")


__all__ = [
    "Attempt",
    "BestOfResult",
    "Branch",
    "BranchBusy",
    "BranchExists",
    "BranchFSError",
    "BranchNotFound",
    "Change",
    "Conflict",
    "DirEntry",
    "FsckReport",
    "GcReport",
    "InvalidName",
    "MergeConflict",
    "MergeResult",
    "NotAStore",
    "ReadOnlyError",
    "ReadersFull",
    "Snapshot",
    "Store",
    "StoreCorrupt",
    "StoreLocked",
    "StoreNotFound",
    "StoreVersionError",
    "Trial",
    "best_of",
    "ctl",
    "mounted",
]
