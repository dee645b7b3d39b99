"""What a merge reports about its conflicts.

A user saw a refused merge list 3 conflicts and the same merge with ``--strategy theirs``
report 4 resolved: ``f1.txt`` twice, once as a ``type`` conflict the refusal never listed
(the strategy gave the edited file its name back, and the namespace check met the
directory the other side had put there), and the refusal said ``ours: deleted`` of a file
that had been replaced by a directory.
"""

from __future__ import annotations

import pytest

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
def test_a_file_replaced_by_a_directory_is_a_type_conflict_naming_both(
    store: branchfs.Store, dir_side: str
) -> None:
    _file_against_directory(store, dir_side)
    with pytest.raises(MergeConflict) as info:
        store.merge("main", "f")
    f1 = [c for c in info.value.conflicts if c.path == "f1.txt"]
    assert [c.kind for c in f1] == ["type"] * len(f1)
    directory, edited = (
        (f1[0].ours, f1[0].theirs) if dir_side == "ours" else (f1[0].theirs, f1[0].ours)
    )
    assert directory == "directory f1.txt"
    assert edited == "file f1.txt (9 bytes)"


def test_ours_rewritten_file_moved_by_their_rename_onto_another(store: branchfs.Store) -> None:
    """Ours saved a and b through temporary files (new inodes), theirs renamed a over b:
    ours' new a, moved by their rename, met ours' new b at b, and the namespace check read
    it as a file of theirs (FileNotFoundError). Now a conflict, resolved either way."""
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
    assert [c.kind for c in info.value.conflicts] == ["add/add"]
    store.merge("main-ours", "f", strategy="ours")
    assert store.branch("main-ours").read_bytes("b") == b"1\n2\n3\nb\n"
    store.merge("main-theirs", "f", strategy="theirs")
    assert store.branch("main-theirs").read_bytes("b") == b"1\n2\n3\na\n"
    assert not store.branch("main-theirs").exists("a")
