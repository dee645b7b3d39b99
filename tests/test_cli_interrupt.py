"""Ctrl-C at any moment of a ``branchfs`` command: exit status 130, one line, no traceback.

The command runs as a user's shell runs it (the console script, a new interpreter) under
``python -X importtime``, which writes a line to stderr as each import finishes: the test
sends SIGINT the moment a chosen module has loaded, so the signal lands during the
start-up imports that follow it, every run, whatever the machine's load. The command is
an ``import`` of a few thousand files, long enough that it cannot finish first.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from clirun import bfs, entry_point

#: SIGINT is sent when this module's import finishes (the last one: inside the verb).
STAGES = ("branchfs.entry", "click", "branchfs.commands.spec", "branchfs.cli", "branchfs.store")


def _command(*args: str) -> list[str]:
    return [sys.executable, "-X", "importtime", *entry_point(), *args]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for i in range(3000):
        d = src / f"d{i % 30}"
        d.mkdir(exist_ok=True)
        (d / f"f{i}.txt").write_text(f"{i}\n" * 50)
    return src


@pytest.mark.parametrize("stage", STAGES)
def test_ctrl_c_while_starting_exits_130_in_one_line(
    stage: str, source: Path, tmp_path: Path
) -> None:
    store = tmp_path / "s.bfs"
    assert bfs("init", str(store)).code == 0
    proc = subprocess.Popen(
        _command("--store", str(store), "import", str(source)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("import time") and line.split("|")[-1].strip() == stage:
            proc.send_signal(signal.SIGINT)
            break
    else:
        pytest.fail(f"{stage} was never imported:\n{''.join(seen)}")
    out, err = proc.communicate(timeout=120)
    said = [s for s in (*seen, *err.splitlines()) if s.strip() and not s.startswith("import time")]
    assert proc.returncode == 130, (proc.returncode, said, out)
    assert said == ["branchfs: interrupted"], said
    # Nothing was half-done: the store checks clean, whatever the copy had reached.
    check = bfs("fsck", "--json", store=store)
    assert check.code == 0 and check.json["ok"], check


#: A command (run by branchfs.entry.guarded, as the console script runs one) that is
#: interrupted inside an ``exec`` of a string (as ``dataclasses`` builds its methods on
#: import), and interrupted again while its clean-up runs, which must still finish. Run
#: with ``-m``, as ``python -m branchfs`` runs: unlike a script or ``-c``, that exit checks
#: CPython's flag of an unhandled Ctrl-C, which an ``exec`` sets.
_TWICE = """
import os, signal, sys, time
from pathlib import Path
from branchfs.entry import guarded

def command():
    try:
        exec("os.kill(os.getpid(), signal.SIGINT)\\nfor _ in range(10**6): pass")
    finally:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        Path(sys.argv[1]).write_text("cleaned up")

guarded(command)
"""


def test_ctrl_c_twice_cleans_up_and_exits_130_in_one_line(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    (tmp_path / "twice.py").write_text(_TWICE)
    proc = subprocess.run(
        [sys.executable, "-m", "twice", str(marker)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # not inherited SIG_IGN
    )
    # Not -2 (killed by SIGINT): CPython's exit after a KeyboardInterrupt that left an exec.
    assert proc.returncode == 130, (proc.returncode, proc.stderr)
    assert proc.stderr.splitlines() == ["branchfs: interrupted"], proc.stderr
    assert marker.read_text() == "cleaned up"
