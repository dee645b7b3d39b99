"""Branches and snapshots: create, fork, snapshot, reset, discard, names, isolation."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

import branchfs
from branchfs.records import CHUNK_SIZE


def test_create_and_list(store: branchfs.Store) -> None:
    assert store.branches() == []
    main = store.create_branch("main")
    assert main.name == "main" and main.store is store
    assert main.listdir("") == []
    store.create_branch("b-2")
    assert store.branches() == ["b-2", "main"]
    assert store.branch("main") == main
    with pytest.raises(branchfs.BranchExists):
        store.create_branch("main")
    with pytest.raises(branchfs.BranchNotFound):
        store.branch("nope")


def test_fork_is_isolated_both_ways(branch: branchfs.Branch) -> None:
    branch.makedirs("src/pkg")
    branch.write_bytes("src/pkg/a.py", b"a = 1\n")
    branch.write_bytes("big", bytes(range(256)) * 1000)
    branch.setxattr("big", "user.k", b"v")
    fork = branch.fork("fork")
    assert sorted(branch.store.branches()) == ["fork", "main"]
    fork.write_bytes("src/pkg/a.py", b"a = 2\n")
    branch.write_bytes("src/pkg/b.py", b"b\n")
    fork.remove("big")
    branch.chmod("src", 0o700)
    fork.setxattr("src", "user.f", b"1")
    with fork.open("src/pkg/a.py", "ab") as fh:
        fh.write(b"more\n")
    assert branch.read_bytes("src/pkg/a.py") == b"a = 1\n"
    assert fork.read_bytes("src/pkg/a.py") == b"a = 2\nmore\n"
    assert fork.listdir("src/pkg") == ["a.py"]
    assert branch.listdir("src/pkg") == ["a.py", "b.py"]
    assert branch.read_bytes("big") == bytes(range(256)) * 1000
    assert branch.getxattr("big", "user.k") == b"v"
    assert not fork.exists("big")
    assert fork.stat("src").st_mode & 0o777 == 0o755
    assert branch.stat("src").st_mode & 0o777 == 0o700
    assert branch.listxattr("src") == []


def test_fork_of_fork_and_writes_in_the_middle(branch: branchfs.Branch) -> None:
    branch.write_bytes("f", b"0")
    a = branch.fork("a")
    a.write_bytes("f", b"a")
    b = a.fork("b")
    a.write_bytes("f", b"a2")
    branch.write_bytes("f", b"main2")
    assert (branch.read_bytes("f"), a.read_bytes("f"), b.read_bytes("f")) == (b"main2", b"a2", b"a")
    b.discard()
    assert a.read_bytes("f") == b"a2"


def test_fork_errors(store: branchfs.Store, branch: branchfs.Branch) -> None:
    with pytest.raises(branchfs.BranchNotFound):
        store.fork("nope", "x")
    store.create_branch("other")
    with pytest.raises(branchfs.BranchExists):
        branch.fork("other")
    with pytest.raises(branchfs.BranchExists):
        branch.fork("main")
    assert store.branches() == ["main", "other"]


def test_snapshot_is_frozen_and_read_only(store: branchfs.Store, branch: branchfs.Branch) -> None:
    branch.write_bytes("f", b"v1")
    snap = branch.snapshot("v1")
    branch.write_bytes("f", b"v2")
    branch.write_bytes("g", b"new")
    assert store.snapshots() == ["v1"]
    view = store.snapshot_tree("v1")
    assert view.read_bytes("f") == b"v1"
    assert view.listdir("") == ["f"]
    assert snap.read_bytes("f") == b"v1"
    for call in (
        lambda: view.write_bytes("f", b"x"),
        lambda: view.write_bytes("new", b"x"),
        lambda: view.mkdir("d"),
        lambda: view.remove("f"),
        lambda: view.rename("f", "g"),
        lambda: view.chmod("f", 0o600),
        lambda: view.truncate("f", 0),
        lambda: view.setxattr("f", "user.a", b"1"),
        lambda: view.symlink("f", "l"),
    ):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EROFS
        assert isinstance(info.value, branchfs.ReadOnlyError)
    for mode in ("r+b", "ab", "wb", "xb"):
        with pytest.raises(OSError) as info:
            view.open("f" if mode != "xb" else "new", mode)  # refused at open, like a RO mount
        assert info.value.errno == errno.EROFS
    with view.open("f", "rb") as fh:
        assert fh.read() == b"v1"
    with pytest.raises(branchfs.ReadOnlyError):
        view.snapshot("again")
    assert view.read_bytes("f") == b"v1"


def test_snapshot_names(store: branchfs.Store, branch: branchfs.Branch) -> None:
    branch.snapshot("s")
    with pytest.raises(branchfs.BranchExists):
        branch.snapshot("s")
    with pytest.raises(branchfs.BranchNotFound):
        store.snapshot("nope", "s2")
    with pytest.raises(branchfs.BranchNotFound):
        store.snapshot_tree("nope")
    with pytest.raises(branchfs.InvalidName):
        branch.snapshot("a/b")
    # snapshot and branch names live in separate namespaces
    branch.snapshot("main")
    assert store.snapshots() == ["main", "s"]


def test_reset(store: branchfs.Store, branch: branchfs.Branch) -> None:
    branch.write_bytes("f", b"A" * (2 * CHUNK_SIZE))
    branch.mkdir("d")
    branch.snapshot("base")
    branch.truncate("f", 3)
    branch.rmdir("d")
    branch.write_bytes("junk", b"x")
    branch.reset("base")
    assert branch.listdir("") == ["d", "f"]
    assert branch.read_bytes("f") == b"A" * (2 * CHUNK_SIZE)
    branch.write_bytes("f", b"after")
    assert store.snapshot_tree("base").read_bytes("f") == b"A" * (2 * CHUNK_SIZE)
    other = store.create_branch("other")
    other.reset("base")  # any branch may be reset to any snapshot
    assert other.listdir("") == ["d", "f"]
    with pytest.raises(branchfs.BranchNotFound):
        branch.reset("nope")
    with pytest.raises(branchfs.BranchNotFound):
        store.reset("nope", "base")


def test_fork_from_snapshot(store: branchfs.Store, branch: branchfs.Branch) -> None:
    branch.write_bytes("f", b"1")
    snap = branch.snapshot("s")
    branch.write_bytes("f", b"2")
    new = snap.fork("from-snap")
    assert new.read_bytes("f") == b"1"
    new.write_bytes("f", b"3")
    assert store.snapshot_tree("s").read_bytes("f") == b"1"
    assert branch.read_bytes("f") == b"2"


def test_discard(store: branchfs.Store, branch: branchfs.Branch) -> None:
    branch.write_bytes("f", b"1")
    fork = branch.fork("fork")
    fork.snapshot("from-fork")
    fork.discard()
    assert store.branches() == ["main"]
    with pytest.raises(branchfs.BranchNotFound):
        fork.read_bytes("f")
    with pytest.raises(branchfs.BranchNotFound):
        fork.discard()
    # a snapshot outlives the branch it was taken from
    assert store.snapshot_tree("from-fork").read_bytes("f") == b"1"
    # the name can be used again, and starts from what it is forked from
    again = branch.fork("fork")
    assert again.read_bytes("f") == b"1"


def test_many_forks_stay_independent(branch: branchfs.Branch) -> None:
    branch.write_bytes("shared", b"s" * 5000)
    forks = [branch.fork(f"f{i}") for i in range(20)]
    for i, f in enumerate(forks):
        f.write_bytes("mine", str(i).encode())
        f.write_bytes("shared", b"s" * i)
    for i, f in enumerate(forks):
        assert f.read_bytes("mine") == str(i).encode()
        assert f.read_bytes("shared") == b"s" * i
    assert branch.read_bytes("shared") == b"s" * 5000
    assert not branch.exists("mine")


def test_snapshot_of_unchanged_branch_twice(branch: branchfs.Branch) -> None:
    branch.write_bytes("f", b"1")
    branch.snapshot("a")
    branch.snapshot("b")  # nothing changed in between: both name the same state
    branch.write_bytes("f", b"2")
    store = branch.store
    assert store.snapshot_tree("a").read_bytes("f") == b"1"
    assert store.snapshot_tree("b").read_bytes("f") == b"1"


GOOD_NAMES = ["main", "a", "feature_1", "v1.2.3", "x" * 255, "ünïcode", "a-b", "c++", "日本"]
BAD_NAMES = [
    "",
    "/",
    "a/b",
    "..",
    ".",
    "a\0b",
    "x" * 256,
    "é" * 128,
    "-lead",
    "@at",
    " pad",
    "a\n",
    "with space",
    ".hidden",
    "a:b",
    "tab\tx",
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names(store: branchfs.Store, name: str) -> None:
    b = store.create_branch(name)
    b.write_bytes("f", b"1")
    assert name in store.branches()
    b.fork(name[:200] + "-fork")
    b.snapshot(name)
    assert name in store.snapshots()


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names(store: branchfs.Store, name: str) -> None:
    main = store.create_branch("main")
    for call in (
        lambda: store.create_branch(name),
        lambda: main.fork(name),
        lambda: main.snapshot(name),
        lambda: store.branch(name),
        lambda: store.snapshot_tree(name),
    ):
        with pytest.raises(branchfs.InvalidName) as info:
            call()
        assert isinstance(info.value, ValueError)
        assert str(info.value)
    assert store.branches() == ["main"]
    assert store.snapshots() == []


def test_non_str_name(store: branchfs.Store) -> None:
    with pytest.raises(branchfs.InvalidName):
        store.create_branch(b"bytes")  # type: ignore[arg-type]


def test_branches_survive_reopen(store_path: object) -> None:
    with branchfs.Store.open(store_path, create=True) as s:  # type: ignore[arg-type]
        s.create_branch("main").write_bytes("f", b"persist")
        s.branch("main").fork("f2")
        s.branch("main").snapshot("snap")
    with branchfs.Store.open(store_path) as s:  # type: ignore[arg-type]
        assert s.branches() == ["f2", "main"]
        assert s.snapshots() == ["snap"]
        assert s.branch("f2").read_bytes("f") == b"persist"


def test_a_root_or_last_branch_is_discarded_only_by_force(store: branchfs.Store) -> None:
    main = store.create_branch("main")
    main.write_bytes("f", b"1")
    with pytest.raises(branchfs.BranchIsRoot, match=r"last branch.*force=True"):
        main.discard()
    fork = main.fork("fork")
    with pytest.raises(branchfs.BranchIsRoot, match=r"root branch.*force=True"):
        store.discard("main")
    assert main.read_bytes("f") == b"1"
    other = store.create_branch("other")  # a second root: not a fork of main
    with pytest.raises(branchfs.BranchIsRoot):
        other.discard()
    main.snapshot("s")
    from_snap = store.fork_snapshot("s", "from-snap")
    from_snap.discard()  # forks, of a branch or of a snapshot, go as before
    fork.discard()
    main.discard(force=True)
    assert store.branches() == ["other"]
    other.discard(force=True)
    assert store.branches() == []


def test_a_fork_whose_source_is_gone_becomes_a_root(store: branchfs.Store) -> None:
    main = store.create_branch("main")
    main.fork("a")
    main.fork("b")
    main.discard(force=True)
    with pytest.raises(branchfs.BranchIsRoot, match="root branch"):
        store.discard("a")  # the older of the two now holds the tree first
    store.discard("b")


def test_the_fork_source_hint_is_verified_not_trusted(store: branchfs.Store) -> None:
    # A fork's record names its source; discard trusts it only while that source is the
    # same branch (same id), older, and still shares the fork's bottom layer.
    store.create_branch("main").fork("a")
    store.discard("main", force=True)
    store.create_branch("main")  # the same name again: another branch, another tree
    with pytest.raises(branchfs.BranchIsRoot, match="root branch"):
        store.discard("a")
    store.create_branch("x").fork("y")
    store.snapshot("main", "elsewhere")
    store.reset("x", "elsewhere")  # x now holds main's tree: y's is held by nothing older
    with pytest.raises(branchfs.BranchIsRoot, match="root branch"):
        store.discard("y")
    store.fork("main", "m2")
    store.discard("m2")  # a plain fork of a live source: allowed


def test_a_fork_of_a_source_that_moved_on_is_still_a_fork(store: branchfs.Store) -> None:
    # The quick check looks for the fork's state a few layers down the source's chain; a
    # source frozen more often since, reset within its own tree or squashed by gc still
    # shares the fork's tree, and the fork goes without force.
    main = store.create_branch("main")
    main.write_bytes("f", b"0")
    for name in ("a", "b", "c"):
        main.fork(name)
    for i in range(8):  # more freezes than refs.HINT_STEPS
        main.write_bytes("f", b"%d" % i)
        main.snapshot(f"s{i}")
    store.discard("a")
    store.reset("main", "s2")
    store.discard("b")
    store.gc()
    store.discard("c")
    assert store.branches() == ["main"]


def test_only_a_forked_branch_is_discarded_by_its_with_block(store: branchfs.Store) -> None:
    store.create_branch("main")
    with store.branch("main") as m:
        m.write_text("b.txt", "x")
    with store.create_branch("made") as made:
        made.write_text("c.txt", "y")
    with store.branch("main").fork("try") as attempt:
        attempt.write_text("d.txt", "z")
    with store.branch("main").fork("kept") as kept:
        kept.keep()
    assert store.branches() == ["kept", "made", "main"]
    assert store.branch("main").read_text("b.txt") == "x"


def test_import_to_a_place_outside_the_branch_is_refused(
    store: branchfs.Store, tmp_path: Path
) -> None:
    main = store.create_branch("main")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"1")
    for dest in ("../etc", "a/../../etc", "/../etc", ".."):
        with pytest.raises(branchfs.InvalidPath, match="leaves the branch"):
            main.import_dir(src, dest)
    assert main.listdir("") == []
    assert main.import_dir(src, "a/../b") == 1
    assert main.read_bytes("b/f") == b"1"  # inside the branch: allowed
