"""Merge rules per path: ``.branchfs-merge`` and the built-in rules for git and tool caches.

The last test is the workflow the rules exist for: a git project imported into a store,
three forks, ``git status`` everywhere, each fork edits, runs pytest (leaving its caches)
and commits, through real mounts; merging a fork into main is clean and leaves a git
repository that git itself finds clean and sound; a second fork whose commit clashes with
the first reports exactly that clash (the branch ref), in plain words.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pathspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from randomized import examples

import branchfs
from branchfs.merge.rules import RULES, RULES_FILE, RuleFileError, Rules


def _pair(store: branchfs.Store) -> tuple[branchfs.Branch, branchfs.Branch]:
    main = store.create_branch("main")
    main.makedirs(".git/logs")
    main.write_bytes(".git/index", b"index 0")
    main.write_bytes(".git/logs/HEAD", b"0 1 commit: base\n")
    main.makedirs("pkg/__pycache__")
    main.write_bytes("pkg/__pycache__/m.cpython-311.pyc", b"\0pyc base")
    main.write_bytes("score.txt", b"0\n")
    main.write_bytes("notes.txt", b"a\nb\nc\n")
    return main, main.fork("run")


def test_rule_lookup_last_match_wins() -> None:
    rules = Rules.parse("*.txt ours\nnotes.txt theirs\n# comment\nscores/  exclude  # why\n")
    assert rules.rule_for("a.txt") == "ours"
    assert rules.rule_for("notes.txt") == "theirs"
    assert rules.rule_for("scores/run1.json") == "exclude"
    assert rules.rule_for("scores", is_dir=True) == "exclude"
    assert rules.rule_for(".git/index") == "theirs"
    assert rules.rule_for(".git/logs/refs/heads/main") == "union"
    assert rules.rule_for("src/__pycache__/m.pyc") == "exclude"
    assert rules.rule_for(".pytest_cache/v/cache/lastfailed") == "exclude"
    assert rules.rule_for("src/app.py") == "line"
    assert Rules.parse(".git/index line").rule_for(".git/index") == "line"


@pytest.mark.parametrize("pattern", ["*/", "**/", "*", "a/*/", "**/b/", "*.d/"])
@pytest.mark.parametrize(
    "path", ["a", "a/b", "a/b/c.txt", "x.d/y", "z/x.d/y/w", "top.txt", "a/b/x.d", "q/r/s/b/t"]
)
def test_rule_lookup_agrees_with_pathspec(pattern: str, path: str) -> None:
    """The fast "matches no pattern" test never hides a match (pathspec searches: ``*/``
    compiles to an unanchored expression)."""
    rules = Rules(((pattern, "exclude"),))
    spec = pathspec.GitIgnoreSpec.from_lines([pattern])
    for p in (path, path + "/"):
        expected = "exclude" if spec.check_file(p).index is not None else "line"
        assert rules.rule_for(p.rstrip("/"), is_dir=p.endswith("/")) == expected, p


@pytest.mark.parametrize("line", ["*.txt", "*.txt mine", "!x ours"])
def test_a_bad_rule_line_names_the_file_and_line(line: str) -> None:
    with pytest.raises(RuleFileError, match=r"\.branchfs-merge, line 2: .* is not 'PATTERN RULE'"):
        Rules.parse(f"ok.txt ours\n{line}\n")


def test_defaults_keep_tools_files_from_conflicting(store: branchfs.Store) -> None:
    main, run = _pair(store)
    for b, tag in ((main, b"main"), (run, b"run")):
        b.write_bytes(".git/index", b"index " + tag)
        b.write_bytes(".git/logs/HEAD", b"0 1 commit: base\n1 2 commit: " + tag + b"\n")
        b.write_bytes("pkg/__pycache__/m.cpython-311.pyc", b"\0pyc " + tag)
    run.makedirs(".pytest_cache/v")
    run.write_bytes(".pytest_cache/v/lastfailed", b"{}")
    result = main.merge(run)
    assert result.conflicts == []
    assert main.read_bytes(".git/index") == b"index run"
    assert main.read_bytes(".git/logs/HEAD") == (
        b"0 1 commit: base\n1 2 commit: main\n1 2 commit: run\n"
    )
    assert main.read_bytes("pkg/__pycache__/m.cpython-311.pyc") == b"\0pyc main"
    assert not main.exists(".pytest_cache")


def test_an_excluded_directory_keeps_everything_under_it() -> None:
    """gitignore's rule: a file under an excluded directory cannot be re-included by a
    later line; another rule for the directory itself can."""
    rules = Rules.parse("README.md union\n.gitignore union\n*.pyc theirs\nindex ours\n")
    assert rules.rule_for(".pytest_cache/README.md") == "exclude"
    assert rules.rule_for(".pytest_cache/.gitignore") == "exclude"
    assert rules.rule_for("src/__pycache__/m.cpython-311.pyc") == "exclude"
    assert rules.rule_for("README.md") == "union"
    assert rules.rule_for("old.pyc") == "theirs"
    assert rules.rule_for(".git/index") == "ours"
    rules = Rules.parse("README.md union\n.pytest_cache/ line\n")
    assert rules.rule_for(".pytest_cache/README.md") == "union"
    assert rules.rule_for(".pytest_cache/v/cache/nodeids") == "line"


PYTEST_CACHE = {
    ".pytest_cache/README.md": b"# pytest cache directory #\n" + b"x" * 275,
    ".pytest_cache/.gitignore": b"# Created by pytest automatically.\n*\n",
    ".pytest_cache/CACHEDIR.TAG": b"Signature: 8a477f597d28d172789f06886806bc55\n",
    ".pytest_cache/v/cache/nodeids": b'[\n  "test_app.py::test_f"\n]',
}


def _project(store: branchfs.Store, rules: bytes) -> branchfs.Branch:
    main = store.create_branch("main")
    main.write_bytes(RULES_FILE, rules)
    main.write_bytes("README.md", b"# app\n")
    main.write_bytes(".gitignore", b"__pycache__/\n")
    main.write_bytes("app.py", b"def f():\n    return 1\n")
    main.write_bytes("test_app.py", b"import app\n\n\ndef test_f():\n    assert app.f()\n")
    return main


@pytest.mark.parametrize(
    "rule",
    [
        "README.md union",
        "README.md ours",
        "README.md theirs",
        "*.md line",
        ".gitignore union",
        "/README.md union",
        "README.md exclude",
    ],
)
def test_a_rule_matching_a_cache_file_leaves_the_cache_out(
    store: branchfs.Store, rule: str
) -> None:
    """The user's report: a branch that ran pytest was unmergeable into an unchanged main
    ("the directory was deleted") as soon as a rule also matched a file in .pytest_cache/,
    which made that file merge while its directory stayed excluded."""
    main = _project(store, rule.encode() + b"\n")
    f = main.fork("f")
    f.write_bytes("app.py", b"def f():\n    return 2\n")
    for path, data in PYTEST_CACHE.items():
        f.write_bytes(path, data, parents=True)
    result = store.merge("main", "f")
    assert result.conflicts == []
    assert [c.path for c in result.changes] == ["app.py"]
    assert main.read_bytes("app.py") == b"def f():\n    return 2\n"
    assert not main.exists(".pytest_cache")


def test_rules_matching_bytecode_and_git_files_invent_no_conflict(store: branchfs.Store) -> None:
    """Lines that match files under __pycache__/ and in .git/ as well: what one side alone
    created still merges cleanly, the built-in exclusions of directories still hold, and
    the lines decide the files both sides changed."""
    main = _project(store, b"*.pyc theirs\nindex ours\nHEAD union\nmain union\n*.md line\n")
    main.makedirs(".git/refs/heads")
    main.write_bytes(".git/HEAD", b"ref: refs/heads/main\n")
    main.write_bytes(".git/index", b"index 0")
    main.write_bytes(".git/refs/heads/main", b"c0\n")
    f = main.fork("f")
    main.write_bytes(".git/index", b"index main")
    f.write_bytes(".git/index", b"index f")
    f.write_bytes("app.py", b"def f():\n    return 2\n")
    f.write_bytes(".git/refs/heads/main", b"c1\n")
    f.write_bytes(".git/logs/refs/heads/main", b"c0 c1 commit: f\n", parents=True)
    f.write_bytes(".git/logs/HEAD", b"c0 c1 commit: f\n")
    f.write_bytes(".git/index.lock", b"stale")
    f.write_bytes("__pycache__/app.cpython-311.pyc", b"\0pyc", parents=True)
    f.write_bytes("__pycache__/test_app.cpython-311-pytest-8.pyc", b"\0pyc", parents=True)
    for path, data in PYTEST_CACHE.items():
        f.write_bytes(path, data, parents=True)
    assert store.merge("main", "f").conflicts == []
    assert main.read_bytes(".git/index") == b"index main"
    assert main.read_bytes(".git/refs/heads/main") == b"c1\n"
    assert main.read_bytes(".git/logs/refs/heads/main") == b"c0 c1 commit: f\n"
    assert main.read_bytes(".git/logs/HEAD") == b"c0 c1 commit: f\n"
    for gone in (".git/index.lock", "__pycache__", ".pytest_cache"):
        assert not main.exists(gone), gone


NAMES = ("README.md", ".gitignore", "index", "m.pyc", "x.txt")
DIRS = (".pytest_cache", "__pycache__", ".git", ".git/logs", "src", "src/__pycache__", "v")
PATTERNS = (*NAMES, "*.md", "*.pyc", "*", "*/", "v/", "/src/", ".git/**", "**/v/*", "__pycache__/")


@settings(max_examples=examples(40), deadline=None, database=None)
@given(
    lines=hs.lists(hs.tuples(hs.sampled_from(PATTERNS), hs.sampled_from(RULES)), max_size=4),
    files=hs.lists(
        hs.tuples(
            hs.sampled_from(DIRS), hs.sampled_from(("", "v/", "v/w/")), hs.sampled_from(NAMES)
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_what_one_side_alone_created_merges_cleanly_whatever_the_rules(
    lines: list[tuple[str, str]], files: list[tuple[str, str, str]]
) -> None:
    """New files in new directories of the source, the target unchanged: never a conflict,
    whatever the rule file says; a file arrives exactly when its rule does not exclude it
    (its directories then arrive too)."""
    text = "".join(f"{p} {r}\n" for p, r in lines)
    rules = Rules.parse(text)
    with (
        tempfile.TemporaryDirectory() as tmp,
        branchfs.Store.open(Path(tmp) / "s.bfs", create=True) as store,
    ):
        main = store.create_branch("main")
        main.write_bytes(RULES_FILE, text.encode())
        f = main.fork("f")
        paths = sorted({f"{d}/{sub}{name}" for d, sub, name in files})
        for path in paths:
            f.write_bytes(path, path.encode(), parents=True)
        assert store.merge("main", "f").conflicts == []
        for path in paths:
            excluded = (
                any(
                    rules.rule_for(path[:i], is_dir=True) == "exclude"
                    for i, c in enumerate(path)
                    if c == "/"
                )
                or rules.rule_for(path) == "exclude"
            )
            assert main.exists(path) is not excluded, path
            if not excluded:
                assert main.read_bytes(path) == path.encode()


def test_rule_file_of_the_target(store: branchfs.Store) -> None:
    main, run = _pair(store)
    main.write_bytes(RULES_FILE, b"score.txt exclude\nnotes.txt union\n")
    run.write_bytes("score.txt", b"99\n")
    main.write_bytes("notes.txt", b"a\nb\nc\nmain\n")
    run.write_bytes("notes.txt", b"a\nb\nc\nrun\n")
    main.merge(run)
    assert main.read_bytes("score.txt") == b"0\n"
    assert main.read_bytes("notes.txt") == b"a\nb\nc\nmain\nrun\n"


def test_ours_and_theirs_rules_settle_add_add_and_content(store: branchfs.Store) -> None:
    main, run = _pair(store)
    main.write_bytes(RULES_FILE, b"*.lock theirs\nnotes.txt ours\n")
    main.write_bytes("poetry.lock", b"main\n")
    run.write_bytes("poetry.lock", b"run\n")
    main.write_bytes("notes.txt", b"a\nB\nc\n")
    run.write_bytes("notes.txt", b"a\nX\nc\n")
    assert main.merge(run).conflicts == []
    assert main.read_bytes("poetry.lock") == b"run\n"
    assert main.read_bytes("notes.txt") == b"a\nB\nc\n"


def test_conflict_message_says_how_to_resolve(store: branchfs.Store) -> None:
    main, run = _pair(store)
    main.write_bytes("notes.txt", b"a\nB\nc\n")
    run.write_bytes("notes.txt", b"a\nX\nc\n")
    with pytest.raises(branchfs.MergeConflict) as info:
        main.merge(run)
    text = str(info.value)
    assert "notes.txt: both sides changed the same lines differently" in text
    for hint in ("--strategy", "conflict_markers=True", ".branchfs-merge"):
        assert hint in text


# -- real git, real pytest, real mounts ------------------------------------------------------


def _git(cwd: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t")
    env.update(GIT_COMMITTER_EMAIL="t@t", HOME=str(cwd), GIT_CONFIG_NOSYSTEM="1")
    r = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"git {' '.join(args)}: {r.stderr}"
    return r.stdout


def _work(store: branchfs.Store, name: str, mnt: Path, edit: tuple[str, str] | None) -> None:
    """In a mount of branch ``name``: git status; optionally edit, run pytest, commit."""
    mnt.mkdir(exist_ok=True)
    with branchfs.mounted(store, mnt, branch=name) as path:
        root = Path(path)
        _git(root, "status", "--porcelain")
        if edit is not None:
            (root / edit[0]).write_text(edit[1])
            r = subprocess.run(
                [sys.executable, "-m", "pytest", "-q"], cwd=root, capture_output=True, text=True
            )
            assert r.returncode == 0, r.stdout + r.stderr
            assert (root / ".pytest_cache").is_dir()
            _git(root, "commit", "-qam", f"{name}: {edit[0]}")


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_project_forks_work_and_merge_without_tool_conflicts(
    store: branchfs.Store, tmp_path: Path
) -> None:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3 (Debian package fuse3)")
    src = tmp_path / "project"
    src.mkdir()
    (src / "app.py").write_text("def f():\n    return 1\n")
    (src / "util.py").write_text("def g():\n    return 2\n")
    (src / "test_app.py").write_text("import app\n\n\ndef test_f():\n    assert app.f()\n")
    (src / ".gitignore").write_text("__pycache__/\n.pytest_cache/\n")
    _git(src, "init", "-q", "-b", "main")
    _git(src, "add", "-A")
    _git(src, "commit", "-qm", "initial")
    main = store.create_branch("main")
    main.import_dir(src)
    for n in ("a", "b", "c"):
        main.fork(n)
    _work(store, "main", tmp_path / "m0", None)
    _work(store, "a", tmp_path / "ma", ("app.py", "def f():\n    return 10\n"))
    _work(store, "b", tmp_path / "mb", ("util.py", "def g():\n    return 20\n"))
    _work(store, "c", tmp_path / "mc", None)

    assert store.merge("main", "a").conflicts == []
    out = tmp_path / "after"
    store.branch("main").export_dir(out)
    assert "a: app.py" in _git(out, "log", "--oneline")
    assert _git(out, "status", "--porcelain") == ""
    _git(out, "fsck", "--no-progress")

    # b committed too, on the same branch: the one real clash is the branch ref
    with pytest.raises(branchfs.MergeConflict) as info:
        store.merge("main", "b")
    assert [c.path for c in info.value.conflicts] == [".git/refs/heads/main"]
    assert info.value.conflicts[0].kind == "content"
    assert "both sides made a new git commit on branch 'main'" in str(info.value)
