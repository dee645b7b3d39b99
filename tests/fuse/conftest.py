"""Fixtures for tests through a real FUSE mount: a fresh store mounted in a temp dir.

Tests that need FUSE skip, with the reason, where /dev/fuse or fusermount3 is
missing, and fail instead where the environment requires FUSE (tests/fuse/fusecheck.py).
The mount is torn down (flushed and unmounted) after each test that uses it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fusecheck import check_fuse

import branchfs


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """A fresh store with an empty branch ``main``, closed again so that daemons and other
    processes can use it (overrides the not-yet-created ``store_path`` of tests/conftest.py)."""
    path = tmp_path / "store.bfs"
    with branchfs.Store.open(path, create=True) as s:
        s.create_branch("main")
    return path


@pytest.fixture(scope="session")
def need_fuse() -> None:
    """Skip the test, saying why, when FUSE cannot be used here (fail it where required)."""
    check_fuse()


@dataclass
class Mounted:
    """A branch of a fresh store, mounted: ``path`` is the mountpoint."""

    path: Path
    store: branchfs.Store
    store_path: Path
    branch: str


@pytest.fixture
def mounted_store(tmp_path: Path, need_fuse: None) -> Iterator[Mounted]:
    """Branch ``main`` of a fresh store mounted at ``tmp_path/mnt``; unmounted afterwards."""
    store_path = tmp_path / "store.bfs"
    store = branchfs.Store.open(store_path, create=True)
    store.create_branch("main")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        with branchfs.mounted(store, mnt, branch="main") as path:
            yield Mounted(path, store, store_path, "main")
    finally:
        store.close()


@pytest.fixture(scope="module")
def module_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mounted]:
    """Branch ``main`` of a fresh store mounted for a whole module, and the store open here."""
    check_fuse()
    base = tmp_path_factory.mktemp("mounted")
    store_path = base / "store.bfs"
    store = branchfs.Store.open(store_path, create=True)
    store.create_branch("main")
    (base / "mnt").mkdir()
    try:
        with branchfs.mounted(store, base / "mnt", branch="main") as path:
            yield Mounted(path, store, store_path, "main")
    finally:
        store.close()


@pytest.fixture
def mnt(mounted_store: Mounted) -> Path:
    """The mountpoint of :func:`mounted_store`."""
    return mounted_store.path
