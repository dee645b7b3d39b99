"""What one merge works on: the three trees, the options and the rules.

The store side is :class:`branchfs.engine.Engine` (typed: refs, layers, history, chunks);
:class:`Sides` binds one write transaction's views of the base, ours (the target,
writable) and theirs (the source's frozen state), with the options and the per-path
rules. The planning, namespace and apply modules take a ``Sides`` and never reach into
the store themselves.
"""

from __future__ import annotations

import os
import stat as st
from dataclasses import dataclass, field

from ..diff import content_equal, path_of
from ..layers import View
from ..records import Inode
from .rules import Rules


def share_decoded(*views: View) -> None:
    """Let views of one transaction share their checked and unpacked inode records
    (``View.fields``), as they share the raw ones: the three trees of a merge share most
    layers, so a record below the fork is checked and unpacked once, not once a tree."""
    shared = views[0].fields
    for v in views[1:]:
        v.fields = shared


def ftype(rec: Inode) -> int:
    """The file type bits of a record (``S_IFREG``, ``S_IFDIR`` …)."""
    return st.S_IFMT(rec.mode)


def describe(v: View, ino: int, rec: Inode | None) -> str:
    """A few words for one side of a conflict: ``"file src/a.py (12 bytes)"``."""
    if rec is None:
        return "deleted"
    kind = "directory" if rec.is_dir else "symlink" if rec.is_link else "file"
    path = os.fsdecode(path_of(v, ino, rec))
    if rec.is_reg:
        return f"{kind} {path} ({rec.size} bytes)"
    return f"{kind} {path}"


@dataclass
class Sides:
    """The three trees of one merge, in one write transaction, and how to resolve conflicts.

    ``strategy`` is None (conflicts are errors), ``"ours"`` or ``"theirs"``; ``markers``
    writes diff3 markers into text files; ``names`` are (target, source) for marker
    labels. ``uncertain`` holds inodes on which several merge bases disagreed (a criss-cross
    history): a difference between ours and theirs there is always a conflict.
    """

    base: View
    ours: View
    theirs: View
    strategy: str | None = None
    markers: bool = False
    names: tuple[str, str] = ("ours", "theirs")
    rules: Rules = field(default_factory=Rules.defaults)
    uncertain: frozenset[int] = frozenset()
    _ours_before: dict[int, tuple[Inode | None, int]] = field(
        default_factory=dict, init=False, repr=False
    )

    def ours_at(self, ino: int) -> tuple[Inode | None, int]:
        """Ours' record of ``ino`` as it was before the merge, and the chain position it
        came from (as :meth:`View.inode_at`), read once per merge: the planning, the
        namespace check and the path-level changes all ask for it. Shared: never edit the
        record (``copy()`` it, or use ``ours.inode_for_write``)."""
        hit = self._ours_before.get(ino)
        if hit is None:
            hit = self._ours_before[ino] = self.ours.inode_at(ino)
        return hit

    def ours_rec(self, ino: int) -> Inode | None:
        """Ours' record of ``ino`` before the merge (:meth:`ours_at`; never edit it)."""
        return self.ours_at(ino)[0]

    @property
    def theirs_wins(self) -> bool:
        """Whether conflicts resolve towards the source (``strategy="theirs"``)."""
        return self.strategy == "theirs"

    def same_node(self, va: View, ra: Inode | None, vb: View, rb: Inode | None, ino: int) -> bool:
        """Equal apart from times: type, mode, owner, links, xattrs and bytes."""
        if ra is None or rb is None:
            return ra is rb
        return (
            ra.mode == rb.mode
            and ra.uid == rb.uid
            and ra.gid == rb.gid
            and set(ra.links) == set(rb.links)
            and ra.xattrs == rb.xattrs
            and (ra.is_dir or content_equal(va, ra, vb, rb, ino))
        )

    def path(self, ino: int) -> str:
        """The path of ``ino`` for messages: theirs' name if theirs has it, else ours'."""
        for v in (self.theirs, self.ours, self.base):
            rec = v.inode(ino)
            if rec is not None:
                return os.fsdecode(path_of(v, ino, rec))
        return f"<inode {ino}>"
