"""Typed for users: a script checked with ``mypy --strict`` sees our annotations (py.typed)
and catches a misspelt method, while correct uses of the API type-check cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import branchfs

USER_SCRIPT = """\
import subprocess
from pathlib import Path

import branchfs


def agent(path: Path) -> bool:
    with branchfs.Store.open(path, create=True) as store:
        main = store.create_branch("main")
        main.write_text("app.py", "print(1)\\\\n")
        names: list[str] = main.listdir()
        raw: list[bytes] = main.listdir(b"")
        target: str = main.readlink("link")
        with main.open("app.py", "rb+") as fh:
            fh.seek(0)
            data: bytes = fh.read()
            fh.truncate(3)
        done: subprocess.CompletedProcess[bytes] = main.run(["true"])
        said: str = main.run("echo hi", capture_output=True, text=True).stdout
        result: branchfs.BestOfResult = branchfs.best_of(store, 2, "pytest -q", timeout=60)
        with branchfs.mounted(store, path / "mnt") as mnt:
            answer = branchfs.ctl(mnt, "branches")
            ok = answer["ok"] is True
        with main.fork("attempt") as attempt:
            attempt.frok("again")
        return bool(names and raw and target and data and done and said and result.ok and ok)
"""


def test_mypy_strict_catches_a_misspelt_method(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install mypy)")
    script = tmp_path / "agent.py"
    script.write_text(USER_SCRIPT)
    root = Path(branchfs.__file__).resolve().parent.parent
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",
            "--no-incremental",
            "--cache-dir",
            os.devnull,
            str(script),
        ],
        capture_output=True,
        text=True,
        # An editable install is an import hook, which mypy cannot follow: point it at the tree.
        env=dict(os.environ, MYPYPATH=str(root)),
        cwd=tmp_path,
    )
    errors = [line for line in res.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, res.stdout
    assert 'has no attribute "frok"' in errors[0]
    line = next(i for i, text in enumerate(USER_SCRIPT.splitlines(), 1) if "frok" in text)
    assert f"agent.py:{line}:" in errors[0]
