"""Write-behind in the daemon, without a kernel: a full buffer commits while writes go on.

The flush thread's commit is held back on purpose until the request under test waits for
it (an event, not a delay), so that the request is sure to arrive while it is in flight.
Each request must wait for it and see the store with those writes in; a failed commit must
reach the writer at its next write, flush or fsync, and the file must still be let go at
its last close.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from branchfs_fuse import kernel as K
from branchfs_fuse.bridge import Bridge
from branchfs_fuse.buffers import FLUSH_BYTES
from branchfs_fuse.inodes import BRANCHES

import branchfs

CTX = K.RequestContext(os.geteuid(), os.getegid(), os.getpid())


class Gate:
    """Holds the flush thread's commit until a request waits for it."""

    def __init__(self, ops: Bridge, error: OSError | None = None) -> None:
        self.opened = threading.Event()
        self.started = threading.Event()
        self.error = error
        self.awaited = False
        real_apply = ops.wb.apply_behind

        def held(*args: Any) -> Any:
            self.started.set()
            assert self.opened.wait(10)
            if self.error is not None:
                raise self.error
            return real_apply(*args)

        ops.wb.apply_behind = held

    def open_when_awaited(self, ops: Bridge) -> None:
        """Let the held commit go at the moment a request asks for its result.

        A request that did not wait for the commit in flight leaves ``awaited`` false (and
        the commit held, which the flush thread reports after 10 s).
        """
        assert self.started.wait(10), "no write-behind commit started"
        assert ops.wb.behind is not None, "no write-behind commit in flight"
        future = ops.wb.behind[1]
        real_result = future.result

        def result(timeout: float | None = None) -> Any:
            self.awaited = True
            self.opened.set()
            return real_result(timeout)

        future.result = result  # type: ignore[method-assign]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[branchfs.Store, Bridge, int]]:
    """A store, the daemon's filesystem on its branch ``main``, and an empty file's inode."""
    with branchfs.Store.open(tmp_path / "store.bfs", create=True) as store:
        main = store.create_branch("main")
        main.write_bytes("f", b"")
        ops = Bridge(store, "main", "/nonexistent")
        try:
            yield store, ops, main.stat("f").st_ino
        finally:
            ops.shutdown()


def test_requests_wait_for_the_commit_in_flight_and_see_its_writes(
    daemon: tuple[branchfs.Store, Bridge, int],
) -> None:
    store, ops, ino = daemon
    gate = Gate(ops)
    data = os.urandom(FLUSH_BYTES)
    writer = ops.open(ino, os.O_WRONLY, CTX).fh
    reader = ops.open(ino, os.O_RDONLY, CTX).fh
    assert ops.write(writer, 0, data) == len(data)  # returns with its commit still held
    assert ops.wb.behind is not None
    gate.open_when_awaited(ops)
    assert ops.getattr(ino, CTX).st_size == len(data)
    assert gate.awaited
    assert ops.wb.behind is None
    assert b"".join(ops.read(reader, len(data) - 10, 10)) == data[-10:]
    ops.replied()  # the session's part: the reply is written, the read's snapshot goes
    ops.release(reader)
    ops.release(writer)
    assert store.branch("main").read_bytes("f") == data


def test_a_fork_waits_for_the_commit_in_flight(
    daemon: tuple[branchfs.Store, Bridge, int],
) -> None:
    store, ops, ino = daemon
    gate = Gate(ops)
    data = os.urandom(FLUSH_BYTES)
    fh = ops.open(ino, os.O_WRONLY, CTX).fh
    ops.write(fh, 0, data)
    gate.open_when_awaited(ops)
    ops.mkdir(BRANCHES, b"forked", 0o755, CTX)
    assert gate.awaited
    assert store.branch("forked").read_bytes("f") == data
    ops.release(fh)


def test_a_failed_commit_reaches_the_writer_and_the_file_is_still_let_go(
    daemon: tuple[branchfs.Store, Bridge, int],
) -> None:
    _store, ops, ino = daemon
    gate = Gate(ops, OSError(errno.ENOSPC, "No space left on device"))
    fh = ops.open(ino, os.O_WRONLY, CTX).fh
    ops.write(fh, 0, bytes(FLUSH_BYTES))
    gate.open_when_awaited(ops)
    ops.getattr(ino, CTX)  # waits for the commit, which fails
    assert gate.awaited
    with pytest.raises(K.FUSEError) as info:
        ops.write(fh, FLUSH_BYTES, b"more")
    assert info.value.errno == errno.ENOSPC
    ops.write(fh, FLUSH_BYTES, b"more")  # reported once, like a writeback error
    ops.release(fh)  # its flush fails too, and the file is let go all the same
    assert (ops.main, ino) not in ops.holds.counts
    assert not ops.wb.write_errors


def test_an_error_waits_for_the_descriptor_that_is_still_open(
    daemon: tuple[branchfs.Store, Bridge, int],
) -> None:
    _store, ops, ino = daemon
    gate = Gate(ops, OSError(errno.ENOSPC, "No space left on device"))
    first = ops.open(ino, os.O_WRONLY, CTX).fh
    second = ops.open(ino, os.O_WRONLY, CTX).fh
    ops.write(first, 0, bytes(FLUSH_BYTES))
    gate.open_when_awaited(ops)
    ops.getattr(ino, CTX)
    assert gate.awaited
    gate.error = None
    ops.release(first)
    with pytest.raises(K.FUSEError) as info:
        ops.fsync(second, False)
    assert info.value.errno == errno.ENOSPC
    ops.release(second)


def test_buffered_writes_then_ftruncate_and_gapped_writes_match_the_native_disk(
    tmp_path: Path, mnt: Path
) -> None:
    """Writes still in the daemon's buffer come before a later ftruncate, and a small write
    after a gap stays where it was written (two mutants survived without this test)."""
    native = tmp_path / "native"
    native.mkdir()
    for root in (native, mnt):
        fd = os.open(root / "f", os.O_RDWR | os.O_CREAT, 0o644)
        os.write(fd, b"a" * 100)  # held in the daemon's buffer
        os.ftruncate(fd, 10)  # applies after it
        os.pwrite(fd, b"b" * 10, 30)  # a gap from 10 to 30
        os.pwrite(fd, b"c" * 5, 50)  # and one from 40 to 50
        assert os.pread(fd, 100, 0) == (native / "f").read_bytes()
        os.close(fd)
    assert (mnt / "f").read_bytes() == (native / "f").read_bytes()
