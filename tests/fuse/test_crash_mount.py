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
    store_path = tmp_path / "store.bfs"
    res = cli("init", str(store_path))
    assert res.returncode == 0, res.stderr
    res = cli("--store", str(store_path), "mount", str(mp))
    assert res.returncode == 0, res.stderr
    (pid,) = daemon_pids(mp)

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
