"""Directories removed while open behave as files removed while open, as on the native disk.

A process that holds a directory (an open descriptor, or its working directory) after
``rmdir``, or after a ``rename`` that replaced it, still sees an empty directory with
``st_nlink`` 0; nothing can be created in it. Each case runs on a native directory and in
the mount, and every result (values and errno) must be the same.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fusecheck import needs_fuse

if TYPE_CHECKING:
    from conftest import Mounted

pytestmark = needs_fuse


def outcome(fn: Callable[[], Any]) -> Any:
    """``fn()``'s value, or the name of the errno it raised."""
    try:
        return fn()
    except OSError as exc:
        return f"errno {exc.errno}"


def removed_while_open(root: Path, how: str) -> list[Any]:
    """Hold directory ``victim`` open, remove it (``rmdir`` or replaced by ``rename``), and
    look at it through the descriptor."""
    victim = root / f"victim-{how}"
    victim.mkdir()
    fd = os.open(victim, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if how == "rmdir":
            os.rmdir(victim)
        else:
            (root / f"other-{how}").mkdir()
            os.rename(root / f"other-{how}", victim)
        st = os.fstat(fd)
        return [
            st.st_nlink,
            oct(st.st_mode),
            outcome(lambda: os.listdir(fd)),
            outcome(lambda: os.open("new", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)),
            outcome(lambda: os.mkdir("sub", dir_fd=fd)),
            outcome(lambda: os.stat("missing", dir_fd=fd)),
            sorted(p.name for p in root.iterdir() if how in p.name),
        ]
    finally:
        os.close(fd)


@pytest.mark.parametrize("how", ["rmdir", "rename"])
def test_a_removed_directory_held_open_is_empty_with_no_links(
    module_mount: Mounted, tmp_path: Path, how: str
) -> None:
    native = removed_while_open(tmp_path, how)
    assert native[0] == 0 and native[2] == []
    assert removed_while_open(module_mount.path, how) == native


def test_ls_in_a_removed_working_directory(module_mount: Mounted, tmp_path: Path) -> None:
    script = "mkdir d && cd d && rmdir ../d && ls -a . ; echo rc=$?; touch x; echo rc=$?"
    results = []
    for root in (tmp_path, module_mount.path):
        res = subprocess.run(
            ["bash", "-c", script], cwd=root, capture_output=True, text=True, check=False
        )
        results.append((res.stdout, res.stderr.replace(str(root), "ROOT"), res.returncode))
    assert results[0][0].startswith("rc=0")  # GNU ls lists nothing, not even . and ..
    assert results[1] == results[0]


def test_a_removed_directory_is_gone_once_let_go(module_mount: Mounted) -> None:
    d = module_mount.path / "held"
    d.mkdir()
    ino = d.stat().st_ino
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    os.rmdir(d)
    branch = module_mount.store.branch("main")
    assert not branch.exists("held")
    os.close(fd)
    assert not os.path.exists(d)
    # The kernel may keep its reference a while; what the store keeps is at most the
    # link-less record, never a name.
    rec = module_mount.store.read_tree("main", lambda v: v.inode(ino))
    assert rec is None or not rec.links
