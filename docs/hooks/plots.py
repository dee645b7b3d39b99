"""mkdocs hook: draw the benchmark plots from benchmarks/results/*.json before each build.

The figures are produced by ``make bench``; this only draws them (matplotlib, Agg backend)
into ``docs/img/``, so that the site always shows the results that are committed. A
results file that is missing leaves its plot out (and its page says so).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
IMG = ROOT / "docs" / "img"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_core(data: dict[str, Any], out: Path) -> None:
    """p50 of the branch operations against the tree's size (flat means O(1))."""
    plt = _pyplot()
    sizes = sorted(data["trees"], key=int)
    fig, ax = plt.subplots(figsize=(9, 4))
    for op in ("fork", "fork_changed", "snapshot", "reset", "discard", "diff", "merge"):
        ys = [statistics.median(data["trees"][s][op]) * 1e6 for s in sizes]
        ax.plot([int(s) for s in sizes], ys, marker="o", label=op.replace("_", " "))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("files in the tree")
    ax.set_ylabel("p50, µs")
    ax.axhline(50, color="grey", linestyle=":", label="50 µs target (fork …)")
    ax.axhline(1000, color="grey", linestyle="--", label="1 ms target (diff, merge)")
    ax.set_title("In-process API: cost against tree size", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_fuse(data: dict[str, Any], out: Path) -> None:
    """Each workload's time through the mount and fuse-overlayfs, relative to native."""
    plt = _pyplot()
    rows = [
        (name, t["branchfs"] / t["native"], t.get("fuse-overlayfs", 0) / t["native"])
        for name, t in data["seconds"].items()
        if t.get("native") and t.get("branchfs")
    ]
    rows.sort(key=lambda r: r[1])
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    ys = range(len(rows))
    ax.barh([y + 0.2 for y in ys], [r[1] for r in rows], height=0.4, label="branchfs")
    ax.barh([y - 0.2 for y in ys], [r[2] for r in rows], height=0.4, label="fuse-overlayfs")
    ax.set_yticks(list(ys), [r[0] for r in rows], fontsize=7)
    ax.set_xscale("log")
    ax.axvline(1, color="black", linewidth=0.8)
    ax.set_xlabel("time relative to the native disk (1 = native)")
    ax.set_title("Through the mount: each workload against native", fontsize=10)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_bestof(data: dict[str, Any], out: Path) -> None:
    """best-of: call to every attempt running, and the tail, against N (10,000 files)."""
    plt = _pyplot()
    results = [r for r in data["results"] if r["files"] == 10000]
    methods = sorted({r["method"] for r in results})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in (
        (axes[0], "all_running", "call → every attempt running in its own tree"),
        (axes[1], "tail", "last attempt ends → winner merged, the rest removed"),
    ):
        for method in methods:
            rows = sorted((r for r in results if r["method"] == method), key=lambda r: r["n"])
            ax.plot([r["n"] for r in rows], [r[key] for r in rows], marker="o", label=method)
        ns = sorted({r["n"] for r in results})
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("attempts (N)")
        ax.set_ylabel("seconds")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].axhline(0.15, color="grey", linestyle=":", label="150 ms goal (first attempt)")
    axes[0].legend(fontsize=8)
    fig.suptitle("best-of on a 10,000-file git repository", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


PLOTS = {"core": plot_core, "fuse": plot_fuse, "bestof": plot_bestof}


def on_pre_build(config: Any) -> None:
    """Draw every plot whose results exist (mkdocs calls this before building)."""
    IMG.mkdir(parents=True, exist_ok=True)
    for name, draw in PLOTS.items():
        data = _load(name)
        if data is not None:
            draw(data, IMG / f"{name}.png")
