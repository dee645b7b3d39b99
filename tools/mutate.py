"""``make mutate``: plant each kept mutant in a copy of the tree and run its tests against it.

A mutant is a small realistic bug (``tools/mutants.py``): a file, a snippet of today's code,
the snippet with the bug, and the tests that should catch it. For each mutant this script
copies the working tree into a temporary directory once, replaces the snippet there, runs
the mutant's tests with ``pytest -x`` against the copy (the copy's ``branchfs`` and
``branchfs_fuse`` come first on ``PYTHONPATH``, so the FUSE daemons the tests start run the
mutated code too), and puts the snippet back. Your own tree is never modified.

Each mutant ends as one of:

- ``killed``: a test failed (or the run exceeded its time limit: a hang is caught too);
- ``SURVIVED``: every test passed with the bug planted — a blind spot of the suite;
- ``STALE``: the snippet is not found exactly once in its file any more (the code moved):
  an error to fix in ``tools/mutants.py``, never counted as killed.

The score is killed / (killed + survived). The exit status is 1 when any mutant is stale
or the score is below ``--min-score`` (90 % by default). ``--list`` prints the mutants,
``--only ID`` runs some of them, ``--check`` only looks for stale snippets (seconds).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from mutants import MUTANTS, Mutant  # noqa: E402


@dataclass
class Outcome:
    """How one mutant ended, and how long its tests ran (s)."""

    mutant: Mutant
    status: str  # "killed" | "survived" | "stale" | "timeout"
    seconds: float
    detail: str = ""


def tracked_files() -> list[str]:
    """Files of the working tree as they are now (tracked or new, not ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return [p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]


def copy_tree(dest: Path) -> None:
    """Copy the working tree to ``dest`` and expose its packages under ``dest/.site``."""
    for rel in tracked_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    site = dest / ".site"
    site.mkdir()
    (site / "branchfs").symlink_to(dest / "branchfs")
    (site / "branchfs_fuse").symlink_to(dest / "fuse")


def occurrences(text: str, snippet: str) -> int:
    """How many times ``snippet`` occurs in ``text``."""
    return text.count(snippet)


def stale_reason(m: Mutant, root: Path) -> str | None:
    """Why mutant ``m`` cannot be planted in the tree at ``root``, or None if it can."""
    path = root / m.file
    if not path.is_file():
        return f"{m.file} does not exist"
    n = occurrences(path.read_text(), m.original)
    if n != 1:
        return f"the snippet occurs {n} times in {m.file} (it must occur exactly once)"
    if m.original == m.mutated:
        return "the mutated snippet equals the original"
    return None


def run_one(m: Mutant, copy: Path, timeout: float) -> Outcome:
    """Plant ``m`` in ``copy``, run its tests, restore the file."""
    reason = stale_reason(m, copy)
    if reason is not None:
        return Outcome(m, "stale", 0.0, reason)
    path = copy / m.file
    original = path.read_text()
    path.write_text(original.replace(m.original, m.mutated, 1))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy / ".site"), str(copy / "tests")])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *m.tests]
    started = time.monotonic()
    try:
        res = subprocess.run(
            cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return Outcome(m, "timeout", time.monotonic() - started, f"over {timeout:.0f} s")
    finally:
        path.write_text(original)
    took = time.monotonic() - started
    if res.returncode == 0:
        return Outcome(m, "survived", took)
    if res.returncode in (4, 5):  # usage error / nothing collected: the test list is wrong
        return Outcome(m, "stale", took, f"pytest could not run {m.tests}: {res.stdout[-300:]}")
    failed = [ln for ln in res.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    return Outcome(m, "killed", took, failed[0] if failed else res.stdout.strip()[-200:])


def main(argv: list[str] | None = None) -> int:
    """Run the mutants (see the module docstring); returns the exit status."""
    p = argparse.ArgumentParser(prog="mutate", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", default=[], help="run only this mutant id")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--check", action="store_true", help="only report stale snippets")
    p.add_argument("--min-score", type=float, default=90.0, help="percent killed required")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant")
    a = p.parse_args(argv)
    ids = [m.id for m in MUTANTS]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        print(f"duplicate mutant ids: {sorted(dupes)}")
        return 1
    chosen = [m for m in MUTANTS if not a.only or m.id in a.only]
    unknown = set(a.only) - set(ids)
    if unknown:
        print(f"unknown mutant ids: {sorted(unknown)}")
        return 1
    if a.list:
        for m in chosen:
            print(f"{m.id:28} {m.file:24} {m.description}")
        return 0
    if a.check:
        reasons = [(m, stale_reason(m, ROOT)) for m in chosen]
        for m, why in reasons:
            if why:
                print(f"STALE     {m.id}: {why}")
        return 1 if any(why for _m, why in reasons) else 0

    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="branchfs-mutate-") as tmp:
        copy = Path(tmp) / "tree"
        copy_tree(copy)
        for i, m in enumerate(chosen, 1):
            o = run_one(m, copy, a.timeout)
            outcomes.append(o)
            label = {"killed": "killed", "timeout": "killed", "survived": "SURVIVED"}.get(
                o.status, "STALE"
            )
            extra = f"  {o.detail}" if o.detail else ""
            print(f"[{i:3}/{len(chosen)}] {label:8} {o.seconds:6.1f} s  {m.id}{extra}", flush=True)

    killed = [o for o in outcomes if o.status in ("killed", "timeout")]
    survived = [o for o in outcomes if o.status == "survived"]
    stale = [o for o in outcomes if o.status == "stale"]
    counted = len(killed) + len(survived)
    score = 100.0 * len(killed) / counted if counted else 0.0
    total = sum(o.seconds for o in outcomes)
    print()
    print(
        f"mutants: {len(outcomes)}  killed: {len(killed)}  survived: {len(survived)}  "
        f"stale: {len(stale)}  score: {score:.1f} %  ({total:.0f} s of tests)"
    )
    for o in survived:
        print(f"  survived: {o.mutant.id}: {o.mutant.file}: {o.mutant.description}")
    for o in stale:
        print(f"  STALE (fix tools/mutants.py): {o.mutant.id}: {o.detail}")
    if stale:
        return 1
    return 0 if score >= a.min_score else 1


if __name__ == "__main__":
    sys.exit(main())
