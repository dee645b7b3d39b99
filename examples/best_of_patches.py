"""An agent-style best-of-N with no model: candidate patches compete on a real test suite.

Run it with ``python examples/best_of_patches.py`` (Linux with FUSE; ``make install``
gives you everything). It:

1. creates a small real project in a temp dir — a git repository with a pytest suite in
   which one test fails (``slugify`` keeps punctuation);
2. imports it into a fresh branchfs store, branch ``main``;
3. runs ``branchfs.best_of`` with one attempt per candidate patch: each attempt applies
   its patch with ``git apply``, commits it, and runs the test suite in its own mounted
   tree (its own daemon), all attempts in parallel;
4. the attempt whose suite passes wins and is merged into ``main``, commit included; the
   others are discarded. The project and store are removed at the end; the attempts' logs
   are kept in a directory of their own, whose path the example prints.

The same run from a shell, once the project is imported (``branchfs import``)::

    branchfs best-of 4 --run 'git apply $PATCHES/$BRANCHFS_ATTEMPT.patch &&
        git commit -qam "candidate $BRANCHFS_ATTEMPT" && python -m pytest -q' --timeout 120
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import branchfs

SLUG = '''\
import re


def slugify(title):
    """'Hello, World!' -> 'hello-world'."""
    words = title.lower().split()
    return "-".join(words)


def title_case(slug):
    """'hello-world' -> 'Hello World'."""
    return " ".join(w.capitalize() for w in slug.split("-"))
'''

TESTS = """\
from slug import slugify, title_case


def test_slugify_plain():
    assert slugify("Hello World") == "hello-world"


def test_slugify_punctuation():
    assert slugify("Hello, World!") == "hello-world"


def test_title_case():
    assert title_case("hello-world") == "Hello World"
"""

# Four candidate fixes, as an agent might propose them: (old line, new line) edits of
# slug.py, turned into unified diffs below.
CANDIDATES: dict[str, list[tuple[str, str]] | None] = {
    "strip only commas": [
        ("words = title.lower().split()", 'words = title.lower().replace(",", "").split()'),
    ],
    "keep only word characters": [
        ("words = title.lower().split()", 'words = re.findall(r"[a-z0-9]+", title.lower())'),
    ],
    "rewrite both functions": [
        ("words = title.lower().split()", 'words = re.findall(r"\\w+", title.lower())'),
        (
            'return " ".join(w.capitalize() for w in slug.split("-"))',
            'return slug.replace("-", " ").title().replace(" ", "")',
        ),
    ],
    "think forever": None,  # an attempt that hangs: killed at the timeout
}


def as_patch(edits: list[tuple[str, str]]) -> str:
    """The candidate's edits of slug.py as a unified diff that ``git apply`` takes."""
    new = SLUG
    for old, replacement in edits:
        assert old in new, old
        new = new.replace(old, replacement)
    lines = difflib.unified_diff(
        SLUG.splitlines(keepends=True), new.splitlines(keepends=True), "a/slug.py", "b/slug.py"
    )
    return "".join(lines)


GIT_ENV = {
    "GIT_AUTHOR_NAME": "agent",
    "GIT_AUTHOR_EMAIL": "agent@example.com",
    "GIT_COMMITTER_NAME": "agent",
    "GIT_COMMITTER_EMAIL": "agent@example.com",
}


def git(cwd: Path, *args: str) -> str:
    """Run git in ``cwd``; its output."""
    env = dict(os.environ, **GIT_ENV)
    done = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)
    return done.stdout.decode()


def make_project(root: Path) -> Path:
    """The project: slug.py with a bug, its pytest suite, committed on branch main."""
    root.mkdir()
    (root / "slug.py").write_text(SLUG)
    (root / "test_slug.py").write_text(TESTS)
    (root / ".gitignore").write_text("__pycache__/\n.pytest_cache/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "commit", "-qm", "slugify, with a bug")
    return root


def write_candidates(where: Path) -> list[str]:
    """One patch file per candidate (``N.patch``); returns their names in attempt order."""
    where.mkdir()
    names = list(CANDIDATES)
    for i, name in enumerate(names, 1):
        edits = CANDIDATES[name]
        (where / f"{i}.patch").write_text(as_patch(edits) if edits is not None else "")
    return names


def main() -> int:
    """Run the example; 0 if a candidate won and main holds its commit."""
    # The logs outlive the run (the temp dir below does not), so the path printed exists.
    logs = Path(tempfile.mkdtemp(prefix="branchfs-example-logs-"))
    with tempfile.TemporaryDirectory(prefix="branchfs-example-") as tmp:
        tmp_path = Path(tmp)
        project = make_project(tmp_path / "project")
        patches = tmp_path / "candidates"
        names = write_candidates(patches)

        with branchfs.Store.open(tmp_path / "agent.bfs", create=True) as store:
            main_branch = store.create_branch("main")
            main_branch.import_dir(project)

            # Each attempt: apply its patch (an empty one means "think forever"), commit, test.
            step = textwrap.dedent(f"""\
                patch={patches}/$BRANCHFS_ATTEMPT.patch
                [ -s "$patch" ] || exec sleep 3600
                git apply "$patch" || exit 1
                git commit -qam "slugify: candidate $BRANCHFS_ATTEMPT"
                exec {sys.executable} -m pytest -q -p no:cacheprovider
            """)

            def show(attempt: branchfs.Attempt) -> None:
                if attempt.done:
                    print(
                        f"  attempt {attempt.index} ({names[attempt.index - 1]}): {attempt.status}",
                        flush=True,
                    )

            print(f"best of {len(names)} candidate patches, in parallel:")
            result = branchfs.best_of(
                store, len(names), step, timeout=20, env={**os.environ, **GIT_ENV},
                on_update=show, log_dir=logs,
            )  # fmt: skip

            if result.winner is None:
                print("no candidate passed the test suite; main is untouched")
                return 1
            won = result.winner.index
            print(f"winner: attempt {won} ({names[won - 1]}), merged into main in "
                  f"{result.duration:.1f} s; logs in {result.log_dir}")  # fmt: skip
            print(f"branches left: {store.branches()}")

            out = tmp_path / "main-after"
            main_branch.export_dir(out)
            print("main's history now:")
            print(textwrap.indent(git(out, "log", "--format=%h %s"), "  "), end="")
            print("git status --porcelain:", repr(git(out, "status", "--porcelain")))
            return 0


if __name__ == "__main__":
    sys.exit(main())
