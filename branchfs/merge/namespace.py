"""The namespace check over a :class:`~branchfs.merge.plan.Plan`: names, parents, cycles.

Runs after the per-inode planning and refines the plan in place:

1. directories the source deleted must end up empty (a deletion kept back keeps its
   parents too);
2. names the source adds must be free in the target (two *new* directories at one path are
   unified; identical new files are taken once; a per-path rule may settle the clash), and
   their parent directories must still exist;
3. no directory may become its own ancestor.

What cannot be settled is recorded in ``plan.conflicts`` (and, under a strategy, resolved
one way). Nothing is written to the store.
"""

from __future__ import annotations

import os

from ..diff import path_of
from ..errors import Conflict
from ..records import ROOT_INO, Inode
from ..tree import read
from .context import Sides, describe, ftype
from .plan import KEEP_OURS, TAKE_THEIRS, InodePlan, Plan
from .rules import EXCLUDE, OURS, THEIRS, UNION
from .text import TEXT_MERGE_MAX, TextMerge, is_text, merge_added, merge_text


def check(sides: Sides, plan: Plan) -> None:
    """Run the three namespace checks over ``plan``."""
    _check_deleted_dirs(sides, plan)
    _Names(sides, plan).run()
    _check_cycles(sides, plan)
    plan.one_per_path()


def _check_deleted_dirs(sides: Sides, plan: Plan) -> None:
    """Directories their side deleted must end up empty; repeat until nothing changes."""
    ours = sides.ours
    reported: set[int] = set()
    changed = True
    while changed:
        changed = False
        for ino, ip in list(plan.inodes.items()):
            o = sides.ours_rec(ino)
            if ip.rec is not None or o is None or not o.is_dir:
                continue
            leftover = []
            for name, child in ours.list_dir(ino):
                cp = plan.inodes.get(child)
                if cp is not None and (cp.rec is None or (ino, name) not in cp.rec.links):
                    continue
                if child in plan.doomed:
                    continue
                leftover.append(child)
            if not leftover:
                continue
            for child in leftover:
                if child in reported or child in plan.kept_dirs:
                    continue
                reported.add(child)
                plan.conflict(
                    sides,
                    child,
                    "modify/delete",
                    describe(ours, child, ours.inode(child)),
                    "its directory was deleted",
                    ours,
                )
            if sides.theirs_wins:
                plan.doomed.update(leftover)
            else:
                del plan.inodes[ino]
                plan.kept_dirs.add(ino)
            changed = True


class _Names:
    """Phase 2: give every name the source adds a place, or a conflict."""

    def __init__(self, sides: Sides, plan: Plan) -> None:
        self.sides, self.plan = sides, plan
        self.ours, self.theirs = sides.ours, sides.theirs
        #: names the plan frees in ours
        self.removed: set[tuple[int, bytes]] = set()
        #: names given out so far in this phase -> the inode that got it
        self.claimed: dict[tuple[int, bytes], int] = {}

    def run(self) -> None:
        plan, sides = self.plan, self.sides
        additions: list[tuple[int, int, bytes]] = []
        for ino, ip in plan.inodes.items():
            o = sides.ours_rec(ino)
            old = set(o.links) if o is not None else set()
            new = set(ip.rec.links) if ip.rec is not None else set()
            self.removed.update(old - new)
            additions += [(ino, p, n) for p, n in new - old]
        for child in plan.doomed:
            rec = sides.ours_rec(child)
            if rec is not None:
                self.removed.update(rec.links)
        depth = {ino: path_of(self.theirs, ino).count(b"/") for ino, _p, _n in additions}
        additions.sort(key=lambda a: (depth[a[0]], a[1], a[2]))
        for ino, parent, name in additions:
            self.add_name(ino, parent, name)

    def add_name(self, ino: int, parent: int, name: bytes, quiet: bool = False) -> None:
        plan, sides = self.plan, self.sides
        ip = plan.inodes.get(ino)
        if ip is None or ip.rec is None:
            return
        parent = plan.alias.get(parent, parent)
        if parent in plan.dropped:
            # its new parent directory was itself left out: part of that conflict
            self.drop_name(ino)
            return
        if parent != ROOT_INO and not plan.is_dir(parent, sides):
            if not quiet:
                plan.conflict(
                    sides,
                    ino,
                    "modify/delete",
                    "the directory was deleted",
                    describe(self.theirs, ino, self.theirs.inode(ino)),
                    at=self._path(parent, name),
                )
            if sides.theirs_wins and self.theirs.inode(parent) is not None:
                self.resurrect(parent)
            else:
                self.drop_name(ino)
                return
        occupant = self.claimed.get((parent, name))
        if occupant is None and (parent, name) not in self.removed:
            occupant = self.ours.dirent(parent, name)
        if occupant is None and self._recreated_where_ours_deleted(ino, ip.rec, parent, name):
            return
        if occupant is not None and occupant != ino:
            orec = plan.record(occupant, self.sides)
            trec = ip.rec
            if orec is not None and self._theirs_new(ino) and self._is_new(occupant):
                if orec.is_dir and trec.is_dir:
                    plan.alias[ino] = occupant
                    del plan.inodes[ino]
                    self._rehome_children(ino, occupant)
                    return
                if self._same_new_file(occupant, orec, ino, trec):
                    del plan.inodes[ino]
                    return
            settled = self._settle_by_rule(ino, occupant, orec, trec, parent, name)
            if settled is None and self._merge_replaced(ino, occupant, orec, trec, parent, name):
                return
            if settled == "ours":
                return
            if settled is None:
                kind = "type" if orec is not None and ftype(orec) != ftype(trec) else "add/add"
                plan.conflict(
                    sides,
                    ino,
                    kind,
                    describe(self.ours, occupant, orec),
                    describe(self.theirs, ino, trec),
                    at=self._path(parent, name),
                )
                plan.uncertain.add(occupant)
                if sides.theirs_wins:
                    self.evict(occupant, parent, name)
                else:
                    self.drop_name(ino)
                    return
        if parent != ip.rec.links[0][0] or any(p in plan.alias for p, _n in ip.rec.links):
            ip.rec.links = [(plan.alias.get(p, p), n) for p, n in ip.rec.links]
        self.claimed[(parent, name)] = ino

    def _path(self, parent: int, name: bytes) -> str:
        """The path of the name being given out, for a conflict there: an inode's own path
        may be another of its names (ours' file that their rename moved keeps ours' name)."""
        head = path_of(self.theirs, parent) if self.theirs.inode(parent) is not None else None
        if head is None:
            head = self.plan.path(parent, self.sides)
        return os.fsdecode(head + b"/" + name if head else name)

    def _settle_by_rule(
        self, ino: int, occupant: int, orec: Inode | None, trec: Inode, parent: int, name: bytes
    ) -> str | None:
        """Settle a name clash by the path's merge rule, or by conflict markers:
        ``"ours"`` (ours' inode keeps the name), ``"theirs"`` (ours' was evicted), or None.

        ``ours``/``exclude`` keep ours' file; ``theirs`` takes theirs'; ``union`` keeps
        ours' file with both sides' lines; with markers, two text files get two-way
        markers in ours' file (a resolved add/add).
        """
        plan, sides = self.plan, self.sides
        rule = sides.rules.rule_for(path_of(self.theirs, ino, trec), trec.is_dir)
        if rule in (OURS, EXCLUDE):
            self.drop_name(ino)
            return "ours"
        if rule == THEIRS:
            self.evict(occupant, parent, name)
            return "theirs"
        both_text = orec is not None and orec.is_reg and trec.is_reg
        # Both sides replaced the base's file (``sed -i`` on both): markers are 3-way,
        # with the base's section, in :meth:`_merge_replaced`, as for an in-place edit.
        markers = sides.markers and sides.base.dirent(parent, name) in (None, ino, occupant)
        if both_text and (rule == UNION or markers):
            assert orec is not None
            ob = read(self.ours, occupant, 0, orec.size)
            tb = self._planned_bytes(ino, trec)
            if is_text(ob, tb):
                if rule == UNION:
                    merged = _union_two(ob, tb) if ob != tb else ob
                else:  # conflict markers, two-way as git writes an add/add
                    merged = merge_added(ob, tb, sides.names).merged
                    plan.resolved.append(
                        Conflict(
                            os.fsdecode(path_of(self.theirs, ino, trec)),
                            "add/add",
                            describe(self.ours, occupant, orec),
                            describe(self.theirs, ino, trec),
                        )
                    )
                    plan.uncertain.update((ino, occupant))
                rec = self.ours.inode_for_write(occupant)
                assert rec is not None
                plan.inodes[occupant] = InodePlan(rec, merged)
                self.drop_name(ino)
                return "ours"
        return None

    def _merge_replaced(
        self, ino: int, occupant: int, orec: Inode | None, trec: Inode, parent: int, name: bytes
    ) -> bool:
        """Both sides replaced the base's file at this name by a new one (programs that save
        through a temporary file and a rename: git's refs, editors). By path that is a
        change of the file on both sides: merge the text 3-way against the base's file.
        True if settled (merged, or a ``content`` conflict recorded and resolved)."""
        sides, plan = self.sides, self.plan
        if orec is None or not (orec.is_reg and trec.is_reg):
            return False
        if not (self._theirs_new(ino) and self._is_new(occupant)):
            return False
        old = sides.base.dirent(parent, name)
        brec = sides.base.inode(old) if old is not None else None
        if old in (None, ino, occupant) or brec is None or not brec.is_reg:
            return False
        assert old is not None
        bb = read(sides.base, old, 0, brec.size)
        ob = read(self.ours, occupant, 0, orec.size)
        tb = read(self.theirs, ino, 0, trec.size)
        if not is_text(bb, ob, tb) or max(len(bb), len(ob), len(tb)) > TEXT_MERGE_MAX:
            return False
        result = merge_text(bb, ob, tb, (sides.names[0], "base", sides.names[1]))
        rec = self.ours.inode_for_write(occupant)
        assert rec is not None
        if not result.clean:
            path = os.fsdecode(path_of(self.theirs, ino, trec))
            conflict = Conflict(
                path,
                "content",
                f"text changed ({orec.size} bytes)",
                f"text changed ({trec.size} bytes)",
            )
            plan.uncertain.update((ino, occupant))
            if sides.markers:
                plan.resolved.append(conflict)
            else:
                plan.conflicts.append(conflict)
                if not sides.theirs_wins:
                    self.drop_name(ino)
                    return True
                result = TextMerge(tb, True)
        plan.inodes[occupant] = InodePlan(rec, result.merged)
        self.drop_name(ino)
        return True

    def _recreated_where_ours_deleted(
        self, ino: int, trec: Inode, parent: int, name: bytes
    ) -> bool:
        """A new file of theirs at a name where the base had another file, which ours
        deleted: by path (as ``diff`` and git see it) theirs *changed* that file. Unchanged
        bytes and mode: ours' deletion stands (True: the name is dropped). Changed: a
        modify/delete conflict (True unless the strategy takes theirs)."""
        if trec.is_dir or not self._theirs_new(ino) or self.ours.dirent(parent, name) is not None:
            return False
        old = self.sides.base.dirent(parent, name)
        if old is None or old == ino:
            return False
        brec = self.sides.base.inode(old)
        if brec is None or brec.is_dir:
            return False
        if ftype(brec) == ftype(trec) and brec.mode == trec.mode and brec.size == trec.size:
            same = (
                brec.inline == trec.inline
                if brec.is_link
                else read(self.sides.base, old, 0, brec.size)
                == read(self.theirs, ino, 0, trec.size)
            )
            if same:
                self.drop_name(ino)
                return True
        self.plan.conflict(
            self.sides,
            ino,
            "modify/delete",
            "deleted",
            describe(self.theirs, ino, trec) + " (deleted and created again)",
            self.theirs,
        )
        if self.sides.theirs_wins:
            return False
        self.drop_name(ino)
        return True

    def _is_new(self, ino: int) -> bool:
        return self.sides.base.inode(ino) is None

    def _theirs_new(self, ino: int) -> bool:
        """Whether ``ino``, which a name is being given to, is a file theirs created: it may
        also be ours' own new file that a change of theirs moves (ours saved the file
        through a temporary file, theirs renamed it: :func:`~.plan.rewritten`)."""
        return self._is_new(ino) and self.theirs.inode(ino) is not None

    def _planned_bytes(self, ino: int, rec: Inode) -> bytes:
        """The bytes the plan gives ``ino`` (merged, theirs' or ours')."""
        content = self.plan.inodes[ino].content
        if isinstance(content, bytes):
            return content
        return read(self.theirs if content == TAKE_THEIRS else self.ours, ino, 0, rec.size)

    def _same_new_file(self, a: int, ra: Inode, b: int, rb: Inode) -> bool:
        if ftype(ra) != ftype(rb) or ra.mode != rb.mode or ra.size != rb.size or ra.is_dir:
            return False
        if ra.is_link:
            return ra.inline == rb.inline
        return read(self.ours, a, 0, ra.size) == read(self.theirs, b, 0, rb.size)

    def _rehome_children(self, old_dir: int, new_dir: int) -> None:
        for ip in self.plan.inodes.values():
            if ip.rec is not None and any(p == old_dir for p, _n in ip.rec.links):
                ip.rec.links = [(new_dir if p == old_dir else p, n) for p, n in ip.rec.links]

    def drop_name(self, ino: int) -> None:
        """Resolve towards ours: theirs' inode does not get this name."""
        plan = self.plan
        ip = plan.inodes[ino]
        o = self.sides.ours_rec(ino)
        if o is None:
            del plan.inodes[ino]  # new on their side only: not added at all
            plan.dropped.add(ino)
            return
        assert ip.rec is not None
        ip.rec.links = list(o.links)
        self.removed.difference_update(o.links)

    def evict(self, occupant: int, parent: int, name: bytes) -> None:
        """Resolve towards theirs: ours' inode loses the name (deleted if it was its last)."""
        plan = self.plan
        rec = plan.record(occupant, self.sides)
        self.removed.add((parent, name))
        if rec is None:
            return
        rec = rec.copy()
        rec.links = [link for link in rec.links if link != (parent, name)]
        if rec.links:
            content = plan.inodes[occupant].content if occupant in plan.inodes else KEEP_OURS
            plan.inodes[occupant] = InodePlan(rec, content)
        else:
            plan.doomed.add(occupant)
            plan.inodes.pop(occupant, None)

    def resurrect(self, d: int) -> None:
        """Bring back directory ``d`` (deleted on our side) from their side, with its parents."""
        plan = self.plan
        t = self.theirs.inode(d)
        if t is None or (d in plan.inodes and plan.inodes[d].rec is not None):
            return
        plan.inodes[d] = InodePlan(t.copy(), TAKE_THEIRS)
        plan.doomed.discard(d)
        for p, n in t.links:
            self.add_name(d, p, n, quiet=True)


def _union_two(ours: bytes, theirs: bytes) -> bytes:
    """Ours' lines, then theirs' lines that ours lacks (for union files both sides added)."""
    have = set(ours.splitlines(keepends=True))
    out = ours if ours.endswith(b"\n") or not ours else ours + b"\n"
    extra = [line for line in theirs.splitlines(keepends=True) if line not in have]
    return out + b"".join(extra)


def _check_cycles(sides: Sides, plan: Plan) -> None:
    """Phase 3: no directory may become its own ancestor."""
    ours = sides.ours
    for ino, ip in list(plan.inodes.items()):
        if ip.rec is None or not ip.rec.is_dir:
            continue
        seen = {ino}
        cur = ino
        while cur != ROOT_INO:
            links = plan.links(cur, sides)
            if not links:
                break
            cur = plan.alias.get(links[0][0], links[0][0])
            if cur in seen:
                plan.conflict(
                    sides,
                    ino,
                    "cycle",
                    describe(ours, ino, ours.inode(ino)),
                    describe(sides.theirs, ino, sides.theirs.inode(ino)),
                    sides.theirs,
                )
                if sides.theirs_wins:
                    _undo_our_moves(sides, plan, seen)
                else:
                    o = ours.inode(ino)
                    if o is not None:
                        ip.rec.links = list(o.links)
                    else:
                        del plan.inodes[ino]
                break
            seen.add(cur)


def _undo_our_moves(sides: Sides, plan: Plan, members: set[int]) -> None:
    """Break a cycle towards theirs: directories we moved go back where theirs has them."""
    for d in members:
        if d in plan.inodes or d == ROOT_INO:
            continue
        o, t = sides.ours.inode_for_write(d), sides.theirs.inode(d)
        if o is not None and t is not None and set(o.links) != set(t.links):
            o.links = list(t.links)
            plan.inodes[d] = InodePlan(o, KEEP_OURS)
