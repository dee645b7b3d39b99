"""The pytest plugin's fixtures, used as a user's test suite would (entry point pytest11)."""

from __future__ import annotations

import subprocess
import sys

import branchfs
from branchfs.pytest_plugin import MountedBranch


def test_store_fixture_is_fresh(branchfs_store: branchfs.Store) -> None:
    assert branchfs_store.branches() == ["main"]
    assert branchfs_store.snapshots() == []


def test_branch_fixture_forks_and_merges(branchfs_branch: branchfs.Branch) -> None:
    branchfs_branch.write_text("app.py", "print(1)\n")
    with branchfs_branch.fork("attempt") as attempt:
        attempt.write_text("app.py", "print(2)\n")
        branchfs_branch.merge(attempt)
    assert branchfs_branch.read_text("app.py") == "print(2)\n"
    assert branchfs_branch.store.branches() == ["main"]  # the with block discarded it


def test_mount_fixture_runs_real_programs(branchfs_mount: MountedBranch) -> None:
    (branchfs_mount.path / "hello.py").write_text("print('hi')\n")
    out = subprocess.run(
        [sys.executable, "hello.py"], cwd=branchfs_mount.path, capture_output=True, text=True
    )
    assert out.stdout == "hi\n"
    assert branchfs_mount.branch.read_text("hello.py") == "print('hi')\n"


def test_plugin_is_registered_by_its_entry_point() -> None:
    from importlib.metadata import entry_points

    names = {ep.value for ep in entry_points(group="pytest11")}
    assert "branchfs.pytest_plugin" in names
