"""``branchfs run`` on the command line: the command's process group, its terminal, its
exit status when it cannot start, and the branch it runs in by default."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clirun import bfs, entry_point, one_line_error
from fusecheck import needs_fuse

import branchfs
from branchfs.notices import serving

pytestmark = needs_fuse


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, reparented and not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _pids(path: Path, count: int, proc: subprocess.Popen[bytes] | None = None) -> list[int]:
    """The ``count`` pids the command wrote to ``path``, one a line, once it wrote them."""
    deadline = time.monotonic() + 30
    while True:
        words = path.read_text().split() if path.exists() else []
        if len(words) >= count:
            return [int(w) for w in words]
        assert time.monotonic() < deadline and (proc is None or proc.poll() is None)
        time.sleep(0.05)


def _end(pid: int, sig: int = signal.SIGTERM) -> None:
    """Reap child ``pid``, first asking it with ``sig`` to end (and to unmount, as
    ``branchfs run`` does on SIGTERM and SIGHUP), and killing it only if it will not."""
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        os.kill(pid, sig)
        for _ in range(300):
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


@pytest.fixture
def work(store_path: Path) -> Path:
    with branchfs.Store.open(store_path) as store:
        store.fork("main", "work")
    return store_path


def test_run_kills_what_the_command_left_behind(work: Path, tmp_path: Path) -> None:
    # The command ran in branchfs's own process group, so `sleep &` outlived the run,
    # its working directory on a mount that was detached under it.
    pids = tmp_path / "pids"
    script = f"sleep 101 >/dev/null 2>&1 & echo $! > {pids}; echo bg"  # not holding our pipe
    r = bfs("run", "work", "--", "sh", "-c", script, store=work)
    assert r.code == 0 and r.out == "bg\n", r
    (left,) = _pids(pids, 1)
    deadline = time.monotonic() + 10
    while _alive(left) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(left)


def test_sigterm_reaches_the_command_and_kills_its_group(work: Path, tmp_path: Path) -> None:
    # Stopping branchfs stopped only the command's first process; the rest of its group
    # went on running, reparented to init.
    pids = tmp_path / "pids"
    script = f"sleep 100 & echo $! > {pids}; sleep 100 & echo $! >> {pids}; wait"
    proc = subprocess.Popen(
        [sys.executable, *entry_point(), "run", "work", "--", "sh", "-c", script],
        env=dict(os.environ, BRANCHFS_STORE=str(work)),
        stderr=subprocess.PIPE,
        start_new_session=True,  # as `setsid branchfs run …`: no group to kill but its own
    )
    try:
        left = _pids(pids, 2, proc)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.terminate()  # then it unmounts
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert b"unmounted" in err and b"Traceback" not in err
    assert not [pid for pid in left if _alive(pid)]
    assert not serving(str(work), "work", fresh=True)


def test_a_terminal_reaches_the_command(work: Path) -> None:
    # In a group of its own the command still reads its terminal (the terminal's foreground
    # group is the command's) and gets the terminal's Ctrl-C; the run exits as it did.
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child execs
        os.environ["BRANCHFS_STORE"] = str(work)
        script = "read x; echo got $x; sleep 100"
        argv = [sys.executable, *entry_point(), "run", "work", "--", "sh", "-c", script]
        os.execv(sys.executable, argv)
    seen = b""
    try:
        os.write(fd, b"hi\n")
        deadline = time.monotonic() + 30
        while b"got hi" not in seen:
            assert time.monotonic() < deadline, seen
            if select.select([fd], [], [], 0.2)[0]:
                seen += os.read(fd, 1024)
        # Ctrl-C until the run ends: one that comes between `echo` and `sleep` is sh's alone,
        # and sh waits for its next command before it acts on it.
        for _ in range(60):
            os.write(fd, b"\x03")
            time.sleep(0.5)
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
        else:
            raise AssertionError(("Ctrl-C did not end the run", seen))
    finally:
        _end(pid)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGINT, seen
    assert not serving(str(work), "work", fresh=True)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash for job control")
def test_a_run_in_the_background_and_fg_again_reads_the_terminal(work: Path) -> None:
    # The command, in a group of its own, stops when it reads the terminal of a `run … &`;
    # branchfs must stop too (else the shell's job never looks stopped), and on `fg` hand
    # the terminal it then gets on to the command.
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child execs
        os.environ.update(BRANCHFS_STORE=str(work), PS1="$ ")
        os.execv("/bin/sh", ["sh", "-c", "exec bash --norc --noprofile -i"])
    seen = b""

    def until(word: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 30
        while word not in seen:
            assert time.monotonic() < deadline, seen
            if select.select([fd], [], [], 0.2)[0]:
                seen += os.read(fd, 4096)

    run = shlex.join([sys.executable, *entry_point(), "run", "work", "--", "sh", "-c"])
    try:
        os.write(fd, f"{run} 'read x; echo got $x' &\n".encode())
        for _ in range(60):
            os.write(fd, b"jobs\n")
            time.sleep(0.5)
            if select.select([fd], [], [], 0)[0]:
                seen += os.read(fd, 4096)
            if b"Stopped" in seen:
                break
        os.write(fd, b"fg\n")
        time.sleep(0.5)
        os.write(fd, b"yo\n")
        until(b"got yo")
        os.write(fd, b"echo status=$?; exit\n")
        until(b"status=0")
    finally:
        _end(pid, signal.SIGHUP)
        os.close(fd)
    assert not serving(str(work), "work", fresh=True)


def test_a_command_that_cannot_start_exits_127_or_126(work: Path, tmp_path: Path) -> None:
    # Both were exit 2, the usage error's, and "not found" named the command twice.
    line = one_line_error(bfs("run", "work", "--", "nosuchcmd", store=work), 127, "nosuchcmd")
    assert line == "branchfs: command not found: nosuchcmd"
    script = tmp_path / "main.py"
    script.write_text("print('no #! line')\n")
    script.chmod(0o755)
    line = one_line_error(bfs("run", "work", "--", str(script), store=work), 126, str(script))
    assert "Exec format error" in line
    script.chmod(0o644)
    one_line_error(bfs("run", "work", "--", str(script), store=work), 126, "Permission denied")


def test_run_inside_a_mount_defaults_to_its_branch(work: Path, tmp_path: Path) -> None:
    # The help said BRANCH defaults to the mount you are inside; `run -- CMD` was refused.
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert bfs("mount", str(mnt), "--branch", "work", store=work).code == 0
    try:
        r = bfs("run", "--", "sh", "-c", "echo $BRANCHFS_BRANCH > seen", cwd=mnt)
        assert r.code == 0, r
    finally:
        assert bfs("umount", str(mnt), store=work).code == 0
    with branchfs.Store.open(work) as store:
        assert store.branch("work").read_text("seen") == "work\n"
    one_line_error(bfs("run", "--", "true", store=work), 2, "name the BRANCH")
    assert bfs("run", "work", "--", "echo", "--", "x", store=work).out == "-- x\n"  # CMD's own
