"""Planning a merge per inode: the :class:`Plan` value and the field-by-field 3-way decisions.

Only inodes recorded above the base on the source's side are visited (their records are
compared with the base's; an inode whose record comes from the same layer in both trees is
unchanged without reading it), so the cost follows the changes. For each one that really
changed: the source's version where the target left it alone, otherwise a merge field by
field — location (its links), permission bits and owner, each xattr, and the content
(see :mod:`branchfs.merge.text`) — or a conflict. A per-path rule
(:mod:`branchfs.merge.rules`) may decide an inode outright. A file one side saved through
a temporary file renamed over it (a new inode at its path, :func:`successor`) is, by path
as git sees it, the same file changed: it is merged with the other side's changes to the
old inode (:func:`rewritten`).

The plan is a value: later phases (:mod:`branchfs.merge.namespace`) refine it and
:mod:`branchfs.merge.apply` writes it; nothing here writes to the store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..diff import changed_inodes, content_equal, path_of
from ..errors import Conflict
from ..layers import View
from ..records import ROOT_INO, Inode
from ..tree import now_ns, read
from .context import Sides, describe, ftype
from .rules import EXCLUDE, LINE, OURS, THEIRS, UNION
from .text import TEXT_MERGE_MAX, is_text, merge_added, merge_text, union

#: ``InodePlan.content`` values other than merged bytes.
KEEP_OURS, TAKE_THEIRS = "ours", "theirs"


@dataclass
class InodePlan:
    """The merged state of one inode: its record (None: deleted) and where its bytes come
    from: ``"ours"`` (unchanged), ``"theirs"`` (the source's chunks) or the merged bytes."""

    rec: Inode | None
    content: str | bytes = KEEP_OURS


@dataclass
class Plan:
    """Everything a merge will do to the target, decided before anything is written.

    - ``inodes``: the new state of each inode the merge changes in ours;
    - ``doomed``: ours' inodes deleted together with their subtree (a strategy evicted them);
    - ``alias``: their new directory -> ours' new directory at the same path (unified);
    - ``kept_dirs``: directories the source deleted that stay, because ours put entries in;
    - ``dropped``: their new inodes left out to resolve a conflict (their children follow);
    - ``conflicts``: unresolved conflicts (resolved one way if a strategy is set);
    - ``resolved``: conflicts written as markers into the files;
    - ``uncertain``: every inode involved in a conflict, resolved or not (a virtual base
      built by :mod:`branchfs.merge.base` cannot vouch for them).
    """

    inodes: dict[int, InodePlan] = field(default_factory=dict)
    doomed: set[int] = field(default_factory=set)
    alias: dict[int, int] = field(default_factory=dict)
    kept_dirs: set[int] = field(default_factory=set)
    dropped: set[int] = field(default_factory=set)
    conflicts: list[Conflict] = field(default_factory=list)
    resolved: list[Conflict] = field(default_factory=list)
    uncertain: set[int] = field(default_factory=set)

    def conflict(
        self,
        sides: Sides,
        ino: int,
        kind: str,
        ours: str,
        theirs: str,
        view: View | None = None,
        at: str | None = None,
    ) -> None:
        """Record a conflict of ``kind`` at path ``at``, by default ``ino``'s path (in
        ``view``, by default theirs, else ours)."""
        self.uncertain.add(ino)
        if at is None:
            v = view or (sides.theirs if sides.theirs.inode(ino) is not None else sides.ours)
            rec = v.inode(ino)
            at = os.fsdecode(path_of(v, ino, rec)) if rec else sides.path(ino)
        self.conflicts.append(Conflict(at, kind, ours, theirs))

    def one_per_path(self, join: bool = False) -> None:
        """Keep one conflict per path, the first one found there: the namespace check may
        meet a clash the planning reported already (a file one side replaced by a
        directory), and one path is one thing for a person to decide. ``join``: add the
        later conflicts' descriptions to the first's (the clashing fields of one file: its
        content and its mode)."""
        for attr in ("conflicts", "resolved"):
            first: dict[str, Conflict] = {}
            for c in getattr(self, attr):
                seen = first.get(c.path)
                if seen is None:
                    first[c.path] = c
                elif join:
                    ours = seen.ours if c.ours == seen.ours else f"{seen.ours}; {c.ours}"
                    theirs = (
                        seen.theirs if c.theirs == seen.theirs else f"{seen.theirs}; {c.theirs}"
                    )
                    first[c.path] = Conflict(c.path, seen.kind, ours, theirs)
            setattr(self, attr, list(first.values()))

    def record(self, ino: int, sides: Sides) -> Inode | None:
        """The record ``ino`` will have after the merge as planned so far (shared: never
        edit it in place)."""
        p = self.inodes.get(ino)
        if p is not None:
            return p.rec
        return sides.ours_rec(ino)

    def links(self, ino: int, sides: Sides) -> list[tuple[int, bytes]]:
        """The links ``ino`` will have after the merge as planned so far."""
        rec = self.record(ino, sides)
        return rec.links if rec is not None else []

    def is_dir(self, ino: int, sides: Sides) -> bool:
        """Whether ``ino`` will be a directory after the merge as planned so far."""
        rec = self.record(ino, sides)
        return ino not in self.doomed and rec is not None and rec.is_dir

    def path(self, ino: int, sides: Sides) -> bytes:
        """The path ``ino`` will have after the merge (its first link)."""
        parts: list[bytes] = []
        for _ in range(4096):
            if ino == ROOT_INO:
                break
            links = self.links(ino, sides)
            if not links:
                parts.append(b"?")
                break
            parent, name = links[0]
            parts.append(name)
            ino = self.alias.get(parent, parent)
        return b"/".join(reversed(parts))


def _layer_of(v: View, pos: int) -> int:
    """The layer a record found at chain position ``pos`` came from (-1: none)."""
    return v.chain[pos] if pos >= 0 else -1


class _Paths:
    """Paths of inodes in one tree, with their directories' paths memoised (a merge names
    each changed inode once, and they share parent directories).

    ``same``: a view whose record of every inode not in ``changed`` is this tree's too (the
    base, for the source: ``changed`` is the source's change set); directories are read
    there, through layers the target's view reads anyway, not through the source's own.
    """

    def __init__(self, v: View, same: View | None = None, changed: set[int] | None = None) -> None:
        self.v = v
        self.same = same
        self.changed = changed if changed is not None else set()
        self.dirs: dict[int, bytes] = {ROOT_INO: b""}

    def of(self, ino: int, rec: Inode) -> bytes:
        if not rec.links:
            return path_of(self.v, ino, rec)
        parent, name = rec.links[0]
        head = self.dirs.get(parent)
        if head is None:
            head = self._dir(parent)
        return head + b"/" + name if head else name

    def _dir(self, d: int) -> bytes:
        up: list[tuple[int, bytes]] = []
        cur = d
        while cur not in self.dirs:
            same = self.same is not None and cur not in self.changed
            rec = (self.same if same and self.same is not None else self.v).inode(cur)
            if rec is None or not rec.links or len(up) > 4096:
                head = self.dirs[d] = path_of(self.v, d)  # unnamed, or a loop: its errors
                return head
            up.append((cur, rec.links[0][1]))
            cur = rec.links[0][0]
        head = self.dirs[cur]
        for ino, name in reversed(up):
            head = head + b"/" + name if head else name
            self.dirs[ino] = head
        return head


def plan_inodes(sides: Sides) -> Plan:
    """Phase 1: decide each inode the source changed since the base."""
    plan = Plan()
    base, ours, theirs = sides.base, sides.ours, sides.theirs
    changed = changed_inodes(base, theirs)
    paths = {id(base): _Paths(base), id(ours): _Paths(ours)}
    paths[id(theirs)] = _Paths(theirs, base, changed)
    continued: set[int] = set()
    for ino in sorted(changed | sides.uncertain):
        b, pos_b = base.inode_at(ino)
        t = theirs.inode(ino)
        if ino == ROOT_INO and b is None:
            b = sides.ours_rec(ino)
        uncertain = ino in sides.uncertain
        if not uncertain and sides.same_node(base, b, theirs, t, ino):
            continue
        o, pos_o = sides.ours_at(ino)
        if uncertain:
            if sides.same_node(ours, o, theirs, t, ino):
                continue
            ours_touched = True
        else:
            # the very same stored record in both trees: unchanged without comparing
            same = _layer_of(base, pos_b) == _layer_of(ours, pos_o)
            ours_touched = not same and not sides.same_node(base, b, ours, o, ino)
        rule_path = None
        for v, rec in ((theirs, t), (ours, o), (base, b)):
            if rec is not None:
                rule_path = (paths[id(v)].of(ino, rec), rec.is_dir)
                break
        rule = sides.rules.rule_for(*rule_path) if rule_path is not None else LINE
        if rule == EXCLUDE:
            continue
        if not ours_touched:
            plan.inodes[ino] = InodePlan(t, TAKE_THEIRS)
        elif rule == OURS:
            continue
        elif rule == THEIRS:
            if o is not None or t is not None:
                plan.inodes[ino] = InodePlan(t, TAKE_THEIRS)
        elif not uncertain and (o is None or t is None) and b is not None and b.is_reg:
            replaced = rewritten(sides, plan, ino, b, o, t, rule)
            if replaced is None:
                _three_way(sides, plan, ino, b, o, t, rule, uncertain)
            else:
                continued.add(replaced)
        else:
            _three_way(sides, plan, ino, b, o, t, rule, uncertain)
    for ino in continued:  # their new inode was merged into ours' file: not added
        plan.inodes.pop(ino, None)
    plan.one_per_path(join=True)
    return plan


def successor(sides: Sides, v: View, ino: int, b: Inode) -> int | None:
    """The new regular file that took base file ``ino``'s only name in tree ``v`` (a file
    saved through a temporary file renamed over it: ``sed -i``, most editors, many tools'
    file writers), or None.

    By path, as git sees it (git tracks paths and bytes, not inodes), that is the same
    file changed, not one file deleted and another added.
    """
    if len(b.links) != 1:
        return None
    parent, name = b.links[0]
    new = v.dirent(parent, name)
    if new is None or new == ino or sides.base.inode(new) is not None:
        return None
    rec = v.inode(new)
    return new if rec is not None and rec.is_reg else None


def rewritten(
    sides: Sides, plan: Plan, ino: int, b: Inode, o: Inode | None, t: Inode | None, rule: str
) -> int | None:
    """Plan base file ``ino`` that one side deleted while a new file took its name there
    (:func:`successor`), and the other side changed: merged as one file changed on both
    sides, into ours' inode (ours' ``ino``, or ours' successor). Ours rewrote it and theirs
    deleted it: a modify/delete conflict, as git reports it, unless ours' bytes and mode
    are the base's (then the deletion stands).

    Returns their successor (its plan is dropped: merged into ours'), ``-1`` when settled
    otherwise, or None when this is no such case (the caller plans ``ino`` as usual).
    """
    base, ours, theirs = sides.base, sides.ours, sides.theirs
    if o is not None:  # theirs rewrote it
        new = successor(sides, theirs, ino, b)
        t = theirs.inode(new) if new is not None else None
        if new is None or t is None:
            return None
        keep, src_o, src_t, other = ino, ino, new, new
    else:
        new = successor(sides, ours, ino, b)
        o = sides.ours_rec(new) if new is not None else None
        if new is None or o is None:
            return None
        if t is None:  # ours rewrote it, theirs deleted it
            parent, name = b.links[0]
            if theirs.dirent(parent, name) is not None:
                return None  # both rewrote it: the namespace check merges the two
            same = o.mode == b.mode and read(ours, new, 0, o.size) == read(base, ino, 0, b.size)
            if not same:
                plan.conflict(sides, new, "modify/delete", "modified", "deleted", ours)
            if same or sides.theirs_wins:
                plan.inodes[new] = InodePlan(None, TAKE_THEIRS)
            return -1
        keep, src_o, src_t, other = new, new, ino, -1
    if not (o.is_reg and t.is_reg):
        return None
    rec = ours.inode_for_write(keep)
    assert rec is not None
    _merge_attrs(sides, plan, keep, b, o, t, rec, False)
    bb = read(base, ino, 0, b.size)
    ob = read(ours, src_o, 0, o.size)
    tb = read(theirs, src_t, 0, t.size)
    content: str | bytes = KEEP_OURS
    if tb not in (bb, ob):
        if ob == bb:
            content = tb
        else:
            content = merge_content(sides, plan, keep, b, o, t, rule, data=(bb, ob, tb))
            if content == TAKE_THEIRS:
                content = tb
    if isinstance(content, bytes):
        rec.mtime_ns = max(o.mtime_ns, t.mtime_ns)
    rec.ctime_ns = now_ns()
    plan.inodes[keep] = InodePlan(rec, content)
    return other


def _three_way(
    sides: Sides,
    plan: Plan,
    ino: int,
    b: Inode | None,
    o: Inode | None,
    t: Inode | None,
    rule: str,
    uncertain: bool,
) -> None:
    ours, theirs = sides.ours, sides.theirs
    if o is None and t is None:
        return
    if o is None or t is None:
        if o is None:
            assert t is not None
            kind, took = _in_its_place(ours, ino, t)
            kept = describe(theirs, ino, t) if took else "modified"
            plan.conflict(sides, ino, kind, took or "deleted", kept, theirs)
        else:
            kind, took = _in_its_place(theirs, ino, o)
            kept = describe(ours, ino, o) if took else "modified"
            plan.conflict(sides, ino, kind, kept, took or "deleted", ours)
        if sides.theirs_wins:
            plan.inodes[ino] = InodePlan(t, TAKE_THEIRS)
        return
    # Both sides have an inode the base lacks: it reached them by different routes.
    # Attributes then merge against ours; content is compared against nothing, so differing
    # bytes are an add/add of content.
    added_on_both = b is None
    if b is None:
        b = o
    rec = ours.inode_for_write(ino)
    assert rec is not None
    _merge_attrs(sides, plan, ino, b, o, t, rec, uncertain)
    # content
    content: str | bytes = KEEP_OURS
    if not o.is_dir:
        if added_on_both or uncertain:
            changed_o = changed_t = True
        else:
            changed_o = not content_equal(sides.base, b, ours, o, ino)
            changed_t = not content_equal(sides.base, b, theirs, t, ino)
        if changed_t and not changed_o:
            content = TAKE_THEIRS
        elif changed_t and changed_o and not content_equal(ours, o, theirs, t, ino):
            base_rec = None if added_on_both else b
            content = merge_content(sides, plan, ino, base_rec, o, t, rule, uncertain)
    if content == TAKE_THEIRS:
        rec.inline, rec.size = t.inline, t.size
    if content == TAKE_THEIRS or isinstance(content, bytes):
        rec.mtime_ns = max(o.mtime_ns, t.mtime_ns)
    rec.ctime_ns = now_ns()
    plan.inodes[ino] = InodePlan(rec, content)


def _in_its_place(v: View, ino: int, kept: Inode) -> tuple[str, str]:
    """The conflict kind, and the description of what tree ``v``, which deleted ``ino``,
    has of another kind at one of the names the other side keeps it under (``kept``'s
    links; ``""`` if nothing): a file replaced by a directory is no plain deletion there,
    but a ``type`` clash at that path, the very one the namespace check meets when it gives
    the file its name back."""
    for parent, name in kept.links:
        other = v.dirent(parent, name)
        rec = v.inode(other) if other is not None and other != ino else None
        if other is not None and rec is not None and ftype(rec) != ftype(kept):
            return "type", describe(v, other, rec)
    return "modify/delete", ""


def _merge_attrs(
    sides: Sides,
    plan: Plan,
    ino: int,
    b: Inode,
    o: Inode,
    t: Inode,
    rec: Inode,
    uncertain: bool,
) -> None:
    """Merge location (links), permission bits, owner and xattrs of ``b``/``o``/``t`` into
    ``rec`` (ours' record of ``ino``, being edited), recording conflicts in ``plan``."""
    ours, theirs = sides.ours, sides.theirs
    theirs_wins = sides.theirs_wins
    # location
    lb, lo, lt = set(b.links), set(o.links), set(t.links)
    if lo == lb and not uncertain:
        rec.links = list(t.links)
    elif lt not in (lb, lo) or (uncertain and lt != lo):
        plan.conflict(
            sides, ino, "rename/rename", describe(ours, ino, o), describe(theirs, ino, t), ours
        )
        if theirs_wins:
            rec.links = list(t.links)
    # permission bits and owner
    for name in ("mode", "uid", "gid"):
        vb, vo, vt = getattr(b, name), getattr(o, name), getattr(t, name)
        if vo == vb and not uncertain:
            setattr(rec, name, vt)
        elif vt not in (vb, vo) or (uncertain and vt != vo):
            plan.conflict(sides, ino, "mode", f"{name} {vo:#o}", f"{name} {vt:#o}", ours)
            if theirs_wins:
                setattr(rec, name, vt)
    # extended attributes
    for key in set(b.xattrs) | set(o.xattrs) | set(t.xattrs):
        xb, xo, xt = b.xattrs.get(key), o.xattrs.get(key), t.xattrs.get(key)
        if xo == xb and not uncertain:
            if xt is None:
                rec.xattrs.pop(key, None)
            else:
                rec.xattrs[key] = xt
        elif xt not in (xb, xo) or (uncertain and xt != xo):
            plan.conflict(sides, ino, "xattr", f"{key!r}={xo!r}", f"{key!r}={xt!r}", ours)
            if theirs_wins:
                if xt is None:
                    rec.xattrs.pop(key, None)
                else:
                    rec.xattrs[key] = xt


def merge_content(
    sides: Sides,
    plan: Plan,
    ino: int,
    b: Inode | None,
    o: Inode,
    t: Inode,
    rule: str = LINE,
    uncertain: bool = False,
    data: tuple[bytes, bytes, bytes] | None = None,
) -> str | bytes:
    """The merged content of a file both sides changed, or a conflict recorded in ``plan``.

    Returns merged bytes, or ``"ours"``/``"theirs"`` when a conflict is resolved (or left)
    one way. ``data``: the (base, ours, theirs) bytes, already read (else they are read
    from the three trees at ``ino``).
    """
    ours, theirs = sides.ours, sides.theirs
    kind_o = "symlink" if o.is_link else "file"
    path = os.fsdecode(path_of(ours, ino, o))
    if o.is_reg and t.is_reg and max(b.size if b else 0, o.size, t.size) <= TEXT_MERGE_MAX:
        if data is not None:
            bb, ob, tb = data
        else:
            bb = read(sides.base, ino, 0, b.size) if b is not None and b.is_reg else b""
            ob = read(ours, ino, 0, o.size)
            tb = read(theirs, ino, 0, t.size)
        if is_text(bb, ob, tb):
            if rule == UNION:
                return union(bb, ob, tb)
            ours_name, theirs_name = sides.names
            if b is None:
                result = merge_added(ob, tb, (ours_name, theirs_name))
                kind = "add/add"
            else:
                result = merge_text(bb, ob, tb, (ours_name, "base", theirs_name))
                kind = "content"
            if result.clean and not uncertain:
                return result.merged
            plan.uncertain.add(ino)
            why = "the merge bases disagree (criss-cross history)" if uncertain else "text"
            conflict = Conflict(
                path, kind, f"{why} changed ({o.size} bytes)", f"{why} changed ({t.size} bytes)"
            )
            if sides.markers:
                plan.resolved.append(conflict)
                if result.clean:  # uncertain base, clean merge: show both whole
                    return merge_added(ob, tb, (ours_name, theirs_name)).merged
                return result.merged
            plan.conflicts.append(conflict)
            return TAKE_THEIRS if sides.theirs_wins else KEEP_OURS
    plan.conflict(
        sides,
        ino,
        "content",
        f"binary {kind_o} changed ({o.size} bytes)",
        f"binary {kind_o} changed ({t.size} bytes)",
        ours,
    )
    return TAKE_THEIRS if sides.theirs_wins else KEEP_OURS
