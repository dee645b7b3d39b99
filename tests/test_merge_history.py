"""Merge bases over the whole merge history, with git's result as the expected tree.

The three histories of issue 19 (found replaying public bug reports): each used to bring
back what the target had deleted or reverted, because the change travelled through a third
branch. Each is played in branchfs and in a real git repository (tests/gitoracle.py);
the merged trees must be git's. Plus the marker cases, byte for byte against
``git merge-file``, and the history surviving gc.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gitoracle import GIT, GitTwin, branch_tree, merge_file

import branchfs
from branchfs.merge.text import merge_added, merge_text

needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")


@pytest.fixture
def twin(store: branchfs.Store, tmp_path: Path) -> GitTwin:
    return GitTwin(store, tmp_path / "repo")


def _clean_merge(twin: GitTwin, into: str, source: str) -> None:
    out = twin.merge(into, source)
    assert out.git_clean, "git itself conflicted: the history is not what the test means"
    assert out.bfs_clean, f"branchfs conflicted where git merged cleanly: {out.conflicts}"
    assert out.bfs_tree == out.git_tree


@needs_git
def test_delete_through_a_third_branch(twin: GitTwin) -> None:
    twin.write("main", "keep", b"k\n")
    twin.fork("main", "stable")
    twin.write("main", "f", b"old\n")  # main adds f
    _clean_merge(twin, "stable", "main")  # stable gets f
    twin.fork("stable", "run")
    twin.remove("run", "f")  # run deletes f
    diff = twin.store.diff("main", "run")
    assert [(c.kind, c.path) for c in diff] == [("deleted", "f")]
    _clean_merge(twin, "main", "run")
    assert sorted(branch_tree(twin.store.branch("main"))) == ["keep"]


@needs_git
def test_revert_is_not_undone_by_a_fork_of_a_branch_that_merged_it(twin: GitTwin) -> None:
    twin.write("main", "config.py", b"name = 'app'\ndebug = False\nport = 80\n")
    twin.fork("main", "stable")
    twin.write("main", "config.py", b"name = 'app'\ndebug = True\nport = 80\n")
    _clean_merge(twin, "stable", "main")
    twin.write("main", "config.py", b"name = 'app'\ndebug = False\nport = 80\n")  # revert
    twin.fork("stable", "feature")
    twin.write("feature", "feature.py", b"def f():\n    return 1\n")
    _clean_merge(twin, "main", "feature")
    main = twin.store.branch("main")
    assert b"debug = False" in main.read_bytes("config.py")
    assert main.read_bytes("feature.py") == b"def f():\n    return 1\n"


@needs_git
def test_data_pipeline_replaces_last_months_file(twin: GitTwin) -> None:
    twin.write("main", "README", b"pipeline\n")
    twin.fork("main", "stable")
    twin.fork("main", "run1")
    twin.write("run1", "data/2026-10.csv", b"a,1\nb,2\n")
    _clean_merge(twin, "main", "run1")
    _clean_merge(twin, "stable", "run1")
    _clean_merge(twin, "stable", "main")
    twin.fork("stable", "run2")
    twin.remove("run2", "data/2026-10.csv")
    twin.write("run2", "data/2026-11.csv", b"a,3\nb,4\n")
    _clean_merge(twin, "main", "run2")
    files = sorted(branch_tree(twin.store.branch("main")))
    assert files == ["README", "data/2026-11.csv"]


@needs_git
def test_criss_cross_merges_against_a_virtual_base(twin: GitTwin) -> None:
    twin.write("main", "a", b"1\n2\n3\n4\n5\n6\n7\n8\n9\n")
    twin.fork("main", "b")
    twin.write("main", "a", b"1\nM\n3\n4\n5\n6\n7\n8\n9\n")
    twin.write("b", "a", b"1\n2\n3\n4\n5\n6\n7\nB\n9\n")
    # criss-cross: each merges the other's state as it was before either merge
    twin.fork("main", "m0")
    _clean_merge(twin, "main", "b")
    _clean_merge(twin, "b", "m0")
    twin.write("main", "x", b"x\n")
    twin.write("b", "y", b"y\n")
    _clean_merge(twin, "main", "b")


def test_criss_cross_has_two_bases(store: branchfs.Store) -> None:
    main = store.create_branch("main")
    main.write_bytes("a", b"0\n")
    b = main.fork("b")
    main.write_bytes("a", b"1\n")
    b.write_bytes("c", b"c\n")
    main.fork("m0")
    main.merge(b)
    b.merge("m0")
    main.write_bytes("x", b"x\n")
    b.write_bytes("y", b"y\n")
    with store.meta.read() as txn:
        top_main = store.refs.branch(txn, "main").top
        top_b = store.refs.branch(txn, "b").top
        assert len(store.engine.history.merge_bases(txn, top_main, top_b)) == 2
    main.merge(b)
    assert sorted(main.listdir("")) == ["a", "c", "x", "y"]
    assert main.read_bytes("a") == b"1\n"


def test_history_survives_gc_and_does_not_pin_discarded_work(store: branchfs.Store) -> None:
    main = store.create_branch("main")
    main.write_bytes("keep", b"k\n")
    stable = main.fork("stable")
    main.write_bytes("f", b"old\n")
    stable.merge(main)
    run = stable.fork("run")
    run.remove("f")
    for i in range(3):  # discarded attempts merged into main leave nothing behind
        w = main.fork(f"w{i}")
        w.write_bytes(f"w{i}", b"w\n")
        main.merge(w)
        w.discard()
    store.gc()
    assert store.fsck().ok
    main.merge(run)
    assert sorted(main.listdir("")) == ["keep", "w0", "w1", "w2"]
    with store.meta.read() as txn:
        edges = store.engine.history.edges(txn)
        layers = list(store.engine.layers.all(txn))
    # what is left is bounded by the live branches, not by the merges made
    assert len(edges) <= 6, edges
    assert len(layers) <= 12, layers


# -- conflict markers, byte for byte against git merge-file ----------------------------------


@needs_git
@pytest.mark.parametrize(
    ("base", "ours", "theirs"),
    [
        (b"line1\nline 2\n", b"line1\nline 2 ours", b"line1\nline 2 theirs"),
        (b"line1\nline 2", b"line1\nline 2 ours", b"line1\nline 2 theirs"),
        (b"a\nb\nc\n", b"a\nB1\nc\n", b"a\nB2\nc\n"),
        (b"a\nb\nc\nd\ne\n", b"a\nX\nc\nd\nE1\n", b"a\nY\nc\nd\nE2\n"),
        (b"", b"x\n", b"y\n"),
        (b"a\n", b"a\nours\n", b"a\ntheirs"),
    ],
)
def test_markers_match_git_merge_file_diff3(base: bytes, ours: bytes, theirs: bytes) -> None:
    expect, clean = merge_file(base, ours, theirs, ("main", "base", "run"))
    got = merge_text(base, ours, theirs, ("main", "base", "run"))
    assert not clean and not got.clean
    assert got.merged == expect


@needs_git
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (b"a\nb\nc\n", b"a\nx\nc\n"),
        (b"same\nours\n", b"same\ntheirs"),
        (b"one\n", b"two\n"),
    ],
)
def test_add_add_markers_match_git_two_way(ours: bytes, theirs: bytes) -> None:
    expect, clean = merge_file(b"", ours, theirs, ("main", "base", "run"), diff3=False)
    got = merge_added(ours, theirs, ("main", "run"))
    assert not clean and not got.clean
    assert got.merged == expect


def test_add_add_with_markers_writes_two_way_markers(store: branchfs.Store) -> None:
    main = store.create_branch("main")
    run = main.fork("run")
    main.write_bytes("f", b"a\nb\nc\n")
    run.write_bytes("f", b"a\nx\nc\n")
    result = main.merge(run, conflict_markers=True)
    assert [(c.path, c.kind) for c in result.conflicts] == [("f", "add/add")]
    assert main.read_bytes("f") == b"a\n<<<<<<< main\nb\n=======\nx\n>>>>>>> run\nc\n"


def test_last_line_without_newline_gets_markers_on_their_own_lines(
    store: branchfs.Store,
) -> None:
    main = store.create_branch("main")
    main.write_bytes("f", b"line1\nline 2\n")
    run = main.fork("run")
    main.write_bytes("f", b"line1\nline 2 ours")
    run.write_bytes("f", b"line1\nline 2 theirs")
    main.merge(run, conflict_markers=True)
    assert main.read_bytes("f") == (
        b"line1\n<<<<<<< main\nline 2 ours\n||||||| base\nline 2\n=======\n"
        b"line 2 theirs\n>>>>>>> run\n"
    )


def _pairwise_kept(history: object, txn: object, roots: list[int]) -> set[int]:
    """The definition of the states gc keeps: best common ancestors of every pair of
    roots, and of every pair of those, until nothing new; roots themselves left out."""
    known = list(dict.fromkeys(roots))
    kept: set[int] = set()
    grew = True
    while grew:
        grew = False
        for i, a in enumerate(list(known)):
            for b in known[i + 1 :]:
                for s in history.merge_bases(txn, a, b):  # type: ignore[attr-defined]
                    if s not in known:
                        known.append(s)
                        kept.add(s)
                        grew = True
    return kept


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kept_states_are_every_pairwise_best_common_ancestor(
    store: branchfs.Store, seed: int
) -> None:
    import random

    rng = random.Random(seed)
    store.create_branch("main").write_bytes("f0", b"0\n")
    names = ["main"]
    for step in range(40):
        op = rng.choice(["fork", "write", "merge", "merge", "snapshot", "discard"])
        name = rng.choice(names)
        if op == "fork" and len(names) < 5:
            new = f"b{step}"
            store.fork(name, new)
            names.append(new)
        elif op == "write":
            store.branch(name).write_bytes(f"f{step}", f"{step}\n".encode())
        elif op == "merge" and len(names) > 1:
            other = rng.choice([n for n in names if n != name])
            store.merge(name, other, strategy="theirs")
        elif op == "snapshot":
            store.snapshot(name, f"s{step}")
        elif op == "discard" and name != "main":
            store.discard(name)
            names.remove(name)
        if step % 13 == 12:
            store.gc()
    history = store.engine.history
    with store.meta.read() as txn:
        roots = [b.top for b in store.refs.branches(txn)]
        roots += [s.layer for s in store.refs.snapshots(txn)]
        assert history.kept_states(txn, roots) == _pairwise_kept(history, txn, roots)
    store.gc()
    assert store.fsck().ok


@pytest.mark.parametrize("seed", [4, 6])
def test_merge_bases_are_the_best_common_ancestors_by_definition(
    store: branchfs.Store, seed: int
) -> None:
    """``merge_bases`` (with its shortcut for a fork merged back) against the definition,
    computed here from the layers' parents and the merge edges alone: the common
    ancestors that are no ancestor of another common ancestor, for every pair of states
    of a random history of forks, writes, merges both ways (criss-crosses), discards and gc."""
    import random

    rng = random.Random(seed)
    store.create_branch("main").write_bytes("f0", b"0\n")
    names = ["main"]
    for step in range(60):
        op = rng.choice(["fork", "write", "merge", "merge", "merge", "discard"])
        name = rng.choice(names)
        if op == "fork" and len(names) < 5:
            new = f"b{step}"
            store.fork(name, new)
            names.append(new)
        elif op == "write":
            store.branch(name).write_bytes(f"f{step}", f"{step}\n".encode())
        elif op == "merge" and len(names) > 1:
            other = rng.choice([n for n in names if n != name])
            store.merge(name, other, strategy="theirs")
        elif op == "discard" and name != "main":
            store.discard(name)
            names.remove(name)
        if step % 20 == 19:
            store.gc()
    layers, history = store.engine.layers, store.engine.history
    with store.meta.read() as txn:
        ids = [info.id for info in layers.all(txn)]
        up = {lid: [layers.info(txn, lid).parent, *history.merge_parents(txn, lid)] for lid in ids}
        anc: dict[int, set[int]] = {}
        for lid in ids:
            seen, todo = set(), [lid]
            while todo:
                x = todo.pop()
                if x in up and x not in seen:
                    seen.add(x)
                    todo.extend(up[x])
            anc[lid] = seen
        for a in ids:
            for b in ids:
                common = anc[a] & anc[b]
                want = sorted(c for c in common if not any(c in anc[d] - {d} for d in common))
                assert history.merge_bases(txn, a, b) == want, (a, b)
