"""Orphans of the mount: inodes whose last name went while the kernel still holds them.

An unlink or a rename that drops an inode's last name asks :meth:`Orphans.orphaned` whether
it stays (a file open, a directory the kernel holds) or goes in the same transaction; what
the kernel still holds of a deleted inode is answered from :attr:`.inodes.Holds.gone`.
Orphans go at the last hold (:meth:`Orphans.drop_orphans`) and those a daemon that died
left behind at the next mount (:meth:`Orphans.clean_orphans`). Which fuse inodes are held
is :class:`.inodes.Holds`'s; this module decides and deletes.
"""

from __future__ import annotations

import logging

from branchfs import BranchFSError, Store
from branchfs import tree as T
from branchfs.layers import View
from branchfs.records import Inode

from .coherence import Coherence
from .inodes import Holds, Key, TreeRef
from .writeback import WriteBack

log = logging.getLogger("branchfs.fuse")


class Orphans:
    """The nameless inodes of a mount's trees: kept while held, deleted at the last hold."""

    def __init__(
        self, store: Store, main: TreeRef, holds: Holds, coherence: Coherence, writeback: WriteBack
    ) -> None:
        self.store = store
        self.main = main
        self.holds = holds
        self.co = coherence
        self.wb = writeback

    def orphaned(self, v: View, tree: TreeRef, ino: int | None) -> tuple[bool, Inode | None]:
        """After an unlink or rename dropped ``ino``'s last name: keep it if still in use.
        Returns whether it is kept, and the record :meth:`gone` gives one deleted held.

        A regular file or a symlink that no file handle has open goes at once, in the same
        transaction, even if the kernel still holds a lookup reference on it (it has just
        dropped the name): nothing but an open file reaches such an inode again, and
        deleting it here spares ``rm -rf`` a second transaction per file at its FORGET.
        Anything else (a directory that may be a working directory, a FIFO or device the
        kernel opens without telling us) is kept while the kernel holds it.
        """
        if ino is None:
            return False, None
        rec = v.inode(ino)
        if rec is None or rec.links:
            return False, None
        key = (tree, ino)
        if self.holds.is_open(key):
            return True, None
        if self.holds.held(key) and not (rec.is_reg or rec.is_link):
            return True, None
        T.forget_orphan(v, ino)
        return False, self.gone(key, rec)

    def replaced(self, v: View, tree: TreeRef, ino: int, rec: Inode) -> tuple[bool, Inode | None]:
        """:meth:`orphaned` for the inode a rename replaced, whose record ``rec`` (no
        links, not put: ``branchfs.tree.rename_in``) is put only if it stays: one write of
        it, not a put then a delete."""
        key = (tree, ino)
        if self.holds.is_open(key) or (self.holds.held(key) and not (rec.is_reg or rec.is_link)):
            v.put_inode(ino, rec)
            return True, None
        v.delete_inode(ino, T.has_extents(rec))
        return False, self.gone(key, rec)

    def gone(self, key: Key, rec: Inode) -> Inode | None:
        """The record GETATTR answers for ``key`` deleted at its unlink while the kernel
        still holds it (an ``O_PATH`` descriptor opens no file handle): ``rec`` without
        links and with the unlink's ctime, as ext4 shows it (``nlink`` 0, POSIX unlink(2)
        marks ctime); kept in :attr:`.inodes.Holds.gone` until the FORGET. None when the
        kernel holds nothing of it. ``rec`` is the caller's, no longer wanted: it becomes
        that record (edited, not copied)."""
        if not self.holds.held(key):
            return None
        rec.links = []
        rec.ctime_ns = T.now_ns()
        return rec

    def drop_orphans(self, doomed: list[Key]) -> None:
        """Delete unlinked inodes whose last reference (name, lookup, open file) went away."""
        by_tree: dict[TreeRef, list[int]] = {}
        for key in doomed:
            self.wb.take(key)
            by_tree.setdefault(key[0], []).append(key[1])
            self.co.drop_record(key)
        for tree, inos in by_tree.items():

            def fn(v: View, inos: list[int] = inos) -> None:
                for ino in inos:
                    T.forget_orphan(v, ino)

            try:
                self.store.write_tree(tree.name, fn)
            except (BranchFSError, OSError):
                log.warning("could not drop orphans of %s", tree.name, exc_info=True)
            if tree != self.main:
                self.co.group.commit()  # see Coherence.write

    def clean_orphans(self) -> int:
        """Delete inodes left unlinked-but-open by a daemon that died; returns how many."""

        return self.store.write_tree(self.main.name, forget_orphans)


def forget_orphans(v: View) -> int:
    """Delete every orphan of ``v``'s top layer (left by a daemon that died); how many."""
    doomed = v.linkless_inodes()
    for ino in doomed:
        v.delete_inode(ino)
    return len(doomed)
