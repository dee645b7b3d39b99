"""best-of overhead: how long until every attempt runs in its own tree, and how long after the
last one ends until the winner is merged and the rest are gone.

For N = 1, 4, 16 attempts on a 10,000-file git repository (and N = 4 on a 1,000-file one, to
see whether the cost follows the tree's size), three ways of giving each attempt its own
working tree are timed:

* branchfs: ``branchfs.best_of`` (in process), each attempt forked, mounted with a daemon of
  its own, and merged / discarded at the end;
* ``git worktree add`` per attempt, then the winner's commit merged (fast-forward) and every
  worktree removed (``git worktree remove --force``, branches deleted);
* ``cp -a`` of the tree per attempt, then the winner's changed file copied back and every
  copy removed (``rm -rf``).

Every attempt runs the same command: it writes the wall-clock time it started to a marker
file, changes one file, sleeps HOLD seconds (so that all attempts overlap, as real ones do),
and writes the time it ended. "to first/every running" is from the call (before any fork)
to the earliest/latest start marker; "tail" is from the latest end marker to the moment
everything is merged and cleaned up; "overhead" is the wall time minus the slowest attempt.
Attempts start as soon as their tree is ready, as with ``--jobs N``.

The ``branchfs best-of`` rows also report where the time goes, phase by phase, from the
timestamps every process of the run writes with ``BRANCHFS_TRACE`` (:mod:`branchfs.trace`):
for each phase the wall time since the call and the CPU time (user + system) its process
had used by then. CPU time is the figure to compare on a shared machine: it does not
count the time a process waited for a core.

Each run starts from a copy of a store made once per tree size (so a row does not pay for
importing the tree), and the package's bytecode is compiled first, as ``pip install``
does (a run with ``PYTHONDONTWRITEBYTECODE`` would compile every module each time).

Writes benchmarks/results/bestof.json and the "best-of" section of docs/benchmarks.md (the
docs build draws its plot, docs/hooks/plots.py). Run it alone: the machine is shared and
attempts compete for its cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    fmt_seconds,
    machine_info,
    machine_line,
    markdown_table,
    print_table,
    replace_doc_section,
    write_json,
)

import branchfs
from branchfs.bestof import best_of

HOLD = 2.0
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
}


def make_repo(root: Path, files: int) -> Path:
    """A git repository of ``files`` files (100 a directory, 1-4 KiB each), committed."""
    root.mkdir(parents=True)
    for i in range(files):
        d = root / f"pkg{i // 100:03d}"
        d.mkdir(exist_ok=True)
        (d / f"mod{i % 100:02d}.py").write_text(f"# module {i}\n" + "x = 1\n" * (150 + i % 450))
    env = dict(os.environ, **GIT_ENV)
    # gc.auto=0: a commit of 10,000 loose objects would start a detached `git gc --auto`
    # that packs and deletes them while the store copies the repository in
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "tree"]):
        subprocess.run(["git", "-c", "gc.auto=0", *cmd], cwd=root, env=env, check=True)
    return root


def attempt_script(markers: Path) -> str:
    """The attempts' command (a shell string); ``$BRANCHFS_ATTEMPT`` names the attempt."""
    m = shlex.quote(str(markers))
    return (
        f'date +%s.%N > {m}/start-$BRANCHFS_ATTEMPT; echo "$BRANCHFS_ATTEMPT" > pkg000/mod00.py; '
        f"sleep {HOLD}; date +%s.%N > {m}/end-$BRANCHFS_ATTEMPT"
    )


def read_markers(markers: Path, n: int) -> tuple[list[float], list[float]]:
    starts = [float((markers / f"start-{i}").read_text()) for i in range(1, n + 1)]
    ends = [float((markers / f"end-{i}").read_text()) for i in range(1, n + 1)]
    return starts, ends


def figures(t0: float, t1: float, starts: list[float], ends: list[float]) -> dict[str, float]:
    slowest = max(e - s for s, e in zip(starts, ends, strict=True))
    return {
        "first_running": min(starts) - t0,
        "all_running": max(starts) - t0,
        "tail": t1 - max(ends),
        "wall": t1 - t0,
        "slowest_attempt": slowest,
        "overhead": (t1 - t0) - slowest,
    }


#: Stores made once per tree size (files -> store directory), copied for each run.
STORES: dict[Path, Path] = {}


def store_copy(work: Path, repo: Path) -> Path:
    """A fresh copy of a store whose main branch holds ``repo`` (imported once)."""
    made = STORES.get(repo)
    if made is None:
        made = repo.parent / f"{repo.name}.bfs"
        with branchfs.Store.open(made, create=True) as store:
            store.create_branch("main").import_dir(repo)
        STORES[repo] = made
    copy = work / "store.bfs"
    subprocess.run(["cp", "-a", str(made), str(copy)], check=True)
    return copy


def read_trace(path: Path) -> list[dict[str, Any]]:
    """The phase marks of one run (see :mod:`branchfs.trace`), in time order."""
    if not path.exists():
        return []
    marks = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(marks, key=lambda m: m["wall"])


#: The phases reported: (key, label, mark, which one: "first" or "last" of that mark).
PHASES = (
    ("parsed", "interpreter start, imports, arguments parsed", "cli parsed", "first"),
    ("zygote_forked", "zygote forked", "zygote started", "first"),
    ("store_open", "store open", "store open", "first"),
    ("forked", "N branches forked", "forked", "first"),
    ("zygote_ready", "zygote has imported the daemon", "zygote ready", "first"),
    ("daemon_ready", "first daemon mounted (kernel mount made)", "daemon ready", "first"),
    ("mounted", "first attempt's tree mounted (best-of told)", "mounted", "first"),
    ("spawned", "first command started (Popen returned)", "spawned", "first"),
    ("exited", "last command's exit seen", "command exited", "last"),
    ("unmounted", "last tree unmounted, its daemon gone", "unmounted", "last"),
    ("merged", "winner merged", "merged", "last"),
    ("discarded", "other attempts discarded", "discarded", "last"),
    ("done", "best-of returned", "best-of done", "last"),
)


def phases(
    marks: list[dict[str, Any]], t0: float, cpu0: float = 0.0
) -> dict[str, dict[str, float]]:
    """Each phase's wall time since ``t0`` and its process's CPU time then (seconds).

    ``cpu0`` is this process's CPU time at ``t0``, taken off its own marks (best-of run in
    process); other processes count from their start (the zygote: from its fork).
    """
    out: dict[str, dict[str, float]] = {}
    for key, _label, what, which in PHASES:
        found = [m for m in marks if m["what"] == what]
        if found:
            m = found[0] if which == "first" else found[-1]
            cpu = m["cpu"] - (cpu0 if m["pid"] == os.getpid() else 0.0)
            out[key] = {"wall": round(m["wall"] - t0, 4), "cpu": round(cpu, 4)}
    daemons = [m["cpu"] for m in marks if m["what"] == "daemon exit"]
    if daemons:
        out["daemon_cpu"] = {"wall": 0.0, "cpu": round(max(daemons), 4)}
    zygote = [m["cpu"] for m in marks if m["what"] in ("zygote ready", "daemon ready")]
    if zygote:
        out["zygote_cpu"] = {"wall": 0.0, "cpu": round(max(zygote), 4)}
    return out


def run_branchfs(work: Path, repo: Path, n: int) -> dict[str, Any]:
    store_path = store_copy(work, repo)
    markers = work / "markers"
    markers.mkdir()
    trace_file = work / "trace.jsonl"
    os.environ["BRANCHFS_TRACE"] = str(trace_file)
    try:
        # Given the store's path, best-of opens it after forking its zygote from this
        # single-threaded process (an open store would make it start a new interpreter).
        cpu0 = time.process_time()
        t0 = time.time()
        result = best_of(store_path, n, attempt_script(markers), jobs=n)
        t1 = time.time()
        cpu = time.process_time() - cpu0
        assert result.ok, result.to_json()
    finally:
        del os.environ["BRANCHFS_TRACE"]
    with branchfs.Store.open(store_path) as store:
        assert store.branches() == ["main"]
    starts, ends = read_markers(markers, n)
    fig: dict[str, Any] = figures(t0, t1, starts, ends)
    fig["phases"] = phases(read_trace(trace_file), t0, cpu0)
    fig["cpu"] = round(cpu, 4)  # this process alone (its zygote is a fork: not reaped here)
    return fig


def cli_available() -> bool:
    """Whether this branchfs has the best-of verb on its command line."""
    done = subprocess.run(
        [sys.executable, "-m", "branchfs.cli", "best-of", "--help"],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def run_branchfs_cli(work: Path, repo: Path, n: int) -> dict[str, Any]:
    """The same through ``branchfs best-of`` (an interpreter start and the CLI included)."""
    store_path = store_copy(work, repo)
    markers = work / "markers"
    markers.mkdir()
    trace_file = work / "trace.jsonl"
    cmd = [sys.executable, "-m", "branchfs.cli", "--store", str(store_path), "best-of", str(n),
           "--run", attempt_script(markers), "--json"]  # fmt: skip
    env = dict(os.environ, BRANCHFS_TRACE=str(trace_file))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    done = subprocess.run(cmd, capture_output=True, check=False, env=env)
    t1 = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert done.returncode == 0, done.stderr
    starts, ends = read_markers(markers, n)
    fig: dict[str, Any] = figures(t0, t1, starts, ends)
    fig["phases"] = phases(read_trace(trace_file), t0)
    # The command line and its zygote (both reaped by now; the daemons are not counted).
    fig["cpu"] = round(
        after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 4
    )  # fmt: skip
    return fig


def warm_up(root: Path, repo: Path) -> None:
    """One untimed ``branchfs best-of 1`` so that the first timed row does not pay for a
    cold page cache (the interpreter, the package, the daemon's modules)."""
    work = root / "warm-up"
    work.mkdir()
    store_path = store_copy(work, repo)
    cmd = [sys.executable, "-m", "branchfs.cli", "--store", str(store_path), "best-of", "1",
           "--run", "true", "--json"]  # fmt: skip
    subprocess.run(cmd, capture_output=True, check=True)
    shutil.rmtree(work, ignore_errors=True)


def _run_all(
    n: int, markers: Path, make_tree: Callable[[int], Path]
) -> tuple[float, list[Path], list[subprocess.Popen[bytes]]]:
    """Make each attempt's tree and start its command at once; the start time and trees."""
    t0 = time.time()
    trees: list[Path] = []
    procs = []
    for i in range(1, n + 1):
        tree = make_tree(i)
        trees.append(tree)
        env = dict(os.environ, BRANCHFS_ATTEMPT=str(i), **GIT_ENV)
        procs.append(
            subprocess.Popen(["/bin/sh", "-c", attempt_script(markers)], cwd=tree, env=env)
        )
    for p in procs:
        p.wait()
    return t0, trees, procs


def run_git(work: Path, repo: Path, n: int) -> dict[str, Any]:
    clone = work / "repo"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    markers = work / "markers"
    markers.mkdir()
    env = dict(os.environ, **GIT_ENV)

    def git(*args: str, cwd: Path = clone) -> None:
        subprocess.run(["git", *args], cwd=cwd, env=env, check=True)

    def make_tree(i: int) -> Path:
        tree = work / f"wt-{i}"
        git("worktree", "add", "-q", "-b", f"attempt-{i}", str(tree))
        return tree

    t0, trees, _ = _run_all(n, markers, make_tree)
    git("commit", "-qam", "winner", cwd=trees[0])
    git("merge", "-q", "--ff-only", "attempt-1")
    for i, tree in enumerate(trees, 1):
        git("worktree", "remove", "--force", str(tree))
        git("branch", "-q", "-D", f"attempt-{i}")
    t1 = time.time()
    starts, ends = read_markers(markers, n)
    return figures(t0, t1, starts, ends)


def run_cp(work: Path, repo: Path, n: int) -> dict[str, Any]:
    base = work / "base"
    subprocess.run(["cp", "-a", str(repo), str(base)], check=True)
    markers = work / "markers"
    markers.mkdir()

    def make_tree(i: int) -> Path:
        tree = work / f"copy-{i}"
        subprocess.run(["cp", "-a", str(base), str(tree)], check=True)
        return tree

    t0, trees, _ = _run_all(n, markers, make_tree)
    shutil.copy2(trees[0] / "pkg000" / "mod00.py", base / "pkg000" / "mod00.py")
    for tree in trees:
        subprocess.run(["rm", "-rf", str(tree)], check=True)
    t1 = time.time()
    starts, ends = read_markers(markers, n)
    return figures(t0, t1, starts, ends)


METHODS: dict[str, Callable[[Path, Path, int], dict[str, Any]]] = {
    "branchfs best-of": run_branchfs,
    "git worktree add + remove": run_git,
    "cp -a + rm -rf": run_cp,
}


def report(data: dict[str, Any]) -> None:
    """Write the results JSON, print the table and rewrite the docs' best-of section."""
    write_json("bestof", data)
    results: list[dict[str, Any]] = data["results"]
    info = data["machine"]
    columns = ["method", "N", "files", "to first running", "to every running", "tail",
               "wall", "slowest attempt", "overhead"]  # fmt: skip
    rows = [
        [r["method"], r["n"], f"{r['files']:,}", fmt_seconds(r["first_running"]),
         fmt_seconds(r["all_running"]), fmt_seconds(r["tail"]), fmt_seconds(r["wall"]),
         fmt_seconds(r["slowest_attempt"]), fmt_seconds(r["overhead"])]
        for r in results
    ]  # fmt: skip
    print_table("best-of overhead", columns, rows)
    body = (
        f"Produced by `make bench-bestof` (`benchmarks/bestof.py`) on {data['date']}; raw "
        "figures in `benchmarks/results/bestof.json`.\n\n"
        f"Machine: {machine_line(info)}. Load average (1 min) at the start: "
        f"{data['load'][0]:.1f}.\n\n"
        "The command-line row includes the interpreter start of `branchfs` itself. "
        "Each attempt writes its start time, changes one file, sleeps "
        f"{HOLD:g} s and writes its end time. *To first / every running*: from the call to "
        "the earliest / latest start. *Tail*: from the last attempt's end to the winner "
        "merged and every other tree gone. *Overhead*: wall time minus the slowest attempt. "
        "Goals (issue 16): ≤ 150 ms to the first attempt running, flat in tree size; wall "
        "≤ slowest attempt + 0.5 s at N = 4.\n\n"
        "![best-of overhead](img/bestof.png)\n\n" + markdown_table(columns, rows)
    )
    traced = [r for r in results if r.get("phases") and r["n"] == 4 and r["files"] == 10000]
    if traced:
        pcolumns = ["phase", *(f"{r['method']}: wall / CPU" for r in traced)]
        prows = phase_rows(traced)
        print_table("where the time goes (N = 4, 10,000 files)", pcolumns, prows)
        body += (
            "\n### Where the time goes (N = 4, 10,000 files)\n\n"
            "Each phase's wall time since the call, and the CPU time (user + system) that "
            "the process it happened in had used by then: the command line (or the calling "
            "process), the zygote (its CPU counts from its fork) or a daemon. On a shared "
            "machine compare the CPU column; wall time includes waiting for a core. "
            "*CPU, whole run*: the command line and its zygote together, from the kernel's "
            "accounting of reaped children (in process: the calling process alone).\n\n"
            + markdown_table(pcolumns, prows)
        )
    if data.get("note"):
        body += f"\n{data['note']}\n"
    replace_doc_section("best-of", body)


def phase_rows(traced: list[dict[str, Any]]) -> list[list[str]]:
    """One row per phase: for each run, ``wall / CPU`` (a blank where it has no such mark)."""
    labels = [(key, label) for key, label, _what, _which in PHASES]
    labels.insert(labels.index(("exited", "last command's exit seen")),
                  ("first_running", "first command running (its own clock)"))  # fmt: skip
    rows = []
    for key, label in labels:
        cells = [label]
        for r in traced:
            if key == "first_running":
                cells.append(f"{fmt_seconds(r['first_running'])} / -")
                continue
            ph = r["phases"].get(key)
            cells.append("" if ph is None else f"{fmt_seconds(ph['wall'])} / "
                         f"{fmt_seconds(ph['cpu'])}")  # fmt: skip
        rows.append(cells)
    extra: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("process exit", lambda r: f"{fmt_seconds(r['wall'])} / -"),
        ("zygote CPU (from its fork)", lambda r: _cpu(r, "zygote_cpu")),
        ("one daemon's CPU (the busiest)", lambda r: _cpu(r, "daemon_cpu")),
        ("CPU, whole run", lambda r: fmt_seconds(r["cpu"]) if "cpu" in r else ""),
    ]
    for label, cell in extra:
        rows.append([label, *(cell(r) for r in traced)])
    return rows


def _cpu(r: dict[str, Any], key: str) -> str:
    ph = r["phases"].get(key)
    return "" if ph is None else fmt_seconds(ph["cpu"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="N = 1 and 4 only")
    args = p.parse_args()
    ns = [1, 4] if args.quick else [1, 4, 16]
    started = time.time()
    load = list(os.getloadavg()[:1])
    here = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(here / "branchfs"), str(here / "fuse")],
        check=True,
    )
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="branchfs-bench-bestof-") as tmp:
        root = Path(tmp)
        repos = {files: make_repo(root / f"repo-{files}", files) for files in (1000, 10000)}
        methods = dict(METHODS)
        if cli_available():
            methods["branchfs best-of (command line)"] = run_branchfs_cli
            warm_up(root, repos[1000])
        cases = [(10000, method, n) for n in ns for method in methods]
        cases.append((1000, "branchfs best-of", 4))
        for files, method, n in cases:
            work = root / f"work-{len(results)}"
            work.mkdir()
            fig = methods[method](work, repos[files], n)
            results.append({"method": method, "n": n, "files": files, **fig})
            print(
                f"{method:28} N={n:<3} files={files:<6} "
                + " ".join(f"{k}={fmt_seconds(v)}" for k, v in fig.items() if k != "phases"),
                flush=True,
            )
            shutil.rmtree(work, ignore_errors=True)
    info = machine_info(Path(tempfile.gettempdir()))
    data = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "machine": info,
        "hold_seconds": HOLD,
        "load": load,
        "results": results,
    }
    report(data)


if __name__ == "__main__":
    main()
