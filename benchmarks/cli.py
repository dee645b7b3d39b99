"""How long ``branchfs fork`` takes from a shell: process start to exit (target ≤ 150 ms).

Runs the installed ``branchfs`` script (the one next to this Python) as a user's shell
would, on a fresh store holding a small tree, ``--samples`` times for each command, and
compares with a bare interpreter start (``python -c pass``), the floor no Python command
goes under. The package's bytecode is compiled first, as ``pip install`` does: a run with
``PYTHONDONTWRITEBYTECODE`` set would otherwise compile every module from source each
time. Prints a table, writes benchmarks/results/cli.json and the "Command line" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    fmt_seconds,
    machine_info,
    machine_line,
    markdown_table,
    print_table,
    replace_doc_section,
    summarize,
    write_json,
)

SECTION = "Command line"
TARGET_S = 0.150


def _run(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=30, help="runs of each command")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = ap.parse_args(argv)
    script = str(Path(sys.executable).with_name("branchfs"))
    data: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine_info(),
        "samples": args.samples,
        "load": [os.getloadavg()[0]],
        "commands": {},
    }
    print(f"branchfs command-line benchmark: {machine_line(data['machine'])}", flush=True)
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(root / "branchfs"), str(root / "fuse")],
        check=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        store = os.path.join(tmp, "s.bfs")
        env = {**os.environ, "BRANCHFS_STORE": store}
        subprocess.run([script, "init", store], check=True, stdout=subprocess.DEVNULL)
        src = Path(tmp) / "src"
        for i in range(200):
            (src / f"d{i % 10}").mkdir(parents=True, exist_ok=True)
            (src / f"d{i % 10}" / f"f{i}.py").write_text(f"x = {i}\n" * 20)
        subprocess.run([script, "import", str(src)], env=env, check=True, stdout=subprocess.DEVNULL)
        cases: list[tuple[str, Any]] = [
            ("python -c pass", lambda i: [sys.executable, "-c", "pass"]),
            ("branchfs --help", lambda i: [script, "--help"]),
            ("branchfs fork main NEW", lambda i: [script, "fork", "main", f"f{i}"]),
            ("branchfs branches --json", lambda i: [script, "branches", "--json"]),
            ("branchfs discard NEW", lambda i: [script, "discard", f"f{i}"]),
        ]
        for label, make in cases:
            times = [_run(make(i), env) for i in range(args.samples)]
            data["commands"][label] = summarize(times)
    data["load"].append(os.getloadavg()[0])
    rows = [
        [label, fmt_seconds(s["p50"]), fmt_seconds(s["p90"]), fmt_seconds(s["max"])]
        for label, s in data["commands"].items()
    ]
    fork = data["commands"]["branchfs fork main NEW"]["p50"]
    data["fork_p50_s"] = fork
    data["target_s"] = TARGET_S
    data["meets_target"] = fork <= TARGET_S
    print_table("process start to exit", ["command", "p50", "p90", "max"], rows)
    verdict = "meets" if fork <= TARGET_S else "MISSES"
    print(f"\nbranchfs fork p50 {fmt_seconds(fork)}: {verdict} the {TARGET_S * 1000:.0f} ms target")
    out = write_json("cli", data)
    print(f"raw results: {out}")
    if not args.no_doc:
        body = "\n".join(
            [
                f"`make bench-cli` on {data['date']}, {machine_line(data['machine'])}; "
                f"load average {data['load'][0]:.1f} → {data['load'][1]:.1f}; "
                f"{args.samples} runs of each command, each a new process, from start to exit.",
                "",
                markdown_table(["command", "p50", "p90", "max"], rows),
                "",
                f"`branchfs fork` p50: {fmt_seconds(fork)} against a target of "
                f"{TARGET_S * 1000:.0f} ms ({verdict.lower()}). The engine and the FUSE daemon "
                "are imported only inside the verbs that use them; `python -c pass` is the "
                "floor of any Python command on this machine.",
            ]
        )
        print(f"tables written to {replace_doc_section(SECTION, body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
