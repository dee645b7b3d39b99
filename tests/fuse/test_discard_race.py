"""A mount that starts while a discard runs never serves a discarded branch (issue 20).

``Store.discard`` asks "is this branch mounted?" and then deletes it. A daemon that starts
between the two used to register and serve a branch that was then deleted under it. The
test puts a real daemon's start exactly there: the busy check, once it has answered, starts
a mount and waits for it (bounded) before the discard goes on. Whatever the order the two
then take, exactly one wins: the branch is kept and served, or gone and not mounted.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import branchfs
from branchfs import notices
from branchfs.mount import MountError, mount_type, start_daemon, unmount

#: How long the busy check waits for the mount it started (a mount here takes < 1 s).
WAIT_S = 4.0


def test_a_mount_starting_inside_a_discard(
    store_path: Path, tmp_path: Path, need_fuse: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with branchfs.Store.open(store_path) as s:
        s.fork("main", "work")
        s.branch("work").write_bytes("kept.txt", b"work's data")
    mp = tmp_path / "mnt"
    mp.mkdir()
    outcome: list[object] = []
    real_serving = notices.serving

    def mount() -> None:
        try:
            outcome.append(start_daemon(str(store_path), str(mp), "work", timeout=60))
        except MountError as exc:
            outcome.append(exc)

    starter = threading.Thread(target=mount)

    def serving(path: str, branch: str) -> list[notices.Registration]:
        regs = real_serving(path, branch)
        if branch == "work" and not starter.is_alive() and not outcome:
            starter.start()  # a mount starts right after the busy check answered
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline and starter.is_alive():
                if mount_type(str(mp)) is not None:
                    break
                time.sleep(0.05)
        return regs

    monkeypatch.setattr(notices, "serving", serving)
    try:
        with branchfs.Store.open(store_path) as s:
            try:
                s.discard("work")
                discarded = True
            except branchfs.BranchBusy:
                discarded = False
        monkeypatch.undo()
        starter.join(timeout=90)
        assert not starter.is_alive()
        mounted = mount_type(str(mp)) is not None
        with branchfs.Store.open(store_path) as s:
            exists = "work" in s.branches()
            if mounted:
                # the mount won: the branch is there and the mount serves it
                assert not discarded and exists
                assert (mp / "kept.txt").read_bytes() == b"work's data"
                (mp / "new.txt").write_bytes(b"through the mount")
            else:
                # the discard won: the branch is gone and the mount said why it failed
                assert discarded and not exists
                assert isinstance(outcome[0], MountError), outcome
                assert "work" in str(outcome[0])
    finally:
        if mount_type(str(mp)) is not None:
            unmount(str(mp))
    if mounted:
        with branchfs.Store.open(store_path) as s:
            assert s.branch("work").read_bytes("new.txt") == b"through the mount"
