"""The daemon's request counters as tests read them, through ``branchfs.mount.ctl``."""

from __future__ import annotations

from pathlib import Path

from branchfs.mount import ctl


def requests(mnt: Path) -> dict[str, int]:
    """The requests that reached the mount's daemon so far, by operation (``ctl stats``)."""
    return ctl(mnt, "stats")["requests"]
