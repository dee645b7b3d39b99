"""A regular (non-editable) install holds every package of the tree: the wheel built from
pyproject.toml lists each directory with an ``__init__.py`` under ``branchfs/`` and
``fuse/`` (installed as ``branchfs_fuse``), and ``py.typed``.

``make install`` is editable, so a package missing from ``[tool.setuptools] packages``
only shows in a user's ``pip install``: the CLI then fails on its first import."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INSTALLED_AS = {"branchfs": "branchfs", "fuse": "branchfs_fuse"}


def source_packages() -> set[str]:
    names = set()
    for top, installed in INSTALLED_AS.items():
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            if "__pycache__" in rel.parts:
                continue
            names.add(".".join((installed, *rel.parts)))
    return names


def test_the_wheel_holds_every_package(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0 and "Could not find a version" in built.stderr:
        # the build backend (setuptools>=77) comes from the package index
        pytest.skip("cannot build a wheel here: no package index to fetch setuptools from")
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("branchfs-*.whl")
    files = zipfile.ZipFile(wheel).namelist()
    packaged = {
        name.rsplit("/", 1)[0].replace("/", ".") for name in files if name.endswith("/__init__.py")
    }
    assert packaged == source_packages(), "list the missing ones in [tool.setuptools] packages"
    assert "branchfs/py.typed" in files
