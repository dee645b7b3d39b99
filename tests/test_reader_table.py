"""A store whose LMDB reader table is full can still be opened by a fresh process (issue 20).

python-lmdb takes a reader slot inside ``lmdb.open`` itself (it opens the main database in a
read transaction), so a process that finds every slot taken by the dead cannot open the
store to clear them. These tests fill the table (1,024 slots) with children SIGKILLed inside
their reads, with no other process keeping the store open and with a plain LMDB holder that
never clears a slot; then a fresh process must open the store, read and write. When live
processes hold every slot, the error names them and says what to do.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import branchfs
from branchfs.meta import DB_NAMES, MAX_READERS

WORKER = str(Path(__file__).parent / "store_worker.py")

#: A fresh process: open the store, read a file, write one; prints what happened as JSON.
FRESH = """
import json, sys, branchfs
try:
    with branchfs.Store.open(sys.argv[1]) as s:
        b = s.branch("main")
        got = b.read_bytes("f").decode()
        b.write_bytes("g", b"written")
        print(json.dumps({"ok": got + "/" + b.read_bytes("g").decode()}))
except branchfs.BranchFSError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


class Worker:
    """A tests/store_worker.py process, one command at a time."""

    def __init__(self, store: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, WORKER, str(store)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        assert answer.startswith("ok"), f"{line!r} answered {answer!r}"
        return answer[3:]

    def fill(self, command: str, n: int) -> None:
        """Run ``command K`` until ``n`` children got into their reads."""
        got = 0
        while got < n:
            got += int(self.ask(f"{command} {min(128, n - got)}"))

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _fresh(path: Path) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", FRESH, str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, str] = json.loads(done.stdout)
    return answer


def _holder(path: Path) -> subprocess.Popen[str]:
    """A plain LMDB process keeping the environment (and its reader table) alive; it never
    clears a stale slot."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import lmdb,sys; e=lmdb.open(sys.argv[1], max_readers=int(sys.argv[2]), "
            "max_dbs=int(sys.argv[3])); print('up', flush=True); sys.stdin.read()",
            str(path),
            str(MAX_READERS),
            str(len(DB_NAMES) + 2),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "up"
    return proc


def _made(path: Path) -> None:
    with branchfs.Store.open(path, create=True) as s:
        s.create_branch("main").write_bytes("f", b"data")


@pytest.mark.parametrize("held", [False, True], ids=["nobody-holds-it", "a-holder-keeps-it"])
def test_a_fresh_process_opens_a_table_full_of_the_dead(tmp_path: Path, held: bool) -> None:
    path = tmp_path / "store.bfs"
    _made(path)
    holder = _holder(path) if held else None
    zygote = Worker(path)
    try:
        zygote.fill("raw-readers", MAX_READERS)  # all SIGKILLed inside their reads
        assert _fresh(path) == {"ok": "data/written"}
        assert _fresh(path) == {"ok": "data/written"}  # and again: nothing was left broken
    finally:
        zygote.close()
        if holder is not None:
            holder.kill()
            holder.wait()


def test_a_table_full_of_live_readers_names_them(tmp_path: Path) -> None:
    path = tmp_path / "store.bfs"
    _made(path)
    zygote = Worker(path)
    try:
        zygote.fill("hold-readers", MAX_READERS)  # alive, each inside its read
        answer = _fresh(path)
        assert answer.get("error") == "ReadersFull", answer
        message = answer["message"]
        assert str(path) in message
        assert re.search(r"\bpids? \d+", message), message  # who holds them
        assert "store_worker.py" in message  # what the holders are, from /proc
        assert "end" in message.lower()  # and what to do
        zygote.ask("release")  # SIGKILLed: now they are stale slots
        assert _fresh(path) == {"ok": "data/written"}
    finally:
        zygote.close()
