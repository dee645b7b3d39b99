"""diff: every kind of change, reported by path, between branches and snapshots."""

from __future__ import annotations

import os

from branchfs import Branch, Change, Store


def changes(a: Branch, b: Branch | str) -> list[tuple[str, str, str | None]]:
    return [(c.path, c.kind, c.old_path) for c in a.diff(b)]


def seeded(store: Store) -> Branch:
    main = store.create_branch("main")
    main.write_bytes("keep.txt", b"keep\n")
    main.write_bytes("edit.txt", b"old\n")
    main.write_bytes("gone.txt", b"bye\n")
    main.write_bytes("move.txt", b"moving\n")
    main.makedirs("d/e")
    main.write_bytes("d/e/f.txt", b"f\n")
    main.write_bytes("big.bin", os.urandom(200_000))
    main.write_bytes("was-file", b"file\n")
    return main


def test_no_changes(store: Store) -> None:
    main = seeded(store)
    other = main.fork("other")
    assert main.diff(other) == []
    assert other.diff(main) == []


def test_every_kind(store: Store) -> None:
    main = seeded(store)
    b = main.fork("b")
    b.write_bytes("edit.txt", b"new\n")
    b.remove("gone.txt")
    b.write_bytes("added.txt", b"hi\n")
    b.rename("move.txt", "d/moved.txt")
    b.chmod("keep.txt", 0o600)
    b.setxattr("d", "user.x", b"1")
    b.remove("was-file")
    b.mkdir("was-file")
    with b.open("big.bin", "r+b") as fh:
        fh.seek(150_000)
        fh.write(b"!")
    assert changes(main, b) == [
        ("added.txt", "added", None),
        ("big.bin", "modified", None),
        ("d", "xattr", None),
        ("d/moved.txt", "renamed", "move.txt"),
        ("edit.txt", "modified", None),
        ("gone.txt", "deleted", None),
        ("keep.txt", "mode", None),
        ("was-file", "type", None),
    ]
    # and the other way round
    back = changes(b, main)
    assert ("added.txt", "deleted", None) in back
    assert ("move.txt", "renamed", "d/moved.txt") in back


def test_directory_rename_is_one_change(store: Store) -> None:
    main = seeded(store)
    b = main.fork("b")
    b.rename("d", "dd")
    assert changes(main, b) == [("dd", "renamed", "d")]


def test_replace_by_rename_reads_as_modified(store: Store) -> None:
    main = seeded(store)
    b = main.fork("b")
    b.write_bytes("tmp", b"new content\n")
    b.rename("tmp", "edit.txt")
    assert changes(main, b) == [("edit.txt", "modified", None)]


def test_write_of_identical_bytes_is_no_change(store: Store) -> None:
    main = seeded(store)
    b = main.fork("b")
    b.write_bytes("edit.txt", b"old\n")
    b.utime("keep.txt", ns=(1, 1))
    assert changes(main, b) == []


def test_diff_against_snapshot_and_between_unrelated_branches(store: Store) -> None:
    main = seeded(store)
    main.snapshot("s")
    main.write_bytes("after.txt", b"x\n")
    assert changes(main, "@s") == [("after.txt", "deleted", None)]
    other = store.create_branch("other")
    other.write_bytes("keep.txt", b"keep\n")
    diff = {(p, k) for p, k, _o in changes(other, main)}
    assert ("edit.txt", "added") in diff
    # same bytes at the same path in unrelated trees: not a change
    assert not any(p == "keep.txt" for p, _k in diff)


def test_change_objects_print_and_serialise(store: Store) -> None:
    main = seeded(store)
    b = main.fork("b")
    b.rename("move.txt", "moved.txt")
    (change,) = main.diff(b)
    assert isinstance(change, Change)
    assert str(change) == "renamed  move.txt -> moved.txt"
    assert change.to_json() == {"path": "moved.txt", "kind": "renamed", "old_path": "move.txt"}


def test_names_that_are_not_utf8(store: Store) -> None:
    main = store.create_branch("main")
    b = main.fork("b")
    b.write_bytes(b"caf\xe9", b"latin-1 name")
    (change,) = main.diff(b)
    assert os.fsencode(change.path) == b"caf\xe9"
