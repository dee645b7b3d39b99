"""A small real project for best-of tests: a git repository with a pytest suite.

``calc.py`` has a bug in ``sub`` that one test catches; ``PATCHES`` holds candidate patches
as shell scripts: one fixes the bug and commits, two break other functions and commit, one
hangs. Each writes a 1 MiB build artifact, so that discarded attempts hold real space.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CALC = """\
def add(a, b):
    return a + b


def sub(a, b):
    return a + b  # the bug


def mul(a, b):
    return a * b
"""

TESTS = """\
from calc import add, mul, sub


def test_add():
    assert add(2, 3) == 5


def test_sub():
    assert sub(5, 3) == 2


def test_mul():
    assert mul(4, 3) == 12
"""

_ARTIFACT = "head -c 1048576 /dev/urandom > build.bin\n"
_COMMIT = 'git commit -qam "$1"\n'

#: Candidate patches by attempt number: (shell script, commit message).
PATCHES = {
    "fix": ("sed -i 's/return a + b  # the bug/return a - b/' calc.py\n", "fix sub"),
    "break-add": ("sed -i 's/return a + b$/return a + b + 1/' calc.py\n", "tweak add"),
    "break-mul": ("sed -i 's/return a \\* b/return a ** b/' calc.py\n", "speed up mul"),
    "hang": ("sleep 600\n", "never"),
}


def git(cwd: Path | str, *args: str) -> str:
    """Run git in ``cwd`` and return its stdout (raises on failure)."""
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com")
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout


def make_project(root: Path) -> Path:
    """Create the project (committed, with the failing test) at ``root``; returns it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "calc.py").write_text(CALC)
    (root / "test_calc.py").write_text(TESTS)
    (root / ".gitignore").write_text("__pycache__/\n.pytest_cache/\nbuild.bin\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "commit", "-qm", "calc with a bug in sub")
    return root


def write_patches(where: Path, order: list[str]) -> Path:
    """Write ``attempt-I.sh`` for each patch in ``order``; returns the directory."""
    where.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(order, 1):
        script, message = PATCHES[name]
        body = "set -e\n" + _ARTIFACT + script
        if name != "hang":
            body += f'set -- "{message}"\n' + _COMMIT
        (where / f"attempt-{i}.sh").write_text(body)
    return where


def run_command(patches: Path) -> str:
    """The best-of run command: apply this attempt's patch, then run the test suite."""
    return (
        "export GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@example.com GIT_COMMITTER_NAME=t "
        "GIT_COMMITTER_EMAIL=t@example.com; "
        f"sh {patches}/attempt-$BRANCHFS_ATTEMPT.sh && {sys.executable} -m pytest -q -x "
        "-p no:cacheprovider"
    )
