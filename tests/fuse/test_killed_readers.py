"""Processes SIGKILLed inside a read transaction do not brick the store (issue 20).

Each killed reader leaves its LMDB reader slot behind. 1,100 of them (more than the 1,024
slots) are killed while a holder process and a mount keep the store open; afterwards the
holder, the mount and a fresh process all work, and the slots they pinned did not make
``data.mdb`` grow (a stale slot keeps every page freed after its snapshot from reuse).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import branchfs
from branchfs.mount import ctl

WORKER = str(Path(__file__).parent.parent / "store_worker.py")


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

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def test_1100_killed_readers_beside_a_holder_and_a_mount(mounted_store) -> None:
    mnt, path = mounted_store.path, mounted_store.store_path
    (mnt / "base").write_bytes(os.urandom(1 << 20))
    (mnt / "churn").write_bytes(os.urandom(256 << 10))
    holder, zygote = Worker(path), Worker(path)
    try:
        holder.ask("open")
        assert holder.ask("read base") == str(1 << 20)
        size_before = os.path.getsize(path / "data.mdb")
        killed = 0
        for batch in range(22):
            # alternately branchfs readers (which clear stale slots when they open) and
            # plain LMDB ones (which do not): the holder, the mount and this process must
            # clear them while writing
            kind = "readers" if batch % 2 else "raw-readers"
            assert zygote.ask(f"{kind} 50") == "50"
            killed += 50
            (mnt / "churn").write_bytes(os.urandom(256 << 10))
            holder.ask(f"write held{batch % 3} 65536")
        assert killed == 1100
        assert holder.ask("read base") == str(1 << 20)
        assert (mnt / "base").stat().st_size == 1 << 20
        assert len((mnt / "churn").read_bytes()) == 256 << 10
        fresh = subprocess.run(
            [
                sys.executable,
                "-c",
                "import branchfs,sys; s=branchfs.Store.open(sys.argv[1]); "
                "print(len(s.branch('main').read_bytes('base')))",
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert fresh.returncode == 0, fresh.stderr
        assert fresh.stdout.strip() == str(1 << 20)
        size_after = os.path.getsize(path / "data.mdb")
        assert size_after <= 2 * size_before, (size_before, size_after)
        assert mounted_store.store.fsck().ok
        # every reader's settle was answered, none waited out the timeout
        assert ctl(mnt, "stats").get("settle_timeouts", 0) == 0
    finally:
        holder.close()
        zygote.close()


def test_a_full_reader_table_is_cleared_and_the_call_retried(tmp_path: Path) -> None:
    """Stale slots fill the table before anyone clears them: the next call clears and works."""
    path = tmp_path / "store.bfs"
    with branchfs.Store.open(path, create=True) as s:
        s.create_branch("main").write_bytes("f", b"data")
    # A plain LMDB holder keeps the environment (and its reader table) alive and never
    # clears a slot; the branchfs store is opened before the table fills up.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import lmdb,sys; e=lmdb.open(sys.argv[1], max_readers=1024, max_dbs=13); "
            "print('up', flush=True); sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    zygote = Worker(path)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "up"
        with branchfs.Store.open(path) as store:
            store.meta._next_reader_check = float("inf")  # no periodic clearing: only on full
            got = 0
            while got < 1024:
                got += int(zygote.ask(f"raw-readers {min(64, 1024 - got)}"))
            # the table is full of dead processes: this process's slot was taken too
            assert len(store.meta.env.readers().splitlines()) - 1 == 1024
            assert store.branch("main").read_bytes("f") == b"data"
            store.branch("main").write_bytes("g", b"more")
    finally:
        holder.kill()
        holder.wait()
        zygote.close()
