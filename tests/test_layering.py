"""tools/layering.py (run by ``make lint``) catches what it promises: private names of
another module, import cycles, modules without a docstring, a module table out of step.

Each violation is planted in a copy of the repository's packages under ``tmp_path``; the
tree itself must be clean.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import layering  # noqa: E402


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The packages and docs/architecture.md, copied to plant violations in."""
    for name in ("branchfs", "fuse"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "architecture.md", tmp_path / "docs" / "architecture.md")
    return tmp_path


def append(path: Path, text: str) -> None:
    with path.open("a") as fh:
        fh.write(text)


def test_the_tree_is_clean() -> None:
    assert layering.check(ROOT) == []


def test_the_command_line_fails_on_a_violation(copy: Path) -> None:
    ok = subprocess.run([sys.executable, str(ROOT / "tools" / "layering.py"), "--root", str(copy)])
    assert ok.returncode == 0
    append(copy / "branchfs" / "attrs.py", "from .tree import _touch_dir\n")
    bad = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "layering.py"), "--root", str(copy)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1
    assert "branchfs/attrs.py" in bad.stdout and "_touch_dir" in bad.stdout


@pytest.mark.parametrize(
    ("where", "text", "found"),
    [
        ("branchfs/attrs.py", "from .tree import _touch_dir\n", "import _touch_dir"),
        ("fuse/privs.py", "from branchfs.tree import _touch_dir as t\n", "import _touch_dir"),
        ("fuse/privs.py", "x = A._touch_dir\n", "A._touch_dir"),
        ("branchfs/attrs.py", "import branchfs.tree\nx = branchfs.tree._touch_dir\n", "_touch_dir"),
        (
            "fuse/privs.py",
            "def f() -> object:\n    from branchfs import keys\n    return keys._x\n",
            "keys._x",
        ),
    ],
)
def test_a_private_name_of_another_module_is_caught(
    copy: Path, where: str, text: str, found: str
) -> None:
    append(copy / where, text)
    problems = layering.check(copy)
    assert len(problems) == 1, problems
    assert where in problems[0] and "private name" in problems[0] and found in problems[0]


def test_dunder_names_and_own_names_are_public(copy: Path) -> None:
    append(copy / "fuse" / "privs.py", "x = A.__name__\n")
    append(copy / "branchfs" / "tree.py", "def _mine() -> None: ...\n\n\ny = _mine\n")
    assert layering.check(copy) == []


def test_an_import_cycle_is_caught(copy: Path) -> None:
    append(copy / "branchfs" / "tree.py", "from . import attrs\n")
    (problem,) = layering.check(copy)
    assert problem.startswith("import cycle:")
    assert "branchfs.attrs -> branchfs.tree" in problem
    assert "branchfs.tree -> branchfs.attrs" in problem


def test_a_cycle_through_several_modules_is_caught(copy: Path) -> None:
    # attrs imports tree, which imports records: records importing attrs closes a loop
    append(copy / "branchfs" / "records.py", "from .attrs import setattr\n")
    (problem,) = layering.check(copy)
    assert problem.startswith("import cycle:")
    for edge in ("branchfs.records -> branchfs.attrs", "branchfs.attrs -> branchfs.tree"):
        assert edge in problem


def test_imports_that_do_not_run_at_load_time_make_no_cycle(copy: Path) -> None:
    append(
        copy / "branchfs" / "tree.py",
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from . import attrs\n"
        "def later() -> None:\n    from . import attrs  # noqa: F401\n",
    )
    assert layering.check(copy) == []


def test_a_module_without_a_docstring_is_caught(copy: Path) -> None:
    (copy / "fuse" / "nodoc.py").write_text("x = 1\n")
    problems = layering.check(copy)
    assert any("fuse/nodoc.py:1: no module docstring" in p for p in problems), problems


def test_a_module_over_the_line_limit_is_caught(copy: Path) -> None:
    append(copy / "fuse" / "privs.py", "\n" * layering.MAX_LINES)
    (problem,) = layering.check(copy)
    assert problem.startswith("fuse/privs.py:") and "more than 600" in problem


def test_the_module_table_must_match_the_tree(copy: Path) -> None:
    (copy / "fuse" / "extra.py").write_text('"""An extra module."""\n')
    (problem,) = layering.check(copy)
    assert "does not name fuse/extra.py" in problem
    (copy / "fuse" / "extra.py").unlink()
    (copy / "fuse" / "listings.py").unlink()
    (copy / "fuse" / "bridge.py").write_text('"""The bridge."""\n')  # no import of listings
    problems = layering.check(copy)
    assert any("names fuse/listings.py, which is not in the tree" in p for p in problems)
