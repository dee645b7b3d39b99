"""The durability contract of grouped commits (contract 3 of docs/architecture.md;
fuse/groupcommit.py).

The daemon groups the calls it serves into one LMDB transaction for a few milliseconds.
A SIGKILLed daemon may lose the last of those calls, but what survives is a prefix of the
calls in the order they returned, every fsync'ed file is whole, and fsck is clean. A fork,
or an API call from another process, taken right after a burst of writes sees all of them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fusecheck import needs_fuse
from test_crash_mount import daemon_pids, kill_at_call, mount_by_cli

import branchfs
from branchfs.mount import ctl

pytestmark = needs_fuse

#: Each step is a few metadata calls (mkdir every 50 files, create, write, close, and a
#: rename of the file before); every 40th file is fsync'ed before its close.
WRITER = textwrap.dedent(
    """
    import os, sys
    mp = sys.argv[1]
    i = 0
    while True:
        d = os.path.join(mp, f"d{i // 50:03d}")
        if i % 50 == 0:
            os.mkdir(d)
        fd = os.open(os.path.join(d, f"f{i:05d}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b"%d\\n" % i * 20)
        if i % 40 == 0:
            os.fsync(fd)
        os.close(fd)
        if i:
            prev = os.path.join(mp, f"d{(i - 1) // 50:03d}")
            os.rename(os.path.join(prev, f"f{i - 1:05d}"), os.path.join(prev, f"r{i - 1:05d}"))
        print(i, flush=True)  # every call of step i returned
        i += 1
    """
)


def content(i: int) -> bytes:
    """What the writer puts in file ``i``."""
    return b"%d\n" % i * 20


@pytest.fixture
def mp(tmp_path: Path) -> Iterator[Path]:
    """A mountpoint whose mount and daemons are gone after the test, whatever happens."""
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    subprocess.run(["fusermount3", "-u", str(path)], capture_output=True)
    subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True)
    for pid in daemon_pids(path):
        os.kill(pid, signal.SIGKILL)


def test_a_sigkilled_daemon_keeps_a_prefix_of_the_calls_in_order(tmp_path: Path, mp: Path) -> None:
    store_path, acked, _ = kill_at_call(tmp_path, mp, WRITER, 300)
    with branchfs.Store.open(store_path) as store:
        report = store.fsck()
        assert report.ok, report.problems
        main = store.branch("main")
        # The state is that after some step m, perhaps with step m + 1 begun: files
        # r0 … r(m-2), then r(m-1) or f(m-1) (step m's rename), then f(m).
        found: dict[int, tuple[str, bytes]] = {}
        for d in main.listdir(""):
            for name in main.listdir(d):
                found[int(name[1:])] = (name[0], main.read_bytes(f"{d}/{name}"))
        m = max(found)
        assert sorted(found) == list(range(m + 1)), "a later call survived an earlier one"
        synced = acked - acked % 40
        assert m >= synced, f"file {synced} was fsync'ed, the store ends at step {m}"
        for i, (kind, data) in found.items():
            want = "f" if i == m else "r" if i < m - 1 else kind
            assert kind == want, f"step {i + 1}'s rename of file {i}: {kind}"
            if i < m or i % 40 == 0:
                assert data == content(i), f"file {i} is not whole"
            else:  # data written to a file reaches the store at its RELEASE, after close
                assert data in (b"", content(i))
        dirs = set(main.listdir(""))
        assert {f"d{k:03d}" for k in range(m // 50 + 1)} <= dirs
        assert dirs <= {f"d{k:03d}" for k in range((m + 1) // 50 + 1)}


BURST = textwrap.dedent(
    """
    import os, sys
    root = sys.argv[1]
    os.mkdir(os.path.join(root, "burst"))
    for i in range(int(sys.argv[2])):
        with open(os.path.join(root, "burst", f"b{i:04d}"), "wb") as fh:
            fh.write(b"burst %d" % i)
    os.rename(os.path.join(root, "burst", "b0000"), os.path.join(root, "burst", "first"))
    """
)


def _burst(mnt: Path, n: int) -> None:
    subprocess.run([sys.executable, "-c", BURST, str(mnt), str(n)], check=True, timeout=120)


def _check_burst(tree: Any, n: int) -> None:
    names = set(tree.listdir("burst"))
    assert {"first", *(f"b{i:04d}" for i in range(1, n))} <= names
    assert "b0000" not in names
    # every file's data: a closed file's buffer reaches the store with the batch
    assert tree.read_bytes("burst/first") == b"burst 0"
    for i in range(1, n):
        assert tree.read_bytes(f"burst/b{i:04d}") == b"burst %d" % i


def test_another_process_sees_a_burst_of_writes_at_once(mounted_store: Any) -> None:
    # The test process is "another process" to the daemon: its API calls ask it to settle.
    mnt, store = mounted_store.path, mounted_store.store
    _burst(mnt, 200)
    _check_burst(store.branch("main"), 200)
    (mnt / "burst" / "late").write_bytes(b"late")
    assert store.branch("main").read_bytes("burst/late") == b"late"


def test_a_fork_right_after_a_burst_sees_every_call(mounted_store: Any) -> None:
    mnt, store = mounted_store.path, mounted_store.store
    _burst(mnt, 200)
    # A fork by another process's API (the CLI's `fork` is the same call).
    fork = "import sys, branchfs; branchfs.Store.open(sys.argv[1]).fork('main', 'by-api')"
    subprocess.run([sys.executable, "-c", fork, str(mounted_store.store_path)], check=True)
    _check_burst(store.branch("by-api"), 200)
    (mnt / "burst" / "again").write_bytes(b"again")
    os.mkdir(mnt / ".branchfs" / "branches" / "by-mkdir")
    assert store.branch("by-mkdir").read_bytes("burst/again") == b"again"
    store.snapshot("main", "snap")
    _check_burst(store.snapshot_tree("snap"), 200)


def test_an_idle_mount_leaves_the_store_writable_by_others(mounted_store: Any) -> None:
    # The daemon never sleeps holding LMDB's single writer for long: another process's
    # write goes through while the mount is idle after a write.
    mnt = mounted_store.path
    (mnt / "x").write_bytes(b"x")
    code = textwrap.dedent(
        """
        import sys, time, branchfs
        with branchfs.Store.open(sys.argv[1]) as s:
            start = time.monotonic()
            s.branch("main").write_bytes("from-api", b"api")
            print(time.monotonic() - start)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(mounted_store.store_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert float(out.stdout) < 30  # it did not wait for a timeout
    time.sleep(0.05)
    assert (mnt / "from-api").read_bytes() == b"api"


#: ``argv[2]`` processes read branch ``main`` of the store ``argv[1]`` at the same moment,
#: each asking the mount's daemon to settle first.
READERS_AT_ONCE = textwrap.dedent(
    """
    import os, sys, branchfs
    pids = []
    for _ in range(int(sys.argv[2])):
        pid = os.fork()
        if pid == 0:
            with branchfs.Store.open(sys.argv[1]) as s:
                s.branch("main").read_bytes("x")
            os._exit(0)
        pids.append(pid)
    print(sum(os.waitpid(pid, 0)[1] == 0 for pid in pids))
    """
)


def test_many_processes_asking_at_once_are_each_answered(mounted_store: Any) -> None:
    # Each settle was answered once the loop committed; one that arrived while the loop
    # let the previous one go lost its wake-up, and its process waited the full timeout.
    mnt = mounted_store.path
    (mnt / "x").write_bytes(b"x")
    for _round in range(3):
        out = subprocess.run(
            [sys.executable, "-c", READERS_AT_ONCE, str(mounted_store.store_path), "40"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert out.stdout.strip() == "40", out.stderr
    stats = ctl(mnt, "stats")
    assert stats.get("settle_timeouts", 0) == 0


#: Writes to files that stay open while later calls return; then ``argv[2]``: "sleep" (a
#: second passes, far more than a batch window) or "fsync-root" (fsync of the mount's root
#: directory); then it prints and waits to be killed with the files still open.
HOLDER = textwrap.dedent(
    """
    import os, sys, time
    mp = sys.argv[1]
    log = os.open(os.path.join(mp, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(log, b"first line\\n")
    os.mkdir(os.path.join(mp, "after-the-write"))
    big = os.open(os.path.join(mp, "big"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(big, b"b" * 70000)
    os.write(log, b"second line\\n")
    with open(os.path.join(mp, "closed"), "wb") as fh:
        fh.write(b"closed")
    os.write(big, b"B" * 300_000)  # with the last: more than BEHIND_BYTES
    if sys.argv[2] == "sleep":
        time.sleep(1.0)
    else:
        root = os.open(mp, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(root)
    print("done", flush=True)
    time.sleep(60)
    """
)


def _hold_and_kill(tmp_path: Path, mp: Path, how: str) -> Path:
    store_path, pid = mount_by_cli(tmp_path, mp)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(mp), how],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line == "done\n", holder.communicate(timeout=60)
        os.kill(pid, signal.SIGKILL)  # the files still open
    finally:
        holder.kill()
        holder.wait(timeout=60)
    subprocess.run(["fusermount3", "-uz", str(mp)], capture_output=True)
    return store_path


def _check_held(store_path: Path) -> None:
    with branchfs.Store.open(store_path) as store:
        report = store.fsck()
        assert report.ok, report.problems
        main = store.branch("main")
        assert sorted(main.listdir("")) == ["after-the-write", "big", "closed", "log"]
        assert main.read_bytes("log") == b"first line\nsecond line\n"
        assert main.read_bytes("big") == b"b" * 70000 + b"B" * 300_000
        assert main.read_bytes("closed") == b"closed"


def test_a_write_to_a_file_held_open_survives_a_sigkill(tmp_path: Path, mp: Path) -> None:
    # Contract 3's bound: a SIGKILL loses at most the last few milliseconds of calls,
    # write()s to files still open included; a second is 200 batch windows.
    _check_held(_hold_and_kill(tmp_path, mp, "sleep"))


def test_fsync_of_the_mount_root_makes_every_call_durable(tmp_path: Path, mp: Path) -> None:
    # syncfs(2) never reaches a FUSE daemon (docs/architecture.md, "Contracts"): fsync of
    # the root directory (FSYNCDIR; `sync MOUNTPOINT`) is how a user syncs the whole mount.
    _check_held(_hold_and_kill(tmp_path, mp, "fsync-root"))
