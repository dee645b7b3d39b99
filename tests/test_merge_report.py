"""What a merge reports: the same conflicts, one per path, whether refused or forced.

A user saw a refused merge list 3 conflicts and the same merge with ``--strategy theirs``
report 4 resolved: ``f1.txt`` twice, once as a ``type`` conflict the refusal never listed
(the strategy gave the edited file its name back, and the namespace check met the
directory the other side had put there), and the refusal said ``ours: deleted`` of a file
that had been replaced by a directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from clirun import bfs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from randomized import examples

import branchfs
from branchfs import MergeConflict


def _file_against_directory(store: branchfs.Store, dir_side: str) -> None:
    """Base: three text files. ``dir_side`` replaces f1.txt by a directory f1.txt/ with a
    file in it, the other side edits f1.txt; both edit f2.txt and f3.txt differently."""
    main = store.create_branch("main")
    for name in ("f1.txt", "f2.txt", "f3.txt"):
        main.write_bytes(name, b"a\nb\nc\n")
    f = main.fork("f")
    directory, edit = (main, f) if dir_side == "ours" else (f, main)
    directory.remove("f1.txt")
    directory.write_bytes("f1.txt/inner", b"x\n", parents=True)
    edit.write_bytes("f1.txt", b"a\nEDIT\nc\n")
    for name in ("f2.txt", "f3.txt"):
        main.write_bytes(name, b"a\nM\nc\n")
        f.write_bytes(name, b"a\nF\nc\n")


@pytest.mark.parametrize("dir_side", ["ours", "theirs"])
def test_refused_and_forced_merges_list_the_same_conflicts(
    store: branchfs.Store, dir_side: str
) -> None:
    _file_against_directory(store, dir_side)
    for strategy in ("ours", "theirs"):
        store.fork("main", f"main-{strategy}")
    with pytest.raises(MergeConflict) as info:
        store.merge("main", "f")
    refused = info.value.conflicts
    assert [c.path for c in refused] == ["f1.txt", "f2.txt", "f3.txt"]
    f1 = refused[0]
    assert f1.kind == "type"
    directory, edited = (f1.ours, f1.theirs) if dir_side == "ours" else (f1.theirs, f1.ours)
    assert directory == "directory f1.txt"
    assert edited == "file f1.txt (9 bytes)"
    for strategy in ("ours", "theirs"):
        result = store.merge(f"main-{strategy}", "f", strategy=strategy)
        assert result.conflicts == refused, strategy
        tree = store.branch(f"main-{strategy}")
        assert tree.isdir("f1.txt") is (strategy == dir_side)
        if strategy != dir_side:
            assert tree.read_bytes("f1.txt") == b"a\nEDIT\nc\n"


def test_the_cli_lists_them_once_refused_and_forced(tmp_path: Path) -> None:
    path = tmp_path / "s.bfs"
    with branchfs.Store.open(path, create=True) as store:
        _file_against_directory(store, "ours")
    refused = bfs("merge", "f", "--into", "main", store=path)
    assert refused.code == 1, refused
    forced = bfs("merge", "f", "--into", "main", "--strategy", "theirs", store=path)
    assert forced.code == 0, forced
    assert "3 conflicts" in refused.err and "3 conflict(s) resolved" in forced.out
    for text in (refused.err, forced.out):
        f1 = [line for line in text.splitlines() if line.strip().startswith("f1.txt:")]
        assert len(f1) == 1, text
        assert "ours: directory f1.txt; theirs: file f1.txt (9 bytes)" in f1[0]


def test_ours_rewritten_file_moved_by_their_rename_onto_another(store: branchfs.Store) -> None:
    """Ours saved a and b through temporary files (new inodes), theirs renamed a over b:
    ours' new a, moved by their rename, met ours' new b at b, and the namespace check read
    it as a file of theirs (FileNotFoundError). Now a conflict at b, resolved either way."""
    main = store.create_branch("main")
    for name in ("a", "b"):
        main.write_bytes(name, b"1\n2\n3\n")
    f = main.fork("f")
    for name in ("a", "b"):
        main.write_bytes(name + ".tmp", b"1\n2\n3\n" + name.encode() + b"\n")
        main.rename(name + ".tmp", name)
    f.rename("a", "b")
    for strategy in ("ours", "theirs"):
        store.fork("main", f"main-{strategy}")
    with pytest.raises(MergeConflict) as info:
        store.merge("main", "f")
    assert [(c.path, c.kind) for c in info.value.conflicts] == [("b", "add/add")]
    store.merge("main-ours", "f", strategy="ours")
    assert store.branch("main-ours").read_bytes("b") == b"1\n2\n3\nb\n"
    store.merge("main-theirs", "f", strategy="theirs")
    assert store.branch("main-theirs").read_bytes("b") == b"1\n2\n3\na\n"
    assert not store.branch("main-theirs").exists("a")


def test_a_file_clashing_in_content_and_mode_is_one_conflict(store: branchfs.Store) -> None:
    main = store.create_branch("main")
    main.write_bytes("f.txt", b"a\nb\nc\n")
    f = main.fork("f")
    main.write_bytes("f.txt", b"a\nM\nc\n")
    f.write_bytes("f.txt", b"a\nF\nc\n")
    main.chmod("f.txt", 0o600)
    f.chmod("f.txt", 0o640)
    with pytest.raises(MergeConflict) as info:
        store.merge("main", "f")
    [conflict] = info.value.conflicts
    assert conflict.path == "f.txt"
    assert "text changed" in conflict.ours and "mode 0o100600" in conflict.ours
    assert "text changed" in conflict.theirs and "mode 0o100640" in conflict.theirs


# -- random histories ---------------------------------------------------------------------------

NAMES = ("a", "b", "d/c", "d/e/f", "g")
TEXTS = hs.sampled_from((b"1\n2\n3\n", b"1\nX\n3\n", b"1\nY\n3\n", b"1\n2\n3\n4\n", b"\0bin"))
OPS = hs.one_of(
    hs.tuples(hs.just("write"), hs.sampled_from(NAMES), TEXTS),
    hs.tuples(hs.just("rewrite"), hs.sampled_from(NAMES), TEXTS),
    hs.tuples(hs.just("remove"), hs.sampled_from((*NAMES, "d", "d/e"))),
    hs.tuples(hs.just("rename"), hs.sampled_from((*NAMES, "d", "d/e")), hs.sampled_from(NAMES)),
    hs.tuples(hs.just("to_dir"), hs.sampled_from(NAMES), TEXTS),
    hs.tuples(hs.just("chmod"), hs.sampled_from(NAMES), hs.sampled_from((0o755, 0o600))),
    hs.tuples(hs.just("symlink"), hs.sampled_from(NAMES), hs.just("a")),
)


def play(tree: branchfs.Branch, ops: list[tuple[Any, ...]]) -> None:
    """Apply ``ops``, skipping those that fail (a missing path …). ``rewrite`` saves through
    a temporary file renamed over the path; ``to_dir`` replaces a file by a directory."""
    for kind, path, *arg in ops:
        try:
            if kind == "write":
                tree.write_bytes(path, arg[0], parents=True)
            elif kind == "rewrite":
                tree.write_bytes(path + ".tmp", arg[0], parents=True)
                tree.rename(path + ".tmp", path)
            elif kind == "remove":
                if tree.isdir(path) and not tree.islink(path):
                    tree.rmtree(path)
                else:
                    tree.remove(path)
            elif kind == "rename":
                tree.rename(path, arg[0])
            elif kind == "to_dir":
                tree.remove(path)
                tree.write_bytes(path + "/in", arg[0], parents=True)
            elif kind == "chmod":
                tree.chmod(path, arg[0])
            else:
                tree.symlink(arg[0], path)
        except OSError:
            pass


@settings(
    max_examples=examples(60),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    base=hs.lists(OPS, max_size=6),
    ours=hs.lists(OPS, max_size=5),
    theirs=hs.lists(OPS, max_size=5),
)
def test_a_forced_merge_reports_the_conflicts_of_the_refused_one(
    tmp_path_factory: pytest.TempPathFactory,
    base: list[tuple[Any, ...]],
    ours: list[tuple[Any, ...]],
    theirs: list[tuple[Any, ...]],
) -> None:
    with branchfs.Store.open(tmp_path_factory.mktemp("m") / "s.bfs", create=True) as store:
        main = store.create_branch("main")
        play(main, [("write", n, b"1\n2\n3\n") for n in NAMES] + base)
        f = main.fork("f")
        play(main, ours)
        play(f, theirs)
        for strategy in ("ours", "theirs"):
            store.fork("main", f"main-{strategy}")
        try:
            refused = store.merge("main", "f").conflicts
        except MergeConflict as e:
            refused = e.conflicts
        assert len({c.path for c in refused}) == len(refused), refused
        for strategy in ("ours", "theirs"):
            forced = store.merge(f"main-{strategy}", "f", strategy=strategy).conflicts
            assert forced == refused, strategy
