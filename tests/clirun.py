"""Running ``branchfs`` as a user does: a new interpreter per command, its output captured."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Ran:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


def entry_point() -> list[str]:
    """The console script a user runs (``branchfs``, i.e. :mod:`branchfs.entry`), after the
    interpreter's path: the way in that handles Ctrl-C from its first import on, where
    ``-m branchfs.cli`` imports click and the command layer first."""
    script = Path(sys.executable).with_name("branchfs")
    return [str(script)] if script.exists() else ["-m", "branchfs"]


def bfs(*args: str, store: Path | None = None, cwd: Path | None = None, env: Any = None) -> Ran:
    """Run ``branchfs ARGS`` as a user would (a new interpreter), with $BRANCHFS_STORE."""
    e = dict(os.environ if env is None else env)
    e.pop("BRANCHFS_STORE", None)
    if store is not None:
        e["BRANCHFS_STORE"] = str(store)
    p = subprocess.run(
        [sys.executable, "-m", "branchfs.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=e,
        timeout=120,
    )
    return Ran(p.returncode, p.stdout, p.stderr)


#: Names of the Python API that a command-line or ctl message must not show (it names flags
#: and verbs instead): keyword arguments, calls, the engine's function names.
API_NAMES = re.compile(r"\b\w+=(True|False|None)\b|\b\w+\(\)|\bStore\.|\b(ex|im)port_dir\b")


def no_api_names(message: str) -> None:
    """Assert that ``message`` names no Python API (see :data:`API_NAMES`)."""
    found = API_NAMES.search(message)
    assert found is None, (found.group(0), message)


def one_line_error(r: Ran, code: int, *words: str) -> str:
    """Assert a failure with exit status ``code`` and a one-line message holding ``words``."""
    assert r.code == code, r
    assert "Traceback" not in r.err, r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert lines[0].startswith("branchfs: "), r.err
    for w in words:
        assert w in lines[0], (w, lines[0])
    no_api_names(lines[0])
    return lines[0]
