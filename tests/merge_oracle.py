"""The merge oracle of tests/test_model.py: what a 3-way merge must give, from contract 1
of docs/architecture.md.

Two parts, both over the model's trees (``path -> node id`` plus ``node id -> content``,
node ids being the engine's inode numbers):

- :class:`History`, the commit graph of the model's branches (a commit per changed state
  at each fork, snapshot and merge; a merge commit has two parents), which gives the merge
  base as git does (the best common ancestors, ``git merge-base --all``) and, for the
  engine before issue 19, the fork point (the common ancestor over first parents only);
- :func:`predict`, the 3-way merge of one node at a time, as contract 1 of
  docs/architecture.md states it: a change on one side only is taken; a node changed on both
  sides merges its location and its content separately (a file's bytes line by line with
  merge3, as the engine does); modify/delete, rename/rename and differing content are
  conflicts; so are two nodes claiming one name and an entry in a directory the merge
  deletes, or a directory moved under itself. Where the engine has a rule the model does not
  reproduce (two new directories at one path are unified; a node both sides got by different
  routes) the prediction is ``unknown``.

A node's location is the set of its links ``(parent node, name)``, not its paths, so that
a file inside a renamed directory has not moved: the engine tracks renames the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import merge3

ROOT = 0  #: the node id the model gives the root directory
DIR = "d"

#: One node's state: (its links, its content tuple), or None where it does not exist.
State = tuple[frozenset[tuple[int, str]], tuple[Any, ...]] | None


@dataclass
class Prediction:
    """``clean`` with the merged ``paths``/``nodes``, ``conflict`` with why, or ``unknown``."""

    kind: str
    paths: dict[str, int] = field(default_factory=dict)
    nodes: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    why: list[str] = field(default_factory=list)


def states(paths: dict[str, int], nodes: dict[int, tuple[Any, ...]]) -> dict[int, State]:
    """Every node of a tree with its links and content."""
    links: dict[int, set[tuple[int, str]]] = {}
    for p, n in paths.items():
        parent, _, name = p.rpartition("/")
        links.setdefault(n, set()).add((paths[parent] if parent else ROOT, name))
    return {n: (frozenset(ls), nodes[n]) for n, ls in links.items()}


def text_merge(b: tuple[Any, ...], o: tuple[Any, ...], t: tuple[Any, ...]) -> bytes | None:
    """The engine's line merge of three versions of a regular file; None if it conflicts
    (merge3 over ``splitlines(keepends=True)``; any NUL byte makes the file binary)."""
    if not (b[0] == o[0] == t[0] == "f"):
        return None
    texts = [b[1], o[1], t[1]]
    if any(b"\0" in x for x in texts):
        return None
    m = merge3.Merge3(*(x.splitlines(keepends=True) for x in texts))
    if any(group[0] == "conflict" for group in m.merge_groups()):
        return None
    return b"".join(m.merge_lines())


def predict(
    base: tuple[dict[str, int], dict[int, tuple[Any, ...]]],
    ours: tuple[dict[str, int], dict[int, tuple[Any, ...]]],
    theirs: tuple[dict[str, int], dict[int, tuple[Any, ...]]],
) -> Prediction:
    """What merging ``theirs`` into ``ours`` against ``base`` must give (module docstring)."""
    sb, so, st = states(*base), states(*ours), states(*theirs)
    result: dict[int, tuple[frozenset[tuple[int, str]], tuple[Any, ...]]] = {}
    why: list[str] = []
    for n in sorted(set(sb) | set(so) | set(st)):
        b, o, t = sb.get(n), so.get(n), st.get(n)
        if o == t:
            r = o
        elif o == b:
            r = t
        elif t == b:
            r = o
        elif o is None or t is None:
            why.append(f"modify/delete of node {n}")
            continue
        elif b is None:
            return Prediction("unknown", why=[f"node {n} reached both sides by other routes"])
        else:
            (lb, cb), (lo, co), (lt, ct) = b, o, t
            if lo == lb:
                links = lt
            elif lt in (lb, lo):
                links = lo
            else:
                why.append(f"rename/rename of node {n}")
                continue
            if co == cb:
                content = ct
            elif ct in (cb, co):
                content = co
            else:
                merged = text_merge(cb, co, ct)
                if merged is None:
                    why.append(f"content of node {n}")
                    continue
                content = ("f", merged)
            r = (links, content)
        if r is not None:
            result[n] = r
    if why:
        return Prediction("conflict", why=why)
    return _namespace(result)


def _namespace(result: dict[int, tuple[frozenset[tuple[int, str]], tuple[Any, ...]]]) -> Prediction:
    """The merged nodes as one tree, or why they do not make one."""
    claims: dict[tuple[int, str], list[int]] = {}
    for n, (links, _content) in result.items():
        for link in links:
            claims.setdefault(link, []).append(n)
    why: list[str] = []
    for (parent, name), ns in sorted(claims.items()):
        if len(ns) > 1:
            contents = [result[n][1] for n in ns]
            if all(c[0] == DIR for c in contents) or all(c == contents[0] for c in contents):
                return Prediction("unknown", why=[f"{name!r} added twice alike: unified"])
            why.append(f"add/add at {name!r}")
        if parent != ROOT and (parent not in result or result[parent][1][0] != DIR):
            why.append(f"{name!r} in a directory the merge deletes")
    if why:
        return Prediction("conflict", why=why)
    children: dict[int, list[tuple[str, int]]] = {}
    for (parent, name), (n,) in claims.items():
        children.setdefault(parent, []).append((name, n))
    paths: dict[str, int] = {}
    stack = [(ROOT, "")]
    while stack:
        d, prefix = stack.pop()
        for name, n in children.get(d, []):
            p = f"{prefix}/{name}" if prefix else name
            paths[p] = n
            if result[n][1][0] == DIR:
                stack.append((n, p))
    if set(paths.values()) != set(result):
        return Prediction("conflict", why=["a directory moved under itself"])
    return Prediction("clean", paths, {n: c for n, (_ls, c) in result.items()})


class History:
    """The commit graph of the model's branches and snapshots (module docstring)."""

    def __init__(self, first: str, tree: Any) -> None:
        self.parents: list[tuple[int, ...]] = [()]
        self.trees: list[Any] = [tree.copy()]
        self.heads: dict[str, int] = {first: 0}
        self.dirty: set[str] = set()
        self.snaps: dict[str, int] = {}

    def changed(self, name: str) -> None:
        """Branch ``name``'s tree changed since its last commit."""
        self.dirty.add(name)

    def commit(self, name: str, tree: Any, parents: tuple[int, ...] | None = None) -> int:
        """Make ``tree`` the head of ``name`` (a new commit if it changed, or merged)."""
        if parents is not None or name in self.dirty:
            self.parents.append(parents if parents is not None else (self.heads[name],))
            self.trees.append(tree.copy())
            self.heads[name] = len(self.trees) - 1
            self.dirty.discard(name)
        return self.heads[name]

    def fork(self, src: str, new: str, tree: Any) -> None:
        """``new`` starts where ``src`` is now."""
        self.heads[new] = self.commit(src, tree)

    def snapshot(self, src: str, snap: str, tree: Any) -> None:
        """``snap`` names ``src``'s state now."""
        self.snaps[snap] = self.commit(src, tree)

    def reset(self, name: str, snap: str) -> None:
        """``name`` goes back to the snapshot's commit."""
        self.heads[name] = self.snaps[snap]
        self.dirty.discard(name)

    def discard(self, name: str) -> None:
        """Branch ``name`` is gone."""
        self.heads.pop(name, None)
        self.dirty.discard(name)

    def _ancestors(self, c: int) -> set[int]:
        seen = {c}
        stack = [c]
        while stack:
            for p in self.parents[stack.pop()]:
                if p not in seen:
                    seen.add(p)
                    stack.append(p)
        return seen

    def merge_bases(self, a: int, b: int) -> list[int]:
        """The best common ancestors of commits ``a`` and ``b`` (``git merge-base --all``)."""
        common = self._ancestors(a) & self._ancestors(b)
        below: set[int] = set()
        for c in common:
            below |= self._ancestors(c) - {c}
        return sorted(common - below)

    def fork_point(self, a: int, b: int) -> int:
        """The nearest common ancestor over first parents only (forks, not merges)."""
        chain = set()
        c: int | None = a
        while c is not None:
            chain.add(c)
            c = self.parents[c][0] if self.parents[c] else None
        c = b
        while c not in chain:
            assert self.parents[c], "two branches without a common root"
            c = self.parents[c][0]
        return c
