"""SIGKILL the mount daemon during heavy writes, then recover.

The dead mount ("Transport endpoint is not connected") must be detected and cleaned by the
next ``branchfs mount`` (or refused with a message that says how to clean it); after the
remount ``fsck`` finds the store consistent and every file whose ``fsync`` returned is intact.
"""

from __future__ import annotations

import errno
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from fusecheck import needs_fuse

import branchfs
from branchfs.mount import is_stale

pytestmark = needs_fuse

CLI = Path(sys.executable).parent / "branchfs"
FILE_SIZE = 512 * 1024

WRITER = textwrap.dedent(
    """
    import os, random, sys
    mp, size = sys.argv[1], int(sys.argv[2])
    i = 0
    while True:
        data = random.Random(i).randbytes(size)
        path = os.path.join(mp, f"w{i:04d}.bin")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for off in range(0, len(data), 65536):
            os.write(fd, data[off:off + 65536])
            if off == len(data) // 2:
                print(f"half {i}", flush=True)  # in the middle of this file's writes
        os.fsync(fd)
        os.close(fd)
        print(i, flush=True)  # acknowledged: fsync returned
        for j in range(10):  # and some unsynced small files on top
            with open(os.path.join(mp, f"u{i:04d}-{j}.txt"), "w") as fh:
                fh.write(f"unsynced {i} {j}\\n")
        i += 1
    """
)


def expected(i: int) -> bytes:
    """The bytes the writer puts in file number ``i``."""
    return random.Random(i).randbytes(FILE_SIZE)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``branchfs`` command line."""
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=120)


def daemon_pids(mountpoint: Path) -> list[int]:
    """Pids of branchfs daemons whose command line names ``mountpoint``."""
    want = os.fsencode(str(mountpoint))
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if want in argv and any(b"branchfs" in a for a in argv):
            pids.append(int(proc.name))
    return pids


def mount_by_cli(tmp_path: Path, mp: Path) -> tuple[Path, int]:
    """A fresh store ``tmp_path/store.bfs`` mounted at ``mp`` by the command line: the
    store's path and the daemon's pid."""
    store_path = tmp_path / "store.bfs"
    res = cli("init", str(store_path))
    assert res.returncode == 0, res.stderr
    res = cli("--store", str(store_path), "mount", str(mp))
    assert res.returncode == 0, res.stderr
    (pid,) = daemon_pids(mp)
    return store_path, pid


def kill_at_call(tmp_path: Path, mp: Path, script: str, kill_at: int) -> tuple[Path, int, int]:
    """Run the writer ``script`` (``python -c script MOUNTPOINT``) in a fresh mount and SIGKILL
    the daemon, in the middle of a batch, once call ``kill_at`` has returned.

    The writer prints ``N`` once its call ``N`` returned, ``N S`` for an fsync. Returns the
    store's path, the last call that returned (the writer's lines are read to its end, which
    the dead mount brings) and the last fsync that returned (-1 for none).
    """
    store_path, pid = mount_by_cli(tmp_path, mp)
    writer = subprocess.Popen(
        [sys.executable, "-c", script, str(mp)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert writer.stdout is not None
    acked = synced = -1
    killed = False
    for line in writer.stdout:
        acked = int(line.split()[0])
        synced = acked if line.split()[1:] == ["S"] else synced
        if acked >= kill_at and not killed:
            os.kill(pid, signal.SIGKILL)
            killed = True
    writer.wait(timeout=60)
    subprocess.run(["fusermount3", "-uz", str(mp)], capture_output=True)
    return store_path, acked, synced


@pytest.fixture
def mp(tmp_path: Path) -> Iterator[Path]:
    """A mountpoint that is unmounted (and its daemons stopped) after the test whatever happens."""
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    subprocess.run(["fusermount3", "-u", str(path)], capture_output=True)
    subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True)
    for pid in daemon_pids(path):
        os.kill(pid, signal.SIGKILL)


def test_sigkill_during_heavy_writes_then_remount(tmp_path: Path, mp: Path) -> None:
    store_path, pid = mount_by_cli(tmp_path, mp)

    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(mp), str(FILE_SIZE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    acked: list[int] = []
    assert writer.stdout is not None
    for line in writer.stdout:  # the kill waits for an event: half of file 24 is written
        if line.startswith("half"):
            if len(acked) >= 24:
                break
        else:
            acked.append(int(line))
    os.kill(pid, signal.SIGKILL)
    acked += [int(line) for line in writer.stdout if not line.startswith("half")]
    writer.wait(timeout=60)
    assert writer.returncode != 0  # the writer saw the mount die

    # The dead mount is detected (a stat of the mountpoint itself may still be answered from
    # the kernel's attribute cache; a name never looked up always reaches the dead daemon)...
    with pytest.raises(OSError) as exc:
        os.stat(mp / f"never-looked-up-{os.getpid()}")
    assert exc.value.errno == errno.ENOTCONN
    assert is_stale(str(mp))
    # ... and the next mount cleans it, or says exactly how to.
    res = cli("--store", str(store_path), "mount", str(mp))
    if res.returncode != 0:
        out = res.stdout + res.stderr
        assert "Traceback" not in out, out
        hint = re.search(r"(fusermount3 -uz? \S+|umount -l \S+)", out)
        assert hint, f"no advice on cleaning the dead mount: {out}"
        subprocess.run(hint.group(1).split(), check=True)
        res = cli("--store", str(store_path), "mount", str(mp))
    assert res.returncode == 0, res.stderr
    assert os.path.ismount(mp)

    for i in acked:
        assert (mp / f"w{i:04d}.bin").read_bytes() == expected(i), f"fsync'ed file {i} lost"
    # The mount is fully usable again.
    (mp / "after.txt").write_text("after the crash\n")
    assert (mp / "after.txt").read_text() == "after the crash\n"

    res = cli("umount", str(mp))
    assert res.returncode == 0, res.stderr
    assert not os.path.ismount(mp)
    with branchfs.Store.open(store_path) as store:
        report = store.fsck()
        assert report.ok, report.problems
        main = store.branch("main")
        for i in acked:
            assert main.read_bytes(f"w{i:04d}.bin") == expected(i)
        assert main.read_text("after.txt") == "after the crash\n"
