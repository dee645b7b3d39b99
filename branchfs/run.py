"""Running a command in a branch's tree: ``branchfs run`` and :meth:`Branch.run`.

A run mounts the branch at a fresh private directory (one daemon of its own, see
:mod:`branchfs.mount`), runs the command with that tree as its working directory, then
kills what the command left behind, unmounts (which flushes every write into the store)
and removes the directory. A branch that is mounted already is run in that mount instead
(a second daemon would be a second kernel identity of every file, whose locks would not
exclude the first's); the run then ends by waiting until its daemon committed every call.
The command's exit status is the run's.

With ``at=PATH`` the command sees the tree *at PATH*, and only the command does: it runs in
a private mount namespace (``unshare(2)`` with ``CLONE_NEWNS``, propagation private, see
mount_namespaces(7)) in which the branch's mount is bind-mounted over PATH. Every other
process still sees PATH as it was, so N attempts can each have their own tree at the same
absolute path (virtualenvs, editable installs and build caches that record absolute paths
keep working). Root gets a plain mount namespace; another user gets one inside a user
namespace (user_namespaces(7)) where the kernel allows it, and :class:`NamespaceError`
saying what to enable where it does not. The namespace is made by util-linux's
``unshare(1)``; the bind mount by ``mount(8)``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal, TypeAlias, overload

from .engine import check_branch
from .errors import BranchFSError, BranchMounted, MountError
from .foreground import kill_group, supervise
from .mount import StoreRef, check_fuse, mounted
from .notices import mount_root, serving, settle_mounts
from .spawner import Spawner, mounted_by

#: A command: an argv list (run as is) or a string (run by ``/bin/sh -c``).
Command: TypeAlias = str | Sequence[str]
#: Where a child's stdin/stdout/stderr go, as for :func:`subprocess.run`.
Stream: TypeAlias = int | IO[bytes] | IO[str] | None

#: Exit status of the namespace wrapper when it could not bind the tree at PATH.
SETUP_FAILED = 125

# The wrapper that runs inside the new mount namespace: bind the tree over PATH, enter the
# caller's directory there, then exec the command (so the command keeps the wrapper's pid).
_BIND = (
    'mount --bind "$1" "$2" || { echo "branchfs run: cannot bind $1 at $2" >&2; exit 125; }; '
    'cd "$3" || exit 125; shift 3; exec "$@"'
)
# The same for a user namespace: after the bind, a nested user namespace maps the caller's
# own uid and gid back, so the command does not run as the namespace's root.
_BIND_AS_USER = (
    'mount --bind "$1" "$2" || { echo "branchfs run: cannot bind $1 at $2" >&2; exit 125; }; '
    'cd "$3" || exit 125; shift 3; '
    'exec unshare --user --map-user="$BRANCHFS_UID" --map-group="$BRANCHFS_GID" -- "$@"'
)


class NamespaceError(BranchFSError):
    """A private mount namespace cannot be made here; the message says what to enable."""


class CommandNotFound(FileNotFoundError):
    """The command to run does not exist; a shell would exit 127."""


class CommandNotExecutable(PermissionError):
    """The command exists but cannot be executed (``errno`` says why: EACCES, ENOEXEC for
    a file that is no program, …); a shell would exit 126."""


def argv_of(command: Command) -> list[str]:
    """The argv of a command: a string runs through ``/bin/sh -c``, a sequence as is.

    Raises ``ValueError`` for an empty command.
    """
    if isinstance(command, str):
        if not command.strip():
            raise ValueError("the command is empty")
        return ["/bin/sh", "-c", command]
    argv = [os.fspath(a) for a in command]
    if not argv:
        raise ValueError("the command is empty")
    return argv


def describe(command: Command) -> str:
    """A command as a user would type it."""
    return command if isinstance(command, str) else shlex.join(os.fspath(a) for a in command)


_userns_checked: bool | None = None
_userns_said = ""  # what the refused probe printed on stderr
_userns_lock = threading.Lock()


def _userns_refusal(said: str) -> str:
    """Why this kernel refuses unprivileged user namespaces, and what to enable.

    ``said`` is what ``unshare(1)`` printed: ENOSPC ("No space left on device") is a
    user-namespace limit reached, here or in an enclosing namespace (user_namespaces(7)).
    """
    if "No space left" in said:
        return (
            "the limit on user namespaces is reached (user.max_user_namespaces, here or in "
            "an enclosing namespace): raise it with `sudo sysctl -w user.max_user_namespaces="
            "15000`"
        )
    knobs = {
        "/proc/sys/kernel/unprivileged_userns_clone": ("0", "kernel.unprivileged_userns_clone=1"),
        "/proc/sys/user/max_user_namespaces": ("0", "user.max_user_namespaces=15000"),
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns": (
            "1",
            "kernel.apparmor_restrict_unprivileged_userns=0",
        ),
    }
    for path, (bad, fix) in knobs.items():
        try:
            with open(path) as fh:
                if fh.read().strip() == bad:
                    return f"{path} is {bad}: enable it with `sudo sysctl -w {fix}`"
        except OSError:
            continue
    return (
        "the kernel or a container runtime (seccomp) refuses unshare(CLONE_NEWUSER): allow "
        "user namespaces (for Docker: --security-opt seccomp=unconfined)"
    )


def check_namespaces() -> None:
    """Raise :class:`NamespaceError` unless ``at=`` can work here (root, or user namespaces).

    A non-root caller is probed once per process with ``unshare --user --map-root-user``.
    """
    global _userns_checked, _userns_said
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        raise NamespaceError(
            "running at a fixed path needs util-linux's unshare and mount; install the "
            "Debian package util-linux (apt-get install util-linux)"
        )
    if os.geteuid() == 0:
        return
    with _userns_lock:
        if _userns_checked is None:
            probe = subprocess.run(
                ["unshare", "--user", "--map-root-user", "--mount", "true"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                check=False,
            )
            _userns_checked = probe.returncode == 0
            _userns_said = probe.stderr.decode(errors="replace")
    if not _userns_checked:
        why = _userns_refusal(_userns_said)
        raise NamespaceError(
            "running at a fixed path (--at) needs a private mount namespace; as a non-root "
            f"user that takes a user namespace, and {why}; or run as root, or run without --at"
        )


def wrap_at(tree: str, at: str, argv: Sequence[str], cwd: str | None = None) -> list[str]:
    """The argv that runs ``argv`` with ``tree`` bind-mounted at ``at``, seen only by it.

    ``cwd`` (default ``at``) is the command's working directory, a path under ``at``.
    The wrapper exits with :data:`SETUP_FAILED` (125) if the bind mount fails.
    """
    if os.geteuid() == 0:
        prefix = ["unshare", "--mount", "--propagation", "private", "--"]
        script = _BIND
    else:
        prefix = ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]
        prefix.append("--")
        script = _BIND_AS_USER
    return [*prefix, "/bin/sh", "-c", script, "branchfs-run", tree, at, cwd or at, *argv]


def at_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """The environment for a wrapped command (the caller's ids for the user-namespace form)."""
    out = dict(os.environ if env is None else env)
    out["BRANCHFS_UID"] = str(os.getuid())
    out["BRANCHFS_GID"] = str(os.getgid())
    return out


def resolve_at(at: str | os.PathLike[str]) -> str:
    """``at`` as an absolute path to a directory; a clear error if it cannot be one.

    Raises ``NotADirectoryError`` if it exists and is not a directory, and
    ``FileNotFoundError`` if its parent does not exist.
    """
    path = os.path.abspath(os.fspath(at))
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(20, "--at must name a directory", path)
    if not os.path.isdir(os.path.dirname(path)):
        raise FileNotFoundError(2, "the parent of the --at path does not exist", path)
    return path


@contextlib.contextmanager
def at_path(at: str) -> Iterator[str]:
    """Make sure directory ``at`` exists for the block; one created here is removed after."""
    created = not os.path.isdir(at)
    if created:
        os.mkdir(at, 0o755)
    try:
        yield at
    finally:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(at)


@contextlib.contextmanager
def private_tree(
    store_path: str,
    branch: str,
    prefix: str = "branchfs-run-",
    spawner: Spawner | None = None,
) -> Iterator[Path]:
    """Mount ``branch`` at a fresh private temp directory for the block (one daemon).

    The daemon is started as a process of its own, or forked by ``spawner``'s zygote. On
    exit flushes, unmounts (waiting for the daemon) and removes the directory. A branch
    that is mounted already is not mounted again: the block gets that mount, and its end
    waits until the daemon committed every call it served. Raises
    :class:`~branchfs.mount.MountError` if the mount cannot be made.
    """
    check_fuse()
    existing = mounted_already(store_path, branch)
    if existing is not None:
        # One branch, one mount: a second daemon would be a second kernel identity of every
        # file, and locks taken through it would not exclude those taken through this one.
        try:
            yield Path(existing)
        finally:
            settle_mounts(store_path, (branch,))  # the command's writes are in the store
        return
    mp = tempfile.mkdtemp(prefix=prefix)
    try:
        cm = mounted(store_path, mp, branch) if spawner is None else mounted_by(
            spawner, store_path, mp, branch, owned=True
        )  # fmt: skip
        with cm as path:
            yield path
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(mp)


def mounted_already(store_path: str, branch: str, *, to_bind: bool = False) -> str | None:
    """Where this process reaches the mount of ``branch`` now (its mountpoint, or through
    ``/proc/PID/root`` for a daemon in another mount namespace), or None if it is not
    mounted. Raises :class:`~branchfs.mount.BranchMounted` if a daemon serves it at a
    mount this process cannot reach (another user's daemon, or one stopping), or, with
    ``to_bind``, one in another mount namespace (``mount --bind`` cannot take a mount from
    another namespace, mount_namespaces(7))."""
    for reg in serving(store_path, branch, fresh=True):
        root = mount_root(reg)
        if root is None or not os.access(root, os.X_OK):
            raise BranchMounted(branch, f"{reg.mountpoint} (not reachable from here)", reg.pid)
        if to_bind and root != reg.mountpoint:
            where = f"{reg.mountpoint} in another mount namespace (run it without --at)"
            raise BranchMounted(branch, where, reg.pid)
        return root
    return None


@overload
def run(
    store: StoreRef,
    branch: str,
    command: Command,
    *,
    at: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    stdin: Stream = None,
    stdout: Stream = None,
    stderr: Stream = None,
    capture_output: bool = False,
    check: bool = False,
    foreground: bool = False,
    text: Literal[False] = False,
) -> subprocess.CompletedProcess[bytes]: ...
@overload
def run(
    store: StoreRef,
    branch: str,
    command: Command,
    *,
    at: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    stdin: Stream = None,
    stdout: Stream = None,
    stderr: Stream = None,
    capture_output: bool = False,
    check: bool = False,
    foreground: bool = False,
    text: Literal[True],
) -> subprocess.CompletedProcess[str]: ...
@overload
def run(
    store: StoreRef,
    branch: str,
    command: Command,
    *,
    at: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    stdin: Stream = None,
    stdout: Stream = None,
    stderr: Stream = None,
    capture_output: bool = False,
    check: bool = False,
    foreground: bool = False,
    text: bool,
) -> subprocess.CompletedProcess[bytes] | subprocess.CompletedProcess[str]: ...
def run(
    store: StoreRef,
    branch: str,
    command: Command,
    *,
    at: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    stdin: Stream = None,
    stdout: Stream = None,
    stderr: Stream = None,
    capture_output: bool = False,
    check: bool = False,
    foreground: bool = False,
    text: bool = False,
) -> subprocess.CompletedProcess[bytes] | subprocess.CompletedProcess[str]:
    """Run ``command`` with ``branch`` mounted as its working tree; like :func:`subprocess.run`.

    ``command`` is an argv list or a shell string. The branch is mounted at a private temp
    directory, or seen at ``at`` by the command alone (see the module docstring). The
    command's environment gets ``BRANCHFS_BRANCH``, ``BRANCHFS_STORE`` and ``BRANCHFS_TREE``
    (where it sees the tree). After the command ends, whatever it left running in its
    process group is killed, and the tree is unmounted, so every write is in the store.

    ``text=True`` opens the command's stdin, stdout and stderr in text mode, as
    :func:`subprocess.run` does (the locale's encoding, universal newlines): captured output
    is ``str``. ``timeout`` is in seconds: past it the command's process group is killed and
    ``subprocess.TimeoutExpired`` raised. The command gets a session of its own and is
    killed, with its group, if the caller is interrupted. ``foreground=True`` (the CLI)
    gives it a process group of its own in the caller's session instead, waited for as a
    shell waits for a foreground job (see :mod:`branchfs.foreground`: the terminal's Ctrl-C
    reaches it, SIGINT, SIGTERM and SIGHUP are forwarded to it); it takes no ``timeout``
    and no captured output. ``check=True`` raises ``subprocess.CalledProcessError`` on a
    non-zero exit.

    Raises :class:`~branchfs.BranchNotFound`, :class:`~branchfs.mount.MountError`,
    :class:`NamespaceError` (``at`` where namespaces are refused), :class:`CommandNotFound`
    and :class:`CommandNotExecutable` (the command cannot be started), ``ValueError`` for
    an empty command or arguments that do not go together.
    """
    argv = argv_of(command)
    store_path = os.path.abspath(
        os.fspath(store if isinstance(store, (str, os.PathLike)) else store.path)
    )
    check_branch(store_path, branch)  # BranchNotFound before anything is mounted
    target = resolve_at(at) if at is not None else None
    if target is not None:
        check_namespaces()
        mounted_already(store_path, branch, to_bind=True)  # BranchMounted if it cannot be bound
    if capture_output:
        if stdout is not None or stderr is not None:
            raise ValueError("stdout and stderr may not be used with capture_output")
        stdout = stderr = subprocess.PIPE
    if foreground and (timeout is not None or subprocess.PIPE in (stdout, stderr)):
        raise ValueError("foreground=True takes no timeout and no captured output")
    with contextlib.ExitStack() as stack:
        tree = str(stack.enter_context(private_tree(store_path, branch)))
        full_env = dict(os.environ if env is None else env)
        full_env.update(BRANCHFS_BRANCH=branch, BRANCHFS_STORE=store_path)
        if target is not None:
            stack.enter_context(at_path(target))
            cwd = os.getcwd()
            inside = cwd == target or cwd.startswith(target.rstrip("/") + "/")
            full_env["BRANCHFS_TREE"] = target
            argv = wrap_at(tree, target, argv, cwd if inside else target)
            full_env = at_env(full_env)
            workdir = "/"
        else:
            full_env["BRANCHFS_TREE"] = tree
            workdir = tree
        streams = (stdin, stdout, stderr)
        return _spawn(argv, workdir, full_env, timeout, streams, text, check, foreground)
    raise AssertionError("unreachable")  # pragma: no cover


def _spawn(
    argv: list[str],
    cwd: str,
    env: dict[str, str],
    timeout: float | None,
    streams: tuple[Stream, Stream, Stream],
    text: bool,
    check: bool,
    foreground: bool,
) -> subprocess.CompletedProcess[Any]:
    stdin, stdout, stderr = streams
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=not foreground,
            process_group=0 if foreground else None,
            text=text,
        )
    except FileNotFoundError as exc:
        raise CommandNotFound(exc.errno, "command not found", argv[0]) from None
    except OSError as exc:
        raise CommandNotExecutable(exc.errno, exc.strerror, argv[0]) from None
    if foreground:
        supervise(proc)
        out = err = None
    else:
        out, err = _communicate(proc, argv, timeout)
    result = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    if check:
        result.check_returncode()
    return result


def _communicate(
    proc: subprocess.Popen[Any], argv: list[str], timeout: float | None
) -> tuple[Any, Any]:
    """Wait for ``proc`` (a session of its own) and its output; then kill what is left of
    its group. Raises ``subprocess.TimeoutExpired`` past ``timeout``."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        proc.kill()
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(argv, timeout or 0.0, out, err) from None
    except BaseException:
        kill_group(proc.pid)
        proc.kill()
        proc.wait()
        raise
    finally:
        kill_group(proc.pid)  # what the command left running would keep the tree busy


__all__ = [
    "SETUP_FAILED",
    "Command",
    "CommandNotExecutable",
    "CommandNotFound",
    "MountError",
    "NamespaceError",
    "argv_of",
    "check_namespaces",
    "kill_group",
    "private_tree",
    "run",
    "wrap_at",
]
