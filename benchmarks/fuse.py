"""Ordinary work through the branchfs mount, against the native disk and fuse-overlayfs.

Run ``make bench-fuse`` (or ``.venv/bin/python benchmarks/fuse.py [--full]``). In one run the
same workloads go to three places on the same disk:

* ``native``: a directory on the disk that holds the benchmark's scratch directory;
* ``fuse-overlayfs``: a C FUSE filesystem from Debian (empty lower dir, upper dir, work dir);
* ``branchfs``: a fresh store mounted with ``branchfs mount``.

Workloads: 1 GiB sequential write (+fsync) and read (page cache dropped in between), 10,000
small file creates, untar of a 10,000-file source tarball, ``git add -A && git commit``,
``git status`` cold and warm, ``python -m compileall`` cold and warm, a real project's own
test suite (networkx, run twice), and fork of a 10,000-file tree: ``mkdir
.branchfs/branches/X`` against ``cp -a`` and ``git worktree add``. Prints a table, writes
benchmarks/results/fuse.json and the "Through the mount" section of docs/benchmarks.md.

The metadata rows (create, ``rm -rf``, untar, ``git add -A && commit``, pip install) and the
warm rows report the median of ``warm_repeats`` runs, each metadata run on fresh state (its
own tree, repository or venv); the other rows run once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    fmt_ratio,
    fmt_seconds,
    machine_info,
    machine_line,
    markdown_table,
    percentile,
    print_table,
    replace_doc_section,
    summarize,
    write_json,
)

import branchfs.mount

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
MiB = 1 << 20
TARGETS = ("native", "fuse-overlayfs", "branchfs")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
    # No background `git gc --auto` after the 10,000-object commit: it would run during the
    # next rows and keep the mount busy.
    "GIT_CONFIG_COUNT": "1",
    "GIT_CONFIG_KEY_0": "gc.auto",
    "GIT_CONFIG_VALUE_0": "0",
}


@dataclass(frozen=True)
class Profile:
    """Sizes and repetitions of one benchmark run."""

    seq_bytes: int
    small_files: int
    tree_files: int
    warm_repeats: int
    forks: int
    copies: int
    nx_tests: tuple[str, ...]


QUICK = Profile(
    seq_bytes=1024 * MiB,
    small_files=10_000,
    tree_files=10_000,
    warm_repeats=3,
    forks=200,
    copies=3,
    nx_tests=("networkx/algorithms/shortest_paths", "networkx/classes"),
)
FULL = Profile(
    seq_bytes=4096 * MiB,
    small_files=10_000,
    tree_files=10_000,
    warm_repeats=5,
    forks=1000,
    copies=5,
    nx_tests=("networkx",),
)

# Row name -> (class, target). Class "warm" is compared with native, "cold" with
# fuse-overlayfs, "seq" must keep at least half the native throughput; "meta" (metadata-heavy
# work, contract 2 of docs/architecture.md) must be within the target times native and
# faster than fuse-overlayfs;
# "call" rows have no target of their own: they show what single calls cost.
ROWS: dict[str, tuple[str, float]] = {
    "seq write 1 GiB + fsync": ("seq", 2.0),
    "seq read 1 GiB, cold cache": ("seq", 2.0),
    "create 10,000 small files": ("meta", 5.0),
    "rm -rf 10,000 small files": ("meta", 5.0),
    "untar 10,000-file tarball": ("meta", 5.0),
    "git add -A && git commit": ("meta", 5.0),
    "pip install from a wheel dir": ("meta", 5.0),
    "agent sequence (tar, git, venv -e, tests, rm)": ("meta", 5.0),
    "git status, cold cache": ("cold", 1.5),
    "git status, warm": ("warm", 1.5),
    "compileall, cold": ("cold", 1.5),
    "compileall, unchanged (warm)": ("warm", 1.5),
    "test suite, first run": ("cold", 1.5),
    "test suite, second run (warm)": ("warm", 1.5),
    "open+close of a cached file, per call": ("call", 0.0),
    "isatty() of an open file, per call": ("call", 0.0),
    "stat of a cached file, per call": ("call", 0.0),
    "git status, first in a fork": ("mounted", 0.0),
    "git status, cold, mounted view": ("mounted", 0.0),
    "git status, cold, branch view": ("view", 1.5),
    "git status, warm, mounted view": ("mounted", 0.0),
    "git status, warm, branch view": ("view", 1.5),
}
#: A "view" row is compared with the "mounted" row of the same name's temperature.
VIEW_OF = {
    "git status, cold, branch view": "git status, cold, mounted view",
    "git status, warm, branch view": "git status, warm, mounted view",
}

#: Calls timed per repetition in the "call" rows (best of 3 repetitions).
CALLS = 5000
#: Files each metadata row works on, for its "requests/file" column (pip: counted after).
FILES: dict[str, int] = {
    "create 10,000 small files": 10_000,
    "rm -rf 10,000 small files": 10_000,
    "untar 10,000-file tarball": 10_000,
    "git add -A && git commit": 10_000,
}
#: The "pip install" row's packages: small, real, pure Python, with their dependencies
#: (about 1,500 files with bytecode). Wheels are built once from the package index.
PIP_PACKAGES = ("requests", "rich", "click")
#: What the agent sequence installs into its venv besides its own project (editable).
AGENT_PACKAGES = ("setuptools", "pytest")
#: The agent sequence's project: networkx's sources under a minimal pyproject.toml.
AGENT_PYPROJECT = b"""[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "nx-copy"
version = "0"

[tool.setuptools.packages.find]
include = ["networkx*"]
"""


# ----------------------------------------------------------------------------- helpers


def run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    """Run a command, raising with its output if it fails."""
    full_env = {**os.environ, **(env or {})}
    res = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True)
    if res.returncode != 0:
        out = (res.stderr or res.stdout)[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {out}")


#: Seconds every target waits after dropping caches, before a cold row starts (see below).
COLD_SETTLE_S = 3.0


def drop_caches() -> bool:
    """Write back dirty pages, drop the page, dentry and inode caches (needs root), settle.

    The wait makes "cold" mean the same for every target. In a VM with free page
    reporting (virtio-balloon here), pages freed by the drop go back to the host about 2 s
    later, and touching such a page again costs a host page fault: touching 1 GiB took
    0.5 s when its pages were freed a moment before, 1.2 s once reported. Without the wait a
    target that reads fast (the native disk, 1 GiB in 0.3 s) got its pages back warm and a
    slower one got them cold, which measured the VM, not the filesystem.
    """
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    time.sleep(COLD_SETTLE_S)
    return True


def wait_mounted(path: Path, timeout: float = 20.0) -> None:
    """Wait until ``path`` is a mount point."""
    deadline = time.monotonic() + timeout
    while not os.path.ismount(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not become a mount point within {timeout}s")
        time.sleep(0.05)


def fuse_unmount(path: Path) -> None:
    """Unmount a FUSE mount, lazily if it is still busy."""
    if not os.path.ismount(path):
        return
    res = subprocess.run(["fusermount3", "-u", str(path)], capture_output=True)
    if res.returncode != 0:
        subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True)


# ----------------------------------------------------------------------------- targets


@dataclass
class Target:
    """One place to run the workloads: a directory, perhaps a mount, that it sets up and removes."""

    name: str
    base: Path
    root: Path = field(init=False)
    pid: int | None = field(default=None, init=False)
    #: Request counts of daemons that :meth:`cold` replaced since the last reset.
    carried: dict[str, int] = field(default_factory=dict, init=False)

    def setup(self) -> None:
        """Create (and mount) the working directory ``root``."""
        self.base.mkdir(parents=True)
        if self.name == "native":
            self.root = self.base / "work"
            self.root.mkdir()
        elif self.name == "fuse-overlayfs":
            for d in ("lower", "upper", "work", "mnt"):
                (self.base / d).mkdir()
            self.root = self.base / "mnt"
            b = self.base
            opts = f"lowerdir={b / 'lower'},upperdir={b / 'upper'},workdir={b / 'work'}"
            run(["fuse-overlayfs", "-o", opts, str(self.root)])
            wait_mounted(self.root)
        elif self.name == "branchfs":
            self.root = self.base / "mnt"
            self.root.mkdir()
            run([str(VENV_BIN / "branchfs"), "init", str(self.base / "store.bfs")])
            self._mount_branchfs()
        else:
            raise ValueError(self.name)

    def _mount_branchfs(self) -> None:
        store = self.base / "store.bfs"
        run([str(VENV_BIN / "branchfs"), "--store", str(store), "mount", str(self.root)])
        wait_mounted(self.root)
        self.pid = daemon_pid(self.root)

    def cold(self) -> None:
        """Empty every cache a cold row must not find.

        The kernel's page cache, dentries and inodes, and for branchfs a fresh daemon too:
        LMDB's memory map keeps the store's pages mapped in the daemon, and
        ``drop_caches`` never drops a mapped page, so only a new daemon starts cold.
        """
        if self.name == "branchfs":
            for k, v in (self.requests() or {}).items():
                self.carried[k] = self.carried.get(k, 0) + v
            run([str(VENV_BIN / "branchfs"), "umount", str(self.root)])
            self._mount_branchfs()
        drop_caches()

    def ctl(self, line: str) -> dict[str, Any] | None:
        """Send one line to a branchfs mount's ``.branchfs/ctl``; None on other targets."""
        if self.name != "branchfs":
            return None
        return branchfs.mount.ctl(self.root, line)

    def reset_requests(self) -> None:
        """Zero the daemon's per-operation request counters (branchfs only)."""
        self.carried.clear()
        self.ctl("stats --reset")

    def requests(self) -> dict[str, int] | None:
        """Requests that reached the daemon since the last reset, by operation."""
        answer = self.ctl("stats")
        if not answer or not answer.get("ok"):
            return None
        counts = dict(self.carried)
        for k, v in answer.get("requests", {}).items():
            counts[k] = counts.get(k, 0) + int(v)
        return counts

    def teardown(self) -> None:
        """Unmount and delete everything the target made."""
        if self.name == "branchfs" and os.path.ismount(self.root):
            subprocess.run(
                [str(VENV_BIN / "branchfs"), "umount", str(self.root)], capture_output=True
            )
        if self.name != "native":
            fuse_unmount(self.root)
        shutil.rmtree(self.base, ignore_errors=True)


def daemon_pid(mountpoint: Path) -> int | None:
    """The pid of the branchfs daemon serving ``mountpoint`` (found by its command line)."""
    want = os.fsencode(str(mountpoint))
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if want in cmdline and any(b"branchfs" in c for c in cmdline):
            return int(proc.name)
    return None


@contextlib.contextmanager
def target(name: str, scratch: Path) -> Iterator[Target]:
    """A set-up target, torn down afterwards."""
    t = Target(name, scratch / name.replace("-", "_"))
    try:
        t.setup()
        yield t
    finally:
        t.teardown()


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Inputs:
    """Source material shared by all targets, prepared once on the native disk."""

    tree_tar: Path
    tree_desc: str
    stdlib_tar: Path
    stdlib_desc: str
    nx_tar: Path | None
    nx_python: str | None
    random_data: bytes
    wheels: Path | None


def source_files(limit: int) -> tuple[list[Path], Path]:
    """Up to ``limit`` real source files (sorted) from this Python's library directory."""
    top = Path(sysconfig.get_paths(vars={"base": sys.base_prefix})["stdlib"])
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for f in sorted(filenames):
            p = Path(dirpath, f)
            if f.endswith((".so", ".pyc")) or p.is_symlink() or not p.is_file():
                continue
            files.append(p)
    files.sort()
    return files[:limit], top


def make_tar(out: Path, top: Path, files: list[Path], arc_root: str) -> None:
    """A tarball of ``files`` (paths under ``top``) stored under ``arc_root/``."""
    with tarfile.open(out, "w") as tar:
        for f in files:
            tar.add(f, arcname=f"{arc_root}/{f.relative_to(top)}", recursive=False)


def prepare_inputs(profile: Profile, scratch: Path) -> Inputs:
    """Build the tarballs and the random data every target uses."""
    inputs = scratch / "inputs"
    inputs.mkdir()
    files, top = source_files(profile.tree_files)
    if len(files) < profile.tree_files:
        raise RuntimeError(f"only {len(files)} source files under {top}")
    tree_tar = inputs / "tree.tar"
    make_tar(tree_tar, top, files, "tree")
    size = sum(f.stat().st_size for f in files)
    tree_desc = f"{len(files)} files, {size / MiB:.0f} MiB, from {top}"

    std = [f for f in source_files(10**9)[0] if "site-packages" not in f.parts]
    std_py = [f for f in std if f.suffix == ".py"]
    stdlib_tar = inputs / "stdlib.tar"
    make_tar(stdlib_tar, top, std, "stdlib")
    stdlib_desc = f"CPython {sys.version.split()[0]} standard library, {len(std_py)} .py files"

    nx_tar, nx_python = None, None
    py = getattr(sys, "_base_executable", sys.executable)
    probe = subprocess.run(
        [py, "-c", "import networkx, pytest; print(networkx.__file__)"],
        capture_output=True,
        text=True,
    )
    if probe.returncode == 0:
        nx_dir = Path(probe.stdout.strip()).parent
        nx_files = [
            Path(d, f)
            for d, dn, fn in os.walk(nx_dir)
            for f in fn
            if "__pycache__" not in Path(d).parts
        ]
        nx_tar = inputs / "networkx.tar"
        make_tar(nx_tar, nx_dir, sorted(nx_files), "networkx")
        (inputs / "pyproject.toml").write_bytes(AGENT_PYPROJECT)
        nx_python = py
    return Inputs(
        tree_tar=tree_tar,
        tree_desc=tree_desc,
        stdlib_tar=stdlib_tar,
        stdlib_desc=stdlib_desc,
        nx_tar=nx_tar,
        nx_python=nx_python,
        random_data=os.urandom(profile.seq_bytes),
        wheels=build_wheels(inputs / "wheels"),
    )


def build_wheels(out: Path) -> Path | None:
    """Wheels of :data:`PIP_PACKAGES` and their dependencies in ``out`` (None if pip cannot
    reach the package index), so that the timed installs need no network."""
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(out)]
    got = subprocess.run(
        [*cmd, *PIP_PACKAGES, *AGENT_PACKAGES],
        capture_output=True,
        text=True,
    )
    return out if got.returncode == 0 else None


# ----------------------------------------------------------------------------- workloads


def seq_write(path: Path, data: bytes) -> float:
    """Write ``data`` in 1 MiB writes, fsync, close: seconds."""
    view = memoryview(data)
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, len(view), MiB):
            os.write(fd, view[off : off + MiB])
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def seq_read(path: Path, expect: int) -> float:
    """Read the whole file in 1 MiB reads: seconds."""
    buf = bytearray(MiB)
    got = 0
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        while n := os.readv(fd, [buf]):
            got += n
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    if got != expect:
        raise RuntimeError(f"read {got} bytes of {expect}")
    return elapsed


def create_small(root: Path, count: int) -> float:
    """Create ``count`` small files (100 per directory): seconds."""
    start = time.perf_counter()
    for i in range(count):
        d = root / f"d{i // 100:03d}"
        if i % 100 == 0:
            os.mkdir(d)
        fd = os.open(d / f"f{i:05d}.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b"small file %d\n" % i * 8)
        os.close(fd)
    return time.perf_counter() - start


def timed_cmd(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    """Seconds to run a command to success."""
    start = time.perf_counter()
    run(cmd, cwd=cwd, env=env)
    return time.perf_counter() - start


def per_call(fn: Callable[[], object]) -> float:
    """Seconds per call of ``fn``: the best of 3 repetitions of :data:`CALLS` calls."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(CALLS):
            fn()
        best = min(best, (time.perf_counter() - start) / CALLS)
    return best


def median_of(fn: Callable[[], float], n: int) -> float:
    """The median of ``n`` timings from ``fn``."""
    return percentile([fn() for _ in range(n)], 50)


@dataclass
class Results:
    """Seconds per (row, target), plus notes and fork statistics."""

    times: dict[str, dict[str, float]] = field(default_factory=dict)
    requests: dict[str, dict[str, int]] = field(default_factory=dict)
    forks: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    #: Files a row worked on, where not fixed in :data:`FILES` (measured on the target).
    files: dict[str, int] = field(default_factory=dict)

    def put(self, row: str, tname: str, seconds: float) -> None:
        """Record one timing and say it."""
        self.times.setdefault(row, {})[tname] = seconds
        print(f"  {tname:15} {row:32} {fmt_seconds(seconds)}", flush=True)

    def measure(self, t: Target, row: str, fn: Callable[[], float], runs: int = 1) -> None:
        """Time ``fn`` on target ``t``, with the daemon's request counts per run (branchfs)."""
        t.reset_requests()
        self.put(row, t.name, fn())
        counts = t.requests()
        if counts is not None:
            self.requests[row] = {k: v // runs for k, v in sorted(counts.items())}
            total = sum(self.requests[row].values())
            print(f"  {'':15} {'':32} {total} requests to the daemon", flush=True)


#: Sections of the main table, by the name ``--only`` takes.
SECTIONS = ("seq", "small", "git", "pip", "agent", "compile", "tests", "calls", "views")


def run_workloads(
    t: Target, profile: Profile, inp: Inputs, res: Results, only: tuple[str, ...] = SECTIONS
) -> None:
    """Every workload of the main table on one target; a failing section is recorded, not fatal."""
    root, name = t.root, t.name
    python = sys.executable
    reps = profile.warm_repeats

    def seq() -> None:
        # The median of `reps` runs: one run swings up to 3x with what the VM's disk is doing.
        path = root / "seq.bin"
        size = len(inp.random_data)

        def write_once() -> float:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            run(["sync"])  # no dirty pages of the previous run left to throttle this one
            return seq_write(path, inp.random_data)

        def read_once() -> float:
            t.cold()
            return seq_read(path, size)

        write = lambda: median_of(write_once, reps)  # noqa: E731
        res.measure(t, "seq write 1 GiB + fsync", write, runs=reps)
        res.measure(t, "seq read 1 GiB, cold cache", lambda: median_of(read_once, reps), runs=reps)
        os.unlink(path)

    def small() -> None:
        # The median of `reps` runs, each on its own fresh tree: one run of a metadata row
        # swings by 10-20 % with what the VM is doing, as much as the gaps the targets judge.
        count = profile.small_files
        dirs = [root / f"small{i}" for i in range(reps)]

        def creates() -> float:
            times = []
            for d in dirs:
                d.mkdir()
                times.append(create_small(d, count))
            return percentile(times, 50)

        def removals() -> float:
            return percentile([timed_cmd(["rm", "-rf", d.name], root) for d in dirs], 50)

        res.measure(t, "create 10,000 small files", creates, runs=reps)
        res.measure(t, "rm -rf 10,000 small files", removals, runs=reps)

    def pip() -> None:
        if inp.wheels is None:
            res.notes.append("pip could not build the wheels: no pip install row")
            return
        venvs = [root / f"venv{i}" for i in range(reps)]
        for venv in venvs:
            run([python, "-m", "venv", "--without-pip", str(venv)])

        def install(venv: Path) -> float:
            cmd = [python, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"]
            cmd += ["-q", "--no-index", "--find-links", str(inp.wheels), *PIP_PACKAGES]
            return timed_cmd(cmd, root)

        installs = lambda: percentile([install(v) for v in venvs], 50)  # noqa: E731
        res.measure(t, "pip install from a wheel dir", installs, runs=reps)
        res.files["pip install from a wheel dir"] = sum(len(f) for _d, _s, f in os.walk(venvs[0]))

    def agent() -> None:
        # What an agent does to a fresh checkout: copy it in, commit it, make a venv with
        # the project installed editable, run its tests, throw it all away.
        if inp.nx_tar is None or inp.wheels is None:
            res.notes.append("no networkx or no wheels: no agent-sequence row")
            return
        work = root / "agent"
        work.mkdir()
        venv, vpy = work / "venv", str(work / "venv" / "bin" / "python")
        pip = [python, "-m", "pip", "--python", vpy, "install", "-q", "--no-index"]
        pip += ["--find-links", str(inp.wheels)]
        steps = [
            ["sh", "-c", f"mkdir proj && tar -xf {inp.nx_tar} -C proj"],
            ["cp", str(inp.nx_tar.parent / "pyproject.toml"), "proj/"],
            ["sh", "-c", "cd proj && git init -q && git add -A && git commit -q -m import"],
            [python, "-m", "venv", "--without-pip", str(venv)],
            [*pip, *AGENT_PACKAGES],
            [*pip, "--no-build-isolation", "-e", "proj"],
            ["sh", "-c", f"cd proj && {vpy} -m pytest -q -x -p no:cacheprovider networkx/classes"],
        ]
        files: list[int] = []

        def sequence() -> float:
            start = time.perf_counter()
            for cmd in steps:
                run(cmd, cwd=work, env=GIT_ENV)
            files.append(sum(len(f) for _d, _s, f in os.walk(work)))
            run(["rm", "-rf", "proj", "venv"], cwd=work)
            return time.perf_counter() - start

        res.measure(t, "agent sequence (tar, git, venv -e, tests, rm)", sequence)
        res.files["agent sequence (tar, git, venv -e, tests, rm)"] = files[0]

    def git() -> None:
        # Medians of `reps` runs (see small()), each untar into a fresh directory and each
        # commit in a fresh repository; the status rows use the first.
        tops = [root / f"untar{i}" for i in range(reps)]
        untar = ["tar", "-xf", str(inp.tree_tar)]

        def untars() -> float:
            times = []
            for top in tops:
                top.mkdir()
                times.append(timed_cmd(untar, top))
            return percentile(times, 50)

        res.measure(t, "untar 10,000-file tarball", untars, runs=reps)
        repos = [top / "tree" for top in tops]
        for repo in repos:
            run(["git", "init", "-q"], cwd=repo, env=GIT_ENV)
        commit = ["sh", "-c", "git add -A && git commit -q -m import"]
        commits = lambda: percentile([timed_cmd(commit, r, GIT_ENV) for r in repos], 50)  # noqa: E731
        res.measure(t, "git add -A && git commit", commits, runs=reps)
        for extra in tops[1:]:
            run(["rm", "-rf", extra.name], cwd=root)
        repo = repos[0]
        t.cold()
        status = ["git", "status", "--porcelain"]
        res.measure(t, "git status, cold cache", lambda: timed_cmd(status, repo, GIT_ENV))
        warm = lambda: median_of(lambda: timed_cmd(status, repo, GIT_ENV), reps)  # noqa: E731
        res.measure(t, "git status, warm", warm, runs=reps)

    def compile_tree() -> None:
        run(["tar", "-xf", str(inp.stdlib_tar)], cwd=root)
        t.cold()
        # Some of the stdlib's test files are deliberately invalid Python: compileall exits 1.
        cmd = ["sh", "-c", f"{python} -m compileall -q -j 1 stdlib >/dev/null; true"]
        res.measure(t, "compileall, cold", lambda: timed_cmd(cmd, root))
        warm = lambda: median_of(lambda: timed_cmd(cmd, root), reps)  # noqa: E731
        res.measure(t, "compileall, unchanged (warm)", warm, runs=reps)

    def calls() -> None:
        f = root / "calls.txt"
        f.write_bytes(b"x" * 100)
        os.stat(f)
        runs = 3 * CALLS
        op_close = lambda: os.close(os.open(f, os.O_RDONLY))  # noqa: E731
        res.measure(t, "open+close of a cached file, per call", lambda: per_call(op_close), runs)
        fd = os.open(f, os.O_RDONLY)
        try:
            tty = lambda: os.isatty(fd)  # noqa: E731
            res.measure(t, "isatty() of an open file, per call", lambda: per_call(tty), runs)
        finally:
            os.close(fd)
        stat = lambda: os.stat(f)  # noqa: E731
        res.measure(t, "stat of a cached file, per call", lambda: per_call(stat), runs)

    def test_suite() -> None:
        if inp.nx_tar is None or inp.nx_python is None:
            res.notes.append("networkx and pytest not found: no test-suite rows")
            return
        nx = root / "nx"
        nx.mkdir()
        run(["tar", "-xf", str(inp.nx_tar)], cwd=nx)
        t.cold()
        cmd = [inp.nx_python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
        cmd += list(profile.nx_tests)
        env = {"PYTHONPATH": str(nx), "PYTHONDONTWRITEBYTECODE": ""}
        res.measure(t, "test suite, first run", lambda: timed_cmd(cmd, nx, env))
        res.measure(t, "test suite, second run (warm)", lambda: timed_cmd(cmd, nx, env))

    def views() -> None:
        # branchfs only: the same git status in the mounted view and in a branch view
        # (.branchfs/branches/NAME/) of a fork holding the same tree.
        if name != "branchfs":
            return
        # a directory of its own: the git section's repository may still be at root/tree
        (root / "views").mkdir()
        run(["tar", "-xf", str(inp.tree_tar)], cwd=root / "views")
        repo = root / "views" / "tree"
        run(["git", "init", "-q"], cwd=repo, env=GIT_ENV)
        run(["sh", "-c", "git add -A && git commit -q -m import"], cwd=repo, env=GIT_ENV)
        os.mkdir(root / ".branchfs" / "branches" / "view")
        status = ["git", "status", "--porcelain"]
        # A fork's files have inode numbers of their own (one identity per file and view),
        # so the first git status there re-reads them all and refreshes the index, as after
        # `cp -a`; measured apart, not in the rows.
        view_repo = root / ".branchfs/branches/view/views/tree"
        res.measure(t, "git status, first in a fork", lambda: timed_cmd(status, view_repo, GIT_ENV))
        places = (("mounted view", repo), ("branch view", view_repo))
        for where, path in places:
            t.cold()
            res.measure(
                t, f"git status, cold, {where}", lambda p=path: timed_cmd(status, p, GIT_ENV)
            )
            warm = lambda p=path: median_of(lambda: timed_cmd(status, p, GIT_ENV), reps)  # noqa: E731
            res.measure(t, f"git status, warm, {where}", warm, runs=reps)

    funcs = (seq, small, git, pip, agent, compile_tree, test_suite, calls, views)
    sections = dict(zip(SECTIONS, funcs, strict=True))
    for section in (sections[name] for name in SECTIONS if name in only):
        try:
            section()
        except Exception as exc:  # record it and go on: the other rows still mean something
            res.errors[f"{name} {section.__name__}"] = f"{type(exc).__name__}: {exc}"
            print(f"  {name} {section.__name__} failed: {exc}", flush=True)


def fork_benchmarks(profile: Profile, inp: Inputs, scratch: Path, res: Results) -> None:
    """Fork a 10,000-file tree: cp -a and git worktree add natively, mkdir through the mount."""
    native = scratch / "fork_native"
    native.mkdir()
    run(["tar", "-xf", str(inp.tree_tar)], cwd=native)
    tree = native / "tree"
    run(["git", "init", "-q"], cwd=tree, env=GIT_ENV)
    run(["sh", "-c", "git add -A && git commit -q -m import"], cwd=tree, env=GIT_ENV)
    cp_times, wt_times = [], []
    for i in range(profile.copies):
        drop_caches()
        cp_times.append(timed_cmd(["cp", "-a", "tree", f"copy{i}"], native))
        shutil.rmtree(native / f"copy{i}")
        wt_times.append(timed_cmd(["git", "worktree", "add", "-q", f"../wt{i}"], tree, GIT_ENV))
        run(["git", "worktree", "remove", "--force", f"../wt{i}"], cwd=tree, env=GIT_ENV)
    res.forks["cp -a (native)"] = summarize(cp_times)
    res.forks["git worktree add (native)"] = summarize(wt_times)
    print(f"  cp -a p50 {fmt_seconds(percentile(cp_times, 50))}", flush=True)
    print(f"  git worktree add p50 {fmt_seconds(percentile(wt_times, 50))}", flush=True)
    shutil.rmtree(native, ignore_errors=True)


def branchfs_forks(profile: Profile, inp: Inputs, scratch: Path, res: Results) -> None:
    """mkdir/rmdir under .branchfs/branches of a mount whose branch holds the 10,000-file tree."""
    with target("branchfs", scratch / "fork_bfs") as t:
        run(["tar", "-xf", str(inp.tree_tar)], cwd=t.root)
        branches = t.root / ".branchfs" / "branches"
        mk, rm = [], []
        for i in range(profile.forks):
            p = branches / f"fork{i}"
            start = time.perf_counter()
            os.mkdir(p)
            mk.append(time.perf_counter() - start)
        # A fork must be a full copy: the tree is there under the new name.
        probe = branches / f"fork{profile.forks - 1}" / "tree"
        if len(os.listdir(probe)) != len(os.listdir(t.root / "tree")):
            raise RuntimeError("a fork made by mkdir does not hold the tree")
        for i in range(profile.forks):
            p = branches / f"fork{i}"
            start = time.perf_counter()
            os.rmdir(p)
            rm.append(time.perf_counter() - start)
    res.forks["mkdir .branchfs/branches/X (branchfs)"] = summarize(mk)
    res.forks["rmdir .branchfs/branches/X (branchfs)"] = summarize(rm)
    print(f"  mkdir fork p50 {fmt_seconds(percentile(mk, 50))}", flush=True)


# ----------------------------------------------------------------------------- report


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b when both are known."""
    return a / b if a is not None and b else None


def table_rows(res: Results, targets: list[str]) -> tuple[list[str], list[list[str]]]:
    """The main table: times per target, ratios and whether the issue's target is met."""
    cols = ["workload", *targets]
    has_bfs = "branchfs" in targets
    if has_bfs:
        cols += [
            "branchfs/native",
            "branchfs/overlay",
            "target",
            "met",
            "daemon requests",
            "requests/file",
            "µs/request",
        ]
    rows = []
    for row, (cls, limit) in ROWS.items():
        got = res.times.get(row, {})
        line = [row, *(fmt_seconds(got.get(t)) for t in targets)]
        if has_bfs:
            rn = ratio(got.get("branchfs"), got.get("native"))
            ro = ratio(got.get("branchfs"), got.get("fuse-overlayfs"))
            want, against = (rn, "native") if cls in ("warm", "seq") else (ro, "overlay")
            if cls == "view":
                mounted = res.times.get(VIEW_OF[row], {}).get("branchfs")
                want, against = ratio(got.get("branchfs"), mounted), "mounted view"
            goal = f"≤{limit:g}x {against}"
            if cls == "view" and want is not None:
                goal += f" (got {want:.2f}x)"
            if cls == "seq":
                goal = "≥½ native throughput"
            met = "—" if want is None else ("yes" if want <= limit else "NO")
            if cls == "meta":
                goal = f"≤{limit:g}x native, <1x overlay"
                ok = rn is not None and rn <= limit and (ro is None or ro < 1)
                met = "—" if rn is None else ("yes" if ok else "NO")
            if cls in ("call", "mounted"):
                goal, met = "—", "—"
            reqs = res.requests.get(row)
            n = sum(reqs.values()) if reqs else 0
            per = f"{got['branchfs'] / n * 1e6:.0f}" if n and "branchfs" in got else "—"
            files = FILES.get(row) or res.files.get(row)
            per_file = f"{n / files:.1f}" if n and files else "—"
            line += [fmt_ratio(rn), fmt_ratio(ro), goal, met]
            line += [f"{n:,}" if n else "—", per_file, per]
        rows.append(line)
    return cols, rows


def fork_rows(res: Results) -> tuple[list[str], list[list[str]]]:
    """The fork table: p50 and p99 of each way to copy a 10,000-file tree."""
    cols = ["fork a 10,000-file tree", "n", "p50", "p99", "target", "met"]
    rows = []
    for name, s in res.forks.items():
        goal, met = "", ""
        if name.startswith("mkdir"):
            goal, met = "p50 ≤ 1 ms", "yes" if s["p50"] <= 1e-3 else "NO"
        rows.append([name, str(s["n"]), fmt_seconds(s["p50"]), fmt_seconds(s["p99"]), goal, met])
    return cols, rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and report it."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="bigger sizes, more repetitions")
    ap.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help="comma-separated subset of " + ",".join(TARGETS),
    )
    ap.add_argument("--scratch", type=Path, default=None, help="where to work (default: /var/tmp)")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated subset of " + ",".join((*SECTIONS, "forks")) + " to run while "
        "working on one of them; such a partial run writes neither the JSON nor the docs",
    )
    ap.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="do not run: print (and write to the docs) the results stored in this JSON file",
    )
    args = ap.parse_args(argv)
    if args.from_json is not None:
        report(json.loads(args.from_json.read_text()), write_doc=not args.no_doc)
        return 0
    profile = FULL if args.full else QUICK
    targets = [t for t in args.targets.split(",") if t]
    only = tuple(o for o in args.only.split(",") if o) or (*SECTIONS, "forks")
    for o in only:
        if o not in (*SECTIONS, "forks"):
            ap.error(f"unknown section {o!r}")
    partial = set(only) != {*SECTIONS, "forks"}
    for t in targets:
        if t not in TARGETS:
            ap.error(f"unknown target {t!r}")

    base = args.scratch or Path("/var/tmp")
    scratch = Path(tempfile.mkdtemp(prefix="branchfs-bench-", dir=base))
    info = machine_info(scratch)
    print(f"machine: {machine_line(info)}", flush=True)
    res = Results()
    dropped = drop_caches()
    res.notes.append(
        "page cache, dentries and inodes dropped (echo 3 > /proc/sys/vm/drop_caches) before "
        "every cold row, then a 3 s wait on every target so that the VM has taken the freed "
        "pages back before any target runs, and the branchfs daemon restarted (its LMDB map "
        "keeps pages mapped, which drop_caches cannot drop)"
        if dropped
        else "could not drop caches (not root): cold rows ran with a warm page cache"
    )
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    try:
        inp = prepare_inputs(profile, scratch)
        for name in targets:
            print(f"{name}:", flush=True)
            try:
                with target(name, scratch) as t:
                    run_workloads(t, profile, inp, res, only)
            except Exception as exc:  # one broken target must not hide the others' figures
                res.errors[name] = f"{type(exc).__name__}: {exc}"
                print(f"  {name} failed: {res.errors[name]}", flush=True)
        if "forks" in only:
            print("forks:", flush=True)
            fork_benchmarks(profile, inp, scratch, res)
        if "branchfs" in targets and "forks" in only:
            try:
                branchfs_forks(profile, inp, scratch, res)
            except Exception as exc:
                res.errors["branchfs forks"] = f"{type(exc).__name__}: {exc}"
                print(f"  branchfs forks failed: {res.errors['branchfs forks']}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.perf_counter() - started
    load_end = os.getloadavg()[0]
    res.notes.append(
        f"load average (1 min) {load_start:.1f} at the start and {load_end:.1f} at the end: "
        "other work on this machine shifts the figures, fuse-overlayfs's most"
    )
    data = {
        "profile": "full" if args.full else "quick",
        "machine": info,
        "inputs": {"tree": inp.tree_desc, "stdlib": inp.stdlib_desc},
        "test_suite": list(profile.nx_tests) if inp.nx_tar else None,
        "targets_run": targets,
        "seconds": res.times,
        "branchfs_requests": res.requests,
        "files": res.files,
        "forks_seconds": res.forks,
        "notes": res.notes,
        "errors": res.errors,
        "elapsed_seconds": elapsed,
        "targets": {row: {"class": c, "limit": lim} for row, (c, lim) in ROWS.items()},
    }
    if partial:
        report(data, write_doc=False)
        return 0
    print(f"wrote {write_json('fuse', data)}")
    report(data, write_doc=not args.no_doc)
    return 0


def report(data: dict[str, Any], *, write_doc: bool) -> None:
    """Print the tables of one run's results and, if asked, write them to docs/benchmarks.md."""
    res = Results(
        times=data["seconds"],
        requests=data.get("branchfs_requests", {}),
        forks=data["forks_seconds"],
        notes=data["notes"],
        errors=data["errors"],
        files=data.get("files", {}),
    )
    ran = {t for got in res.times.values() for t in got}
    targets = data.get("targets_run") or [t for t in TARGETS if t in ran]
    cols, rows = table_rows(res, targets)
    fcols, frows = fork_rows(res)
    title = f"Through the mount ({data['profile']} profile, {data['elapsed_seconds']:.0f} s)"
    print_table(title, cols, rows)
    print_table("Fork", fcols, frows)
    for name, err in res.errors.items():
        print(f"{name}: {err}")
    if write_doc:
        doc = replace_doc_section("Through the mount", doc_body(data, cols, rows, fcols, frows))
        print(f"wrote {doc}")


def doc_body(
    data: dict[str, Any],
    cols: list[str],
    rows: list[list[str]],
    fcols: list[str],
    frows: list[list[str]],
) -> str:
    """The markdown of the "Through the mount" section."""
    m = data["machine"]
    lines = [
        "Generated by `make bench-fuse` (`benchmarks/fuse.py`"
        + (" --full" if data["profile"] == "full" else "")
        + f"); raw figures in `benchmarks/results/fuse.json`. Machine: {machine_line(m)}.",
        "",
        "The same work runs on the native disk, in a fuse-overlayfs mount (Debian's C FUSE "
        "overlay: empty lower dir, upper and work dir on the same disk) and in a branchfs "
        "mount of a fresh store. Sequential write is 1 MiB `write()`s of random data, then "
        "`fsync` and `close`; the read is 1 MiB `read()`s after the caches are dropped; each "
        "is the median of as many runs as the warm rows (the first write into a fresh store "
        "also grows its LMDB file). The "
        f"tree is {data['inputs']['tree']}; compileall runs over the {data['inputs']['stdlib']}"
        " (`-j 1`); the test suite is networkx's own tests "
        f"(`{' '.join(data['test_suite'] or [])}`) with networkx imported from the mount. "
        f'Each "per call" row is one syscall on a 100-byte file the kernel has cached, the '
        f"best of 3 runs of {CALLS:,} calls; it has no target and shows what the rows above "
        "pay per file (Python's `open()` calls `isatty()` before 3.14). "
        + " ".join(n[0].upper() + n[1:] + "." for n in data["notes"]),
        "",
        markdown_table(cols, rows),
        markdown_table(fcols, frows),
    ]
    if data["errors"]:
        lines.append("Failures in this run: ")
        lines += [f"- {k}: {v}" for k, v in data["errors"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
