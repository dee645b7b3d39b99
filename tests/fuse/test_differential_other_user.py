"""The differential test of :mod:`test_posix_differential` as a second, unprivileged user,
with some operations through a second path to the same files.

The mount is started with ``allow_other``; each example runs in a child process that has
dropped to uid/gid 65534 with no groups (``setgroups``/``setresgid``/``setresuid``, what
``setpriv`` does), on a native directory and in the mount. Every third operation goes
through a second path: on the native disk a symlink to the directory, in the mount
``.branchfs/branches/main/`` (which leads to the same files). Results and errno must agree,
and so must the final trees (read as root afterwards).
"""

from __future__ import annotations

import os
import pickle
import shutil
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fusecheck import needs_fuse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from otheruser import GID, UID, needs_other_user, shared_dir
from test_posix_differential import Side, ops, outcome, seed, snapshot_tree

import branchfs

pytestmark = [needs_fuse, needs_other_user]


@pytest.fixture(scope="module")
def places() -> Iterator[tuple[Path, Path, Path, Path]]:
    """(native dir, its second path, mounted dir, its second path), all open to uid 65534."""
    with shared_dir() as base:
        with branchfs.Store.open(base / "store", create=True) as s:
            s.create_branch("main")
        native, mnt = base / "native", base / "mnt"
        native.mkdir(mode=0o777)
        native.chmod(0o777)
        (base / "native-alias").symlink_to(native)
        mnt.mkdir()
        with branchfs.mounted(base / "store", mnt, allow_other=True) as m:
            m.chmod(0o777)
            yield native, base / "native-alias", m, m / ".branchfs" / "branches" / "main"


def as_other_user(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a forked child running as uid/gid 65534; its result (or its error
    re-raised here as AssertionError with the child's traceback)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the other user, run, report, exit at once
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(GID, GID, GID)
            os.setresuid(UID, UID, UID)
            payload = ("ok", fn(*args))
        except BaseException:
            payload = ("err", traceback.format_exc())
        with os.fdopen(w, "wb") as fh:
            pickle.dump(payload, fh)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "err":
        raise AssertionError(f"in the child as uid {UID}:\n{value}")
    return value


def run_both(places: tuple[Path, Path, Path, Path], n: int, program: list[Any]) -> Any:
    """The child's part: seed both trees, run ``program`` on both, every third operation
    through the second path; the first disagreement, or None."""
    native_root, native_alt, mount_root, mount_alt = places
    sides = []
    for root, alt in ((native_root, native_alt), (mount_root, mount_alt)):
        main, second = Side(root / f"u{n}"), Side(alt / f"u{n}")
        second.fds = main.fds
        main.root.mkdir()
        seed(main.root)
        sides.append((main, second))
    try:
        for i, op in enumerate(program):
            k = 1 if i % 3 == 2 else 0
            got = outcome(sides[1][k], op)
            if op[0] == "exchange" and got == ("err", "EINVAL"):
                continue
            want = outcome(sides[0][k], op)
            if got != want:
                return f"step {i} {op[0]}{op[1:]} (path {k}): mount {got!r}, native {want!r}"
    finally:
        for main, _second in sides:
            main.close_all()
    return None


_n = iter(range(10**9))


@settings(
    max_examples=int(os.environ.get("BRANCHFS_DIFF_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(program=st.lists(ops, min_size=1, max_size=25))
def test_same_results_as_another_user_through_two_paths(
    places: tuple[Path, Path, Path, Path], program: list[tuple[Any, ...]]
) -> None:
    n = next(_n)
    result = as_other_user(run_both, places, n, program)
    try:
        assert result is None, result
        # The final trees, read as root: the other user may have locked itself out.
        assert snapshot_tree(places[2] / f"u{n}") == snapshot_tree(places[0] / f"u{n}")
    finally:
        for root in (places[0], places[2]):
            target = root / f"u{n}"
            for dirpath, dirnames, _ in os.walk(target):
                for d in dirnames:
                    os.chmod(Path(dirpath, d), 0o755)
            shutil.rmtree(target, ignore_errors=True)
