"""Compaction gives space back beside processes that keep using the store, and survives
being killed at any step (issue 20)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import branchfs
from branchfs import paths, tree

WORKER = str(Path(__file__).parent / "store_worker.py")


def _worker(path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, WORKER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _ask(proc: subprocess.Popen[str], line: str) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def _churned(path: Path) -> dict[str, bytes]:
    """A store that held 24 MiB and now holds 1 MiB: its file stays big until compacted."""
    with branchfs.Store.open(path, create=True) as s:
        b = s.create_branch("main")
        for i in range(96):
            b.write_bytes(f"gone{i}", os.urandom(256 << 10))
        keep = {"keep": os.urandom(1 << 20), "small": b"tiny", "dir/x": b"x" * 3000}
        b.makedirs("dir")
        for name, data in keep.items():
            b.write_bytes(name, data)
        for i in range(96):
            b.remove(f"gone{i}")
        s.gc()
    return keep


def _check(store: branchfs.Store, keep: dict[str, bytes]) -> None:
    b = store.branch("main")
    for name, data in keep.items():
        assert b.read_bytes(name) == data
    report = store.fsck()
    assert report.ok, report.problems


def test_compaction_beside_a_holder_and_an_open_read(tmp_path: Path) -> None:
    path = tmp_path / "store.bfs"
    keep = _churned(path)
    before = os.path.getsize(path / "data.mdb")
    store = branchfs.Store.open(path)  # a process that keeps the store open
    holder = _worker(path)
    try:
        assert _ask(holder, "open") == "ok"
        inside, done = threading.Event(), threading.Event()
        seen: list[bytes] = []

        def long_read() -> None:
            with store.viewing("main") as v:  # a read that spans the compaction
                inside.set()
                done.wait(60)
                seen.append(bytes(tree.read(v, paths.resolve(v, "keep"), 0, 1 << 20)))

        t = threading.Thread(target=long_read)
        t.start()
        assert inside.wait(30)
        compactor = _worker(path)
        try:
            assert _ask(compactor, "open") == "ok"
            answer = _ask(compactor, "compact")
            assert answer.startswith("ok"), answer
        finally:
            compactor.kill()
            compactor.wait()
        done.set()
        t.join()
        assert seen == [keep["keep"]]
        after = os.path.getsize(path / "data.mdb")
        assert after < before / 4, (before, after)
        # every process follows to the new file, reads and writes there
        assert _ask(holder, "read keep") == f"ok {1 << 20}"
        assert _ask(holder, "write fromholder 5000") == "ok"
        store.branch("main").write_bytes("fromhere", b"h" * 4000)
        assert _ask(holder, "read fromhere") == "ok 4000"
        assert len(store.branch("main").read_bytes("fromholder")) == 5000
        keep["fromhere"] = b"h" * 4000
        _check(store, keep)
    finally:
        holder.kill()
        holder.wait()
        store.close()
    with branchfs.Store.open(path) as fresh:
        _check(fresh, keep)


@pytest.mark.parametrize("step", ["copied", "marked", "renamed"])
def test_compaction_killed_halfway(tmp_path: Path, step: str) -> None:
    path = tmp_path / "store.bfs"
    keep = _churned(path)
    before = os.path.getsize(path / "data.mdb")
    store = branchfs.Store.open(path)
    try:
        compactor = _worker(path)
        try:
            assert _ask(compactor, "open") == "ok"
            assert _ask(compactor, f"pause {step}") == "ok"
            assert _ask(compactor, "compact") == f"paused {step}"
        finally:
            compactor.kill()  # SIGKILL, in the middle of the protocol
            compactor.wait()
        # the process that had the store open goes on (waiting for nobody)
        _check(store, keep)
        store.branch("main").write_bytes("later", b"l")
        keep["later"] = b"l"
        _check(store, keep)
    finally:
        store.close()
    with branchfs.Store.open(path) as fresh:
        _check(fresh, keep)
        size = os.path.getsize(path / "data.mdb")
        if step == "renamed":
            assert size < before / 4
        report = fresh.compact()  # and the next compaction works
        assert report.bytes_after < before / 4
        _check(fresh, keep)
    assert not (path / "compact.tmp").exists()


def test_gc_compact_and_fsck_from_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "store.bfs"
    keep = _churned(path)
    before = os.path.getsize(path / "data.mdb")
    cli = [sys.executable, "-m", "branchfs.cli", "--store", str(path)]
    done = subprocess.run([*cli, "gc", "--compact", "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["ok"] and answer["compact"]["bytes_after"] < before / 4
    assert oct(os.stat(path / "data.mdb").st_mode & 0o777) == "0o600"  # still private
    with branchfs.Store.open(path) as s:
        _check(s, keep)
    os.truncate(path / "data.mdb", os.path.getsize(path / "data.mdb") // 2)
    done = subprocess.run([*cli, "fsck", "--json"], capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    answer = json.loads(done.stdout)
    assert [p["kind"] for p in answer["problems"]] == ["unreadable"]
    assert "truncated" in answer["problems"][0]["message"]
