"""FUSE inode numbers: which tree and engine inode (or control node) each one names, and
what the kernel holds of each (lookup counts, open files, orphans).

The mounted branch uses the engine's own inode numbers, so the common path needs no table.
Everything else (the control directory, and the trees under ``.branchfs/branches/`` and
``.branchfs/snapshots/``, whose engine numbers collide with the mounted tree's) gets numbers
from :data:`ALIAS_BASE` up, kept in a two-way table while the kernel knows them.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from branchfs.records import Inode

#: Engine inode numbers stay below this; control nodes and other trees' inodes sit above.
ALIAS_BASE = 1 << 60

CTL_DIR = ALIAS_BASE + 1  # .branchfs
BRANCHES = ALIAS_BASE + 2  # .branchfs/branches
SNAPSHOTS = ALIAS_BASE + 3  # .branchfs/snapshots
CTL_FILE = ALIAS_BASE + 4  # .branchfs/ctl
STORE_FILE = ALIAS_BASE + 5  # .branchfs/store
SELF_LINK = ALIAS_BASE + 6  # .branchfs/branches/<mounted branch>: a symlink to the root
#: Symlinks to other daemons' mounts under .branchfs/branches/ get numbers from here up.
FIRST_LINK = ALIAS_BASE + 16
#: The trees under .branchfs/ get numbers from here up.
FIRST_DYNAMIC = ALIAS_BASE + (1 << 32)

#: Stable numbers of the trees under .branchfs/: STABLE_BASE + (tree slot << ENG_BITS) + ino.
STABLE_BASE = 1 << 61
ENG_BITS = 36
SLOTS = 1 << 24

#: The control directory's nodes: its directories, files and symlinks.
CONTROL_NODES = range(ALIAS_BASE + 1, FIRST_DYNAMIC)


class TreeRef(NamedTuple):
    """A tree of the store: a branch, or a snapshot (read-only)."""

    name: str
    snapshot: bool = False


#: An engine inode of one tree: the identity write buffers and orphans are kept by.
Key = tuple[TreeRef, int]

#: A directory listing: ``(name, tree, engine ino)``; tree None means a control node's
#: fuse inode.
Listing = list[tuple[bytes, TreeRef | None, int]]


class Holds:
    """What the kernel holds of each engine inode (lookup references and open files), and
    the orphans: inodes whose last name went while held, deleted when the last hold goes.

    ``gone`` keeps, in memory only, the attributes of a file or symlink deleted at its
    unlink while the kernel still held it (an ``O_PATH`` descriptor needs no file handle):
    its GETATTR and READLINK answer from them, with ``nlink`` 0 as ext4 does, until the
    last hold goes (FORGET). Nothing is written for it, so a crash leaves nothing behind.
    """

    def __init__(self) -> None:
        self.counts: dict[Key, int] = {}
        #: Open files by key (each also counts as a hold).
        self.opens: dict[Key, int] = {}
        self.orphans: set[Key] = set()
        #: Records (no links, ctime of the unlink) of held inodes already deleted.
        self.gone: dict[Key, Inode] = {}

    def hold(self, key: Key, n: int = 1) -> None:
        """The kernel took ``n`` more references on ``key`` (a lookup, or an open file)."""
        self.counts[key] = self.counts.get(key, 0) + n

    def open(self, key: Key) -> None:
        """A file handle of ``key`` was handed out: one more hold, and one more open."""
        self.counts[key] = self.counts.get(key, 0) + 1
        self.opens[key] = self.opens.get(key, 0) + 1

    def close(self, key: Key) -> None:
        """A file handle of ``key`` was released (its hold goes through :meth:`unhold`)."""
        left = self.opens.get(key, 0) - 1
        if left > 0:
            self.opens[key] = left
        else:
            self.opens.pop(key, None)

    def is_open(self, key: Key) -> bool:
        """Whether a file handle of ``key`` is open."""
        return key in self.opens

    def held(self, key: Key) -> bool:
        """Whether anything of the kernel still refers to ``key``."""
        return bool(self.counts.get(key))

    def unhold(self, key: Key, n: int, doomed: list[Key]) -> None:
        """Drop ``n`` references; an orphan whose last one went is appended to ``doomed``."""
        left = self.counts.get(key, 0) - n
        if left > 0:
            self.counts[key] = left
            return
        self.counts.pop(key, None)
        if self.gone:
            self.gone.pop(key, None)
        if key in self.orphans:
            self.orphans.discard(key)
            doomed.append(key)


class InodeMap:
    """The fuse inode <-> (tree, engine inode) table and the kernel's lookup counts."""

    def __init__(self, main: TreeRef) -> None:
        self.main = main
        self.aliases: dict[int, Key] = {}
        self.reverse: dict[Key, int] = {}
        self.nlookup: dict[int, int] = {}
        self._next = FIRST_DYNAMIC
        self._slots: dict[TreeRef, int] = {}
        self._taken: set[int] = set()

    def resolve(self, fino: int) -> Key | None:
        """The tree and engine inode of ``fino``; None for a control node or unknown number."""
        if fino < ALIAS_BASE:
            return (self.main, fino)
        return self.aliases.get(fino)

    def _slot(self, tree: TreeRef) -> int | None:
        """``tree``'s slot of :data:`STABLE_BASE` numbers: from a hash of its name, so the
        same in every daemon and after restarts (None when every slot near it is taken)."""
        slot = self._slots.get(tree)
        if slot is None:
            want = zlib.crc32(f"{int(tree.snapshot)}{tree.name}".encode()) % SLOTS
            for probe in range(8):  # another tree of this daemon hashed there: the next one
                slot = (want + probe) % SLOTS
                if slot not in self._taken:
                    break
            else:
                return None
            self._slots[tree] = slot
            self._taken.add(slot)
        return slot

    def alias(self, tree: TreeRef, eng: int) -> int:
        """The fuse inode for ``eng`` of ``tree`` seen through the control directory.

        Stable: ``STABLE_BASE + slot << ENG_BITS | eng``, the same whenever the kernel
        asks again, so ``st_ino`` of a file in a view does not change (git compares it
        with its index). A number is allocated only for an engine inode too large for
        that, or a tree without a free slot.
        """
        key = (tree, eng)
        fino = self.reverse.get(key)
        if fino is None:
            slot = self._slot(tree) if eng < 1 << ENG_BITS else None
            if slot is not None:
                fino = STABLE_BASE + (slot << ENG_BITS) + eng
            else:
                fino = self._next
                self._next += 1
            self.aliases[fino] = key
            self.reverse[key] = fino
        return fino

    def fuse_ino(self, tree: TreeRef, eng: int, alias: bool) -> int:
        """The fuse inode of ``eng``: itself in the mounted view, an alias elsewhere."""
        return self.alias(tree, eng) if alias else eng

    def looked_up(self, fino: int) -> None:
        """The kernel took one more reference on ``fino``."""
        self.nlookup[fino] = self.nlookup.get(fino, 0) + 1

    def forget(self, fino: int, n: int) -> bool:
        """The kernel dropped ``n`` references; True when it no longer knows ``fino``."""
        left = self.nlookup.get(fino, 0) - n
        if left > 0:
            self.nlookup[fino] = left
            return False
        self.nlookup.pop(fino, None)
        if fino >= FIRST_DYNAMIC:
            key = self.aliases.pop(fino, None)
            if key is not None:
                self.reverse.pop(key, None)
        return True

    def known(self, fino: int) -> bool:
        """Whether the kernel holds a reference on ``fino``."""
        return fino in self.nlookup

    def main_inodes(self) -> list[int]:
        """Fuse inodes of the mounted view that the kernel knows."""
        return [f for f in self.nlookup if f < ALIAS_BASE]

    def tree_inodes(self, tree: TreeRef) -> list[int]:
        """Fuse inodes of ``tree``'s view that the kernel knows."""
        if tree == self.main:
            return self.main_inodes()
        return [f for f, (t, _e) in self.aliases.items() if t == tree]
