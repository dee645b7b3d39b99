"""The registry of mount daemons (``STORE/mounts/``): its cached listing never misses a
registration, however soon after a listing another process registers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from branchfs import notices

REGISTER = """
import sys
from branchfs import notices
notices.register(sys.argv[1], sys.argv[2], "/nonexistent", "sock-" + sys.argv[2])
"""


def register_from_another_process(store: Path, branch: str) -> None:
    """A real second process writes its registration, as a daemon does when it starts."""
    subprocess.run([sys.executable, "-c", REGISTER, str(store), branch], check=True)


def test_a_registration_right_after_a_listing_is_seen(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    assert notices.registrations(str(store)) == []  # no mounts directory yet
    seen: set[str] = set()
    for i in range(6):
        notices.registrations(str(store))  # list (and perhaps cache) right before
        register_from_another_process(store, f"b{i}")
        seen = {r.branch for r in notices.registrations(str(store))}
        assert f"b{i}" in seen, f"registration {i} missed right after a listing"
    # and once the directory has been quiet longer than any timestamp grain, the listing
    # is reused and still complete
    time.sleep(notices.COARSE_GRAIN_NS / 1e9 + 0.1)
    first = notices.registrations(str(store))
    assert {r.branch for r in first} == seen
    assert notices.registrations(str(store)) is first
    register_from_another_process(store, "late")
    assert "late" in {r.branch for r in notices.registrations(str(store))}


def test_a_removed_registry_lists_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    register_from_another_process(store, "x")
    assert [r.branch for r in notices.registrations(str(store))] == ["x"]
    for name in os.listdir(notices.mounts_dir(str(store))):
        os.unlink(os.path.join(notices.mounts_dir(str(store)), name))
    os.rmdir(notices.mounts_dir(str(store)))
    assert notices.registrations(str(store)) == []


def test_cacheable_waits_one_timestamp_grain() -> None:
    fine = 1_700_000_000_123_456_789  # a filesystem with sub-second times
    assert not notices.cacheable(fine, fine)
    assert not notices.cacheable(fine, fine + notices.FINE_GRAIN_NS)
    assert notices.cacheable(fine, fine + notices.FINE_GRAIN_NS + 1)
    whole = 1_700_000_000_000_000_000  # whole seconds only: FAT's 2 s grain
    assert not notices.cacheable(whole, whole + notices.FINE_GRAIN_NS + 1)
    assert not notices.cacheable(whole, whole + 1_999_999_999)
    assert notices.cacheable(whole, whole + notices.COARSE_GRAIN_NS + 1)
