"""What a run of best-of or run left behind: mounts, registered daemons, processes."""

from __future__ import annotations

import os
import re
from pathlib import Path


def trees_in_logs(log_dir: Path) -> list[str]:
    """The attempts' mountpoints, from the first line best-of writes in each log."""
    out = []
    for log in sorted(log_dir.glob("attempt-*.log")):
        found = re.search(r"tree (\S+?)(,|$)", log.read_text().splitlines()[0])
        if found:
            out.append(found.group(1))
    return out


def leftovers(store_path: Path, trees: list[str]) -> list[str]:
    """Mounts at ``trees``, daemons registered on the store, processes naming the store."""
    found = []
    with open("/proc/mounts") as fh:
        mounted = {line.split()[1] for line in fh}
    found += [f"mount {t}" for t in trees if t in mounted or os.path.exists(t)]
    regs = store_path / "mounts"
    found += [f"daemon {p.name}" for p in regs.glob("*.json")] if regs.exists() else []
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            blob = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if str(store_path).encode() in blob:
            found.append(f"process {proc.name}: {(proc / 'cmdline').read_bytes()[:80]!r}")
    return found
