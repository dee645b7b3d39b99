"""``make demo``: the main job on a real tree, with what each step cost.

Imports the Python standard library of this interpreter (thousands of real files) into a
store in a temporary directory, forks 8 attempts, changes each differently, diffs them
against main, merges the winner, shows a conflicting attempt being refused with every
conflict listed (main untouched), discards the rest, collects garbage and checks the store.

Run it with ``python -m branchfs.demo [--keep] [--source DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sysconfig
import tempfile
import time
from collections.abc import Callable
from typing import TypeVar

from rich.console import Console
from rich.table import Table

import branchfs

T = TypeVar("T")
ATTEMPTS = 8
SKIP_TOP = {"site-packages", "__pycache__", "dist-packages"}


def _du(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
    return total


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def _duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


class Steps:
    """Times each step and collects the rows of the final table."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.rows: list[tuple[str, str, str]] = []

    def run(self, name: str, fn: Callable[[], T], detail: Callable[[T], str] = str) -> T:
        """Run ``fn`` as the step ``name`` and keep its cost and ``detail(result)`` for the
        table; a terminal shows the running step meanwhile (a transient status line)."""
        started = time.perf_counter()
        if self.console.is_terminal:
            with self.console.status(f"{name} …"):
                result = fn()
        else:
            result = fn()
        elapsed = time.perf_counter() - started
        self.rows.append((name, _duration(elapsed), detail(result)))
        return result


def _edits(store: branchfs.Store) -> dict[str, Callable[[branchfs.Branch], None]]:
    """Eight different attempts at "a change", each a real edit of the library."""

    def append_line(path: str, line: bytes) -> Callable[[branchfs.Branch], None]:
        def edit(b: branchfs.Branch) -> None:
            with b.open(path, "ab") as fh:
                fh.write(line)

        return edit

    def replace_first(path: str, old: bytes, new: bytes) -> Callable[[branchfs.Branch], None]:
        def edit(b: branchfs.Branch) -> None:
            b.write_bytes(path, b.read_bytes(path).replace(old, new, 1))

        return edit

    def several(*edits: Callable[[branchfs.Branch], object]) -> Callable[[branchfs.Branch], None]:
        def edit(b: branchfs.Branch) -> None:
            for e in edits:
                e(b)

        return edit

    return {
        "attempt-1": several(
            replace_first("json/__init__.py", b"import codecs", b"import codecs  # attempt 1"),
            append_line("json/decoder.py", b"\n# decoder tuned by attempt 1\n"),
        ),
        "attempt-2": replace_first("json/__init__.py", b"import codecs", b"import codecs  # try 2"),
        "attempt-3": lambda b: b.rename("textwrap.py", "textwrap_renamed.py"),
        "attempt-4": lambda b: b.rmtree("xmlrpc"),
        "attempt-5": several(
            lambda b: b.makedirs("newpkg/sub"),
            lambda b: b.write_bytes("newpkg/__init__.py", b"VERSION = 5\n"),
            lambda b: b.write_bytes("newpkg/sub/data.bin", os.urandom(200_000)),
        ),
        "attempt-6": lambda b: b.chmod("this.py", 0o600),
        "attempt-7": append_line("colorsys.py", b"\n# attempt 7 was here\n"),
        "attempt-8": lambda b: b.setxattr("abc.py", "user.reviewed", b"attempt-8"),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns a process exit status."""
    parser = argparse.ArgumentParser(prog="python -m branchfs.demo", description=__doc__)
    parser.add_argument("--source", help="directory to import (default: the stdlib)")
    parser.add_argument("--keep", action="store_true", help="keep the store and print its path")
    args = parser.parse_args(argv)
    console = Console()
    source = args.source or sysconfig.get_paths()["stdlib"]
    workdir = tempfile.mkdtemp(prefix="branchfs-demo-")
    store_path = os.path.join(workdir, "demo.bfs")
    steps = Steps(console)
    console.print(f"[bold]branchfs demo[/bold]: a store at {store_path}, importing {source}\n")
    try:
        store = steps.run(
            "init store", lambda: branchfs.Store.open(store_path, create=True), lambda s: ""
        )
        main_branch = store.create_branch("main")

        def import_tree() -> int:
            count = 0
            for name in sorted(os.listdir(source)):
                full = os.path.join(source, name)
                if name in SKIP_TOP or name.startswith("."):
                    continue
                if os.path.isdir(full) and not os.path.islink(full):
                    count += main_branch.import_dir(full, name)
                elif os.path.isfile(full) and not os.path.islink(full):
                    with open(full, "rb") as fh:
                        main_branch.write_bytes(name, fh.read())
                    count += 1
            return count

        n_files = steps.run(
            "import the standard library",
            import_tree,
            lambda n: f"{n} entries (site-packages skipped)",
        )
        forks = steps.run(
            f"fork {ATTEMPTS} attempts",
            lambda: [main_branch.fork(name) for name in _edits(store)],
            lambda fs: f"{len(fs)} branches, each a full writable copy of {n_files} entries",
        )
        edits = _edits(store)
        steps.run(
            "edit each attempt differently",
            lambda: [edits[b.name](b) for b in forks],
            lambda done: f"{len(done)} different changes (edit, rename, rmtree, add, chmod, xattr)",
        )
        for branch in forks:

            def diff(b: branchfs.Branch = branch) -> list[branchfs.Change]:
                return main_branch.diff(b)

            steps.run(
                f"diff main {branch.name}",
                diff,
                lambda cs: (
                    ", ".join(str(c).split()[0] + " " + c.path for c in cs[:3])
                    + (" …" if len(cs) > 3 else "")
                ),
            )
        steps.run(
            "merge attempt-1 into main (the winner)",
            lambda: main_branch.merge("attempt-1"),
            lambda r: f"{len(r.changes)} changes applied",
        )
        steps.run(
            "merge attempt-5 (a clean addition) too",
            lambda: main_branch.merge("attempt-5"),
            lambda r: f"{len(r.changes)} changes applied",
        )
        before = main_branch.read_bytes("json/__init__.py")

        def conflicting_merge() -> str:
            try:
                main_branch.merge("attempt-2")
            except branchfs.MergeConflict as exc:
                unchanged = main_branch.read_bytes("json/__init__.py") == before
                first = exc.conflicts[0]
                return (
                    f"refused: {len(exc.conflicts)} conflict ({first.kind} at {first.path}); "
                    f"main unchanged: {unchanged}"
                )
            return "merged (unexpected: attempt-2 should conflict with attempt-1)"

        steps.run("merge attempt-2 (conflicts with attempt-1)", conflicting_merge)

        def discard_others() -> int:
            for b in forks:
                store.discard(b.name)
            return len(forks)

        steps.run(
            "discard the other attempts",
            discard_others,
            lambda r: f"{r} branches discarded, their data freed",
        )
        steps.run(
            "gc",
            store.gc,
            lambda r: (
                f"{r.layers_removed} layers removed, {r.layers_squashed} squashed, "
                f"{_human(r.bytes_freed)} of chunks freed"
                if r.layers_removed or r.layers_squashed
                else "nothing left: discard already freed the attempts' small layers"
            ),
        )
        report = steps.run(
            "fsck",
            store.fsck,
            lambda r: (
                ("clean" if r.ok else f"{len(r.problems)} problems")
                + f", {r.chunks} chunks ({_human(r.bytes_checked)}) verified"
            ),
        )
        store.sync()
        tree_bytes = sum(
            _du(os.path.join(source, n))
            for n in os.listdir(source)
            if n not in SKIP_TOP and not n.startswith(".")
        )
        store_bytes = _du(store_path)
        table = Table(title="What each step cost")
        table.add_column("step")
        table.add_column("time", justify="right")
        table.add_column("result")
        for row in steps.rows:
            table.add_row(*row)
        console.print(table)
        console.print(
            f"source tree on disk: {_human(tree_bytes)}; the store with main after the merges: "
            f"{_human(store_bytes)}"
        )
        store.close()
        return 0 if report.ok else 1
    finally:
        if args.keep:
            console.print(f"store kept at {store_path}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
