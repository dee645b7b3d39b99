"""Shared fixtures: a fresh store in a temp dir and a branch in it, plus an ``os`` oracle.

Every test gets its own store, so tests never see each other's branches. ``os_errno``
runs the same call against a real temp directory, so that tests compare branchfs's errors
with what Linux itself raises instead of with hand-written expectations.

Randomized tests draw the same examples on every ``make test`` (hypothesis profile ``ci``,
loaded here unless ``HYPOTHESIS_PROFILE`` names another); ``make test-random`` draws new
ones (see tests/randomized.py).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import randomized
from hypothesis import settings
from twin import outcome

import branchfs

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("random", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say how the randomized tests draw, so that a failing run can be replayed."""
    profile = settings.get_current_profile_name()
    seed = "fixed seeds" if randomized.RUN_SEED is None else f"BRANCHFS_SEED={randomized.RUN_SEED}"
    return [f"randomized tests: hypothesis profile {profile}, {seed}, x{randomized.SCALE:g}"]


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """Where the test's store lives (not created yet)."""
    return tmp_path / "store.bfs"


@pytest.fixture
def store(store_path: Path) -> Iterator[branchfs.Store]:
    """A freshly created, empty store, closed after the test."""
    s = branchfs.Store.open(store_path, create=True)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def branch(store: branchfs.Store) -> branchfs.Branch:
    """Branch ``main`` of a fresh store: an empty tree."""
    return store.create_branch("main")


@pytest.fixture
def real(tmp_path: Path) -> Path:
    """An empty real directory on the native disk: the oracle for POSIX behaviour."""
    d = tmp_path / "real"
    d.mkdir()
    return d


@pytest.fixture
def same_error() -> Callable[[Callable[[], Any], Callable[[], Any]], tuple[type, int | None]]:
    """Assert that two calls fail the same way (type and errno); returns that failure."""

    def check(ours: Callable[[], Any], theirs: Callable[[], Any]) -> tuple[type, int | None]:
        got, expect = outcome(ours), outcome(theirs)
        assert expect[0] == "err", f"the os oracle did not fail: {expect!r}"
        assert got == expect, f"branchfs gave {got!r}, os gave {expect!r}"
        return expect[1]

    return check


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs: a disk that fills up (skips, saying why, where it cannot be mounted)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up: {res.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
