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
from branchfs import staging

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


def _staged_layers(s: branchfs.Store) -> dict[int, bool]:
    """The store's staging layers, each with whether it holds records yet."""
    with s.meta.read() as txn:
        return {
            lid: not s.engine.layers.is_empty(txn, lid) for lid in staging.layers(txn, s.engine)
        }


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_an_interrupted_import_leaves_nothing_visible(tmp_path: Path, sig: signal.Signals) -> None:
    store = tmp_path / "store.bfs"
    src = tmp_path / "src"
    files = _tree(src)
    with branchfs.Store.open(store, create=True) as s:
        s.create_branch("main").write_bytes("old.txt", b"before")
        proc = _cli("import", str(src), "--branch", "main", store=store)

        def written() -> bool:
            # while the import runs, main shows nothing of it
            assert s.branch("main").listdir() == ["old.txt"]
            return any(_staged_layers(s).values())

        _wait_for("the import write", written, proc)
        proc.send_signal(sig)
        proc.communicate(timeout=60)
        assert s.branch("main").listdir() == ["old.txt"]
        assert s.branch("main").read_bytes("old.txt") == b"before"
        # Ctrl-C drops its staging layer at once; a SIGKILLed one is found by gc
        assert (_staged_layers(s) == {}) == (sig == signal.SIGINT)
        report = s.gc()
        assert _staged_layers(s) == {}
        assert report.layers_removed >= 1 and report.chunks_freed > 0  # its space comes back
        assert s.fsck().ok
        # and the next import copies everything
        assert s.branch("main").import_dir(src) == FILES
        assert sorted(s.branch("main").listdir()) == sorted(
            ["old.txt", *{rel.split("/")[0] for rel in files}]
        )
        for rel, data in list(files.items())[::97]:
            assert s.branch("main").read_bytes(rel) == data


def test_a_staged_tree_survives_gc_and_publishes_in_one_step(tmp_path: Path) -> None:
    with branchfs.Store.open(tmp_path / "store.bfs", create=True) as s:
        main = s.create_branch("main")
        main.write_bytes("old.txt", b"before")
        s.fork("main", "other")
        s.discard("other")  # something for gc to do beside the staging layer
        with s.staged("main") as hidden:
            hidden.makedirs("new/dir")
            hidden.write_bytes("new/dir/f", b"x" * 10_000)
            assert main.listdir() == ["old.txt"]  # hidden until the end
            s.gc()  # a staging layer is a gc root: kept, and never squashed away
            assert hidden.read_bytes("new/dir/f") == b"x" * 10_000
            assert sorted(hidden.listdir()) == ["new", "old.txt"]
        assert sorted(main.listdir()) == ["new", "old.txt"]
        assert main.read_bytes("new/dir/f") == b"x" * 10_000
        assert _staged_layers(s) == {}
        s.gc()
        assert s.fsck().ok
        assert main.read_bytes("new/dir/f") == b"x" * 10_000


def test_an_import_into_a_branch_changed_meanwhile_publishes_nothing(tmp_path: Path) -> None:
    with branchfs.Store.open(tmp_path / "store.bfs", create=True) as s:
        main = s.create_branch("main")
        main.write_bytes("old.txt", b"before")
        changed = pytest.raises(branchfs.BranchChanged, match="changed while the import ran")
        with changed, s.staged("main") as hidden:
            hidden.write_bytes("imported", b"mine")
            main.write_bytes("written.txt", b"by someone else meanwhile")
        assert sorted(main.listdir()) == ["old.txt", "written.txt"]
        assert _staged_layers(s) == {}
        s.fork("main", "gone")
        with pytest.raises(branchfs.BranchChanged, match="discarded"), s.staged("gone") as hidden:
            hidden.write_bytes("imported", b"mine")
            s.discard("gone")  # its tidy-up does not squash the staging layer away
        assert "gone" not in s.branches()
        s.gc()
        assert s.fsck().ok
