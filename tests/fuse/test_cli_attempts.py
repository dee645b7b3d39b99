"""``branchfs run`` and ``branchfs best-of`` through real subprocesses and real signals."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fusecheck import needs_fuse
from leftovers import leftovers, trees_in_logs

import branchfs

pytestmark = needs_fuse


def branchfs_cli(store: Path, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "branchfs.cli", "--store", str(store), *args],
        capture_output=True,
        text=True,
        **kw,  # type: ignore[call-overload]
    )


def test_run_exit_status_is_the_commands(store_path: Path) -> None:
    done = branchfs_cli(store_path, "run", "main", "--", "sh", "-c", "echo x > f; exit 5")
    assert done.returncode == 5, done.stderr
    with branchfs.Store.open(store_path) as store:
        assert store.branch("main").read_text("f") == "x\n"
    missing = branchfs_cli(store_path, "run", "nope", "--", "true")
    assert missing.returncode == 2 and "nope" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_best_of_json_and_exit_status(store_path: Path) -> None:
    done = branchfs_cli(
        store_path, "best-of", "3", "--run", 'echo "$BRANCHFS_ATTEMPT" > n',
        "--score", "cat n", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["ok"] is True and answer["winner"] == 3
    assert [a["status"] for a in answer["attempts"]] == ["passed", "passed", "won"]
    assert answer["attempts"][0]["changes"] == [{"kind": "added", "path": "n"}]
    failing = branchfs_cli(store_path, "best-of", "2", "--run", "exit 1")
    assert failing.returncode == 1
    assert "no attempt passed; main is untouched" in failing.stdout
    bad = branchfs_cli(store_path, "best-of", "two", "--run", "true")
    assert bad.returncode == 2 and "whole number" in bad.stderr


CALC_TESTS = "from calc import add\n\n" + "".join(
    f"\ndef test_add_{i}():\n    assert add({i}, 1) == {i + 1}\n" for i in range(8)
)


def test_best_of_a_failing_suite_never_beats_a_passing_one(
    tmp_path: Path, store_path: Path
) -> None:
    """The README's pytest score: attempt 1 fails a test yet prints the larger last number
    ("1 failed, 9 passed in 0.05s", two tests of its own added); attempt 2 passes all 8."""
    with branchfs.Store.open(store_path) as store:
        store.branch("main").write_text("test_calc.py", CALC_TESTS)
    step = tmp_path / "step.sh"  # outside the trees: given by its absolute path
    step.write_text(
        'if [ "$BRANCHFS_ATTEMPT" = 1 ]; then\n'
        "  printf 'def add(a, b):\\n    return 2 if a == 0 else a + b\\n' > calc.py\n"
        "  printf 'def test_x():\\n    pass\\n\\ndef test_y():\\n    pass\\n' > test_more.py\n"
        "else\n"
        "  printf 'def add(a, b):\\n    return a + b\\n' > calc.py\n"
        "fi\n"
    )
    step.chmod(0o755)
    score = f"{sys.executable} -m pytest -q -p no:cacheprovider"
    done = branchfs_cli(
        store_path, "best-of", "2", "--run", str(step), "--score", score, "--json", timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    assert answer["winner"] == 2, answer
    first, second = answer["attempts"]
    assert first["status"] == "failed" and first["score"] is None
    assert "score command exited with status 1" in first["error"]
    assert "1 failed, 9 passed" in Path(first["log"]).read_text()
    assert second["status"] == "won" and second["score"] == 8.0
    out = tmp_path / "out"
    with branchfs.Store.open(store_path) as store:
        store.branch("main").export_dir(out)
    suite = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                           cwd=out, capture_output=True, text=True)  # fmt: skip
    assert suite.returncode == 0, suite.stdout
    assert not (out / "test_more.py").exists()


def test_a_branch_that_ran_pytest_merges_whatever_rule_matches_its_cache(
    store_path: Path,
) -> None:
    """A user's report: with ``README.md union`` in .branchfs-merge, a branch that ran pytest
    (which writes .pytest_cache/README.md) did not merge into an unchanged main: exit 1,
    "the directory was deleted"; best-of kept its winner unmerged the same way."""
    with branchfs.Store.open(store_path) as store:
        main = store.branch("main")
        main.write_text(".branchfs-merge", "README.md union\n")
        main.write_text("README.md", "# calc\n")
        main.write_text("calc.py", "def add(a, b):\n    return a + b\n")
        main.write_text("test_calc.py", CALC_TESTS)
    assert branchfs_cli(store_path, "fork", "main", "f").returncode == 0
    pytest_q = [sys.executable, "-m", "pytest", "-q"]
    ran = branchfs_cli(store_path, "run", "f", "--", *pytest_q, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    with branchfs.Store.open(store_path) as store:
        assert store.branch("f").exists(".pytest_cache/README.md")
    merged = branchfs_cli(store_path, "merge", "f", "--into", "main")
    assert merged.returncode == 0, merged.stdout + merged.stderr
    best = branchfs_cli(
        store_path, "best-of", "2", "--run", 'echo "$BRANCHFS_ATTEMPT" > n',
        "--score", " ".join(pytest_q), "--json", timeout=120,
    )  # fmt: skip
    assert best.returncode == 0, best.stdout + best.stderr
    assert json.loads(best.stdout)["ok"] is True
    with branchfs.Store.open(store_path) as store:
        main = store.branch("main")
        assert main.exists("n")
        assert not main.exists(".pytest_cache") and not main.exists("__pycache__")


def test_best_of_says_a_relative_command_is_not_in_the_tree(
    tmp_path: Path, store_path: Path
) -> None:
    (tmp_path / "agent-step.sh").write_text("#!/bin/sh\ntrue\n")
    (tmp_path / "agent-step.sh").chmod(0o755)
    with branchfs.Store.open(store_path) as store:
        store.branch("main").write_text("plain.txt", "not executable\n")
    for command, status, what in (
        ("./agent-step.sh", 127, "was not found"),
        ("./plain.txt", 126, "is not executable"),
    ):
        done = branchfs_cli(store_path, "best-of", "1", "--run", command, cwd=tmp_path)
        assert done.returncode == 1, done.stdout + done.stderr
        note = f"exited with status {status}: the command {what} in the attempt's tree"
        assert note in " ".join(done.stdout.split()), done.stdout
        assert "absolute path" in done.stdout


def default_sigint() -> None:
    """In the child: SIGINT as a terminal's Ctrl-C gives it (a shell's background job, as
    `make test` may be, starts with SIGINT ignored, and Python keeps that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signals", [1, 2], ids=["once", "twice"])
def test_sigint_to_best_of_leaves_nothing_behind(
    signals: int, tmp_path: Path, store_path: Path
) -> None:
    """Ctrl-C, or an impatient user's second one while the first cleans up: exit 130, one
    line, nothing left."""
    with branchfs.Store.open(store_path) as store:
        store.branch("main").write_text("a.txt", "base\n")
    logs = tmp_path / "logs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "branchfs.cli", "--store", str(store_path), "best-of", "4",
         "--run", "echo running; sleep 600", "--logs", str(logs)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=default_sigint,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if len([p for p in logs.glob("attempt-*.log") if "running" in p.read_text()]) == 4:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"the attempts never all started: {proc.communicate()}")
    proc.send_signal(signal.SIGINT)
    if signals == 2:
        time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.count("interrupted") == 1 and "Traceback" not in err, err
    trees = trees_in_logs(logs)
    assert len(trees) == 4
    assert leftovers(store_path, trees) == []
    with branchfs.Store.open(store_path) as store:
        assert store.branches() == ["main"]
        assert store.branch("main").read_text("a.txt") == "base\n"
        assert store.branch("main").listdir() == ["a.txt"]
