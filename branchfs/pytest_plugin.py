"""A pytest plugin (entry point ``pytest11``) for testing your own agents with branchfs.

Installed with branchfs, it gives every test suite three fixtures:

``branchfs_store``
    A fresh :class:`~branchfs.Store` in the test's temp directory, holding one empty
    branch ``main``; closed after the test.
``branchfs_branch``
    Branch ``main`` of ``branchfs_store``: an empty tree to write into, fork, merge.
``branchfs_mount``
    ``branchfs_branch`` mounted with its own daemon at ``tmp_path/"mnt"``, as a
    :class:`MountedBranch` (``.path`` is the mountpoint, ``.branch`` the branch); run real
    programs there. Unmounted (flushed) after the test. Skips, saying why, where FUSE is
    not available (no ``/dev/fuse`` or no ``fusermount3``).

Example::

    def test_agent_fixes_the_bug(branchfs_branch):
        branchfs_branch.write_text("app.py", "print(1)\\n")
        with branchfs_branch.fork("attempt") as attempt:
            attempt.write_text("app.py", "print(2)\\n")
            branchfs_branch.merge(attempt)
        assert branchfs_branch.read_text("app.py") == "print(2)\\n"
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .branch import Branch
from .store import Store


@dataclass(frozen=True)
class MountedBranch:
    """A branch mounted for a test: ``path`` is where programs see its tree."""

    path: Path
    branch: Branch
    store: Store


def fuse_missing() -> str | None:
    """Why this machine cannot mount branchfs, or None if it can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (FUSE is not available in this machine or container)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian package fuse3)"
    return None


@pytest.fixture
def branchfs_store(tmp_path: Path) -> Iterator[Store]:
    """A fresh store with one empty branch ``main`` in the test's temp dir; closed after."""
    store = Store.open(tmp_path / "branchfs-store", create=True)
    try:
        store.create_branch("main")
        yield store
    finally:
        store.close()


@pytest.fixture
def branchfs_branch(branchfs_store: Store) -> Branch:
    """Branch ``main`` of :func:`branchfs_store`: an empty tree."""
    return branchfs_store.branch("main")


@pytest.fixture
def branchfs_mount(
    tmp_path: Path, branchfs_store: Store, branchfs_branch: Branch
) -> Iterator[MountedBranch]:
    """:func:`branchfs_branch` mounted at ``tmp_path/"mnt"``; unmounted after the test.

    Skips the test, with the reason, where FUSE cannot be used.
    """
    reason = fuse_missing()
    if reason is not None:
        pytest.skip(reason)
    from .mount import mounted

    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with mounted(branchfs_store, mountpoint, branchfs_branch.name) as path:
        yield MountedBranch(path, branchfs_branch, branchfs_store)


__all__ = ["MountedBranch", "branchfs_branch", "branchfs_mount", "branchfs_store"]
