"""Shared helpers for the benchmarks: percentiles, tables, machine facts, JSON results.

Kept small and generic so that every benchmark script prints and stores its results the same
way: ``summarize`` a list of timings, ``print_table`` for people, ``markdown_table`` for
docs/benchmarks.md, ``write_json`` into benchmarks/results/.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DOCS_FILE = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) of ``values``, linearly interpolated."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    if lo == hi:
        return ordered[lo]
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """n, min, p50, p90, p99, max and mean of a list of timings (same unit as the input)."""
    return {
        "n": len(values),
        "min": min(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def timed(fn: Callable[[], Any]) -> float:
    """Seconds that one call of ``fn`` took (wall clock, ``perf_counter``)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fmt_seconds(seconds: float | None) -> str:
    """A duration for a table: µs, ms or s with three significant digits; "—" for None."""
    if seconds is None:
        return "—"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def fmt_ratio(ratio: float | None) -> str:
    """A ratio for a table, like ``1.23x``; "—" for None."""
    return "—" if ratio is None else f"{ratio:.2f}x"


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print a table with rich when it is installed, as aligned plain text otherwise."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]
        print(title)
        print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True)))
        for row in rows:
            print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))
        return
    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(v) for v in row))
    Console(width=200).print(table)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def machine_info(path: Path | None = None) -> dict[str, Any]:
    """Cores, CPU model, memory, kernel and Python of this machine; the filesystem of ``path``."""
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
        info["cpu"] = model.group(1).strip() if model else platform.processor()
        meminfo = Path("/proc/meminfo").read_text()
        total = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.M)
        if total:
            info["memory_gib"] = round(int(total.group(1)) / 2**20, 1)
    except OSError:
        pass
    if path is not None:
        info["filesystem"] = filesystem_of(path)
    info.update(idle_polling())
    return info


def idle_polling() -> dict[str, Any]:
    """How this machine's idle CPUs wait: the cpuidle driver, and for a KVM guest's
    ``haltpoll`` driver how long an idle vCPU polls before it halts (``guest_halt_poll_ns``,
    Documentation/virt/guest-halt-polling.rst; the kernel's default is 200,000 ns).

    It matters to every FUSE figure: a request and its reply each wake a process on the
    other CPU, and waking a halted vCPU costs the host a VM exit and an interrupt (about
    13 µs a wake-up on the benchmark machine) where a polling one needs neither.
    """
    out: dict[str, Any] = {}
    with contextlib.suppress(OSError):
        out["cpuidle"] = Path("/sys/devices/system/cpu/cpuidle/current_driver").read_text().strip()
    with contextlib.suppress(OSError, ValueError):
        poll = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns").read_text()
        out["guest_halt_poll_ns"] = int(poll)
    return out


def filesystem_of(path: Path) -> str:
    """The type and device of the mount that holds ``path`` (from /proc/self/mounts)."""
    path = path.resolve()
    best, fs = "", "unknown"
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            dev, mnt, typ = line.split()[:3]
            if (str(path) + "/").startswith(mnt.rstrip("/") + "/") and len(mnt) >= len(best):
                best, fs = mnt, f"{typ} on {dev}"
    except OSError:
        pass
    return fs


def machine_line(info: dict[str, Any]) -> str:
    """One human sentence describing the machine from :func:`machine_info`."""
    parts = [
        f"{info.get('cores')} cores ({info.get('cpu', '?')})",
        f"{info.get('memory_gib', '?')} GiB memory",
        f"Linux {info.get('kernel')}",
        f"Python {info.get('python')}",
    ]
    if "filesystem" in info:
        parts.append(f"data on {info['filesystem']}")
    if "guest_halt_poll_ns" in info:
        poll = info["guest_halt_poll_ns"]
        parts.append(
            f"idle vCPUs poll {poll / 1000:g} µs before halting (guest_halt_poll_ns)"
            if poll
            else "idle vCPUs halt at once (guest_halt_poll_ns 0)"
        )
    return ", ".join(parts)


def write_json(name: str, data: Any) -> Path:
    """Write ``data`` as indented JSON to benchmarks/results/NAME.json and return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{name}.json"
    out.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return out


def replace_doc_section(heading: str, body: str, doc: Path = DOCS_FILE) -> Path:
    """Replace the ``## heading`` section of ``doc`` with ``body``; add it at the end if absent.

    The section runs to the next ``## `` heading, so other sections of the same file (written by
    other benchmarks) are left exactly as they were.
    """
    title = f"## {heading}"
    section = f"{title}\n\n{body.strip()}\n"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == title), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next(
            (j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines)
        )
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(new)
    return doc
