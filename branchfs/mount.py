"""Mounting a branch: start and stop the FUSE daemon (the life cycle of a mount).

All without importing the daemon (that runs in its own process):
:func:`mounted` / :func:`start_daemon` / :func:`unmount` start a daemon
(``python -m branchfs_fuse``) for one branch, wait until the mount answers, and stop it;
:func:`is_stale` / :func:`detach` deal with a mount whose daemon was killed. The registry of
running daemons and the change notices they answer are :mod:`branchfs.notices`.
:func:`ctl` is the client of a mount's ``.branchfs/ctl`` file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from .errors import BranchMounted, MountError
from .jsontypes import JSONObject
from .notices import Registration, find_registration, mounts_dir, open_through_views, serving
from .quoting import quote_path


class HasPath(Protocol):
    """Anything that names a store by its directory (a ``Store``)."""

    @property
    def path(self) -> str:
        """The store's directory."""
        ...


#: A store, or the path of one.
StoreRef = HasPath | str | os.PathLike[str]

#: How long ``mount`` waits for the daemon to answer before giving up.
START_TIMEOUT = 30.0


# -- registrations and the ctl client ------------------------------------------------------


def find_mount(mountpoint: str) -> tuple[str, Registration] | None:
    """The store and registration of the daemon serving ``mountpoint``, if one is known.

    Looks in the store named by the mount's ``.branchfs/store`` file.
    """
    try:
        with open(os.path.join(mountpoint, ".branchfs", "store")) as fh:
            store_path = fh.read().strip()
    except OSError:
        return None
    reg = find_registration(store_path, mountpoint)
    return None if reg is None else (store_path, reg)


def ctl(mountpoint: str | os.PathLike[str], *command: str) -> JSONObject:
    """Send one command to a mount's ``.branchfs/ctl`` and return its JSON answer.

    ``command`` is one line (``ctl(mnt, "merge attempt-1")``) or its words, quoted for
    you (``ctl(mnt, "fork", "main", "my attempt")``). The answer is read back on the same
    descriptor and is a dict with ``"ok"``; a failure has ``"error"`` (a message), a
    conflicting merge lists every conflict. The verbs are those of ``branchfs --help``
    (merge, reset, fork, discard, snapshot, diff, branches, snapshots, stats).
    Raises ``FileNotFoundError`` if ``mountpoint`` is not a branchfs mount.
    """
    if not command:
        raise ValueError("ctl needs a command, for example ctl(mountpoint, 'branches')")
    line = command[0] if len(command) == 1 else shlex.join(command)
    fd = os.open(os.path.join(mountpoint, ".branchfs", "ctl"), os.O_RDWR)
    try:
        os.write(fd, line.encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            part = os.read(fd, 1 << 20)
            if not part:
                break
            answer += part
    finally:
        os.close(fd)
    result: JSONObject = json.loads(answer)
    return result


def release(reg: Registration, branch: str) -> None:
    """Flush and cleanly unmount the mount of ``reg`` (for a forced discard of ``branch``).

    Raises :class:`~branchfs.errors.BranchBusy` if it cannot: the daemon is this process,
    or the mount is in use (a file open, a working directory inside it).
    """
    from .errors import BranchBusy

    if reg.pid == os.getpid():
        raise BranchBusy(
            f"branch {branch!r} is served by this very process at {reg.mountpoint}; "
            "unmount it before discarding it",
            [reg.mountpoint],
        )
    try:
        unmount(reg.mountpoint)
    except MountError as exc:
        raise BranchBusy(
            f"branch {branch!r} stays: its mount at {reg.mountpoint} could not be unmounted "
            f"({exc})",
            [reg.mountpoint],
        ) from None


# -- starting and stopping daemons -------------------------------------------------------------


def check_not_mounted(store_path: str, branch: str) -> None:
    """Raise :class:`BranchMounted` if a live daemon already serves ``branch``, or has a
    file of it open through its ``.branchfs/branches/`` (:func:`.notices.open_through_views`).

    A branch has one mount: two daemons would show each file as two kernel inodes, and the
    kernel keeps ``flock``, POSIX and OFD locks per inode, so locks taken through one mount
    would not exclude those taken through the other (SQLite writers on the two would lose
    rows). Reach a mounted branch through its mount, or as ``.branchfs/branches/NAME``
    of any other mount (a symlink to it).
    """
    for reg in serving(store_path, branch, fresh=True):
        raise BranchMounted(branch, reg.mountpoint, reg.pid)
    for reg in open_through_views(store_path, branch):
        where = f"{reg.mountpoint}/.branchfs/branches/{branch}"
        raise BranchMounted(branch, where, reg.pid, view=True)


def check_fuse() -> None:
    """Raise :class:`MountError` unless this machine can mount FUSE filesystems."""
    if not os.path.exists("/dev/fuse"):
        raise MountError(
            "/dev/fuse does not exist: FUSE is not available here; install the Debian package "
            "fuse3 (apt-get install fuse3) and load the fuse module, or run the container "
            "with --device /dev/fuse"
        )
    if shutil.which("fusermount3") is None:
        raise MountError(
            "fusermount3 was not found on PATH; install the Debian package fuse3 "
            "(apt-get install fuse3)"
        )


_DEAD = (errno.ENOTCONN, errno.ECONNABORTED)


def is_stale(mountpoint: str) -> bool:
    """Whether ``mountpoint`` is a dead FUSE mount ("Transport endpoint is not connected").

    A stat of the mountpoint alone can succeed from the kernel's attribute cache after the
    daemon died, so a mountpoint also looks up a name never asked before (always a request).
    """
    try:
        os.stat(mountpoint)
        if not os.path.ismount(mountpoint):
            return False
        os.stat(os.path.join(mountpoint, f".branchfs-probe-{os.getpid()}-{os.urandom(4).hex()}"))
    except OSError as exc:
        return exc.errno in _DEAD
    return False


def detach(mountpoint: str) -> None:
    """Detach a FUSE mount lazily (``fusermount3 -uz``): open files keep working until
    closed. Used on a dead mount, and by a daemon that stops on a signal; never fails."""
    subprocess.run(
        ["fusermount3", "-u", "-z", "-q", "--", mountpoint],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )


def clean_stale(mountpoint: str) -> None:
    """Detach a dead FUSE mount left by a killed daemon (``fusermount3 -uz``)."""
    detach(mountpoint)
    if is_stale(mountpoint):
        raise MountError(
            f"{mountpoint} is a dead mount (its daemon was killed) and could not be "
            f"detached; run `fusermount3 -uz {mountpoint}` (or `umount -l {mountpoint}` "
            "as root) and try again"
        )


def check_mountpoint(mountpoint: str) -> str:
    """Validate a mountpoint (exists, a directory, empty, not mounted); its absolute path."""
    mp = os.path.abspath(mountpoint)
    if is_stale(mp):
        clean_stale(mp)
    if not os.path.exists(mp):
        raise MountError(f"mountpoint {mountpoint} does not exist; create it with mkdir first")
    if not os.path.isdir(mp):
        raise MountError(f"mountpoint {mountpoint} is not a directory")
    if os.path.ismount(mp):
        raise MountError(
            f"{mountpoint} is already a mountpoint; unmount it first "
            f"(`branchfs umount {mountpoint}`) or pick another directory"
        )
    if os.listdir(mp):
        raise MountError(
            f"mountpoint {mountpoint} is not empty; mount on an empty directory so that "
            "nothing is hidden"
        )
    return mp


def daemon_command(
    store_path: str, mountpoint: str, branch: str, *, allow_other: bool = False
) -> list[str]:
    """The command line that runs a daemon in the foreground (``allow_other``: other users
    may enter the mount; permissions are still checked by the kernel)."""
    return [
        sys.executable,
        "-P",  # never import from the caller's directory (a folder named branchfs there)
        "-m",
        "branchfs_fuse",
        "--store",
        store_path,
        "--branch",
        branch,
        *(["--allow-other"] if allow_other else []),
        mountpoint,
    ]


def start_daemon(
    store_path: str,
    mountpoint: str,
    branch: str = "main",
    *,
    timeout: float = START_TIMEOUT,
    extra_args: list[str] | tuple[str, ...] = (),
    allow_other: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a detached daemon and return once the mount answers; MountError if it fails,
    :class:`BranchMounted` (a MountError) if another daemon already serves ``branch``.

    ``allow_other``: users other than the daemon's may enter the mount (FUSE's
    ``allow_other``; a non-root user needs ``user_allow_other`` in /etc/fuse.conf).
    """
    check_fuse()
    mp = check_mountpoint(mountpoint)
    store_path = os.path.abspath(store_path)
    if not os.path.isdir(store_path):
        raise MountError(f"no branchfs store at {store_path}")
    check_not_mounted(store_path, branch)  # the daemon checks again, under the claim lock
    log_dir = mounts_dir(store_path)
    os.makedirs(log_dir, mode=0o700, exist_ok=True)
    log_path = os.path.join(log_dir, "daemon.log")
    read_fd, write_fd = os.pipe()
    cmd = [
        *daemon_command(store_path, mp, branch, allow_other=allow_other),
        "--ready-fd",
        str(write_fd),
        *extra_args,
    ]
    with open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
        start = log.tell()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,  # warnings of a detached daemon go to STORE/mounts/daemon.log
            pass_fds=(write_fd,),
            start_new_session=True,
        )
    os.close(write_fd)
    try:
        try:
            message = _wait_ready(proc, read_fd, timeout)
        finally:
            os.close(read_fd)
        if message != "ok":
            detail = message or _last_line(log_path, start) or "the daemon exited"
            raise MountError(f"mounting {branch!r} at {mountpoint} failed: {detail}")
        # The daemon answered "ready" after the kernel's INIT; confirm that a lookup works.
        deadline = time.monotonic() + timeout
        while not os.path.isdir(os.path.join(mp, ".branchfs")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise MountError(f"the daemon for {mountpoint} stopped before the mount answered")
            time.sleep(0.01)
    except BaseException:
        # Ctrl-C, a timeout or a failure: the daemon (in a session of its own, so the
        # terminal's SIGINT never reaches it) must not finish mounting after we give up.
        with _interrupts_ignored():
            _abandon(proc, mp)
        raise
    return proc


@contextlib.contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """Ignore SIGINT for the block (main thread only), so a second Ctrl-C cannot cut a
    cleanup short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _abandon(proc: subprocess.Popen[bytes], mp: str) -> None:
    """Stop a daemon that start_daemon gave up on, at whatever stage it is, and detach
    whatever mount it left: SIGTERM (a serving daemon detaches and exits; one still
    starting dies of it), SIGKILL after 10 s, then a dead mount at ``mp`` is detached."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if is_stale(mp):
        detach(mp)


def _last_line(path: str, start: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            lines = fh.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _wait_ready(proc: subprocess.Popen[bytes], fd: int, timeout: float) -> str:
    import select

    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            return f"no answer from the daemon within {timeout:.0f} s"
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            part = os.read(fd, 4096)
            if not part:
                break
            data += part
        elif proc.poll() is not None:
            break
    return data.decode(errors="replace").strip()


def _unescape(field: str) -> str:
    """A path field of /proc/self/mountinfo, with its octal escapes (``\\040``) undone."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts() -> list[tuple[str, str]]:
    """``(mount point, filesystem type)`` of each mount, in ``/proc/self/mountinfo``'s order
    (proc(5)); empty if it cannot be read."""
    out = []
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) >= 5:
                    out.append((_unescape(fields[4]), right.split()[0] if right else "?"))
    except OSError:
        return []
    return out


def mount_type(mountpoint: str) -> str | None:
    """The filesystem type mounted exactly at ``mountpoint`` (``fuse.branchfs`` …), else None.

    Read from ``/proc/self/mountinfo`` (proc(5)), so it answers even when the mount's root
    does not: a killed daemon (ENOTCONN) or a branch that is gone (ENOENT).
    """
    mp = os.path.abspath(mountpoint)
    found = None
    for point, kind in _mounts():
        if point == mp:
            found = kind  # the last one listed is the one on top
    return found


def mounts_inside(mountpoint: str) -> list[str]:
    """Mount points below ``mountpoint`` (not itself), from ``/proc/self/mountinfo``."""
    prefix = os.path.abspath(mountpoint).rstrip("/") + "/"
    return sorted({point for point, _kind in _mounts() if point.startswith(prefix)})


def _daemon_pids(mountpoint: str) -> list[int]:
    """Processes running ``python -m branchfs_fuse … MOUNTPOINT`` (found through /proc)."""
    mp = os.path.abspath(mountpoint)
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if b"branchfs_fuse" in argv and os.fsencode(mp) in argv:
            out.append(int(name))
    return out


#: Seconds a mount has to answer before :func:`unmount` says that it does not: the kernel
#: waits for the daemon's reply to any request, so a stopped or hung daemon would make the
#: unmount wait forever, silently.
ANSWER_TIMEOUT = 10.0


def _stale_answering(mp: str, mountpoint: str) -> bool:
    """:func:`is_stale` of ``mp``, or :class:`MountError` saying what to do if the daemon
    of the branchfs mount there is stopped (SIGSTOP), or does not answer that lookup within
    :data:`ANSWER_TIMEOUT`."""
    kind = mount_type(mp)
    if kind is None or not kind.endswith("branchfs"):
        return is_stale(mp)
    detach = (
        f"or detach the mount with `fusermount3 -uz {shlex.quote(mp)}` (its open files then fail)"
    )
    for pid in _daemon_pids(mp):
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state in (b"T", b"t"):
            raise MountError(
                f"the daemon of {mountpoint} (pid {pid}) is stopped: continue it (kill -CONT "
                f"{pid}) and unmount again, {detach}"
            )
    stale: list[bool] = []
    probe = threading.Thread(target=lambda: stale.append(is_stale(mp)), daemon=True)
    probe.start()  # left blocked in the kernel if the daemon never answers; exits with us
    probe.join(ANSWER_TIMEOUT)
    if probe.is_alive():
        raise MountError(
            f"{mountpoint} has not answered for {ANSWER_TIMEOUT:g} s (its daemon is hung or "
            f"very busy): try again later, {detach}"
        )
    return bool(stale) and stale[0]


def unmount(mountpoint: str, *, timeout: float = 60.0) -> str:
    """Flush and unmount ``mountpoint``, waiting until its daemon has exited.

    Works whatever the mount's root answers: a dead mount left by a killed daemon is
    detached; a mount whose branch is gone is unmounted like any other. Returns ``"dead"``
    or ``"unmounted"``. Raises :class:`MountError` if the mount is busy, not a branchfs
    mount, or its daemon stopped or not answering (:data:`ANSWER_TIMEOUT`).
    """
    # Symlinks resolved in the parent only: a lookup of the mountpoint itself would ask the
    # daemon, which may not answer (mountinfo names the real path).
    mp = os.path.abspath(mountpoint)
    mp = os.path.join(os.path.realpath(os.path.dirname(mp)), os.path.basename(mp))
    if _stale_answering(mp, mountpoint):
        clean_stale(mp)
        return "dead"
    kind = mount_type(mp)
    if kind is None:
        raise MountError(f"{mountpoint} is not mounted")
    if not kind.endswith("branchfs"):
        raise MountError(f"{mountpoint} is not a branchfs mount (it is {kind})")
    found = find_mount(mp)
    pids = [found[1].pid] if found else _daemon_pids(mp)
    res = subprocess.run(
        ["fusermount3", "-u", mp], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    if res.returncode != 0:
        msg = res.stderr.decode(errors="replace").strip()
        if "busy" in msg.lower():
            inner = mounts_inside(mp)
            if inner:
                tool = "branchfs umount" if mount_type(inner[0]) == kind else "umount"
                shown = quote_path(inner[0])
                command = shlex.quote(inner[0]) if shown == inner[0] else shown
                raise MountError(
                    f"{mountpoint} is busy: {shown} is mounted inside it; unmount that "
                    f"first ({tool} {command})"
                )
            raise MountError(
                f"{mountpoint} is busy (a process has a file open or its working directory "
                "inside); close it and try again"
            )
        raise MountError(f"unmounting {mountpoint} failed: {msg}")
    # The daemon removes its registration once it has flushed and synced the store, then
    # exits: wait for the exit, so that nothing of the mount is left when this returns.
    deadline = time.monotonic() + timeout
    for pid in pids:
        while _running(pid):
            if _reap(pid):
                break
            if time.monotonic() > deadline:
                raise MountError(f"the daemon (pid {pid}) did not exit after unmounting")
            time.sleep(0.01)
    return "unmounted"


def _running(pid: int) -> bool:
    return Registration("", pid, "", "", "").alive()


def _reap(pid: int) -> bool:
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid


@contextlib.contextmanager
def mounted(
    store: StoreRef,
    mountpoint: str | os.PathLike[str],
    branch: str = "main",
    *,
    allow_other: bool = False,
    extra_args: list[str] | tuple[str, ...] = (),
) -> Iterator[Path]:
    """Mount ``branch`` of ``store`` (a Store or a path) at ``mountpoint`` for the block.

    Yields the mountpoint as a :class:`~pathlib.Path`; on exit flushes and unmounts, and
    waits until the daemon has exited, so everything written is in the store.
    ``allow_other`` lets other users in; ``extra_args`` go to the daemon's command line
    (see :func:`start_daemon`).
    """
    store_path = store if isinstance(store, (str, os.PathLike)) else store.path
    mp = os.path.abspath(os.fspath(mountpoint))
    proc = start_daemon(
        os.fspath(store_path), mp, branch, allow_other=allow_other, extra_args=extra_args
    )
    try:
        yield Path(mp)
    finally:
        _stop(proc, mp)


def unmount_while_alive(mountpoint: str, alive: Callable[[], bool]) -> bool:
    """``fusermount3 -u MOUNTPOINT``, retried every 0.1 s for 5 s while the mount is busy and
    ``alive()`` says its daemon still runs. False if it never went: the caller then tells
    its daemon to stop (SIGTERM makes a daemon detach itself)."""
    for _attempt in range(50):
        if not alive():
            return True
        res = subprocess.run(
            ["fusermount3", "-u", mountpoint],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        if res.returncode == 0:
            return True
        time.sleep(0.1)
    return False


def _stop(proc: subprocess.Popen[bytes], mp: str) -> None:
    if not unmount_while_alive(mp, lambda: proc.poll() is None):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if is_stale(mp):
        clean_stale(mp)
