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

# Every public name loads on first use (PEP 562), so that `import branchfs` — and with it
# every submodule, `branchfs.cli` included — costs next to nothing: the command line
# imports only what its verb needs. Type checkers see the names through the imports below.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .bestof import Attempt, BestOfResult, Trial, best_of
    from .branch import Branch, Snapshot
    from .diff import Change
    from .errors import (
        BranchBusy,
        BranchChanged,
        BranchExists,
        BranchFSError,
        BranchIsRoot,
        BranchNotFound,
        Conflict,
        InvalidName,
        InvalidPath,
        MergeConflict,
        NotAStore,
        ReadersFull,
        ReadOnlyError,
        StoreCorrupt,
        StoreLocked,
        StoreNotFound,
        StoreVersionError,
    )
    from .fsck import FsckReport
    from .gc import GcReport
    from .merge import MergeResult
    from .mount import ctl, mounted
    from .pathtree import DirEntry
    from .store import Store

__version__ = "0.1.0"

# In a source checkout, refuse compiled modules older than their .py (make install rebuilds).
from .native import refuse_stale as _refuse_stale  # noqa: E402

_refuse_stale(__path__[0])

#: Where each public name is defined: the submodule imported when the name is first used.
_HOMES = {
    "Attempt": "bestof",
    "BestOfResult": "bestof",
    "Trial": "bestof",
    "best_of": "bestof",
    "Branch": "branch",
    "Snapshot": "branch",
    "Change": "diff",
    "BranchBusy": "errors",
    "BranchChanged": "errors",
    "BranchExists": "errors",
    "BranchFSError": "errors",
    "BranchIsRoot": "errors",
    "BranchNotFound": "errors",
    "Conflict": "errors",
    "InvalidName": "errors",
    "InvalidPath": "errors",
    "MergeConflict": "errors",
    "NotAStore": "errors",
    "ReadersFull": "errors",
    "ReadOnlyError": "errors",
    "StoreCorrupt": "errors",
    "StoreLocked": "errors",
    "StoreNotFound": "errors",
    "StoreVersionError": "errors",
    "FsckReport": "fsck",
    "GcReport": "gc",
    "MergeResult": "merge",
    "ctl": "mount",
    "mounted": "mount",
    "DirEntry": "pathtree",
    "Store": "store",
}


def __getattr__(name: str) -> object:
    """A public name, importing its submodule on first use (PEP 562)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'branchfs' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later uses are plain attribute reads
    return value


def __dir__() -> list[str]:
    """The module's names, the lazy public ones included (what ``dir(branchfs)`` shows)."""
    return sorted({*globals(), *_HOMES})


__all__ = [
    "Attempt",
    "BestOfResult",
    "Branch",
    "BranchBusy",
    "BranchChanged",
    "BranchExists",
    "BranchFSError",
    "BranchIsRoot",
    "BranchNotFound",
    "Change",
    "Conflict",
    "DirEntry",
    "FsckReport",
    "GcReport",
    "InvalidName",
    "InvalidPath",
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
