"""The daemon's life: open the store, mount, serve requests in a trio loop, unmount cleanly.

``run`` is what ``python -m branchfs_fuse`` and ``branchfs mount --foreground`` call. With a
``ready_fd`` (the parent's pipe) it reports one line, ``ok`` once the kernel mount exists or
the reason it failed, so that ``branchfs mount`` returns only when the mount answers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys

import pyfuse3
import trio

from branchfs import BranchFSError, Store
from branchfs import mount as mount_mod

from .ops import BranchOps

log = logging.getLogger("branchfs.fuse")

#: Mount options: private to the user, kernel-checked permissions, named in /proc/mounts.
OPTIONS = ("fsname=branchfs", "subtype=branchfs", "default_permissions")


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
    writeback: bool = False,
    debug: bool = False,
) -> int:
    """Serve ``branch`` of the store at ``mountpoint`` until unmounted; the exit status."""
    report = _Report(ready_fd)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="branchfs[%(process)d] %(levelname)s %(message)s",
    )
    try:
        store = Store.open(store_path)
    except (BranchFSError, OSError) as exc:
        report.send(str(exc))
        return 2
    try:
        return _serve(store, mountpoint, branch, report, writeback, debug)
    finally:
        store.close()


def _serve(
    store: Store, mountpoint: str, branch: str, report: _Report, writeback: bool, debug: bool
) -> int:
    try:
        store.branch(branch)
    except BranchFSError as exc:
        report.send(str(exc))
        return 2
    ops = BranchOps(store, branch, os.path.abspath(mountpoint), writeback=writeback)
    Store.change_hook = ops.on_store_change
    others = [r for r in mount_mod.targets(store.path, (branch,)) if r.alive()]
    if not others:
        n = ops.clean_orphans()
        if n:
            log.warning("deleted %d unlinked files left open by a daemon that died", n)
    options = set(OPTIONS)
    if debug:
        options.add("debug")
    try:
        pyfuse3.init(ops, ops.mountpoint, options)
    except RuntimeError as exc:
        report.send(f"the kernel refused the mount ({exc}); is {mountpoint} usable?")
        return 2
    sock_name = f"\0branchfs-{os.getpid()}-{os.urandom(4).hex()}"
    reg_path = mount_mod.register(store.path, branch, ops.mountpoint, sock_name)
    signalled = False
    try:
        signalled = trio.run(_main, ops, report, sock_name)
    except BaseException:
        log.exception("the daemon loop failed")
        with contextlib.suppress(Exception):
            pyfuse3.close(unmount=True)
        raise
    else:
        pyfuse3.close(unmount=signalled)
    finally:
        try:
            ops.shutdown()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(reg_path)  # `branchfs umount` waits for this: the store is synced
    return 0


#: Kernel readahead for the mount: reads reach the daemon in 1 MiB requests, not 128 KiB.
READAHEAD_KB = 1024


async def _tune_readahead(mountpoint: str) -> None:
    """Raise the mount's readahead once INIT is done (INIT resets it); root only, best effort."""
    try:
        st = await trio.to_thread.run_sync(os.stat, mountpoint)
        path = f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb"
        with open(path, "w") as fh:
            fh.write(str(READAHEAD_KB))
    except OSError as exc:
        log.debug("readahead left at the kernel's default: %s", exc)


async def _main(ops: BranchOps, report: _Report, sock_name: str) -> bool:
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(sock_name.encode("latin-1"))
    listener.listen(64)
    signalled = False

    async def watch_signals() -> None:
        nonlocal signalled
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as sigs:
            async for _sig in sigs:
                signalled = True
                pyfuse3.terminate()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ops.serve_notifications, listener)
        nursery.start_soon(watch_signals)
        nursery.start_soon(_tune_readahead, ops.mountpoint)
        report.send("ok")
        await pyfuse3.main()
        nursery.cancel_scope.cancel()
    listener.close()
    return signalled
