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
