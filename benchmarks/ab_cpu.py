"""CPU-time A/B of the engine's hot operations: a baseline checkout against this tree.

Wall-clock figures on a shared machine carry everyone else's work; the CPU time of the
benchmarking process (``time.process_time_ns``: user + system) does not, or much less. This
script starts one worker process per tree (``PYTHONPATH`` set to that tree, so each imports
its own ``branchfs`` and ``benchmarks.core``; each prints which ``branchfs`` it imported),
builds the same tree in each (``--files`` files, 100 a directory, frozen in a snapshot, as
``benchmarks/core.py`` does), then runs rounds of every operation in both workers in turn
(A, B, A, B …), so that load that comes and goes hits both sides alike.

Each figure is the median over all rounds of the CPU µs of one operation:

* ``stat``: ``Branch.stat`` of a random file;
* ``create``: ``Branch.write_bytes`` of a new empty file;
* ``fork``: ``Store.fork`` of a branch unchanged since its last freeze (discard untimed);
* ``fork_changed``: ``Store.fork`` of a branch with one file written since (untimed);
* ``discard``: ``Store.discard`` of a fork just made (fork untimed);
* ``diff`` and ``merge``: of a fork in which 10 files were rewritten (gc between, untimed).

``ratio`` compares the two overall medians; ``paired`` is the median over rounds of the
ratio of the two sides' medians within one round, the figure least moved by load that
comes and goes (CPU time still grows under contention: caches, shared cores).

Usage::

    .venv/bin/python benchmarks/ab_cpu.py /path/to/baseline/checkout [--files 100000]
        [--rounds 20]

The baseline checkout needs no venv of its own: both workers run with this interpreter
(the dependencies are the same), each with its tree first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

OPS = ("stat", "create", "fork", "fork_changed", "discard", "diff", "merge")
#: Operations of one round, per operation (diff and merge: cycles).
PER_ROUND = {
    "stat": 200,
    "create": 100,
    "fork": 50,
    "fork_changed": 20,
    "discard": 50,
    "diff": 3,
    "merge": 3,
}

WORKER = r"""
import gc, json, random, sys, tempfile, shutil, time
from pathlib import Path
import branchfs
from benchmarks import core

cpu = time.process_time_ns
files = int(sys.argv[1])
scratch = Path(tempfile.mkdtemp(prefix="ab-cpu-"))
store = branchfs.Store.open(scratch / "store", create=True)
store.create_branch("main")
core.build_tree(store, "main", files, lambda i: b"x" * (i % 200))
store.snapshot("main", "base")
main = store.branch("main")
work = store.fork("main", "work")
rng = random.Random(files)
n = 0
print(json.dumps({"ready": branchfs.__file__}), flush=True)


def timed(fn):
    t = cpu()
    fn()
    return (cpu() - t) / 1e3


for line in sys.stdin:
    op, reps = line.split()
    out = []
    gc.collect()
    for _ in range(int(reps)):
        n += 1
        if op == "stat":
            p = core.file_path(rng.randrange(files))
            out.append(timed(lambda: main.stat(p)))
        elif op == "create":
            p = f"{core.file_path(rng.randrange(files))}.new{n}"
            out.append(timed(lambda: main.write_bytes(p, b"")))
        elif op == "fork":
            out.append(timed(lambda: store.fork("main", f"f{n}")))
            store.discard(f"f{n}")
        elif op == "discard":
            store.fork("main", f"d{n}")
            out.append(timed(lambda: store.discard(f"d{n}")))
        elif op == "fork_changed":
            work.write_bytes(core.file_path(rng.randrange(files)), b"changed %d" % n)
            out.append(timed(lambda: store.fork("work", f"w{n}")))
            store.discard(f"w{n}")
        elif op in ("diff", "merge"):
            att = store.fork("main", "attempt")
            for j in rng.sample(range(files), min(10, files)):
                att.write_bytes(core.file_path(j), f"attempt {n} changed {j}\n".encode())
            d = timed(lambda: store.diff("main", "attempt"))
            m = timed(lambda: store.merge("main", "attempt"))
            out.append(d if op == "diff" else m)
            store.discard("attempt")
            store.gc()
    print(json.dumps(out), flush=True)
store.close()
shutil.rmtree(scratch, ignore_errors=True)
"""


class Worker:
    """One tree's worker process: builds its store, then answers ``op reps`` lines."""

    def __init__(self, root: Path, files: int) -> None:
        env = dict(os.environ, PYTHONPATH=str(root))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(files)],
            env=env,
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.root = root

    def ready(self) -> str:
        return str(self.read()["ready"])

    def read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the worker of {self.root} died")
        return json.loads(line)

    def run(self, op: str, reps: int) -> list[float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{op} {reps}\n")
        self.proc.stdin.flush()
        return list(self.read())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("baseline", type=Path, help="a checkout of the baseline commit")
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--ops", default=",".join(OPS))
    args = ap.parse_args(argv)
    here = Path(__file__).resolve().parent.parent
    sides = {"baseline": args.baseline.resolve(), "current": here}
    workers = {k: Worker(root, args.files) for k, root in sides.items()}
    for k, w in workers.items():
        print(f"{k}: imports {w.ready()}", flush=True)
    ops = args.ops.split(",")
    got: dict[str, dict[str, list[float]]] = {k: {op: [] for op in ops} for k in workers}
    paired: dict[str, list[float]] = {op: [] for op in ops}
    for r in range(args.rounds):
        order = list(workers) if r % 2 == 0 else list(workers)[::-1]
        for op in ops:
            medians = {}
            for k in order:
                run = workers[k].run(op, PER_ROUND[op])
                got[k][op] += run
                medians[k] = statistics.median(run)
            paired[op].append(medians["current"] / medians["baseline"])
    for w in workers.values():
        w.close()
    print(f"CPU µs per operation, median (p25-p75), {args.files:,} files, {args.rounds} rounds")
    print("(paired: the median over rounds of current/baseline within a round, each side's")
    print(" median of that round: the load of the moment hits both sides of a pair alike)")
    print(f"{'operation':<14}{'baseline':>26}{'current':>26}{'ratio':>8}{'paired':>8}")
    for op in ops:
        cells = []
        for k in workers:
            v = sorted(got[k][op])
            q = statistics.quantiles(v, n=4)
            cells.append((statistics.median(v), q[0], q[2]))
        b, c = cells[0][0], cells[1][0]
        row = "".join(f"{m:>10.1f} ({lo:6.1f}-{hi:6.1f})" for m, lo, hi in cells)
        print(f"{op:<14}{row}{c / b:>8.2f}{statistics.median(paired[op]):>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
