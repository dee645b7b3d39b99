"""A SIGKILLed daemon keeps a prefix of a mix of metadata and data calls, in order.

Contract 3 of docs/architecture.md, against the group commit (fuse/groupcommit.py) and the
closed buffers applied with the batch (fuse/writeback.py): a writer runs creates, writes
(inline, chunked and multi-chunk sizes), fsyncs, truncates, chmods, utimes, links, renames,
unlinks and appends on a real mount, printing each call's index once it returned; the
daemon is SIGKILLed mid-run. The store must then equal the model's state after some call
``c`` (every name, its bytes, mode, and the times set by utime), with ``c`` at or after the
last fsync that returned, and fsck must be clean.

A second writer keeps its files *open* across later calls (an O_APPEND log held for the
whole run, each file written again after a mkdir, pauses of a few batch windows, and writes
big enough for the write-behind thread): data written to an open file is in every commit
after its ``write()`` returned (fuse/writeback.py, ``WriteBack.apply_all``), not only after
the file's last close.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fusecheck import needs_fuse
from test_crash_mount import daemon_pids, kill_at_call

import branchfs

pytestmark = needs_fuse

SIZES = (10, 3000, 70000, 0, 2048, 65537, 2049, 200)

WRITER = textwrap.dedent(
    """
    import os, sys
    mp = sys.argv[1]
    SIZES = (10, 3000, 70000, 0, 2048, 65537, 2049, 200)
    c = 0
    def done(sync=""):
        global c
        print(c, sync, flush=True)
        c += 1
    def P(n):
        return os.path.join(mp, n)
    i = 0
    while True:
        fd = os.open(P(f"f{i}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644); done()
        os.write(fd, bytes([i % 251]) * SIZES[i % len(SIZES)]); done()
        if i % 7 == 0:
            os.fsync(fd); done("S")
        os.close(fd)
        if i >= 1: os.truncate(P(f"f{i-1}"), SIZES[(i - 1) % len(SIZES)] // 2); done()
        if i >= 2: os.chmod(P(f"f{i-2}"), 0o600 | (i % 8) << 3); done()
        if i >= 3: os.utime(P(f"f{i-3}"), ns=(i * 1000, i * 1000)); done()
        if i >= 4: os.link(P(f"f{i-4}"), P(f"h{i-4}")); done()
        if i >= 5: os.rename(P(f"f{i-5}"), P(f"r{i-5}")); done()
        if i >= 6: os.unlink(P(f"h{i-6}")); done()
        if i >= 7 and i % 3 == 0:
            fd = os.open(P(f"r{i-7}"), os.O_WRONLY | os.O_APPEND); done()
            os.write(fd, b"app"); done()
            os.close(fd)
        i += 1
    """
)

#: name -> (bytes, mode bits, mtime in ns if a utime set it last, else None)
State = dict[str, tuple[bytes, int, int | None]]


def model_states() -> Iterator[State]:
    """The state after each call of WRITER: the first is before any call."""
    names: dict[str, int] = {}
    inodes: dict[int, list[Any]] = {}

    def snap() -> State:
        return {k: (bytes(inodes[v][0]), inodes[v][1], inodes[v][2]) for k, v in names.items()}

    yield snap()
    i = 0
    while True:
        names[f"f{i}"] = i
        inodes[i] = [b"", 0o644, None]
        yield snap()
        inodes[i][0] = bytes([i % 251]) * SIZES[i % len(SIZES)]
        yield snap()
        if i % 7 == 0:
            yield snap()
        if i >= 1:
            x = inodes[names[f"f{i - 1}"]]
            x[0] = x[0][: SIZES[(i - 1) % len(SIZES)] // 2]
            yield snap()
        if i >= 2:
            inodes[names[f"f{i - 2}"]][1] = 0o600 | (i % 8) << 3
            yield snap()
        if i >= 3:
            inodes[names[f"f{i - 3}"]][2] = i * 1000
            yield snap()
        if i >= 4:
            names[f"h{i - 4}"] = names[f"f{i - 4}"]
            yield snap()
        if i >= 5:
            names[f"r{i - 5}"] = names.pop(f"f{i - 5}")
            yield snap()
        if i >= 6:
            names.pop(f"h{i - 6}")
            yield snap()
        if i >= 7 and i % 3 == 0:
            yield snap()
            x = inodes[names[f"r{i - 7}"]]
            x[0] = x[0] + b"app"
            x[2] = None  # the append's write sets mtime
            yield snap()
        i += 1


def matches(found: State, want: State) -> bool:
    """Whether the store's state is the model's (mtime compared where a utime set it)."""
    if found.keys() != want.keys():
        return False
    return all(
        found[k][0] == w[0] and found[k][1] == w[1] and (w[2] is None or found[k][2] == w[2])
        for k, w in want.items()
    )


@pytest.fixture
def mp(tmp_path: Path) -> Iterator[Path]:
    """A mountpoint whose mount and daemons are gone after the test, whatever happens."""
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True)
    for pid in daemon_pids(path):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("kill_at", [60, 150, 230, 310, 420, 560])
def test_a_sigkilled_daemon_keeps_a_prefix_of_mixed_calls(
    tmp_path: Path, mp: Path, kill_at: int
) -> None:
    store_path, acked, synced = kill_at_call(tmp_path, mp, WRITER, kill_at)
    with branchfs.Store.open(store_path) as store:
        report = store.fsck()
        assert report.ok, report.problems
        main = store.branch("main")
        found: State = {}
        for name in main.listdir(""):
            st = main.stat(name)
            found[name] = (main.read_bytes(name), st.st_mode & 0o7777, st.st_mtime_ns)
    states = zip(range(acked + 3), model_states(), strict=False)
    kept = [c for c, want in states if matches(found, want)]
    assert kept, f"the store is no prefix of the {acked + 1} calls that returned: {sorted(found)}"
    assert max(kept) > synced, f"call {synced} was an fsync; the store ends after call {max(kept)}"


#: Sizes of the held writer's first write to each file: inline, chunked, a partial chunk
#: later extended, and more than ``BEHIND_BYTES`` (the write-behind thread's share).
HELD_SIZES = (100, 3000, 70000, 300_000, 0, 65537)

HELD = textwrap.dedent(
    """
    import os, sys, time
    mp = sys.argv[1]
    SIZES = (100, 3000, 70000, 300_000, 0, 65537)
    c = 0
    def done(sync=""):
        global c
        print(c, sync, flush=True)
        c += 1
    def P(n):
        return os.path.join(mp, n)
    log = os.open(P("log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644); done()
    i = 0
    while True:
        fd = os.open(P(f"f{i}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644); done()
        os.write(fd, bytes([i % 251 + 1]) * SIZES[i % len(SIZES)]); done()
        os.write(log, b"%d " % i * 25); done()
        os.mkdir(P(f"d{i}")); done()
        if i % 3 == 1:
            time.sleep(0.012)  # batch windows pass, the files still open
        os.write(fd, b"tail %d" % i * (50000 if i % 6 == 4 else 1)); done()
        if i % 6 == 4:
            time.sleep(0.012)  # due with no batch open: the write-behind thread commits
        if i % 6 == 5:
            os.fsync(log); done("S")
        os.close(fd)
        i += 1
    """
)

#: name -> bytes, or None for a directory
Held = dict[str, bytes | None]


def held_states() -> Iterator[Held]:
    """The state after each call of HELD: the first is before any call."""
    state: Held = {}
    yield dict(state)
    state["log"] = b""
    yield dict(state)
    i = 0
    while True:
        state[f"f{i}"] = b""
        yield dict(state)
        state[f"f{i}"] = bytes([i % 251 + 1]) * HELD_SIZES[i % len(HELD_SIZES)]
        yield dict(state)
        state["log"] = (state["log"] or b"") + b"%d " % i * 25
        yield dict(state)
        state[f"d{i}"] = None
        yield dict(state)
        state[f"f{i}"] = (state[f"f{i}"] or b"") + b"tail %d" % i * (50000 if i % 6 == 4 else 1)
        yield dict(state)
        if i % 6 == 5:
            yield dict(state)
        i += 1


@pytest.mark.parametrize("kill_at", [33, 77])
def test_a_sigkilled_daemon_keeps_a_prefix_with_files_held_open(
    tmp_path: Path, mp: Path, kill_at: int
) -> None:
    store_path, acked, synced = kill_at_call(tmp_path, mp, HELD, kill_at)
    with branchfs.Store.open(store_path) as store:
        report = store.fsck()
        assert report.ok, report.problems
        main = store.branch("main")
        found: Held = {}
        for name in main.listdir(""):
            is_dir = stat.S_ISDIR(main.stat(name).st_mode)
            found[name] = None if is_dir else main.read_bytes(name)
    states = zip(range(acked + 3), held_states(), strict=False)
    kept = [c for c, want in states if found == want]
    sizes = {k: None if v is None else len(v) for k, v in sorted(found.items())}
    assert kept, f"the store is no prefix of the {acked + 1} calls that returned: {sizes}"
    assert max(kept) > synced, f"call {synced} was an fsync; the store ends after call {max(kept)}"
