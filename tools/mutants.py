"""The kept list of mutants that ``make mutate`` plants one at a time (see tools/mutate.py).

Each entry is a realistic bug: the file, a snippet of today's code that must occur exactly
once in it, the same snippet with the bug, what the bug is, and the tests that must catch
it (pytest arguments; keep them a fast subset). When code moves and a snippet is no longer
found, ``make mutate`` reports the mutant STALE: re-anchor it on the code as it is now.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    """One planted bug: replace ``original`` by ``mutated`` in ``file``, run ``tests``."""

    id: str
    file: str
    original: str
    mutated: str
    description: str
    tests: tuple[str, ...]


ENGINE = ("tests/test_tree.py", "tests/test_chunks.py")
MERGE = ("tests/test_merge.py", "tests/test_diff.py")
FSCK = ("tests/test_gc_fsck.py", "tests/test_chunks.py", "tests/test_store_errors.py")
CTL = ("tests/fuse/test_control.py",)

MUTANTS: list[Mutant] = [
    # -- the six blind spots of issue 21 -------------------------------------------------------
    Mutant(
        "ctl-no-flush",
        "fuse/ctldir.py",
        "        if cmd.needs_flush:\n            self.wb.flush_all()\n",
        "",
        "ctl commands run without flushing the write buffers first",
        CTL,
    ),
    Mutant(
        "merge-drops-xattr-removal",
        "branchfs/merge.py",
        "            if xo == xb:\n                if xt is None:\n"
        "                    rec.xattrs.pop(key, None)\n",
        "            if xo == xb:\n                if xt is None:\n                    pass\n",
        "merge drops an xattr removal made only on the source side",
        MERGE,
    ),
    Mutant(
        "fsck-ignores-missing-chunk",
        "branchfs/fsck.py",
        "        for key, n in refcounts.items():\n            if key not in stored:\n",
        "        for key, n in refcounts.items():\n            if False:\n",
        "fsck does not report an extent naming a chunk that is not stored",
        FSCK,
    ),
    Mutant(
        "chown-setid-needs-both-ids",
        "branchfs/tree.py",
        "if (uid is not None or gid is not None) and not rec.is_dir and mode is None:",
        "if (uid not in (None, -1) and gid not in (None, -1)) and not rec.is_dir and mode is None:",
        "chown clears set-user-ID only when both uid and gid are given",
        ENGINE,
    ),
    Mutant(
        "copy-up-keeps-lower-cut",
        "branchfs/layers.py",
        "        if rec is not None and pos > 0:\n            rec.cut = None\n",
        "        if rec is not None and pos > 0:\n            pass\n",
        "a record copied up keeps the lower layer's cut (metadata change after truncate)",
        ENGINE,
    ),
    Mutant(
        "fsck-ignores-orphaned-inode",
        "branchfs/fsck.py",
        "        self.check_unnamed(label, v, names)\n",
        "",
        "fsck does not report an inode that no directory entry names",
        FSCK,
    ),
    Mutant(
        "removexattr-keeps-lower-cut",
        "branchfs/tree.py",
        "    rec = for_write(v, ino)\n    if name not in rec.xattrs:\n",
        "    rec = v.inode(ino)\n    assert rec is not None\n    if name not in rec.xattrs:\n",
        "removexattr copies a record up with the cut of the layer it came from",
        ENGINE,
    ),
]
