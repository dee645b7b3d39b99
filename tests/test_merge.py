"""The table of merge cases: clean merges, every conflict kind, strategies and markers.

Each case builds a base tree on ``main``, forks ``theirs``, edits both sides, merges
``theirs`` into ``main`` and checks the resulting tree (or the conflicts and that ``main``
is exactly as it was).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

import branchfs
from branchfs import Branch, MergeConflict, Store


def tree_of(b: Branch) -> dict[str, object]:
    """Every path of a branch with what it is: bytes, ('dir', mode), ('link', target)."""
    out: dict[str, object] = {}
    for dirpath, dirs, files in b.walk(""):
        for d in dirs:
            p = f"{dirpath}/{d}".lstrip("/")
            out[p] = ("dir", b.lstat(p).st_mode & 0o7777)
        for f in files:
            p = f"{dirpath}/{f}".lstrip("/")
            if b.islink(p):
                out[p] = ("link", b.readlink(p))
            else:
                out[p] = b.read_bytes(p)
    return out


@pytest.fixture
def pair(store: Store) -> Callable[[Callable[[Branch], None]], tuple[Branch, Branch]]:
    """Build a base on main with ``setup``, then fork ``theirs`` from it."""

    def make(setup: Callable[[Branch], None]) -> tuple[Branch, Branch]:
        main = store.create_branch("main")
        setup(main)
        return main, main.fork("theirs")

    return make


def base_files(b: Branch) -> None:
    b.write_bytes("a.txt", b"1\n2\n3\n4\n5\n6\n7\n")
    b.write_bytes("b.txt", b"bee\n")
    b.makedirs("dir/sub")
    b.write_bytes("dir/sub/deep.txt", b"deep\n")
    b.write_bytes("bin.dat", bytes(range(256)) * 10)
    b.symlink("a.txt", "link")


# -- clean merges -------------------------------------------------------------------------


def test_change_on_one_side_is_taken(pair) -> None:
    main, theirs = pair(base_files)
    theirs.write_bytes("b.txt", b"changed\n")
    theirs.write_bytes("new.txt", b"new\n")
    theirs.remove("dir/sub/deep.txt")
    result = main.merge(theirs)
    assert main.read_bytes("b.txt") == b"changed\n"
    assert main.read_bytes("new.txt") == b"new\n"
    assert not main.exists("dir/sub/deep.txt")
    kinds = {(c.path, c.kind) for c in result.changes}
    assert ("b.txt", "modified") in kinds
    assert ("new.txt", "added") in kinds
    assert ("dir/sub/deep.txt", "deleted") in kinds
    assert result.conflicts == []
    assert tree_of(main) == tree_of(theirs)


def test_rename_on_one_side_edit_on_the_other(pair) -> None:
    main, theirs = pair(base_files)
    theirs.rename("a.txt", "renamed.txt")
    main.write_bytes("a.txt", b"1\n2\nTWO-AND-A-HALF\n3\n4\n5\n6\n7\n")
    main.merge(theirs)
    assert not main.exists("a.txt")
    assert main.read_bytes("renamed.txt") == b"1\n2\nTWO-AND-A-HALF\n3\n4\n5\n6\n7\n"


def test_edit_on_one_side_rename_on_the_other(pair) -> None:
    main, theirs = pair(base_files)
    theirs.write_bytes("a.txt", b"1\n2\n3\n4\n5\n6\n7\n8\n")
    main.rename("a.txt", "dir/moved.txt")
    main.merge(theirs)
    assert main.read_bytes("dir/moved.txt") == b"1\n2\n3\n4\n5\n6\n7\n8\n"


def test_text_changes_in_different_places_merge_line_by_line(pair) -> None:
    main, theirs = pair(base_files)
    main.write_bytes("a.txt", b"ONE\n2\n3\n4\n5\n6\n7\n")
    theirs.write_bytes("a.txt", b"1\n2\n3\n4\n5\n6\nSEVEN\n")
    main.merge(theirs)
    assert main.read_bytes("a.txt") == b"ONE\n2\n3\n4\n5\n6\nSEVEN\n"


def test_the_same_change_on_both_sides(pair) -> None:
    main, theirs = pair(base_files)
    for b in (main, theirs):
        b.write_bytes("b.txt", b"same\n")
        b.write_bytes("both-new.txt", b"identical\n")
        b.chmod("a.txt", 0o600)
    result = main.merge(theirs)
    assert result.conflicts == []
    assert main.read_bytes("b.txt") == b"same\n"
    assert main.read_bytes("both-new.txt") == b"identical\n"
    assert main.stat("a.txt").st_mode & 0o777 == 0o600


def test_delete_on_both_sides(pair) -> None:
    main, theirs = pair(base_files)
    main.rmtree("dir")
    theirs.rmtree("dir")
    main.merge(theirs)
    assert not main.exists("dir")
    assert store_ok(main.store)


def test_nested_directories_added_on_both_sides_are_unified(pair) -> None:
    main, theirs = pair(base_files)
    main.makedirs("pkg/a/b")
    main.write_bytes("pkg/a/b/ours.py", b"ours\n")
    theirs.makedirs("pkg/a/b/c")
    theirs.write_bytes("pkg/a/b/c/theirs.py", b"theirs\n")
    theirs.write_bytes("pkg/top.py", b"top\n")
    main.merge(theirs)
    assert main.read_bytes("pkg/a/b/ours.py") == b"ours\n"
    assert main.read_bytes("pkg/a/b/c/theirs.py") == b"theirs\n"
    assert main.read_bytes("pkg/top.py") == b"top\n"
    assert store_ok(main.store)


def test_directory_rename_carries_files_added_on_the_other_side(pair) -> None:
    main, theirs = pair(base_files)
    theirs.rename("dir", "renamed-dir")
    main.write_bytes("dir/sub/added-by-main.txt", b"hello\n")
    main.merge(theirs)
    assert main.read_bytes("renamed-dir/sub/added-by-main.txt") == b"hello\n"
    assert main.read_bytes("renamed-dir/sub/deep.txt") == b"deep\n"
    assert not main.exists("dir")


def test_large_binary_file_changed_on_one_side(pair) -> None:
    payload = os.urandom(300_000)
    main, theirs = pair(lambda b: b.write_bytes("big.bin", payload))
    with theirs.open("big.bin", "r+b") as fh:
        fh.seek(200_000)
        fh.write(b"PATCH")
    main.write_bytes("other", b"x")
    main.merge(theirs)
    expected = payload[:200_000] + b"PATCH" + payload[200_005:]
    assert main.read_bytes("big.bin") == expected


def test_truncated_file_on_one_side(pair) -> None:
    payload = os.urandom(300_000)
    main, theirs = pair(lambda b: b.write_bytes("big.bin", payload))
    theirs.truncate("big.bin", 70_000)
    main.merge(theirs)
    assert main.read_bytes("big.bin") == payload[:70_000]
    main.truncate("big.bin", 300_000)
    assert main.read_bytes("big.bin") == payload[:70_000] + bytes(230_000)


def test_mode_xattr_and_symlink_changes(pair) -> None:
    main, theirs = pair(base_files)
    theirs.chmod("b.txt", 0o640)
    theirs.setxattr("b.txt", "user.tag", b"v")
    theirs.remove("link")
    theirs.symlink("b.txt", "link")
    main.setxattr("a.txt", "user.other", b"w")
    main.merge(theirs)
    assert main.stat("b.txt").st_mode & 0o777 == 0o640
    assert main.getxattr("b.txt", "user.tag") == b"v"
    assert main.getxattr("a.txt", "user.other") == b"w"
    assert main.readlink("link") == "b.txt"


def test_repeated_merges_move_the_base_forward(pair) -> None:
    main, theirs = pair(base_files)
    theirs.write_bytes("b.txt", b"v1\n")
    main.merge(theirs)
    # main edits the merged file; theirs edits another: no conflict, since the base moved.
    main.write_bytes("b.txt", b"v1 edited on main\n")
    theirs.write_bytes("a.txt", b"changed\n")
    result = main.merge(theirs)
    assert main.read_bytes("b.txt") == b"v1 edited on main\n"
    assert main.read_bytes("a.txt") == b"changed\n"
    assert {c.path for c in result.changes} == {"a.txt"}
    # a third round with nothing new changes nothing
    assert main.merge(theirs).changes == []


def test_merge_back_and_forth(pair) -> None:
    main, theirs = pair(base_files)
    theirs.write_bytes("t.txt", b"t\n")
    main.write_bytes("m.txt", b"m\n")
    main.merge(theirs)
    theirs.merge(main)
    assert tree_of(main) == tree_of(theirs)


def test_merge_from_a_snapshot(store: Store) -> None:
    main = store.create_branch("main")
    main.write_bytes("f", b"1\n")
    main.snapshot("s1")
    other = store.fork_snapshot("s1", "other")
    other.write_bytes("g", b"2\n")
    other.snapshot("s2")
    main.merge("@s2")
    assert main.read_bytes("g") == b"2\n"


# -- conflicts ----------------------------------------------------------------------------


def conflict_kinds(main: Branch, theirs: Branch) -> list[tuple[str, str]]:
    before = tree_of(main)
    with pytest.raises(MergeConflict) as info:
        main.merge(theirs)
    assert tree_of(main) == before, "a refused merge must leave the target exactly as it was"
    assert store_ok(main.store)
    for c in info.value.conflicts:
        assert c.ours is not None and c.theirs is not None
    return sorted((c.path, c.kind) for c in info.value.conflicts)


def test_text_conflict(pair) -> None:
    main, theirs = pair(base_files)
    main.write_bytes("a.txt", b"1\nOURS\n3\n4\n5\n6\n7\n")
    theirs.write_bytes("a.txt", b"1\nTHEIRS\n3\n4\n5\n6\n7\n")
    assert conflict_kinds(main, theirs) == [("a.txt", "content")]


def test_binary_conflict(pair) -> None:
    main, theirs = pair(base_files)
    main.write_bytes("bin.dat", b"\0ours")
    theirs.write_bytes("bin.dat", b"\0theirs")
    assert conflict_kinds(main, theirs) == [("bin.dat", "content")]


def test_modify_delete_both_ways(pair) -> None:
    main, theirs = pair(base_files)
    main.write_bytes("a.txt", b"modified\n")
    theirs.remove("a.txt")
    theirs.write_bytes("b.txt", b"modified by theirs\n")
    main.remove("b.txt")
    assert conflict_kinds(main, theirs) == [("a.txt", "modify/delete"), ("b.txt", "modify/delete")]


def test_add_add_with_different_content(pair) -> None:
    main, theirs = pair(base_files)
    main.write_bytes("new.txt", b"ours\n")
    theirs.write_bytes("new.txt", b"theirs\n")
    assert conflict_kinds(main, theirs) == [("new.txt", "add/add")]


def test_type_change(pair) -> None:
    main, theirs = pair(base_files)
    main.write_bytes("thing", b"a file\n")
    theirs.mkdir("thing")
    assert conflict_kinds(main, theirs) == [("thing", "type")]


def test_rename_rename(pair) -> None:
    main, theirs = pair(base_files)
    main.rename("b.txt", "ours-name.txt")
    theirs.rename("b.txt", "theirs-name.txt")
    assert conflict_kinds(main, theirs) == [("ours-name.txt", "rename/rename")]


def test_rename_that_makes_a_directory_its_own_ancestor(pair) -> None:
    def setup(b: Branch) -> None:
        b.makedirs("A")
        b.makedirs("B")

    main, theirs = pair(setup)
    main.rename("B", "A/B")
    theirs.rename("A", "B/A")
    assert [kind for _p, kind in conflict_kinds(main, theirs)] == ["cycle"]


def test_mode_and_xattr_on_both_sides(pair) -> None:
    main, theirs = pair(base_files)
    main.chmod("a.txt", 0o600)
    theirs.chmod("a.txt", 0o640)
    main.setxattr("b.txt", "user.k", b"ours")
    theirs.setxattr("b.txt", "user.k", b"theirs")
    assert conflict_kinds(main, theirs) == [("a.txt", "mode"), ("b.txt", "xattr")]


def test_add_into_a_directory_the_other_side_deleted(pair) -> None:
    main, theirs = pair(base_files)
    main.write_bytes("dir/sub/new.txt", b"new\n")
    theirs.rmtree("dir")
    kinds = conflict_kinds(main, theirs)
    assert ("dir/sub/new.txt", "modify/delete") in kinds


def test_every_conflict_is_listed(pair) -> None:
    main, theirs = pair(base_files)
    main.write_bytes("a.txt", b"1\nOURS\n")
    theirs.write_bytes("a.txt", b"1\nTHEIRS\n")
    main.write_bytes("new.txt", b"ours\n")
    theirs.write_bytes("new.txt", b"theirs\n")
    main.chmod("b.txt", 0o600)
    theirs.chmod("b.txt", 0o640)
    assert conflict_kinds(main, theirs) == [
        ("a.txt", "content"),
        ("b.txt", "mode"),
        ("new.txt", "add/add"),
    ]


# -- strategies and markers ---------------------------------------------------------------------


def conflicted(pair):  # type: ignore[no-untyped-def]
    main, theirs = pair(base_files)
    main.write_bytes("a.txt", b"1\nOURS\n3\n4\n5\n6\n7\n")
    theirs.write_bytes("a.txt", b"1\nTHEIRS\n3\n4\n5\n6\n7\n")
    main.write_bytes("new.txt", b"ours\n")
    theirs.write_bytes("new.txt", b"theirs\n")
    theirs.write_bytes("clean.txt", b"clean\n")
    return main, theirs


def test_strategy_ours(pair) -> None:
    main, theirs = conflicted(pair)
    result = main.merge(theirs, strategy="ours")
    assert main.read_bytes("a.txt") == b"1\nOURS\n3\n4\n5\n6\n7\n"
    assert main.read_bytes("new.txt") == b"ours\n"
    assert main.read_bytes("clean.txt") == b"clean\n"
    assert sorted(c.kind for c in result.conflicts) == ["add/add", "content"]


def test_strategy_theirs(pair) -> None:
    main, theirs = conflicted(pair)
    result = main.merge(theirs, strategy="theirs")
    assert main.read_bytes("a.txt") == b"1\nTHEIRS\n3\n4\n5\n6\n7\n"
    assert main.read_bytes("new.txt") == b"theirs\n"
    assert main.read_bytes("clean.txt") == b"clean\n"
    assert len(result.conflicts) == 2
    assert store_ok(main.store)


def test_conflict_markers(pair) -> None:
    main, theirs = pair(base_files)
    main.write_bytes("a.txt", b"1\nOURS\n3\n4\n5\n6\n7\n")
    theirs.write_bytes("a.txt", b"1\nTHEIRS\n3\n4\n5\n6\n7\n")
    result = main.merge(theirs, conflict_markers=True)
    text = main.read_bytes("a.txt")
    assert b"<<<<<<< main\nOURS\n||||||| base\n2\n=======\nTHEIRS\n>>>>>>> theirs\n" in text
    assert [c.kind for c in result.conflicts] == ["content"]
    assert result.markers == ["a.txt"]


def sed_i(b: Branch, path: str, data: bytes) -> None:
    """Save ``data`` as ``sed -i`` and most editors do: a temporary file renamed over the
    path, which gives the path a new inode."""
    b.write_bytes(f"{path}.tmp", data)
    b.replace(f"{path}.tmp", path)


@pytest.mark.parametrize("strategy", [None, "ours", "theirs", "markers"])
def test_rewrite_against_rename_and_edit(pair, strategy: str | None) -> None:
    """Ours renames a.txt and edits line 2; theirs rewrites line 2 through a temporary
    file: by path (as git sees it) one file changed on both sides, merged into ours' inode
    at ours' name (tests/test_merge_git.py checks the clean cases against git itself)."""
    main, theirs = pair(base_files)
    main.rename("a.txt", "moved.txt")
    main.write_bytes("moved.txt", b"1\nOURS\n3\n4\n5\n6\n7\n")
    ino = main.stat("moved.txt").st_ino
    sed_i(theirs, "a.txt", b"1\nTHEIRS\n3\n4\n5\n6\n7\n")
    if strategy is None:
        with pytest.raises(MergeConflict) as info:
            main.merge(theirs)
        assert [(c.path, c.kind) for c in info.value.conflicts] == [("moved.txt", "content")]
        assert main.read_bytes("moved.txt") == b"1\nOURS\n3\n4\n5\n6\n7\n"
        return
    if strategy == "markers":
        result = main.merge(theirs, conflict_markers=True)
        want = b"<<<<<<< main\nOURS\n||||||| base\n2\n=======\nTHEIRS\n>>>>>>> theirs\n"
        assert want in main.read_bytes("moved.txt")
    else:
        result = main.merge(theirs, strategy=strategy)
        side = b"OURS" if strategy == "ours" else b"THEIRS"
        assert main.read_bytes("moved.txt") == b"1\n" + side + b"\n3\n4\n5\n6\n7\n"
    assert [c.kind for c in result.conflicts] == ["content"]
    assert not main.exists("a.txt")
    assert main.stat("moved.txt").st_ino == ino
    assert store_ok(main.store)


def test_markers_do_not_hide_other_conflicts(pair) -> None:
    main, theirs = conflicted(pair)
    main.write_bytes("new.bin", b"ours\0")
    theirs.write_bytes("new.bin", b"theirs\0")
    with pytest.raises(MergeConflict) as info:
        main.merge(theirs, conflict_markers=True)
    assert [c.kind for c in info.value.conflicts] == ["add/add"]
    assert main.read_bytes("a.txt") == b"1\nOURS\n3\n4\n5\n6\n7\n"


def test_bad_arguments(pair) -> None:
    main, theirs = pair(base_files)
    with pytest.raises(branchfs.BranchFSError, match="strategy"):
        main.merge(theirs, strategy="mine")
    with pytest.raises(branchfs.BranchFSError, match="itself"):
        main.merge(main)
    with pytest.raises(branchfs.BranchNotFound):
        main.merge("nope")


def store_ok(store: Store) -> bool:
    report = store.fsck()
    assert report.ok, report.problems
    return True


# -- strategies on structural conflicts ------------------------------------------------------

STRUCTURAL = {
    # name: (edit ours, edit theirs, the kind, paths with "ours", paths with "theirs")
    "type": (
        lambda m: m.write_bytes("thing", b"file\n"),
        lambda t: (t.makedirs("thing/x"), t.write_bytes("thing/x/y", b"y")),
        "type",
        {"thing"},
        {"thing", "thing/x", "thing/x/y"},
    ),
    "deleted-dir-with-our-addition": (
        lambda m: m.write_bytes("dir/sub/new.txt", b"new\n"),
        lambda t: t.rmtree("dir"),
        "modify/delete",
        {"dir", "dir/sub", "dir/sub/new.txt"},
        set(),
    ),
    "our-deleted-dir-with-their-addition": (
        lambda m: m.rmtree("dir"),
        lambda t: t.write_bytes("dir/sub/new.txt", b"new\n"),
        "modify/delete",
        set(),
        {"dir", "dir/sub", "dir/sub/new.txt"},
    ),
    "rename/rename": (
        lambda m: m.rename("a", "a-ours"),
        lambda t: t.rename("a", "a-theirs"),
        "rename/rename",
        {"a-ours", "dir", "dir/sub", "dir/sub/deep.txt"},
        {"a-theirs", "dir", "dir/sub", "dir/sub/deep.txt"},
    ),
    "cycle": (
        lambda m: m.rename("B", "A/B"),
        lambda t: t.rename("A", "B/A"),
        "cycle",
        {"A", "A/B"},
        {"B", "B/A"},
    ),
}


@pytest.mark.parametrize("strategy", ["ours", "theirs"])
@pytest.mark.parametrize("case", sorted(STRUCTURAL))
def test_strategy_resolves_structural_conflicts(store: Store, case: str, strategy: str) -> None:
    edit_ours, edit_theirs, kind, with_ours, with_theirs = STRUCTURAL[case]
    main = store.create_branch("main")
    main.makedirs("dir/sub")
    main.write_bytes("dir/sub/deep.txt", b"deep\n")
    main.write_bytes("a", b"a\n")
    main.mkdir("A")
    main.mkdir("B")
    theirs = main.fork("theirs")
    edit_ours(main)
    edit_theirs(theirs)
    with pytest.raises(MergeConflict) as info:
        main.merge(theirs)
    assert [c.kind for c in info.value.conflicts] == [kind]
    result = main.merge(theirs, strategy=strategy)
    assert [c.kind for c in result.conflicts] == [kind]
    store_ok(store)
    expected = with_ours if strategy == "ours" else with_theirs
    present = set(tree_of(main))
    assert expected <= present, f"missing {expected - present}"
    if strategy == "theirs":
        assert {p for p in present if p.split("/")[0] in {"thing", "a-ours"}} <= expected


def test_a_file_both_sides_got_through_a_third_branch(store: Store) -> None:
    """b1 creates a; b2 forks from b1 and is merged into main; merging main into b1 then
    finds a on both sides but not in their fork point: the same file, so nothing to do."""
    main = store.create_branch("main")
    b1 = main.fork("b1")
    b1.write_bytes("a", bytes(2100))
    b1.fork("b2")
    store.merge("main", "b2")
    store.discard("b2")
    assert store.merge("b1", "main").changes == []
    assert b1.read_bytes("a") == bytes(2100)
    store_ok(store)


def test_a_file_both_sides_got_then_changed_differently(store: Store) -> None:
    main = store.create_branch("main")
    b1 = main.fork("b1")
    b1.write_bytes("a", b"original\n")
    b1.fork("b2")
    store.merge("main", "b2")
    main.write_bytes("a", b"main's\n")
    b1.write_bytes("a", b"b1's\n")
    with pytest.raises(MergeConflict) as info:
        store.merge("b1", "main")
    assert [(c.path, c.kind) for c in info.value.conflicts] == [("a", "content")]
    assert b1.read_bytes("a") == b"b1's\n"


def test_xattr_removed_on_one_side_while_the_other_changed_the_mode(pair) -> None:
    """A removal is a change like any other: the source's removexattr is taken even though
    the target changed another field (the mode) of the same file."""
    main, _ = pair(base_files)
    main.setxattr("a.txt", "user.gone", b"g")
    main.setxattr("a.txt", "user.stays", b"s")
    theirs = main.fork("theirs2")
    theirs.removexattr("a.txt", "user.gone")
    main.chmod("a.txt", 0o600)
    result = main.merge(theirs)
    assert result.conflicts == []
    assert main.listxattr("a.txt") == ["user.stays"]
    assert main.stat("a.txt").st_mode & 0o777 == 0o600
    # and the other way round: the target removed it, the source changed the mode
    other = main.fork("other")
    main.removexattr("a.txt", "user.stays")
    other.chmod("a.txt", 0o640)
    main.merge(other)
    assert main.listxattr("a.txt") == []
    assert main.stat("a.txt").st_mode & 0o777 == 0o640


def test_a_refused_merge_notifies_nobody(tmp_path: os.PathLike[str]) -> None:
    heard: list[tuple[str, ...]] = []
    path = os.path.join(tmp_path, "observed")
    with Store.open(path, create=True, observer=lambda _p, names: heard.append(names)) as store:
        main = store.create_branch("main")
        main.write_bytes("f", b"base\n")
        theirs = main.fork("theirs")
        main.write_bytes("f", b"ours\n")
        theirs.write_bytes("f", b"theirs\n")
        assert heard[-1] == ("theirs",)
        heard.clear()
        with pytest.raises(MergeConflict):
            main.merge(theirs)
        assert heard == []
        main.merge(theirs, strategy="theirs")
        assert heard == [("main",)]
