"""best-of end to end with real mounts, real git, real pytest and real signals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fusecheck import needs_fuse
from leftovers import leftovers, trees_in_logs
from project import git, make_project, run_command, write_patches

import branchfs
from branchfs.bestof import Attempt, best_of, last_number

pytestmark = needs_fuse


def chunk_bytes(store: branchfs.Store) -> int:
    """Bytes of file data the store holds (every chunk once)."""
    with store.meta.read() as txn:
        return sum(len(v) for _k, v in txn.cursor(db=store.meta.chunks_db))


def test_last_number_is_the_last_number_token() -> None:
    assert last_number(b"3 passed, 1 failed in 0.12s\n") == 1.0
    assert last_number(b"score: -2.5\nfinal 1e3\n") == 1000.0
    assert last_number(b"py311 ok\n") is None
    assert last_number(b"") is None


def test_best_of_merges_the_fixer_and_leaves_nothing(tmp_path: Path, store_path: Path) -> None:
    project = make_project(tmp_path / "project")
    patches = write_patches(tmp_path / "patches", ["break-add", "hang", "fix", "break-mul"])
    with branchfs.Store.open(store_path) as store:
        main = store.branch("main")
        main.import_dir(project)
        before = chunk_bytes(store)
        trees: list[str] = []

        def seen(a: Attempt) -> None:
            if a.tree is not None and a.tree not in trees:
                trees.append(a.tree)

        result = best_of(store, 4, run_command(patches), timeout=20, on_update=seen)

        by_index = {a.index: a for a in result.attempts}
        assert result.winner is not None and result.winner.index == 3, result.to_json()
        assert result.ok
        assert [by_index[i].status for i in (1, 2, 3, 4)] == ["failed", "timeout", "won", "failed"]
        assert by_index[2].error is not None and "timeout" in by_index[2].error
        assert {c.path for c in by_index[3].changes} >= {"calc.py", "build.bin"}
        assert "1 failed" in by_index[1].log.read_text()  # the suite's output is in the log
        assert store.branches() == ["main"]
        assert len(trees) == 4
        assert leftovers(store_path, trees) == []

        # main holds the fixer's commit, and its tree is clean for git and green for pytest.
        out = tmp_path / "out"
        main.export_dir(out)
        assert git(out, "log", "-1", "--format=%s").strip() == "fix sub"
        assert git(out, "status", "--porcelain") == ""
        tests = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=out,
            capture_output=True,
            text=True,
        )
        assert tests.returncode == 0, tests.stdout

        # The losers' branches are gone: after discard (small layers go at once) and gc,
        # the store holds the base and the winner's 1 MiB artifact, not the losers' 3 MiB.
        store.gc()
        assert chunk_bytes(store) - before < 1.5 * (1 << 20)
        assert store.fsck().ok


def test_all_failing_leaves_the_base_untouched(tmp_path: Path, store_path: Path) -> None:
    with branchfs.Store.open(store_path) as store:
        store.branch("main").write_text("a.txt", "base\n")
        result = best_of(store, 2, "echo changed > a.txt; exit 3")
        assert not result.ok and result.winner is None
        assert [a.status for a in result.attempts] == ["failed", "failed"]
        assert [a.exit_status for a in result.attempts] == [3, 3]
        assert store.branch("main").read_text("a.txt") == "base\n"
        assert store.branches() == ["main"]


def test_score_callable_and_keep(tmp_path: Path, store_path: Path) -> None:
    with branchfs.Store.open(store_path) as store:
        store.branch("main").write_text("n.txt", "0\n")
        result = best_of(
            store,
            3,
            ["sh", "-c", 'echo "$BRANCHFS_ATTEMPT" > n.txt'],
            score=lambda t: -abs(int(t.branch.read_text("n.txt")) - 2),
            keep=True,
        )
        assert result.winner is not None and result.winner.index == 2
        assert store.branch("main").read_text("n.txt") == "2\n"
        assert sorted(store.branches()) == sorted(["main", *(a.branch for a in result.attempts)])
        assert result.to_json()["winner"] == 2
        json.dumps(result.to_json())


_INTERRUPTED = """
import sys, branchfs
from branchfs.bestof import best_of
try:
    best_of(sys.argv[1], 4, "echo running; sleep 600", log_dir=sys.argv[2],
            on_update=lambda a: a.tree and (sys.stdout.write(a.tree + "\\n"), sys.stdout.flush()))
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_sigint_halfway_leaves_nothing_behind(tmp_path: Path, store_path: Path) -> None:
    with branchfs.Store.open(store_path) as store:
        store.branch("main").write_text("a.txt", "base\n")
        store.snapshot("main", "before")
    logs = tmp_path / "logs"
    proc = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED, str(store_path), str(logs)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # not inherited SIG_IGN
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        ready = [p for p in logs.glob("attempt-*.log") if "running" in p.read_text()]
        if len(ready) == 4:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the attempts never all started")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    trees = [line for line in out.splitlines() if line.startswith("/")]
    assert len(set(trees)) == 4
    assert sorted(trees_in_logs(logs)) == sorted(set(trees))
    assert leftovers(store_path, trees) == []
    with branchfs.Store.open(store_path) as store:
        assert store.branches() == ["main"]
        store.fork_snapshot("before", "check")
        assert store.diff("main", "check") == []


def test_zygote_reports_a_failed_mount(tmp_path: Path, store_path: Path) -> None:
    from branchfs.mount import MountError
    from branchfs.spawner import Spawner, mounted_by

    (tmp_path / "m1").mkdir()
    (tmp_path / "m2").mkdir()
    with Spawner() as spawner:
        with pytest.raises(MountError, match="no-such-branch"):
            spawner.start(str(store_path), str(tmp_path / "m1"), "no-such-branch")
        with mounted_by(spawner, str(store_path), str(tmp_path / "m2"), "main") as mnt:
            (mnt / "x").write_text("through a forked daemon\n")
    with branchfs.Store.open(store_path) as store:
        assert store.branch("main").read_text("x") == "through a forked daemon\n"
    assert leftovers(store_path, []) == []
    assert not os.path.ismount(tmp_path / "m1") and not os.path.ismount(tmp_path / "m2")


def test_sigkilled_best_of_leaves_no_mount(tmp_path: Path, store_path: Path) -> None:
    """SIGKILL cannot be cleaned up after, but the zygote then stops the daemons it forked
    and removes their temporary mountpoints."""
    logs = tmp_path / "logs"
    script = "import sys; from branchfs.bestof import best_of; "
    script += "best_of(sys.argv[1], 2, 'echo running; sleep 600', log_dir=sys.argv[2])"
    proc = subprocess.Popen([sys.executable, "-c", script, str(store_path), str(logs)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if len([p for p in logs.glob("attempt-*.log") if "running" in p.read_text()]) == 2:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    trees = trees_in_logs(logs)
    assert len(trees) == 2
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(os.path.exists(t) for t in trees):
            time.sleep(0.05)
        assert not any(os.path.ismount(t) for t in trees)
        assert not any(os.path.exists(t) for t in trees)  # the temporary mountpoints too
    finally:
        for left in leftovers(store_path, []):  # the attempts' own processes: ours to end
            if left.startswith("process "):
                pid = int(left.split()[1].rstrip(":"))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_a_winner_that_conflicts_with_a_moved_base_says_what_clashed(store_path: Path) -> None:
    with branchfs.Store.open(store_path) as store:
        main = store.branch("main")
        main.write_bytes("f.txt", b"base\n")

        def run(trial: branchfs.Trial) -> bool:
            trial.branch.write_bytes("f.txt", b"attempt\n")
            store.branch("main").write_bytes("f.txt", b"main moved on\n")
            return True

        result = best_of(store, 1, run, mount=False)

        assert result.winner is None and not result.ok
        assert result.error is not None
        assert "f.txt" in result.error and "content" in result.error, result.error
        assert "branchfs merge" in result.error and "--strategy" in result.error
        assert main.read_bytes("f.txt") == b"main moved on\n"
        assert sorted(store.branches()) == sorted(["main", result.attempts[0].branch])
