"""3-way merge of one branch into another, against the state they last shared.

The merge base is the layer recorded by the previous merge of the pair, else the deepest
layer the two chains share (the fork point). Only inodes whose records changed above the
base on the source side are visited, so the cost follows the changes, not the tree.

The merge runs in one write transaction, in phases:

1. per inode: take the source's version where only the source changed it, otherwise merge
   field by field (location, mode/owner, xattrs, content with a line-level 3-way text merge);
2. directories the source deleted must end up empty;
3. the namespace: names the source adds must be free (two new directories at one path are
   merged into one), and their parent directories must still exist;
4. no directory may become its own ancestor;
5. any conflict left raises :class:`MergeConflict` and the transaction is aborted, so the
   target is exactly as it was; otherwise the plan is written.
"""

from __future__ import annotations

import stat as st
from dataclasses import dataclass, field

import lmdb
import merge3

from .content import copy_extents, split_at_common
from .content import replace as replace_content
from .diff import Change, changed_inodes, content_equal, path_of
from .engine import Engine, RecordCache
from .errors import BranchFSError, Conflict, MergeConflict
from .layers import View
from .records import ROOT_INO, Inode
from .tree import now_ns

TEXT_MERGE_MAX = 32 << 20
STRATEGIES = (None, "ours", "theirs")


@dataclass
class MergeResult:
    """What a merge did: the changes applied to the target, and the conflicts it resolved
    (by ``strategy`` or with conflict markers; empty for a clean merge)."""

    changes: list[Change]
    conflicts: list[Conflict] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changes)


@dataclass
class _Plan:
    """The merged state of one inode: its record (None: deleted) and where its bytes come from."""

    rec: Inode | None
    content: str | bytes = "ours"  # "ours", "theirs", or the merged bytes


def _describe(v: View, ino: int, rec: Inode | None) -> str:
    if rec is None:
        return "deleted"
    kind = "directory" if rec.is_dir else "symlink" if rec.is_link else "file"
    path = path_of(v, ino, rec).decode("utf-8", "surrogateescape")
    if rec.is_reg:
        return f"{kind} {path} ({rec.size} bytes)"
    return f"{kind} {path}"


def _ftype(rec: Inode) -> int:
    return st.S_IFMT(rec.mode)


class _Merger:
    def __init__(
        self,
        base: View,
        ours: View,
        theirs: View,
        strategy: str | None,
        markers: bool,
        names: tuple[str, str],
    ) -> None:
        self.base, self.ours, self.theirs = base, ours, theirs
        self.strategy = strategy
        self.markers = markers
        self.names = names
        self.plan: dict[int, _Plan] = {}
        self.conflicts: list[Conflict] = []  # unresolved unless strategy is set
        self.resolved: list[Conflict] = []  # resolved with conflict markers
        self.alias: dict[int, int] = {}
        self.doomed: set[int] = set()  # ours' inodes to delete with their subtree
        self.kept_dirs: set[int] = set()  # deletions of theirs kept back for ours' entries
        self.dropped: set[int] = set()  # their new inodes left out to resolve a conflict

    # -- helpers ---------------------------------------------------------------------------

    def _conflict(
        self, ino: int, kind: str, ours: str, theirs: str, view: View | None = None
    ) -> None:
        v = view or (self.theirs if self.theirs.inode(ino) is not None else self.ours)
        rec = v.inode(ino)
        path = path_of(v, ino, rec).decode("utf-8", "surrogateescape") if rec else f"<inode {ino}>"
        self.conflicts.append(Conflict(path, kind, ours, theirs))

    def _take_theirs_side(self) -> bool:
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

    # -- phase 1: per-inode decisions ----------------------------------------------------------

    def decide(self) -> None:
        ours_changed = changed_inodes(self.base, self.ours)
        for ino in sorted(changed_inodes(self.base, self.theirs)):
            b, t = self.base.inode(ino), self.theirs.inode(ino)
            if ino == ROOT_INO and b is None:
                b = self.ours.inode(ino)
            if self.same_node(self.base, b, self.theirs, t, ino):
                continue
            o = self.ours.inode(ino)
            ours_touched = ino in ours_changed and not self.same_node(
                self.base, b, self.ours, o, ino
            )
            if not ours_touched:
                self.plan[ino] = _Plan(t, "theirs")
            else:
                self._three_way(ino, b, o, t)

    def _three_way(self, ino: int, b: Inode | None, o: Inode | None, t: Inode | None) -> None:
        if o is None and t is None:
            return
        if o is None or t is None:
            if o is None:
                self._conflict(ino, "modify/delete", "deleted", "modified", self.theirs)
            else:
                self._conflict(ino, "modify/delete", "modified", "deleted", self.ours)
            if self._take_theirs_side():
                self.plan[ino] = _Plan(t, "theirs")
            return
        # Both sides have an inode the base lacks: it reached them by different routes (a
        # merge through a third branch). Attributes then merge against ours; content is
        # compared against nothing, so differing bytes are a conflict.
        added_on_both = b is None
        if b is None:
            b = o
        rec = self.ours.inode_for_write(ino)
        assert rec is not None
        theirs_wins = self._take_theirs_side()
        # location
        lb, lo, lt = set(b.links), set(o.links), set(t.links)
        if lo == lb:
            rec.links = list(t.links)
        elif lt not in (lb, lo):
            self._conflict(
                ino,
                "rename/rename",
                _describe(self.ours, ino, o),
                _describe(self.theirs, ino, t),
                self.ours,
            )
            if theirs_wins:
                rec.links = list(t.links)
        # permission bits and owner
        for name in ("mode", "uid", "gid"):
            vb, vo, vt = getattr(b, name), getattr(o, name), getattr(t, name)
            if vo == vb:
                setattr(rec, name, vt)
            elif vt not in (vb, vo):
                self._conflict(ino, "mode", f"{name} {vo:#o}", f"{name} {vt:#o}", self.ours)
                if theirs_wins:
                    setattr(rec, name, vt)
        # extended attributes
        for key in set(b.xattrs) | set(o.xattrs) | set(t.xattrs):
            xb, xo, xt = b.xattrs.get(key), o.xattrs.get(key), t.xattrs.get(key)
            if xo == xb:
                if xt is None:
                    rec.xattrs.pop(key, None)
                else:
                    rec.xattrs[key] = xt
            elif xt not in (xb, xo):
                self._conflict(ino, "xattr", f"{key!r}={xo!r}", f"{key!r}={xt!r}", self.ours)
                if theirs_wins:
                    if xt is None:
                        rec.xattrs.pop(key, None)
                    else:
                        rec.xattrs[key] = xt
        # content
        content: str | bytes = "ours"
        if not o.is_dir:
            if added_on_both:
                changed_o = changed_t = True
            else:
                changed_o = not content_equal(self.base, b, self.ours, o, ino)
                changed_t = not content_equal(self.base, b, self.theirs, t, ino)
            if changed_t and not changed_o:
                content = "theirs"
            elif changed_t and changed_o and not content_equal(self.ours, o, self.theirs, t, ino):
                content = self._merge_content(ino, None if added_on_both else b, o, t)
        if content == "theirs":
            rec.inline, rec.size = t.inline, t.size
        if content == "theirs" or isinstance(content, bytes):
            rec.mtime_ns = max(o.mtime_ns, t.mtime_ns)
        rec.ctime_ns = now_ns()
        self.plan[ino] = _Plan(rec, content)

    def _merge_content(self, ino: int, b: Inode | None, o: Inode, t: Inode) -> str | bytes:
        from .tree import read

        kind_o = "symlink" if o.is_link else "file"
        if o.is_reg and max(b.size if b else 0, o.size, t.size) <= TEXT_MERGE_MAX:
            bb = read(self.base, ino, 0, b.size) if b is not None and b.is_reg else b""
            ob = read(self.ours, ino, 0, o.size)
            tb = read(self.theirs, ino, 0, t.size)
            if b"\0" not in bb and b"\0" not in ob and b"\0" not in tb:
                m = merge3.Merge3(
                    bb.splitlines(keepends=True),
                    ob.splitlines(keepends=True),
                    tb.splitlines(keepends=True),
                )
                if not any(group[0] == "conflict" for group in m.merge_groups()):
                    return b"".join(m.merge_lines())
                conflict = Conflict(
                    path_of(self.ours, ino, o).decode("utf-8", "surrogateescape"),
                    "content",
                    f"text modified ({o.size} bytes)",
                    f"text modified ({t.size} bytes)",
                )
                if self.markers:
                    self.resolved.append(conflict)
                    ours_name, theirs_name = self.names
                    return b"".join(
                        m.merge_lines(
                            name_a=ours_name.encode(),
                            name_b=theirs_name.encode(),
                            name_base=b"base",
                            start_marker=b"<<<<<<<",
                            mid_marker=b"=======",
                            end_marker=b">>>>>>>",
                            base_marker=b"|||||||",
                        )
                    )
                self.conflicts.append(conflict)
                return "theirs" if self._take_theirs_side() else "ours"
        self._conflict(
            ino,
            "content",
            f"binary {kind_o} modified ({o.size} bytes)",
            f"binary {kind_o} modified ({t.size} bytes)",
            self.ours,
        )
        return "theirs" if self._take_theirs_side() else "ours"

    # -- phase 2: directories the source deleted must end up empty ------------------------------

    def check_deleted_dirs(self) -> None:
        """Directories their side deleted must end up empty; a deletion kept back (towards
        ours) keeps its parents too, so this runs until nothing changes."""
        reported: set[int] = set()
        changed = True
        while changed:
            changed = False
            for ino, plan in list(self.plan.items()):
                o = self.ours.inode(ino)
                if plan.rec is not None or o is None or not o.is_dir:
                    continue
                leftover = []
                for name, child in self.ours.list_dir(ino):
                    cp = self.plan.get(child)
                    if cp is not None and (cp.rec is None or (ino, name) not in cp.rec.links):
                        continue
                    if child in self.doomed:
                        continue
                    leftover.append(child)
                if not leftover:
                    continue
                for child in leftover:
                    if child in reported or child in self.kept_dirs:
                        continue
                    reported.add(child)
                    self._conflict(
                        child,
                        "modify/delete",
                        _describe(self.ours, child, self.ours.inode(child)),
                        "its directory was deleted",
                        self.ours,
                    )
                if self._take_theirs_side():
                    self.doomed.update(leftover)
                else:
                    del self.plan[ino]
                    self.kept_dirs.add(ino)
                changed = True

    # -- phase 3: the namespace ------------------------------------------------------------------

    def _result_record(self, ino: int) -> Inode | None:
        """The record ``ino`` will have after the merge as planned so far."""
        plan = self.plan.get(ino)
        if plan is not None:
            return plan.rec
        return self.ours.inode(ino)

    def _result_links(self, ino: int) -> list[tuple[int, bytes]]:
        rec = self._result_record(ino)
        return rec.links if rec is not None else []

    def _result_is_dir(self, ino: int) -> bool:
        rec = self._result_record(ino)
        return ino not in self.doomed and rec is not None and rec.is_dir

    def _is_new(self, ino: int) -> bool:
        return self.base.inode(ino) is None

    def check_namespace(self) -> None:
        # names freed by the plan
        self.removed: set[tuple[int, bytes]] = set()
        additions: list[tuple[int, int, bytes]] = []
        for ino, plan in self.plan.items():
            o = self.ours.inode(ino)
            old = set(o.links) if o is not None else set()
            new = set(plan.rec.links) if plan.rec is not None else set()
            self.removed.update(old - new)
            additions += [(ino, p, n) for p, n in new - old]
        for child in self.doomed:
            rec = self.ours.inode(child)
            if rec is not None:
                self.removed.update(rec.links)
        depth = {ino: path_of(self.theirs, ino).count(b"/") for ino, _p, _n in additions}
        additions.sort(key=lambda a: (depth[a[0]], a[1], a[2]))
        self.claimed: dict[tuple[int, bytes], int] = {}
        for ino, parent, name in additions:
            self._add_name(ino, parent, name)

    def _add_name(self, ino: int, parent: int, name: bytes, quiet: bool = False) -> None:
        plan = self.plan.get(ino)
        if plan is None or plan.rec is None:
            return
        parent = self.alias.get(parent, parent)
        if parent in self.dropped:
            # its new parent directory was itself left out: part of that conflict
            self._drop_name(ino, parent, name)
            return
        if parent != ROOT_INO and not self._result_is_dir(parent):
            if not quiet:
                self._conflict(
                    ino,
                    "modify/delete",
                    "the directory was deleted",
                    _describe(self.theirs, ino, self.theirs.inode(ino)),
                    self.theirs,
                )
            if self._take_theirs_side() and self.theirs.inode(parent) is not None:
                self._resurrect(parent)
            else:
                self._drop_name(ino, parent, name)
                return
        occupant = self.claimed.get((parent, name))
        if occupant is None and (parent, name) not in self.removed:
            occupant = self.ours.dirent(parent, name)
        if occupant is not None and occupant != ino:
            orec = self._result_record(occupant)
            trec = plan.rec
            if orec is not None and self._is_new(ino) and self._is_new(occupant):
                if orec.is_dir and trec.is_dir:
                    self.alias[ino] = occupant
                    del self.plan[ino]
                    self._rehome_children(ino, occupant)
                    return
                if self._same_new_file(occupant, orec, ino, trec):
                    del self.plan[ino]
                    return
            kind = "type" if orec is not None and _ftype(orec) != _ftype(trec) else "add/add"
            self._conflict(
                ino,
                kind,
                _describe(self.ours, occupant, orec),
                _describe(self.theirs, ino, trec),
                self.theirs,
            )
            if self._take_theirs_side():
                self._evict(occupant, parent, name)
            else:
                self._drop_name(ino, parent, name)
                return
        if parent != plan.rec.links[0][0] or any(p in self.alias for p, _n in plan.rec.links):
            plan.rec.links = [(self.alias.get(p, p), n) for p, n in plan.rec.links]
        self.claimed[(parent, name)] = ino

    def _same_new_file(self, a: int, ra: Inode, b: int, rb: Inode) -> bool:
        if _ftype(ra) != _ftype(rb) or ra.mode != rb.mode or ra.size != rb.size or ra.is_dir:
            return False
        from .tree import read

        if ra.is_link:
            return ra.inline == rb.inline
        return read(self.ours, a, 0, ra.size) == read(self.theirs, b, 0, rb.size)

    def _rehome_children(self, old_dir: int, new_dir: int) -> None:
        for plan in self.plan.values():
            if plan.rec is not None and any(p == old_dir for p, _n in plan.rec.links):
                plan.rec.links = [(new_dir if p == old_dir else p, n) for p, n in plan.rec.links]

    def _drop_name(self, ino: int, parent: int, name: bytes) -> None:
        """Resolve towards ours: theirs' inode does not get this name."""
        plan = self.plan[ino]
        o = self.ours.inode(ino)
        if o is None:
            del self.plan[ino]  # new on their side only: not added at all
            self.dropped.add(ino)
            return
        assert plan.rec is not None
        plan.rec.links = list(o.links)
        self.removed.difference_update(o.links)

    def _evict(self, occupant: int, parent: int, name: bytes) -> None:
        """Resolve towards theirs: ours' inode loses the name (deleted if it was its last)."""
        rec = self._result_record(occupant)
        self.removed.add((parent, name))
        if rec is None:
            return
        rec = rec.copy()
        rec.links = [link for link in rec.links if link != (parent, name)]
        if rec.links:
            self.plan[occupant] = _Plan(
                rec, self.plan[occupant].content if occupant in self.plan else "ours"
            )
        else:
            self.doomed.add(occupant)
            self.plan.pop(occupant, None)

    def _resurrect(self, d: int) -> None:
        """Bring back directory ``d`` (deleted on our side) from their side, with its parents."""
        t = self.theirs.inode(d)
        if t is None or (d in self.plan and self.plan[d].rec is not None):
            return
        self.plan[d] = _Plan(t.copy(), "theirs")
        self.doomed.discard(d)
        for p, n in t.links:
            self._add_name(d, p, n, quiet=True)

    # -- phase 4: no directory inside itself -----------------------------------------------------

    def check_cycles(self) -> None:
        for ino, plan in list(self.plan.items()):
            if plan.rec is None or not plan.rec.is_dir:
                continue
            seen = {ino}
            cur = ino
            while cur != ROOT_INO:
                links = self._result_links(cur)
                if not links:
                    break
                cur = self.alias.get(links[0][0], links[0][0])
                if cur in seen:
                    self._conflict(
                        ino,
                        "cycle",
                        _describe(self.ours, ino, self.ours.inode(ino)),
                        _describe(self.theirs, ino, self.theirs.inode(ino)),
                        self.theirs,
                    )
                    if self._take_theirs_side():
                        self._undo_our_moves(seen)
                    else:
                        o = self.ours.inode(ino)
                        if o is not None:
                            plan.rec.links = list(o.links)
                        else:
                            del self.plan[ino]
                    break
                seen.add(cur)

    def _undo_our_moves(self, members: set[int]) -> None:
        """Break a cycle towards theirs: directories we moved go back where theirs has them."""
        for d in members:
            if d in self.plan or d == ROOT_INO:
                continue
            o, t = self.ours.inode_for_write(d), self.theirs.inode(d)
            if o is not None and t is not None and set(o.links) != set(t.links):
                o.links = list(t.links)
                self.plan[d] = _Plan(o, "ours")

    # -- phase 6: write ----------------------------------------------------------------------------

    def write(self) -> list[Change]:
        """Apply the plan to ours' top layer; returns the path-level changes it made."""
        ours = self.ours
        changes = self._planned_changes()
        for ino in sorted(self.doomed):
            self._delete_subtree(ino)
        # Removals first so that swaps and moves never collide.
        for ino, plan in self.plan.items():
            o = ours.inode(ino)
            old = set(o.links) if o is not None else set()
            new = set(plan.rec.links) if plan.rec is not None else set()
            for p, n in old - new:
                if ours.dirent(p, n) == ino:
                    ours.delete_dirent(p, n)
        for ino, plan in self.plan.items():
            if plan.rec is None:
                if ours.inode(ino) is not None:
                    ours.delete_inode(ino)
            else:
                self._write_record(ino, plan.rec, plan.content)
        touched_dirs: set[int] = set()
        for ino, plan in self.plan.items():
            if plan.rec is None:
                continue
            for p, n in plan.rec.links:
                if ours.dirent(p, n) != ino:
                    ours.put_dirent(p, n, ino)
                    touched_dirs.add(p)
        t = now_ns()
        for d in touched_dirs - set(self.plan):
            rec = ours.inode_for_write(d)
            if rec is not None:
                rec.mtime_ns = rec.ctime_ns = t
                ours.put_inode(d, rec)
        return changes

    def _result_path(self, ino: int) -> bytes:
        parts: list[bytes] = []
        for _ in range(4096):
            if ino == ROOT_INO:
                break
            links = self._result_links(ino)
            if not links:
                parts.append(b"?")
                break
            parent, name = links[0]
            parts.append(name)
            ino = self.alias.get(parent, parent)
        return b"/".join(reversed(parts))

    def _planned_changes(self) -> list[Change]:
        """What the plan changes in ours, by path, computed before anything is written."""
        import os

        ours = self.ours
        out: list[tuple[bytes, str, bytes | None]] = []
        for ino in self.doomed:
            if ours.inode(ino) is not None:
                out.append((path_of(ours, ino), "deleted", None))
        for ino, plan in self.plan.items():
            before, after = ours.inode(ino), plan.rec
            if before is None and after is None:
                continue
            if before is None:
                out.append((self._result_path(ino), "added", None))
                continue
            if after is None:
                out.append((path_of(ours, ino, before), "deleted", None))
                continue
            where = self._result_path(ino)
            if set(before.links) != set(after.links):
                out.append((where, "renamed", path_of(ours, ino, before)))
            if _ftype(before) != _ftype(after):
                out.append((where, "type", None))
            elif (
                plan.content != "ours"
                and not before.is_dir
                and (
                    isinstance(plan.content, bytes)
                    or not content_equal(ours, before, self.theirs, after, ino)
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
        return sorted(
            Change(os.fsdecode(p), k, None if o is None else os.fsdecode(o)) for p, k, o in out
        )

    def _delete_subtree(self, ino: int) -> None:
        ours = self.ours
        rec = ours.inode_for_write(ino)
        if rec is None:
            return
        if rec.is_dir:
            for name, child in ours.list_dir(ino):
                self._delete_subtree(child)
                if ours.dirent(ino, name) is not None:
                    ours.delete_dirent(ino, name)
        for p, n in rec.links:
            if ours.dirent(p, n) == ino:
                ours.delete_dirent(p, n)
        ours.delete_inode(ino)

    def _write_record(self, ino: int, rec: Inode, content: str | bytes) -> None:
        ours = self.ours
        current, pos = ours.inode_at(ino)
        top_cut = current.cut if current is not None and pos == 0 else None
        rec = rec.copy()
        if content == "ours":
            if current is not None:
                rec.inline, rec.size = current.inline, current.size
            rec.cut = top_cut
        elif isinstance(content, bytes):
            replace_content(ours, ino, rec, content)
        else:  # theirs
            if rec.inline is not None or not rec.is_reg:
                ours.drop_extents(ino, 0)
                rec.cut = 0
            else:
                chunked = current is not None and current.inline is None
                rec.cut = copy_extents(ours, self.theirs, ino, rec.size, chunked, top_cut)
        ours.put_inode(ino, rec)


def merge(
    engine: Engine,
    target: str,
    source: str,
    *,
    strategy: str | None = None,
    conflict_markers: bool = False,
) -> MergeResult:
    """Merge ``source`` (a branch, or ``@snapshot``) into branch ``target``.

    All or nothing: on any conflict that ``strategy`` does not resolve, :class:`MergeConflict`
    lists every conflict and ``target`` is left exactly as it was. ``strategy="ours"`` or
    ``"theirs"`` resolves every conflict one way; ``conflict_markers=True`` writes diff3-style
    markers into text files that both sides changed and reports them in
    ``MergeResult.conflicts``.
    """
    if strategy not in STRATEGIES:
        raise BranchFSError(f"unknown merge strategy {strategy!r}; use 'ours' or 'theirs'")
    if target == source:
        raise BranchFSError(f"cannot merge branch {target!r} into itself")
    refs, layers, meta = engine.refs, engine.layers, engine.meta

    def op(txn: lmdb.Transaction) -> MergeResult:
        tgt = refs.branch(txn, target)
        src_id: int | None = None
        if source.startswith("@"):
            src_state = refs.snapshot(txn, source[1:]).layer
        else:
            src_id = refs.branch(txn, source).id
            src_state = refs.freeze_state(txn, source)
        records: RecordCache = {}
        ours = engine.layer_view(txn, tgt.top, True, records)
        theirs = engine.layer_view(txn, src_state, False, records)
        base_layer = refs.base(txn, tgt.id, src_id) if src_id is not None else None
        if base_layer is not None and layers.exists(txn, base_layer):
            base_chain = layers.chain(txn, base_layer)
        else:
            up_o, _ = split_at_common(ours.chain, theirs.chain)
            base_chain = ours.chain[len(up_o) :]
        base = engine.chain_view(txn, base_chain, False, records)
        m = _Merger(base, ours, theirs, strategy, conflict_markers, (target, source))
        m.decide()
        m.check_deleted_dirs()
        m.check_namespace()
        m.check_cycles()
        if m.conflicts and strategy is None:
            raise MergeConflict(target, source, m.conflicts)
        changes = m.write()
        if src_id is not None:
            refs.set_base(txn, tgt.id, src_id, src_state)
        return MergeResult(changes, m.conflicts + m.resolved)

    return meta.write(op)
