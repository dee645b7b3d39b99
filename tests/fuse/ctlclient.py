"""Talking to a mount's ``.branchfs/ctl`` from tests: one command line, one JSON answer."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def ctl(mnt: Path, line: str) -> dict[str, Any]:
    """Write one command line to ``.branchfs/ctl`` and read the JSON answer on the same fd."""
    fd = os.open(mnt / ".branchfs" / "ctl", os.O_RDWR)
    try:
        os.write(fd, line.encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            part = os.read(fd, 65536)
            if not part:
                break
            answer += part
    finally:
        os.close(fd)
    return json.loads(answer)


def requests(mnt: Path) -> dict[str, int]:
    """The requests that reached the mount's daemon so far, by operation (``ctl stats``)."""
    return ctl(mnt, "stats")["requests"]
