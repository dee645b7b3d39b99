"""Real git in real branches, from a shell: a repository imported, three forks mounted,
``git status`` and pytest in each, commits, and merges back into main with the CLI.

Derived state that git and pytest rewrite (the index, reflogs, ``COMMIT_EDITMSG``,
``.pytest_cache``, ``__pycache__``) must not conflict: the per-path merge rules' defaults
(branchfs/merge/rules.py) see to it. Each fork adds its own module, so that the only clash
left between two commits is git's branch ref.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from clirun import bfs
from fusecheck import needs_fuse

from branchfs.mount import mount_type

pytestmark = [
    needs_fuse,
    pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed"),
]

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Agent",
    "GIT_AUTHOR_EMAIL": "agent@example.com",
    "GIT_COMMITTER_NAME": "Agent",
    "GIT_COMMITTER_EMAIL": "agent@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd: Path, *args: str) -> str:
    p = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV, "HOME": str(cwd)},
        timeout=120,
    )
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p.stdout


def make_repo(d: Path) -> None:
    (d / "calc").mkdir(parents=True)
    (d / "calc" / "__init__.py").write_text("def add(a, b):\n    return a + b\n")
    (d / "tests").mkdir()
    (d / "tests" / "test_calc.py").write_text(
        "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
    )
    (d / "README.md").write_text("# calc\n")
    git(d, "init", "-q", "-b", "master")
    git(d, "add", "-A")
    git(d, "commit", "-q", "-m", "first")


def pytest_in(d: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests"],
        cwd=d,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(d)},
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert (d / ".pytest_cache").is_dir()


@pytest.fixture
def mounts(tmp_path: Path) -> Any:
    made: list[Path] = []

    def mount(store: Path, name: str, branch: str) -> Path:
        mp = tmp_path / name
        mp.mkdir()
        r = bfs("mount", str(mp), "--branch", branch, store=store)
        assert r.code == 0, r
        made.append(mp)
        return mp

    try:
        yield mount
    finally:
        for mp in reversed(made):
            if mount_type(str(mp)) is not None:
                bfs("umount", str(mp))


def test_git_project_forked_worked_and_merged(tmp_path: Path, mounts: Any) -> None:
    src = tmp_path / "project"
    make_repo(src)
    store = tmp_path / "s.bfs"
    assert bfs("init", str(store)).code == 0
    assert bfs("import", str(src), store=store).code == 0
    for i in (1, 2, 3):
        assert bfs("fork", "main", f"try-{i}", store=store).code == 0
    main = mounts(store, "main", "main")
    trees = {f"try-{i}": mounts(store, f"try-{i}", f"try-{i}") for i in (1, 2, 3)}
    for d in (main, *trees.values()):
        assert git(d, "status", "--porcelain") == ""
    for i, (name, d) in enumerate(trees.items(), 1):
        (d / "calc" / f"mul{i}.py").write_text(f"def mul{i}(a):\n    return a * {i}\n")
        pytest_in(d)
        git(d, "add", "calc")
        git(d, "commit", "-q", "-m", f"{name}: mul{i}")
    status = bfs("status", "try-1", "--json", store=store)
    assert "calc/mul1.py" in {c["path"] for c in status.json["changes"]}

    # One fork merged into main: no conflict on git's or pytest's own files.
    r = bfs("merge", "try-1", "--into", "main", "--json", store=store)
    assert r.code == 0, r.err
    assert "try-1: mul1" in git(main, "log", "--format=%s")
    assert git(main, "status", "--porcelain") == ""
    git(main, "fsck", "--no-progress")
    assert "def mul1" in (main / "calc" / "mul1.py").read_text()

    # main commits too; merging another fork clashes on exactly one thing: both sides
    # moved git's branch ref, said in plain words.
    (main / "README.md").write_text("# calc\n\nmerged mul1\n")
    git(main, "commit", "-q", "-am", "main: readme")
    r = bfs("merge", "try-2", "--into", "main", "--json", store=store)
    assert r.code == 1, r
    conflicts = r.json["conflicts"]
    assert [c["path"] for c in conflicts] == [".git/refs/heads/master"], conflicts
    human = bfs("merge", "try-2", "--into", "main", store=store)
    assert human.code == 1
    assert "both sides made a new git commit on branch 'master'" in human.err
    assert git(main, "status", "--porcelain") == ""  # main untouched by the refused merge


def test_the_advice_for_two_git_commits_works_when_followed(tmp_path: Path, mounts: Any) -> None:
    """The refused merge's steps, run as written, with real git in both mounts: main keeps
    its uncommitted work, and ends with a real merge commit of both sides."""
    import re

    src = tmp_path / "project"
    make_repo(src)
    store = tmp_path / "s.bfs"
    assert bfs("init", str(store)).code == 0
    assert bfs("import", str(src), store=store).code == 0
    assert bfs("fork", "main", "try-3", store=store).code == 0
    main, fork = mounts(store, "main", "main"), mounts(store, "try-3", "try-3")
    (fork / "calc" / "mul3.py").write_text("def mul3(a):\n    return a * 3\n")  # a new file
    with (fork / "calc" / "__init__.py").open("a") as f:
        f.write("\n\ndef sub(a, b):\n    return a - b\n")
    git(fork, "add", "-A")
    git(fork, "commit", "-q", "-m", "try-3: mul3, sub")
    (main / "README.md").write_text("# calc\n\nby main\n")
    git(main, "commit", "-q", "-am", "main: readme")
    (main / "tests" / "test_calc.py").write_text("# main's uncommitted edit\n")
    (main / "notes.txt").write_text("main's untracked notes\n")

    r = bfs("merge", "try-3", "--into", "main", store=store)
    assert r.code == 1, r
    steps = r.err[r.err.index("for git commits on both sides") :]
    commands = re.findall(r"`([^`]*)`", steps)
    assert commands == [
        "git stash -u",
        "git reset --hard",
        "git clean -fd",
        "git merge SHA",
        "git rev-parse HEAD",
        "git stash pop",
    ], steps
    assert "--strategy ours" in steps
    git(main, *commands[0].split()[1:])
    assert bfs("merge", "try-3", "--into", "main", "--strategy", "ours", store=store).code == 0
    git(main, *commands[1].split()[1:])
    git(main, *commands[2].split()[1:])
    sha = git(fork, *commands[4].split()[1:]).strip()
    git(main, *commands[3].replace("SHA", sha).split()[1:])
    git(main, *commands[5].split()[1:])

    parents = git(main, "log", "-1", "--format=%P").split()
    assert len(parents) == 2 and sha in parents
    assert "def mul3" in (main / "calc" / "mul3.py").read_text()
    assert "def sub" in (main / "calc" / "__init__.py").read_text()
    assert (main / "README.md").read_text() == "# calc\n\nby main\n"
    assert sorted(git(main, "status", "--porcelain").splitlines()) == [
        " M tests/test_calc.py",
        "?? notes.txt",
    ]
    assert (main / "notes.txt").read_text() == "main's untracked notes\n"
    git(main, "fsck", "--no-progress")
