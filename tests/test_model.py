"""A hypothesis state machine: random file ops, forks, snapshots, resets, discards and merges
across several branches, checked after every step against a plain in-memory model.

The model is a dict of path -> node id per branch plus node id -> content, so hard links
share a node. Symlinks point at ``/nowhere/N`` (a name never created), so following one
always ends in ENOENT and the model never has to resolve them. Errors are predicted with
Linux's rules and compared by exception type and errno.

Every merge is checked against the oracle of tests/merge_oracle.py: the 3-way merge of each
node as contract 1 of docs/architecture.md states it, against the merge base of the model's
own commit graph. A predicted clean merge must give exactly the predicted tree; a predicted
conflict must raise ``MergeConflict`` and leave the target as it was. The model adopts the
engine's result only where the oracle says ``unknown``: a rule it does not reproduce (two
new directories unified at one path, a node both sides got by different routes, several best
common ancestors), or a base the engine cannot know yet (issue 19: the history's base is not
the pair's).
"""

from __future__ import annotations

import errno
import importlib.util
import itertools
import os
import shutil
import stat as st
import tempfile
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as hs
import randomized
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from merge_oracle import History, Prediction, predict
from twin import outcome

import branchfs

FILE, DIR, LINK = "f", "d", "l"
#: Whether the engine takes merge bases over the whole merge history (issue 19), as git.
HISTORY_BASES = importlib.util.find_spec("branchfs.history") is not None
BRANCHES = ["main", "b1", "b2", "b3"]
SNAPSHOTS = ["s1", "s2"]

paths_st = hs.builds(
    lambda parts: "/".join(parts),
    hs.one_of(
        hs.lists(hs.sampled_from(["a", "b", "x"]), min_size=1, max_size=2),
        hs.lists(hs.sampled_from(["a", "b", "x", "y"]), min_size=1, max_size=3),
    ),
)
data_st = hs.one_of(
    hs.binary(max_size=40),
    hs.builds(lambda b, n: b * n, hs.binary(min_size=1, max_size=3), hs.sampled_from([700, 3000])),
)
offset_st = hs.sampled_from([0, 1, 5, 2047, 2048, 2049, 65535, 65536, 70000])


class ModelError(Exception):
    """What the model predicts a call raises: an errno, or a branchfs error class."""

    def __init__(self, what: Any) -> None:
        self.what = what


def oserr(code: int) -> ModelError:
    return ModelError((type(OSError(code, "")), code))


@dataclass
class Tree:
    """One branch's tree in the model."""

    paths: dict[str, int] = field(default_factory=dict)
    nodes: dict[int, tuple] = field(default_factory=dict)

    def copy(self) -> Tree:
        return Tree(dict(self.paths), dict(self.nodes))

    def live(self) -> tuple[dict[str, int], dict[int, tuple]]:
        """The paths and the nodes they name (unlinked nodes left out)."""
        return dict(self.paths), {n: self.nodes[n] for n in set(self.paths.values())}

    def kind(self, p: str) -> str | None:
        ino = self.paths.get(p)
        return None if ino is None else self.nodes[ino][0]

    def children(self, p: str) -> list[str]:
        return [q for q in self.paths if q.startswith(p + "/")]

    def check_parent(self, p: str) -> None:
        comps = p.split("/")
        for i in range(1, len(comps)):
            k = self.kind("/".join(comps[:i]))
            if k is None or k == LINK:  # a symlink leads to /nowhere: ENOENT
                raise oserr(errno.ENOENT)
            if k == FILE:
                raise oserr(errno.ENOTDIR)

    def describe(self) -> dict[str, tuple]:
        """path -> (kind, content or target) and the hard-link groups, as comparable data."""
        out = {p: self.nodes[i] for p, i in self.paths.items()}
        groups = {}
        for p, i in self.paths.items():
            groups.setdefault(i, []).append(p)
        links = sorted(tuple(sorted(g)) for g in groups.values() if len(g) > 1)
        return {"entries": out, "links": links}


#: Node id of a node created by the current call; replaced by the engine's inode number
#: once the call succeeded (the engine keeps an inode's number in every branch).
NEW = -1


def engine_tree(b: branchfs.Branch) -> dict:
    out: dict[str, tuple] = {}
    by_ino: dict[int, list[str]] = {}
    stack = [""]
    while stack:
        d = stack.pop()
        for e in b.scandir(d):
            p = f"{d}/{e.name}" if d else e.name
            s = b.lstat(p)
            if st.S_ISDIR(s.st_mode):
                out[p] = (DIR,)
                stack.append(p)
            elif st.S_ISLNK(s.st_mode):
                out[p] = (LINK, b.readlink(p))
                by_ino.setdefault(s.st_ino, []).append(p)
            else:
                out[p] = (FILE, b.read_bytes(p))
                by_ino.setdefault(s.st_ino, []).append(p)
    for group in by_ino.values():
        assert b.lstat(group[0]).st_nlink == len(group), group
    links = sorted(tuple(sorted(g)) for g in by_ino.values() if len(g) > 1)
    return {"entries": out, "links": links}


class BranchMachine(RuleBasedStateMachine):
    """Drives a real store and the model with the same calls."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="bfs-model-")
        self.store = branchfs.Store.open(os.path.join(self.dir, "s"), create=True)
        self.store.create_branch("main")
        self.trees: dict[str, Tree] = {"main": Tree()}
        self.snaps: dict[str, Tree] = {}
        self.bases: dict[frozenset[str], Tree] = {}
        self.history = History("main", Tree())
        self.links = itertools.count(1)
        # Which layer tree each ref is in (a fork, snapshot or reset joins its source's;
        # create_branch starts one) and when it was made: discard refuses a root branch
        # (no older ref in its tree) and the last branch.
        self.clock = itertools.count()
        self.family: dict[str, tuple[int, int]] = {"main": (0, next(self.clock))}
        self.snap_family: dict[str, tuple[int, int]] = {}

    def teardown(self) -> None:
        try:
            report = self.store.fsck()
            assert report.ok, report.problems
            for name, tree in self.snaps.items():
                assert engine_tree(self.store.snapshot_tree(name)) == tree.describe(), name
        finally:
            self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- running one call on both sides ------------------------------------------------------

    def both(self, engine_call: Any, model_call: Any) -> Any:
        try:
            got = outcome(engine_call)
        except branchfs.BranchFSError as exc:
            got = ("err", type(exc))
        try:
            expected: tuple[str, Any] = ("ok", model_call())
        except ModelError as exc:
            expected = ("err", exc.what)
        assert got == expected, f"engine {got!r}, model {expected!r}"
        return got

    def branch_call(self, name: str, fn: Any, model_fn: Any) -> None:
        tree = self.trees[name]
        work = tree.copy()
        b = self.store.branch(name)
        kind, _ = self.both(lambda: fn(b), lambda: model_fn(work))
        if kind == "ok":
            if NEW in work.nodes:
                (p,) = [q for q, i in work.paths.items() if i == NEW]
                ino = b.lstat(p).st_ino
                assert ino not in work.nodes, "a new file reused a live inode number"
                work.paths[p] = ino
                work.nodes[ino] = work.nodes.pop(NEW)
            self.trees[name] = work
            self.history.changed(name)

    # -- file operations ------------------------------------------------------------------------

    names = hs.sampled_from(BRANCHES)

    @precondition(lambda self: self.trees)
    @rule(data=hs.data(), p=paths_st, content=data_st)
    def write(self, data: Any, p: str, content: bytes) -> None:
        name = data.draw(hs.sampled_from(sorted(self.trees)))

        def model(t: Tree) -> int:
            t.check_parent(p)
            k = t.kind(p)
            if k == DIR:
                raise oserr(errno.EISDIR)
            if k == LINK:
                raise oserr(errno.ENOENT)
            if k is None:
                t.paths[p] = NEW
            t.nodes[t.paths[p]] = (FILE, content)
            return len(content)

        self.branch_call(name, lambda b: b.write_bytes(p, content), model)

    @precondition(lambda self: self.trees)
    @rule(data=hs.data(), p=paths_st, content=data_st)
    def append(self, data: Any, p: str, content: bytes) -> None:
        name = data.draw(hs.sampled_from(sorted(self.trees)))

        def engine(b: branchfs.Branch) -> None:
            with b.open(p, "ab") as fh:
                fh.write(content)

        def model(t: Tree) -> None:
            t.check_parent(p)
            k = t.kind(p)
            if k == DIR:
                raise oserr(errno.EISDIR)
            if k == LINK:
                raise oserr(errno.ENOENT)
            if k is None:
                t.paths[p] = NEW
                t.nodes[t.paths[p]] = (FILE, b"")
            ino = t.paths[p]
            t.nodes[ino] = (FILE, t.nodes[ino][1] + content)

        self.branch_call(name, engine, model)

    @precondition(lambda self: self.trees)
    @rule(data=hs.data(), p=paths_st, off=offset_st, content=data_st)
    def patch(self, data: Any, p: str, off: int, content: bytes) -> None:
        name = data.draw(hs.sampled_from(sorted(self.trees)))

        def engine(b: branchfs.Branch) -> None:
            with b.open(p, "r+b") as fh:
                fh.seek(off)
                fh.write(content)

        def model(t: Tree) -> None:
            t.check_parent(p)
            k = t.kind(p)
            if k is None or k == LINK:
                raise oserr(errno.ENOENT)
            if k == DIR:
                raise oserr(errno.EISDIR)
            ino = t.paths[p]
            buf = bytearray(t.nodes[ino][1])
            if not content:
                return  # a write of nothing does not extend the file
            if len(buf) < off:
                buf.extend(bytes(off - len(buf)))
            buf[off : off + len(content)] = content
            t.nodes[ino] = (FILE, bytes(buf))

        self.branch_call(name, engine, model)

    @precondition(lambda self: self.trees)
    @rule(data=hs.data(), p=paths_st, size=offset_st)
    def truncate(self, data: Any, p: str, size: int) -> None:
        name = data.draw(hs.sampled_from(sorted(self.trees)))

        def model(t: Tree) -> None:
            t.check_parent(p)
            k = t.kind(p)
            if k is None or k == LINK:
                raise oserr(errno.ENOENT)
            if k == DIR:
                raise oserr(errno.EISDIR)
            ino = t.paths[p]
            old = t.nodes[ino][1]
            t.nodes[ino] = (FILE, old[:size] + bytes(max(0, size - len(old))))

        self.branch_call(name, lambda b: b.truncate(p, size), model)

    @precondition(lambda self: self.trees)
    @rule(data=hs.data(), p=paths_st)
    def mkdir(self, data: Any, p: str) -> None:
        name = data.draw(hs.sampled_from(sorted(self.trees)))

        def model(t: Tree) -> None:
            t.check_parent(p)
            if p in t.paths:
                raise oserr(errno.EEXIST)
            ino = NEW
            t.paths[p] = ino
            t.nodes[ino] = (DIR,)

        self.branch_call(name, lambda b: b.mkdir(p), model)

    @precondition(lambda self: self.trees)
    @rule(data=hs.data(), p=paths_st)
    def rmdir(self, data: Any, p: str) -> None:
        name = data.draw(hs.sampled_from(sorted(self.trees)))

        def model(t: Tree) -> None:
            t.check_parent(p)
            k = t.kind(p)
            if k is None:
                raise oserr(errno.ENOENT)
            if k != DIR:
                raise oserr(errno.ENOTDIR)
            if t.children(p):
                raise oserr(errno.ENOTEMPTY)
            del t.paths[p]

        self.branch_call(name, lambda b: b.rmdir(p), model)

    @precondition(lambda self: self.trees)
    @rule(data=hs.data(), p=paths_st)
    def unlink(self, data: Any, p: str) -> None:
        name = data.draw(hs.sampled_from(sorted(self.trees)))

        def model(t: Tree) -> None:
            t.check_parent(p)
            k = t.kind(p)
            if k is None:
                raise oserr(errno.ENOENT)
            if k == DIR:
                raise oserr(errno.EISDIR)
            del t.paths[p]

        self.branch_call(name, lambda b: b.remove(p), model)

    @precondition(lambda self: self.trees)
    @rule(data=hs.data(), p=paths_st)
    def symlink(self, data: Any, p: str) -> None:
        name = data.draw(hs.sampled_from(sorted(self.trees)))
        target = f"/nowhere/{next(self.links)}"

        def model(t: Tree) -> None:
            t.check_parent(p)
            if p in t.paths:
                raise oserr(errno.EEXIST)
            ino = NEW
            t.paths[p] = ino
            t.nodes[ino] = (LINK, target)

        self.branch_call(name, lambda b: b.symlink(target, p), model)

    @precondition(lambda self: self.trees)
    @rule(data=hs.data(), src=paths_st, dst=paths_st)
    def link(self, data: Any, src: str, dst: str) -> None:
        name = data.draw(hs.sampled_from(sorted(self.trees)))

        def model(t: Tree) -> None:
            t.check_parent(src)
            if src not in t.paths:
                raise oserr(errno.ENOENT)
            t.check_parent(dst)
            if dst in t.paths:
                raise oserr(errno.EEXIST)
            if t.kind(src) == DIR:
                raise oserr(errno.EPERM)
            t.paths[dst] = t.paths[src]

        self.branch_call(name, lambda b: b.link(src, dst), model)

    @precondition(lambda self: self.trees)
    @rule(data=hs.data(), src=paths_st, dst=paths_st)
    def rename(self, data: Any, src: str, dst: str) -> None:
        name = data.draw(hs.sampled_from(sorted(self.trees)))

        def model(t: Tree) -> None:
            t.check_parent(src)
            t.check_parent(dst)
            ks = t.kind(src)
            if ks is None:
                raise oserr(errno.ENOENT)
            if src == dst:
                return
            if ks == DIR and dst.startswith(src + "/"):
                raise oserr(errno.EINVAL)
            kd = t.kind(dst)
            if kd is not None and src.startswith(dst + "/"):
                raise oserr(errno.ENOTEMPTY)
            if kd is not None and t.paths[dst] == t.paths[src]:
                return  # two links to one file: rename does nothing
            if kd is not None:
                if ks == DIR and kd != DIR:
                    raise oserr(errno.ENOTDIR)
                if ks != DIR and kd == DIR:
                    raise oserr(errno.EISDIR)
                if kd == DIR and t.children(dst):
                    raise oserr(errno.ENOTEMPTY)
                del t.paths[dst]
            moved = {q: t.paths.pop(q) for q in [src, *t.children(src)]}
            for q, ino in moved.items():
                t.paths[dst + q[len(src) :]] = ino

        self.branch_call(name, lambda b: b.rename(src, dst), model)

    @precondition(lambda self: self.trees)
    @rule(data=hs.data(), p=paths_st)
    def read(self, data: Any, p: str) -> None:
        name = data.draw(hs.sampled_from(sorted(self.trees)))
        t = self.trees[name]

        def model() -> bytes:
            t.check_parent(p)
            k = t.kind(p)
            if k is None or k == LINK:
                raise oserr(errno.ENOENT)
            if k == DIR:
                raise oserr(errno.EISDIR)
            return t.nodes[t.paths[p]][1]

        b = self.store.branch(name)
        self.both(lambda: b.read_bytes(p), model)

    # -- branch operations ------------------------------------------------------------------------

    def _drop_bases(self, name: str) -> None:
        for pair in [k for k in self.bases if name in k]:
            del self.bases[pair]

    @rule(src=names, new=names)
    def fork(self, src: str, new: str) -> None:
        def model() -> None:
            if new in self.trees:
                raise ModelError(branchfs.BranchExists)
            if src not in self.trees:
                raise ModelError(branchfs.BranchNotFound)

        kind, _ = self.both(lambda: self.store.fork(src, new) and None, model)
        if kind == "ok":
            self.trees[new] = self.trees[src].copy()
            self.family[new] = (self.family[src][0], next(self.clock))
            self.bases[frozenset((src, new))] = self.trees[src].copy()
            self.history.fork(src, new, self.trees[src])

    @rule(src=names, snap=hs.sampled_from(SNAPSHOTS))
    def snapshot(self, src: str, snap: str) -> None:
        def model() -> None:
            if snap in self.snaps:
                raise ModelError(branchfs.BranchExists)
            if src not in self.trees:
                raise ModelError(branchfs.BranchNotFound)

        kind, _ = self.both(lambda: self.store.snapshot(src, snap) and None, model)
        if kind == "ok":
            self.snaps[snap] = self.trees[src].copy()
            self.snap_family[snap] = (self.family[src][0], next(self.clock))
            self.history.snapshot(src, snap, self.trees[src])

    @rule(name=names, snap=hs.sampled_from(SNAPSHOTS))
    def reset(self, name: str, snap: str) -> None:
        def model() -> None:
            if snap not in self.snaps:
                raise ModelError(branchfs.BranchNotFound)
            if name not in self.trees:
                raise ModelError(branchfs.BranchNotFound)

        kind, _ = self.both(lambda: self.store.reset(name, snap), model)
        if kind == "ok":
            self.trees[name] = self.snaps[snap].copy()
            self.family[name] = (self.snap_family[snap][0], self.family[name][1])
            self._drop_bases(name)
            self.history.reset(name, snap)

    def _is_root(self, name: str) -> bool:
        tree, born = self.family[name]
        refs = [f for b, f in self.family.items() if b != name]
        return not refs or not any(
            t == tree and b < born for t, b in [*refs, *self.snap_family.values()]
        )

    @rule(name=names, force=hs.booleans())
    def discard(self, name: str, force: bool) -> None:
        def model() -> None:
            if name not in self.trees:
                raise ModelError(branchfs.BranchNotFound)
            if not force and self._is_root(name):
                raise ModelError(branchfs.BranchIsRoot)

        kind, _ = self.both(lambda: self.store.discard(name, force=force), model)
        if kind == "ok":
            del self.trees[name]
            del self.family[name]
            self._drop_bases(name)
            self.history.discard(name)

    @precondition(lambda self: len(self.trees) >= 2)
    @rule(data=hs.data())
    def merge_existing(self, data: Any) -> None:
        into, source = data.draw(hs.permutations(sorted(self.trees)))[:2]
        self.merge(into, source)

    @precondition(lambda self: 0 < len(self.trees) < len(BRANCHES))
    @rule(data=hs.data())
    def fork_existing(self, data: Any) -> None:
        src = data.draw(hs.sampled_from(sorted(self.trees)))
        new = data.draw(hs.sampled_from([n for n in BRANCHES if n not in self.trees]))
        self.fork(src, new)

    @rule(into=names, source=names)
    def merge(self, into: str, source: str) -> None:
        target = into
        if target == source or target not in self.trees or source not in self.trees:
            return
        pair = frozenset((target, source))
        ours, theirs = self.trees[target], self.trees[source]
        prediction = self.predict_merge(target, source)
        try:
            self.store.merge(target, source)
        except branchfs.MergeConflict as exc:
            event(f"merge: conflict, predicted {prediction.kind}")
            assert prediction.kind != "clean", f"the oracle predicted a clean merge: {exc}"
            assert engine_tree(self.store.branch(target)) == ours.describe()
            return
        event(f"merge: clean, predicted {prediction.kind}")
        assert prediction.kind != "conflict", f"merged cleanly despite {prediction.why}"
        got = engine_tree(self.store.branch(target))
        if prediction.kind == "clean":
            merged = Tree(prediction.paths, prediction.nodes)
            assert got == merged.describe()
            self.trees[target] = merged
        else:
            self.trees[target] = adopt(self.store.branch(target))
        h = self.history
        h.commit(target, self.trees[target], (h.heads[target], h.heads[source]))
        self.bases[pair] = self.trees[source].copy()
        assert engine_tree(self.store.branch(source)) == theirs.describe()

    def predict_merge(self, target: str, source: str) -> Prediction:
        """The oracle's answer for merging ``source`` into ``target`` now."""
        h = self.history
        ours, theirs = self.trees[target], self.trees[source]
        a, s = h.commit(target, ours), h.commit(source, theirs)
        bases = h.merge_bases(a, s)
        if len(bases) != 1:
            return Prediction("unknown", why=["several best common ancestors"])
        base = h.trees[bases[0]]
        if not HISTORY_BASES:
            # An engine without issue 19 takes the pair's last merge or the fork point; where
            # that is not the history's base, its answer cannot be predicted.
            recorded = self.bases.get(frozenset((target, source)))
            engine_base = recorded if recorded is not None else h.trees[h.fork_point(a, s)]
            if engine_base.live() != base.live():
                return Prediction("unknown", why=["the pair's base is not the history's"])
        return predict(base.live(), ours.live(), theirs.live())

    @rule()
    def gc(self) -> None:
        self.store.gc()

    # -- checks -----------------------------------------------------------------------------

    @invariant()
    def trees_match(self) -> None:
        assert self.store.branches() == sorted(self.trees)
        assert self.store.snapshots() == sorted(self.snaps)
        for name, tree in self.trees.items():
            assert engine_tree(self.store.branch(name)) == tree.describe(), name


def adopt(b: branchfs.Branch) -> Tree:
    """The model of a tree read back from the engine (node ids are inode numbers)."""
    t = Tree()
    stack = [""]
    while stack:
        d = stack.pop()
        for e in b.scandir(d):
            p = f"{d}/{e.name}" if d else e.name
            s = b.lstat(p)
            t.paths[p] = s.st_ino
            if st.S_ISDIR(s.st_mode):
                t.nodes[s.st_ino] = (DIR,)
                stack.append(p)
            elif st.S_ISLNK(s.st_mode):
                t.nodes[s.st_ino] = (LINK, b.readlink(p))
            else:
                t.nodes[s.st_ino] = (FILE, b.read_bytes(p))
    return t


BranchMachine.TestCase.settings = settings(
    max_examples=randomized.examples(500),
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestBranchMachine = BranchMachine.TestCase
