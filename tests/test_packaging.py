"""A regular (non-editable) install holds every package of the tree: the wheel built from
pyproject.toml lists each directory with an ``__init__.py`` under ``branchfs/`` and
``fuse/`` (installed as ``branchfs_fuse``), and ``py.typed``.

``make install`` is editable, so a package missing from ``[tool.setuptools] packages``
only shows in a user's ``pip install``: the CLI then fails on its first import.

``make test`` builds the wheel pure (``BRANCHFS_PURE=1``: no C compile, seconds); ``make
test-wheel`` builds the compiled wheel a user's ``pip install`` gets, installs it into a
fresh venv and runs it there, a mount included (a minute or two of compiling)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INSTALLED_AS = {"branchfs": "branchfs", "fuse": "branchfs_fuse"}
COMPILED_WHEEL = os.environ.get("BRANCHFS_TEST_COMPILED_WHEEL") == "1"


def source_packages() -> set[str]:
    names = set()
    for top, installed in INSTALLED_AS.items():
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            if "__pycache__" in rel.parts:
                continue
            names.add(".".join((installed, *rel.parts)))
    return names


def native_modules() -> list[str]:
    """setup.py's NATIVE list (read, not imported: importing it runs setup())."""
    for node in ast.parse((ROOT / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "NATIVE":
            return list(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no NATIVE list")


def build_wheel(out: Path, *, pure: bool) -> list[str]:
    """Build the wheel of this tree into ``out``; the names of its files."""
    env = dict(os.environ)
    if pure:
        env["BRANCHFS_PURE"] = "1"
    else:
        env.pop("BRANCHFS_PURE", None)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if built.returncode != 0 and "Could not find a version" in built.stderr:
        # the build backend (setuptools>=77) comes from the package index
        pytest.skip("cannot build a wheel here: no package index to fetch setuptools from")
    assert built.returncode == 0, built.stderr
    (wheel,) = out.glob("branchfs-*.whl")
    return zipfile.ZipFile(wheel).namelist()


def test_the_wheel_holds_every_package(tmp_path: Path) -> None:
    files = build_wheel(tmp_path, pure=True)
    packaged = {
        name.rsplit("/", 1)[0].replace("/", ".") for name in files if name.endswith("/__init__.py")
    }
    assert packaged == source_packages(), "list the missing ones in [tool.setuptools] packages"
    assert "branchfs/py.typed" in files
    assert not [name for name in files if name.endswith(".so")], "a pure wheel compiles nothing"


SMOKE = r"""
import os, subprocess, sys, branchfs, branchfs.meta, branchfs_fuse.session
for mod in (branchfs.meta, branchfs_fuse.session):
    assert mod.__file__.endswith(".so"), mod.__file__
store, mnt = sys.argv[1], sys.argv[2]
with branchfs.Store.open(store, create=True) as s:
    main = s.create_branch("main")
    main.write_bytes("a/b.txt", b"one", parents=True)
    fork = main.fork("work")
    fork.write_bytes("a/b.txt", b"two")
    main.merge(fork)
    assert main.read_bytes("a/b.txt") == b"two"
if os.path.exists("/dev/fuse"):
    cli = os.path.join(os.path.dirname(sys.executable), "branchfs")
    subprocess.run([cli, "--store", store, "mount", mnt], check=True)
    try:
        for i in range(100):
            with open(os.path.join(mnt, f"f{i}"), "wb") as f:
                f.write(b"x" * i)
        assert sorted(os.listdir(mnt)) == sorted(["a", *(f"f{i}" for i in range(100))])
        assert open(os.path.join(mnt, "a", "b.txt"), "rb").read() == b"two"
    finally:
        subprocess.run([cli, "umount", mnt], check=True)
    with branchfs.Store.open(store) as s:
        assert s.branch("main").read_bytes("f99") == b"x" * 99
        assert s.fsck().ok
print("ok")
"""


@pytest.mark.skipif(not COMPILED_WHEEL, reason="slow (compiles): make test-wheel runs it")
def test_the_compiled_wheel_installs_and_runs_compiled(tmp_path: Path) -> None:
    files = build_wheel(tmp_path / "dist", pure=False)
    for module in [*native_modules(), "branchfs.native__mypyc"]:
        prefix = module.replace(".", "/") + ".cpython-"
        assert any(n.startswith(prefix) and n.endswith(".so") for n in files), module
    (wheel,) = (tmp_path / "dist").glob("branchfs-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheel)], check=True)
    (tmp_path / "mnt").mkdir()
    run = subprocess.run(
        [python, "-c", SMOKE, str(tmp_path / "store.bfs"), str(tmp_path / "mnt")],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,  # not the checkout: it must import the installed wheel
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[-1] == "ok"  # after the mount and umount lines
