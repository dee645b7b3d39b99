"""The ``branchfs`` command line through real subprocesses: every verb, its ``--json``
parsed, its exit status (0 done, 1 conflict or failed check, 2 usage or bad input) and the
one-line error a user's mistake gets (never a traceback)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from clirun import bfs, one_line_error

import branchfs


@pytest.fixture
def project(tmp_path: Path) -> Path:
    d = tmp_path / "project"
    (d / "src").mkdir(parents=True)
    (d / "src" / "app.py").write_text("print(1)\n")
    (d / "README").write_text("hello\n")
    (d / "blob.bin").write_bytes(b"\0\1\2binary")
    return d


@pytest.fixture
def store(tmp_path: Path, project: Path) -> Path:
    s = tmp_path / "s.bfs"
    r = bfs("init", str(s))
    assert r.code == 0, r
    r = bfs("import", str(project), "--json", store=s)
    assert r.code == 0, r
    assert r.json["ok"] and r.json["files"] == 3 and r.json["branch"] == "main"
    return s


def test_every_verb_answers_json(store: Path, tmp_path: Path) -> None:
    assert bfs("branches", "--json", store=store).json == {
        "ok": True,
        "branches": ["main"],
        "mounts": {},
        "current": None,
    }
    assert bfs("fork", "main", "a1", "--json", store=store).json == {
        "ok": True,
        "source": "main",
        "branch": "a1",
    }
    with branchfs.Store.open(store) as s:
        a1 = s.branch("a1")
        a1.write_bytes("src/app.py", b"print(2)\n")
        a1.write_bytes("new.txt", b"new\n")
        a1.write_bytes("blob.bin", b"\0\1\2other")
    snap = bfs("snapshot", "main", "v1", "--json", store=store).json
    assert snap == {"ok": True, "branch": "main", "snapshot": "v1", "ref": "@v1"}
    snaps = bfs("snapshots", "--json", store=store).json
    assert [(x["name"], x["ref"], x["branch"]) for x in snaps["snapshots"]] == [
        ("v1", "@v1", "main")
    ]
    diff = bfs("diff", "@v1", "a1", "--json", store=store).json
    assert {(c["path"], c["kind"]) for c in diff["changes"]} == {
        ("src/app.py", "modified"),
        ("new.txt", "added"),
        ("blob.bin", "modified"),
    }
    patch = bfs("diff", "main", "a1", "--patch", store=store)
    assert patch.code == 0, patch
    assert "-print(1)\n+print(2)\n" in patch.out
    assert "+++ b/new.txt" in patch.out
    assert "Binary files a/blob.bin and b/blob.bin differ" in patch.out
    status = bfs("status", "a1", "--json", store=store).json
    assert status["against"] == "main"
    assert {c["path"] for c in status["changes"]} == {"src/app.py", "new.txt", "blob.bin"}
    merged = bfs("merge", "a1", "--into", "main", "--json", store=store).json
    assert merged["ok"] and merged["conflicts"] == []
    assert {c["path"] for c in merged["changes"]} == {"src/app.py", "new.txt", "blob.bin"}
    # Since that merge, a1 changed nothing.
    assert bfs("status", "a1", "--json", store=store).json["changes"] == []
    reset = bfs("reset", "main", "@v1", "--json", store=store).json
    assert reset == {"ok": True, "branch": "main", "snapshot": "v1"}
    out = tmp_path / "out"
    exported = bfs("export", "@v1", str(out), "--json", store=store).json
    assert exported["files"] == 3
    assert (out / "src" / "app.py").read_text() == "print(1)\n"
    gone = bfs("discard", "a1", "--json", store=store).json
    assert gone == {"ok": True, "branch": "a1", "unmounted": []}
    gc = bfs("gc", "--json", store=store).json
    assert gc["ok"] and {"bytes_freed", "chunks_freed", "layers_removed"} <= gc.keys()
    fsck = bfs("fsck", "--json", store=store).json
    assert fsck["ok"] is True and fsck["problems"] == []


def test_human_output_and_help_examples(store: Path) -> None:
    r = bfs("fork", "main", "x", store=store)
    assert (r.code, r.out.strip()) == (0, "forked main as x")
    r = bfs("branches", store=store)
    assert r.out.split() == ["main", "x"]
    top = bfs("--help")
    assert top.code == 0
    for verb in ("init", "import", "export", "branches", "snapshots", "fork", "discard",
                 "snapshot", "reset", "diff", "merge", "status", "gc", "fsck", "mount",
                 "umount"):  # fmt: skip
        assert verb in top.out
        h = bfs(verb, "--help")
        assert h.code == 0 and h.out.startswith(f"Usage: branchfs {verb} "), h
        assert f" {verb}" in h.out.split("Example:")[1], h


def test_grammar_as_a_new_user_meets_it(store: Path, tmp_path: Path) -> None:
    # `branchfs` alone: the help, on stderr, as a usage error; `branchfs help VERB` as ctl's
    # `help` and as people type it.
    bare = bfs()
    assert bare.code == 2 and bare.err.startswith("Usage: branchfs") and "Commands:" in bare.err
    assert "Traceback" not in bare.err and bare.out == ""
    helped = bfs("help", "merge")
    assert helped.code == 0 and helped.out.startswith("Usage: branchfs merge ")
    assert "branchfs merge attempt-1 --into main" in helped.out.split("Example:")[1]
    assert bfs("help").out == bfs("--help").out
    one_line_error(bfs("help", "nope"), 2, "no command 'nope'", "branchfs --help")
    # One word for [BRANCH] SNAPSHOT outside a mount: say how it was read.
    bfs("snapshot", "main", "v1", store=store)
    for args, taken in ((("reset", "main"), "SNAPSHOT"), (("snapshot", "v2"), "NAME")):
        one_line_error(bfs(*args, store=store), 2, f"was taken as the {taken}", "example")
    # Data answers --json on every verb that prints data, init included.
    made = bfs("init", str(tmp_path / "new.bfs"), "--json")
    assert made.code == 0 and made.json["ok"] and made.json["branches"] == ["main"], made
    checked = bfs("fsck", "--json", store=store).json
    assert checked["seconds"] == round(checked["seconds"], 3)


def test_conflict_is_exit_1_in_plain_words(store: Path) -> None:
    with branchfs.Store.open(store) as s:
        s.fork("main", "b")
        s.branch("main").write_bytes("README", b"ours\n")
        s.branch("b").write_bytes("README", b"theirs\n")
    r = bfs("merge", "b", "--into", "main", store=store)
    assert r.code == 1, r
    assert "Traceback" not in r.err
    first = r.err.splitlines()[0]
    assert first.startswith("branchfs: merging 'b' into 'main' stopped at 1 conflict")
    assert "README: both sides changed its content" in r.err
    assert "--strategy" in r.err
    j = bfs("merge", "b", "--into", "main", "--json", store=store)
    assert j.code == 1
    answer = j.json
    assert answer["ok"] is False and answer["error"] == "conflict"
    assert [(c["path"], c["kind"]) for c in answer["conflicts"]] == [("README", "content")]
    with branchfs.Store.open(store) as s:
        assert s.branch("main").read_bytes("README") == b"ours\n"  # unchanged
    ok = bfs("merge", "b", "--into", "main", "--strategy", "theirs", "--json", store=store)
    assert ok.code == 0 and ok.json["conflicts"][0]["path"] == "README"


def test_merge_with_markers_exits_1_naming_the_files(store: Path) -> None:
    with branchfs.Store.open(store) as s:
        s.fork("main", "b")
        s.branch("main").write_bytes("README", b"ours\n")
        s.branch("b").write_bytes("README", b"theirs\n")
        s.branch("b").write_bytes("src/app.py", b"print(2)\n")
    r = bfs("merge", "b", "--into", "main", "--markers", store=store)
    assert r.code == 1, r
    assert "Traceback" not in r.err
    last = r.out.strip().splitlines()[-1]
    assert last.startswith("1 file(s) hold conflict markers (README)"), r.out
    assert "CONFLICT README:" in r.out
    with branchfs.Store.open(store) as s:  # written, markers and all, with the clean change
        text = s.branch("main").read_bytes("README")
        assert text.startswith(b"<<<<<<< main\nours\n") and b">>>>>>> b\n" in text
        assert s.branch("main").read_bytes("src/app.py") == b"print(2)\n"
        s.fork("main", "c")
        s.branch("c").write_bytes("README", b"fixed\n")
    j = bfs("merge", "c", "--into", "main", "--markers", "--json", store=store)
    assert j.code == 0 and j.json["ok"] is True and j.json["markers"] == [], j
    with branchfs.Store.open(store) as s:
        s.fork("main", "d")
        s.branch("main").write_bytes("README", b"ours again\n")
        s.branch("d").write_bytes("README", b"theirs again\n")
    j = bfs("merge", "d", "--into", "main", "--markers", "--json", store=store)
    assert j.code == 1 and j.json["ok"] is False and j.json["markers"] == ["README"], j


def test_fsck_failure_is_exit_1(store: Path) -> None:
    # Damage a chunk: flip bytes of a stored value in place, through LMDB itself.
    import lmdb

    with branchfs.Store.open(store) as s:  # a file too large to be stored inline
        s.branch("main").write_bytes("big", os.urandom(10_000))
    env = lmdb.open(str(store), max_dbs=32, subdir=True)
    chunks = env.open_db(b"chunks")
    with env.begin(write=True, db=chunks) as txn:
        key, value = next(iter(txn.cursor()))
        txn.put(key, bytes(b ^ 0xFF for b in value))
    env.close()
    r = bfs("fsck", "--json", store=store)
    assert r.code == 1, r
    assert r.json["ok"] is False and r.json["problems"]


MISTAKES = [
    (("fork", "nope", "x"), ("no branch named 'nope'", "branchfs branches")),
    (("diff", "main", "v9"), ("no branch named 'v9'",)),
    (("diff", "main", "@v9"), ("no snapshot named 'v9'",)),
    (("reset", "main", "v9"), ("no snapshot named 'v9'",)),
    (("fork", "main", "with space"), ("cannot contain ' '", "letters, digits")),
    (("fork", "main", "-x"), ("No such option",)),
    (("fork", "main", ".x"), ("cannot start with '.'",)),
    (("fork", "main", "main"), ("already exists",)),
    (("merge", "main"), ("name the target",)),
    (("merge", "main", "--into", "main", "--strategy", "mine"), ("Invalid value",)),
    (("fork", "main"), ("fork takes SOURCE NEW",)),
    (("frobnicate",), ("No such command",)),
    (
        ("import", "/nonexistent/dir"),
        ("cannot import /nonexistent/dir: no such file or directory",),
    ),
    (("discard", "@v9"), ("no snapshot named 'v9'",)),
    (("discard", "v1"), ("there is a snapshot 'v1': write it @v1",)),
    (("diff", "main", "v1"), ("there is a snapshot 'v1': write it @v1",)),
    (("fork", "@main", "y"), ("there is a branch 'main'",)),
]


def test_mistakes_are_one_line_exit_2(store: Path) -> None:
    bfs("snapshot", "main", "v1", store=store)
    for args, words in MISTAKES:
        one_line_error(bfs(*args, store=store), 2, *words)


def test_discard_of_a_snapshot_frees_its_space_at_gc(store: Path) -> None:
    with branchfs.Store.open(store) as s:
        s.branch("main").write_bytes("big.bin", os.urandom(300_000))
    assert bfs("snapshot", "main", "v1", store=store).code == 0
    with branchfs.Store.open(store) as s:
        s.branch("main").remove("big.bin")
    assert bfs("snapshot", "main", "v2", store=store).code == 0
    r = bfs("discard", "@v1", "--json", store=store)
    assert r.json == {"ok": True, "snapshot": "v1"}, r
    assert bfs("discard", "@v2", store=store).out.strip() == "discarded @v2"
    assert bfs("snapshots", "--json", store=store).json["snapshots"] == []
    gc = bfs("gc", "--json", store=store).json
    assert gc["ok"], gc
    with branchfs.Store.open(store) as s, s.meta.read() as txn:
        assert txn.stat(s.meta.chunks_db)["entries"] == 0  # big.bin's chunks are gone
    one_line_error(bfs("discard", "@v1", store=store), 2, "no snapshot named 'v1'")


def test_copying_errors_name_the_commands(store: Path, project: Path, tmp_path: Path) -> None:
    # A file is not a directory; a missing path is missing (not "not a directory").
    one_line_error(bfs("import", str(project / "README"), store=store), 2, "is not a directory")
    r = bfs("import", str(tmp_path / "nope"), "--json", store=store)
    assert r.json["error"] == "FileNotFoundError" and r.json["errno"] == 2, r
    assert "no such file or directory" in r.json["message"]
    # export's refusals name the command, not the Python function behind it.
    line = one_line_error(bfs("export", "main", str(project), store=store), 2, "not empty")
    assert "`branchfs export`" in line
    line = one_line_error(
        bfs("export", "main", str(project / "README"), store=store), 2, "this is a file"
    )
    assert "`branchfs export`" in line


def test_export_errors_name_the_path_as_typed(store: Path, project: Path) -> None:
    # They named the destination as Python bytes (b'/proc/foo'), and --path not at all.
    dest = str(project / "README" / "out")  # under a file: not a directory
    line = one_line_error(bfs("export", "main", dest, store=store), 2)
    assert line == f"branchfs: Not a directory: {dest}"
    assert bfs("snapshot", "main", "v2", store=store).code == 0
    line = one_line_error(
        bfs("export", "@v2", str(project / "x"), "--path", "nosuch", store=store), 2
    )
    assert line == "branchfs: --path nosuch: no such file or directory in @v2"
    one_line_error(
        bfs("export", "@v2", str(project / "x"), "--path", "README", store=store),
        2,
        "--path README is not a directory in @v2",
    )
    assert not (project / "x").exists()
    with branchfs.Store.open(store) as s:
        with pytest.raises(FileNotFoundError) as exc:
            s.branch("main").export_dir(project / "y", "src/nosuch")
        assert exc.value.filename == "src/nosuch"
        with pytest.raises(NotADirectoryError) as err:
            s.branch("main").export_dir(dest)
        assert err.value.filename == dest


def test_import_to_outside_the_branch_is_refused(
    store: Path, project: Path, tmp_path: Path
) -> None:
    for to in ("../etc", "a/../../etc"):
        one_line_error(bfs("import", str(project), "--to", to, store=store), 2, "leaves the branch")
    one_line_error(bfs("import", str(project), "--to", "/abs", store=store), 2, "absolute")
    r = bfs("import", str(project), "--to", "vendor/p", "--json", store=store)
    assert r.code == 0 and r.json["files"] == 3, r
    with branchfs.Store.open(store) as s:
        assert sorted(s.branch("main").listdir("")) == ["README", "blob.bin", "src", "vendor"]


def test_missing_store_and_non_store(tmp_path: Path) -> None:
    one_line_error(bfs("branches", cwd=tmp_path), 2, "which store?", "--store")
    one_line_error(
        bfs("--store", str(tmp_path / "nothing"), "branches"), 2, "no store at", "branchfs init"
    )
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "file").write_text("x")
    one_line_error(bfs("--store", str(plain), "branches"), 2, str(plain))
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(bfs("--store", str(empty), "branches"), 2, "not a branchfs store", "init")
    one_line_error(bfs("init", str(plain)), 2, "not empty")
    one_line_error(bfs("umount", str(tmp_path)), 2, "is not mounted")


def test_json_errors_are_json_too(store: Path) -> None:
    r = bfs("fork", "nope", "x", "--json", store=store)
    assert r.code == 2
    assert r.json == {
        "ok": False,
        "error": "BranchNotFound",
        "message": r.err.strip().removeprefix("branchfs: "),
    }


def test_progress_bar_only_on_a_terminal_and_only_after_a_second(tmp_path: Path) -> None:
    import pty
    import time as _time

    from branchfs.commands import meter

    master, slave = pty.openpty()
    try:
        with open(slave, "w", closefd=False) as term:
            real = meter.sys.stderr
            meter.sys.stderr = term
            try:
                assert meter.wanted()
                with meter.meter("import into main", 10) as step:
                    step(3)
                    early = _read(master)
                    _time.sleep(meter.DELAY + 0.5)
                    step(7)
                    _time.sleep(0.3)
                    late = _read(master)
            finally:
                meter.sys.stderr = real
        assert early == ""  # nothing in the first second
        assert "import into main" in late and "/10" in late
    finally:
        os.close(master)
        os.close(slave)
    with open(tmp_path / "not-a-tty", "w") as plain:
        meter.sys.stderr, real = plain, meter.sys.stderr
        try:
            assert not meter.wanted()
        finally:
            meter.sys.stderr = real


def _read(fd: int) -> str:
    import select

    out = b""
    while select.select([fd], [], [], 0.05)[0]:
        out += os.read(fd, 65536)
    return out.decode(errors="replace")


def test_names_with_newlines_and_bad_bytes_are_quoted_as_git_quotes_them(
    store: Path, tmp_path: Path
) -> None:
    # A name holding a newline printed raw passed for two lines of the listing.
    with branchfs.Store.open(store) as s:
        b = s.fork("main", "odd")
        b.write_bytes("new\nline", b"x\n")
        b.write_bytes(os.fsdecode(b"bad\xffutf8"), b"y\n")
        b.write_bytes("plain ü", b"z\n")
    status = bfs("status", "odd", store=store)
    assert status.code == 0, status
    lines = status.out.splitlines()
    assert lines[1:] == [
        '  added    "bad\\377utf8"',
        '  added    "new\\nline"',
        "  added    plain ü",
    ]
    patch = bfs("diff", "main", "odd", "--patch", store=store)
    assert '+++ "b/new\\nline"' in patch.out
    assert 'diff --git "a/bad\\377utf8" "b/bad\\377utf8"' in patch.out
