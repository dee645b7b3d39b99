"""``run``: a command in a branch's mounted tree, and at a fixed path in a private namespace."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fusecheck import needs_fuse

import branchfs
from branchfs.run import run

if TYPE_CHECKING:
    from conftest import Mounted

pytestmark = needs_fuse


def test_run_sees_the_branch_and_its_writes_land(store_path: Path) -> None:
    with branchfs.Store.open(store_path) as store:
        main = store.branch("main")
        main.write_text("in.txt", "hello\n")
        done = main.run("cat in.txt; echo out > out.txt; exit 7", capture_output=True)
        assert done.returncode == 7
        assert done.stdout == b"hello\n"
        assert main.read_text("out.txt") == "out\n"  # unmounted, so flushed into the store
        with pytest.raises(subprocess.CalledProcessError):
            main.run(["false"], check=True)


def test_run_text_decodes_as_subprocess_run_does(store_path: Path) -> None:
    # The docs present run "as subprocess.run does", but text=True was a TypeError.
    with branchfs.Store.open(store_path) as store:
        main = store.branch("main")
        done = main.run("printf 'hi\\r\\n'; echo err >&2", capture_output=True, text=True)
        assert (done.stdout, done.stderr) == ("hi\n", "err\n")  # universal newlines too


def test_run_timeout_kills_the_group(store_path: Path) -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        run(store_path, "main", "sleep 600 & sleep 600", timeout=0.5)


def test_two_runs_at_the_same_path_each_see_their_own_tree(
    tmp_path: Path, store_path: Path
) -> None:
    at = tmp_path / "work"
    at.mkdir()
    (at / "host.txt").write_text("the host's\n")
    with branchfs.Store.open(store_path) as store:
        store.branch("main").write_text("shared.txt", "base\n")
        store.fork("main", "a1")
        store.fork("main", "a2")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    # Each writes its own file at PATH, waits until the other has written too, then lists
    # PATH: both are inside their namespaces at once.
    script = (
        f'echo "$BRANCHFS_BRANCH" > "$BRANCHFS_BRANCH.txt"; touch {barrier}/"$BRANCHFS_BRANCH"; '
        f"while [ $(ls {barrier} | wc -l) -lt 2 ]; do sleep 0.02; done; "
        "pwd; ls; cat shared.txt; "
        f'touch {barrier}/"$BRANCHFS_BRANCH".seen; '
        f"while [ $(ls {barrier} | wc -l) -lt 4 ]; do sleep 0.02; done"
    )
    outputs: dict[str, bytes] = {}

    def one(branch: str) -> None:
        res = run(store_path, branch, script, at=at, capture_output=True, timeout=60)
        outputs[branch] = res.stdout + res.stderr

    threads = [threading.Thread(target=one, args=(b,)) for b in ("a1", "a2")]
    for t in threads:
        t.start()
    # While both run, everyone else sees PATH unchanged.
    while len(os.listdir(barrier)) < 2:
        assert sorted(os.listdir(at)) == ["host.txt"]
    assert sorted(os.listdir(at)) == ["host.txt"]
    for t in threads:
        t.join()
    assert outputs["a1"].decode().split() == [str(at), "a1.txt", "shared.txt", "base"]
    assert outputs["a2"].decode().split() == [str(at), "a2.txt", "shared.txt", "base"]
    assert sorted(os.listdir(at)) == ["host.txt"]
    with branchfs.Store.open(store_path) as store:
        assert store.branch("a1").read_text("a1.txt") == "a1\n"
        assert not store.branch("a1").exists("a2.txt")
        assert not store.branch("main").exists("a1.txt")


@pytest.mark.parametrize("at", [False, True], ids=["own-dir", "at-path"])
def test_run_of_a_mounted_branch_uses_that_mount(
    mounted_store: Mounted, tmp_path: Path, at: bool
) -> None:
    """One branch, one kernel identity: the command sees the mount's own inodes (so a lock
    held through the mount excludes it) and its writes are in the store when run returns."""
    mnt = mounted_store.path
    (mnt / "x").write_bytes(b"data")
    seen = os.stat(mnt / "x")
    holder = subprocess.Popen(
        ["flock", str(mnt / "x"), "sh", "-c", "echo held; read _"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        res = run(
            mounted_store.store_path,
            "main",
            'flock -n x true; echo "$?"; stat -c %d:%i x; echo out > out.txt',
            at=tmp_path / "work" if at else None,
            capture_output=True,
            timeout=60,
        )
    finally:
        holder.communicate("")
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().split() == ["1", f"{seen.st_dev}:{seen.st_ino}"]
    assert mounted_store.store.branch("main").read_text("out.txt") == "out\n"


def test_a_run_ended_by_sigterm_unmounts_like_ctrl_c(store_path: Path) -> None:
    # SIGTERM (timeout(1), kill) ended the process at once: its mount and daemon stayed,
    # and the branch could not be discarded while that daemon ran.
    import signal
    import sys
    import time

    from clirun import entry_point

    from branchfs.notices import serving

    with branchfs.Store.open(store_path) as store:
        store.fork("main", "work")
    env = dict(os.environ, BRANCHFS_STORE=str(store_path))
    proc = subprocess.Popen(
        [sys.executable, *entry_point(), "run", "work", "--", "sleep", "60"],
        env=env,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while not serving(str(store_path), "work", fresh=True):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert b"unmounted" in err and b"Traceback" not in err
    assert not serving(str(store_path), "work", fresh=True)
    with branchfs.Store.open(store_path) as store:
        store.discard("work")  # no daemon left holding it
