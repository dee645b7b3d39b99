"""An import or export stopped midway (SIGKILL, Ctrl-C) leaves nothing that looks done (issue 20).

``branchfs import`` and ``branchfs export`` run as real processes on a tree big enough to
take a while; each is stopped once it has visibly written part of its work, with a real
SIGKILL or SIGINT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import branchfs

#: Files in the tree that is copied (enough for a copy to take well over the polling step).
FILES = 2000


def _tree(root: Path) -> dict[str, bytes]:
    files = {}
    for i in range(FILES):
        rel = f"d{i % 20}/f{i}"
        files[rel] = os.urandom(3000 + i % 5000)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _cli(*args: str, store: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, BRANCHFS_STORE=str(store))
    return subprocess.Popen(
        [sys.executable, "-m", "branchfs.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(what: str, check: object, proc: subprocess.Popen[str]) -> None:
    assert callable(check)
    deadline = time.monotonic() + 60
    while not check():
        assert proc.poll() is None, f"finished before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.002)


def _siblings(out: Path) -> list[str]:
    return [n for n in os.listdir(out.parent) if n.startswith(f".{out.name}.export-")]


def _partly_written(out: Path) -> bool:
    for name in _siblings(out):
        try:
            if len(os.listdir(out.parent / name)) >= 3:
                return True
        except FileNotFoundError:
            pass
    return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_an_interrupted_export_leaves_no_half_filled_directory(
    tmp_path: Path, sig: signal.Signals
) -> None:
    store = tmp_path / "store.bfs"
    src = tmp_path / "src"
    files = _tree(src)
    with branchfs.Store.open(store, create=True) as s:
        s.create_branch("main").import_dir(src)
    out = tmp_path / "out"
    proc = _cli("export", "main", str(out), store=store)
    _wait_for("the export write", lambda: _partly_written(out), proc)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert not out.exists()  # nothing at the destination: not even an empty directory
    if sig == signal.SIGINT:
        assert _siblings(out) == []  # Ctrl-C cleans up after itself
    else:
        assert len(_siblings(out)) == 1  # SIGKILL leaves only the hidden sibling
    # and the next export writes the whole tree
    with branchfs.Store.open(store) as s:
        assert s.branch("main").export_dir(out) == FILES
    for rel, data in list(files.items())[::97]:
        assert (out / rel).read_bytes() == data
