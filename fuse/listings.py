"""Directory listings of a mount: readdir offsets that continue a listing taken at offset 0.

The kernel opens directories itself (no handle reaches the daemon), so a readdir offset
names both a listing and a position in it (``listing id << 32 | position``); the listings
are kept here, the last :data:`LISTINGS_MAX` of them, and dropped at a FORGET. Entries are
answered with their attributes (readdirplus) in one read transaction per tree, and each
entry given to the kernel is held as a LOOKUP would hold it (:class:`.inodes.InodeMap`,
:class:`.inodes.Holds`, :meth:`.coherence.Coherence.remember`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from . import kernel as K
from .coherence import Coherence
from .ctldir import ControlDir
from .inodes import ALIAS_BASE, CONTROL_NODES, FIRST_DYNAMIC, Holds, InodeMap, Listing
from .nodes import TreeNodes

#: Directory listings kept for readdir offsets that continue them.
LISTINGS_MAX = 64


class Listings:
    """The listings readdir continues, by id, the oldest dropped past :data:`LISTINGS_MAX`."""

    def __init__(
        self,
        ctl: ControlDir,
        tree: TreeNodes,
        inodes: InodeMap,
        holds: Holds,
        coherence: Coherence,
        viewing: Callable[[int], None],
    ) -> None:
        self.ctl = ctl
        self.tree = tree
        self.inodes = inodes
        self.holds = holds
        self.coherence = coherence
        #: Called with a view's fuse inode before something inside it reaches the kernel.
        self.viewing = viewing
        #: Listings by id: a readdir offset is ``id << 32 | position`` (see :meth:`readdir`).
        self.kept: OrderedDict[int, Listing] = OrderedDict()
        self.next_id = 1

    def clear(self) -> None:
        """Forget every listing (the kernel forgot inodes they name)."""
        self.kept.clear()

    def entries(self, fino: int) -> Listing:
        """The entries of directory ``fino`` now."""
        if fino in CONTROL_NODES:
            return self.ctl.listing(fino)
        if fino >= FIRST_DYNAMIC:
            self.viewing(fino)
        return self.tree.list_dir(fino)

    def take(self, fino: int, offset: int) -> tuple[int, Listing]:
        """The listing an offset continues (a new one at offset 0), and its id."""
        lid = offset >> 32
        listing = self.kept.get(lid) if offset else None
        if listing is None:
            if not offset:
                lid = self.next_id
                self.next_id = lid + 1 if lid < (1 << 30) else 1
            listing = self.entries(fino)  # a continued listing that aged out is taken anew
            self.kept[lid] = listing
            while len(self.kept) > LISTINGS_MAX:
                self.kept.popitem(last=False)
        else:
            self.kept.move_to_end(lid)
        return lid, listing

    def readdir(self, fino: int, offset: int, out: K.DirBuffer, *, uncached: bool = False) -> None:
        """Entries with their attributes (readdirplus), from a listing taken at offset 0;
        ``uncached``: the kernel may not keep their names (see :func:`.dac.guarded`).

        Directories have no open handle (the kernel opens them itself), so an offset names
        both a listing and a position in it: ``listing id << 32 | position``. Position 1 is
        after ``.``, 2 after ``..``, ``k + 3`` after entry ``k``; each ``opendir``/
        ``rewinddir`` starts at 0 and gets a new listing, so entries never repeat or vanish
        while a directory is read and changed at once.
        """
        lid, entries = self.take(fino, offset)
        base = lid << 32
        start = offset & 0xFFFFFFFF
        if start < 1:
            if not out.add_dot(b".", fino, base | 1):
                return
            start = 1
        if start < 2:
            if not out.add_dot(b"..", fino, base | 2):
                return
            start = 2
        alias = fino >= ALIAS_BASE
        i = start - 2
        while i < len(entries):
            name, tree, num = entries[i]
            if tree is None:
                if not out.add(name, self.ctl.attrs(num), base | (i + 3)):
                    return
                if out.plus:
                    self.inodes.looked_up(num)
                i += 1
                continue
            if fino in CONTROL_NODES:
                # A tree's root under branches/ or snapshots/: its name only. The kernel
                # gets it by LOOKUP, which registers the view (see Coherence.view).
                if not out.add_dot(name, num, base | (i + 3)):
                    return
                i += 1
                continue
            # One read transaction per batch of entries of the same tree, no longer than
            # what can fit in this reply: each reply of a long listing read the records of
            # every entry left, so a 10,000-entry listing read 130,000 (50 µs per entry).
            batch_tree = tree
            j = i
            end = min(len(entries), i + out.most_entries() + 1)
            while j < end and entries[j][1] == batch_tree:
                j += 1
            chunk = entries[i:j]
            self.coherence.stats.count("listed_records", len(chunk))
            recs = self.tree.records(batch_tree, [e[2] for e in chunk])
            for k, ((ename, _t, eng), rec) in enumerate(zip(chunk, recs, strict=True)):
                if rec is None:
                    continue  # removed since the listing was taken
                efino = self.inodes.fuse_ino(batch_tree, eng, alias)
                key = (batch_tree, eng)
                attrs = self.tree.attrs(efino, key, rec)
                if uncached:
                    attrs.entry_timeout = 0.0
                if not out.add(ename, attrs, base | (i + k + 3)):
                    return
                if out.plus:  # the kernel took a reference and may cache the name
                    self.inodes.looked_up(efino)
                    self.holds.hold(key)
                    self.coherence.remember(batch_tree, fino, ename)
            i = j
