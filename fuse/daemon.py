"""The daemon's life: open the store, mount, serve requests, unmount cleanly.

``run`` is what ``python -m branchfs_fuse`` and ``branchfs mount --foreground`` call. With a
``ready_fd`` (the parent's pipe) it reports one line, ``ok`` once the kernel mount exists or
the reason it failed, so that ``branchfs mount`` returns only when the mount answers.
The main thread serves ``/dev/fuse`` (:mod:`.session`); one thread answers change notices
from other processes, one runs the requests' blocking work.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import threading

from branchfs import BranchFSError, Store, notices
from branchfs import mount as mount_mod

from . import dac
from . import kernel as K
from .bridge import Bridge
from .nodes import FileHandle
from .session import Session

log = logging.getLogger("branchfs.fuse")

#: Mount options: private to the user, named in /proc/mounts.
OPTIONS = ("fsname=branchfs", "subtype=branchfs")


def kernel_checks(allow_other: bool, euid: int) -> bool:
    """Whether the mount needs ``default_permissions`` (the kernel checks permissions).

    Always, unless the daemon runs as root (``euid`` 0) and the mount is private: then
    only uid-0, gid-0 processes may enter it, every check passes for those holding the
    DAC capabilities, and the daemon makes the checks itself for those that dropped them
    (:mod:`.dac`), which spares the GETATTR the kernel sends before every change in a
    directory (docs/architecture.md, "Permissions"). Also always where
    ``fs.protected_regular`` or ``fs.protected_fifos`` is on: ``may_create_in_sticky()``
    applies them to root too, from a sticky bit FUSE hides from the VFS without
    ``default_permissions``, at an ``O_CREAT`` open FUSE does not tell the daemon of.
    """
    return allow_other or euid != 0 or any(map(_sysctl_on, _STICKY_CREATE_SYSCTLS))


#: The sysctls of ``may_create_in_sticky()`` (fs/namei.c).
_STICKY_CREATE_SYSCTLS = ("fs/protected_regular", "fs/protected_fifos")


def _sysctl_on(name: str) -> bool:
    try:
        with open(f"/proc/sys/{name}", "rb") as fh:
            return fh.read().strip() != b"0"
    except OSError:
        return True


class _Report:
    """The pipe to the parent that waits for the mount (or nothing in the foreground)."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def send(self, line: str) -> None:
        if self.fd is None:
            if line != "ok":
                print(f"branchfs: {line}", file=sys.stderr)
            return
        with contextlib.suppress(OSError):
            os.write(self.fd, line.replace("\n", " ").encode() + b"\n")
            os.close(self.fd)
        self.fd = None


def run(
    store_path: str,
    mountpoint: str,
    branch: str = "main",
    *,
    ready_fd: int | None = None,
    debug: bool = False,
    allow_other: bool = False,
    default_permissions: bool = False,
) -> int:
    """Serve ``branch`` of the store at ``mountpoint`` until unmounted; the exit status.

    ``allow_other``: other users may enter the mount (the kernel checks permissions,
    ``default_permissions``); otherwise it is private to the daemon's user.
    ``default_permissions``: the kernel checks permissions even where the daemon could
    (see :func:`kernel_checks`).
    """
    report = _Report(ready_fd)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="branchfs[%(process)d] %(levelname)s %(message)s",
    )
    changes = notices.Pending()  # what this daemon changed, announced after each request
    try:
        store = Store.open(store_path, observer=changes)
    except (BranchFSError, OSError) as exc:
        report.send(str(exc))
        return 2
    try:
        options = (*OPTIONS, "allow_other") if allow_other else OPTIONS
        if default_permissions or kernel_checks(allow_other, os.geteuid()):
            options = (*options, "default_permissions")
        return _serve(store, mountpoint, branch, report, options, changes)
    finally:
        store.close()


#: glibc ``mallopt`` parameters (malloc.h) and what the daemon sets them to.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MALLOC_TUNING = ((_M_MMAP_THRESHOLD, 64 << 20), (_M_TRIM_THRESHOLD, 512 << 20))


def _tune_malloc() -> None:
    """Keep freed buffers for reuse instead of returning them to the kernel at once.

    Each 1 MiB write request, write buffer and LMDB overflow page run is a large allocation
    that glibc would otherwise map and unmap (or trim) every time, paying a page fault per
    4 KiB when it is touched again. In one A/B pair of runs a 1 GiB sequential write took
    3.9-5.8 s with glibc's defaults and 2.9-3.8 s with these (this VM's disk swings as much
    from run to run, so take the figure as a direction, not a size).
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return
    for param, value in _MALLOC_TUNING:
        mallopt(param, value)


def _serve(
    store: Store,
    mountpoint: str,
    branch: str,
    report: _Report,
    options: tuple[str, ...],
    changes: notices.Pending,
) -> int:
    _tune_malloc()
    try:
        store.branch(branch)
    except BranchFSError as exc:
        report.send(str(exc))
        return 2
    ops = Bridge(store, branch, os.path.abspath(mountpoint))
    ops.coherence.changes = changes
    sock_name = f"\0branchfs-{os.getpid()}-{os.urandom(4).hex()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_name.encode("latin-1"))
    listener.listen(64)
    # One branch, one daemon (see mount_mod.check_not_mounted): check, mount and register
    # under the store's claim, so that two daemons started at once cannot both serve it.
    with notices.claiming(store.path):
        try:
            mount_mod.check_not_mounted(store.path, branch)
        except BranchFSError as exc:
            listener.close()
            report.send(str(exc))
            return 2
        n = ops.clean_orphans()  # no other daemon serves the branch: nobody holds these
        if n:
            log.warning("deleted %d unlinked files left open by a daemon that died", n)
        try:
            fd = K.mount(ops.mountpoint, options)
        except (K.MountError, OSError) as exc:
            listener.close()
            report.send(f"the kernel refused the mount ({exc}); is {mountpoint} usable?")
            return 2
        try:  # ordered with a discard of the branch (see Store.discard)
            reg_path = store.register_mount(
                branch, lambda: notices.register(store.path, branch, ops.mountpoint, sock_name)
            )
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(notices.registration_file(store.path))  # written, not committed
            listener.close()
            mount_mod.detach(ops.mountpoint)
            with contextlib.suppress(OSError):
                os.close(fd)
            if not isinstance(exc, (BranchFSError, OSError)):
                raise
            report.send(str(exc))
            return 2
    session = Session(fd, ops)
    ops.coherence.invalidator = session.invalidate
    if "default_permissions" not in options:

        def guard(fino: int) -> None:
            # The kernel holds the directory's lock until the SETATTR is answered, and an
            # entry invalidation takes it: from a thread of its own, never the loop's.
            tree, _eng = ops.tree.key(fino)
            names = [e for e in ops.coherence.kentries.get(tree, ()) if e[0] == fino]
            if names:
                threading.Thread(target=session.invalidate, args=(names, []), daemon=True).start()

        ops.checks = dac.DaemonChecks(ops.tree.record, ops.tree.child_record, guard)

    def on_view(views: tuple[str, ...]) -> None:
        # Notices of the branches the kernel has views of must reach this daemon too.
        notices.register(store.path, branch, ops.mountpoint, sock_name, views=views)

    ops.coherence.on_view = on_view

    def open_views() -> set[str]:
        # list(): the loop's thread adds and removes handles meanwhile
        return {
            h.key[0].name
            for h in list(ops.handles.values())
            if isinstance(h, FileHandle) and not h.key[0].snapshot and h.key[0] != ops.main
        }

    ops.coherence.open_views = open_views
    store.open_views = lambda name: ops.mountpoint if name in open_views() else None
    signalled = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal signalled
        signalled = True
        session.stop()

    signal.set_wakeup_fd(session.stop_fd)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    threading.Thread(
        target=ops.coherence.serve_notifications, args=(listener,), name="notices", daemon=True
    ).start()
    threading.Thread(
        target=_tune_readahead, args=(ops.mountpoint, session), name="readahead", daemon=True
    ).start()
    store.settler = ops.coherence.settle_others
    ops.group.start()  # this thread serves requests: its writes are batched
    try:
        report.send("ok")
        session.serve()
    except BaseException:
        log.exception("the daemon loop failed")
        signalled = True
        raise
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        if signalled:
            mount_mod.detach(ops.mountpoint)
        with contextlib.suppress(OSError):
            os.close(fd)
        try:
            with ops.lock:
                ops.shutdown()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(reg_path)  # `branchfs umount` waits for this: the store is synced
    return 0


#: Kernel readahead for the mount: reads reach the daemon in 1 MiB requests, not 128 KiB.
READAHEAD_KB = 1024


def _tune_readahead(mountpoint: str, session: Session) -> None:
    """Raise the mount's readahead once INIT is done (INIT resets it); root only, best effort."""
    if not session.initialized.wait(30):
        return
    try:
        st = os.stat(mountpoint)
        path = f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb"
        with open(path, "w") as fh:
            fh.write(str(READAHEAD_KB))
    except OSError as exc:
        log.debug("readahead left at the kernel's default: %s", exc)
