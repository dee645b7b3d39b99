"""Writing a :class:`~branchfs.merge.plan.Plan` into the target's top layer.

Names are removed first, then records written, then names added, so swaps and moves never
collide. File contents go through the content path (:mod:`branchfs.content`): the source's
chunks are shared, not copied (only the references move), and merged bytes are cut into
chunks. Returns the path-level changes made,
computed from the plan before anything is written.
"""

from __future__ import annotations

import os
import stat as st

from ..content import copy_extents
from ..content import replace as replace_content
from ..diff import Change, content_equal, path_of
from ..layers import View
from ..records import Inode
from ..tree import now_ns
from .context import Sides, ftype
from .plan import KEEP_OURS, TAKE_THEIRS, Plan


def apply(sides: Sides, plan: Plan) -> list[Change]:
    """Apply ``plan`` to ours' top layer; returns the changes it made, sorted by path."""
    ours = sides.ours
    changes = planned_changes(sides, plan)
    for ino in sorted(plan.doomed):
        _delete_subtree(ours, ino)
    for ino, ip in plan.inodes.items():
        # the links before the merge (a doomed subtree's names are gone: the check skips them)
        o = sides.ours_rec(ino)
        old = set(o.links) if o is not None else set()
        new = set(ip.rec.links) if ip.rec is not None else set()
        for p, n in old - new:
            if ours.dirent(p, n) == ino:
                ours.delete_dirent(p, n)
    for ino, ip in plan.inodes.items():
        if ip.rec is None:
            if ours.inode(ino) is not None:
                ours.delete_inode(ino)
        else:
            # a doomed subtree's deletion may have changed ours' records: read them again
            current = ours.inode_at(ino) if plan.doomed else sides.ours_at(ino)
            _write_record(sides, ino, ip.rec, ip.content, current)
    touched_dirs: set[int] = set()
    for ino, ip in plan.inodes.items():
        if ip.rec is None:
            continue
        for p, n in ip.rec.links:
            if ours.dirent(p, n) != ino:
                ours.put_dirent(p, n, ino)
                touched_dirs.add(p)
    t = now_ns()
    for d in touched_dirs - set(plan.inodes):
        rec = ours.inode_for_write(d)
        if rec is not None:
            rec.mtime_ns = rec.ctime_ns = t
            ours.put_inode(d, rec)
    return changes


def planned_changes(sides: Sides, plan: Plan) -> list[Change]:
    """What the plan changes in ours, by path, computed before anything is written."""
    ours = sides.ours
    out: list[tuple[bytes, str, bytes | None]] = []
    for ino in plan.doomed:
        if sides.ours_rec(ino) is not None:
            out.append((path_of(ours, ino), "deleted", None))
    for ino, ip in plan.inodes.items():
        before, after = sides.ours_rec(ino), ip.rec
        if before is None and after is None:
            continue
        if before is None:
            out.append((plan.path(ino, sides), "added", None))
            continue
        if after is None:
            out.append((path_of(ours, ino, before), "deleted", None))
            continue
        where = plan.path(ino, sides)
        if set(before.links) != set(after.links):
            out.append((where, "renamed", path_of(ours, ino, before)))
        if ftype(before) != ftype(after):
            out.append((where, "type", None))
        elif (
            ip.content != KEEP_OURS
            and not before.is_dir
            and (
                isinstance(ip.content, bytes)
                or not content_equal(ours, before, sides.theirs, after, ino)
            )
        ):
            out.append((where, "modified", None))
        if (st.S_IMODE(before.mode), before.uid, before.gid) != (
            st.S_IMODE(after.mode),
            after.uid,
            after.gid,
        ):
            out.append((where, "mode", None))
        if before.xattrs != after.xattrs:
            out.append((where, "xattr", None))
    # A file saved through a temporary file renamed over it (``sed -i``, editors) is a new
    # inode at the old one's path: by path, as ``diff`` and git report it, one modified file.
    added = {p for p, k, _o in out if k == "added"}
    replaced = {p for p, k, _o in out if k == "deleted" and p in added}
    out = [(p, k, o) for p, k, o in out if p not in replaced or k not in ("added", "deleted")]
    out += [(p, "modified", None) for p in replaced]
    return sorted(
        Change(os.fsdecode(p), k, None if o is None else os.fsdecode(o)) for p, k, o in out
    )


def _delete_subtree(ours: View, ino: int) -> None:
    rec = ours.inode_for_write(ino)
    if rec is None:
        return
    if rec.is_dir:
        for name, child in ours.list_dir(ino):
            _delete_subtree(ours, child)
            if ours.dirent(ino, name) is not None:
                ours.delete_dirent(ino, name)
    for p, n in rec.links:
        if ours.dirent(p, n) == ino:
            ours.delete_dirent(p, n)
    ours.delete_inode(ino)


def _write_record(
    sides: Sides,
    ino: int,
    rec: Inode,
    content: str | bytes,
    at: tuple[Inode | None, int],
) -> None:
    """Write ``rec`` for ``ino`` with its bytes from ``content``; ``at`` is ours' record
    of ``ino`` now and its chain position (:meth:`View.inode_at`)."""
    ours = sides.ours
    current, pos = at
    top_cut = current.cut if current is not None and pos == 0 else None
    rec = rec.copy()
    if content == KEEP_OURS:
        if current is not None:
            rec.inline, rec.size = current.inline, current.size
        rec.cut = top_cut
    elif isinstance(content, bytes):
        replace_content(ours, ino, rec, content)
    else:
        assert content == TAKE_THEIRS
        if rec.inline is not None or not rec.is_reg:
            ours.drop_extents(ino, 0)
            rec.cut = 0
        else:
            chunked = current is not None and current.inline is None
            rec.cut = copy_extents(ours, sides.theirs, ino, rec.size, chunked, top_cut)
    ours.put_inode(ino, rec)
