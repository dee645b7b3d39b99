"""Branch views under ``.branchfs/branches/`` are cached by the kernel as the mounted view is,
and never stale: a change to that branch from anywhere shows on the next syscall.

The view answers with the mounted view's long timeouts (a second ``stat`` costs no request),
and the daemon drops what the kernel cached of it when the branch changes through the API
of another process, through ``ctl`` of this daemon, or through another daemon's mount.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from fusecheck import needs_fuse

import branchfs
from branchfs.mount import ctl

if TYPE_CHECKING:
    from conftest import Mounted

pytestmark = needs_fuse


def elsewhere(store_path: Path, code: str) -> None:
    """Run ``code`` in another Python process with ``store`` open."""
    prog = "import sys, branchfs\nstore = branchfs.Store.open(sys.argv[1])\n"
    res = subprocess.run(
        [sys.executable, "-c", prog + textwrap.dedent(code), str(store_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr


def requests(mnt: Path) -> int:
    return sum(ctl(mnt, "stats")["requests"].values())


def test_a_branch_view_is_cached_and_follows_every_change(
    mounted_store: Mounted, tmp_path: Path
) -> None:
    mnt, store = mounted_store.path, mounted_store.store
    store.branch("main").write_bytes("d/f.txt", b"one\n", parents=True)
    store.fork("main", "side")
    view = mnt / ".branchfs" / "branches" / "side"
    f = view / "d" / "f.txt"
    assert f.read_bytes() == b"one\n"
    assert not (view / "d" / "new.txt").exists()

    # Warm: a stat, a listing and a missing name again cost the daemon nothing, beyond
    # what the ctl exchange that counts requests costs itself, and a look at the
    # ``branches`` directory's attributes once a second (its listing may change elsewhere).
    def look() -> None:
        os.stat(f)
        os.listdir(view / "d")
        assert not (view / "d" / "new.txt").exists()

    look()
    look()
    ctl(mnt, "stats --reset")
    baseline = requests(mnt)
    ctl(mnt, "stats --reset")
    for _ in range(3):
        look()
    assert requests(mnt) - baseline <= 3, ctl(mnt, "stats")["requests"]  # 9 syscalls
    # Another process writes the branch: the view shows it at once.
    elsewhere(
        mounted_store.store_path,
        """
        b = store.branch("side")
        b.write_bytes("d/f.txt", b"two, longer\\n")
        b.write_bytes("d/new.txt", b"new\\n")
        """,
    )
    assert f.read_bytes() == b"two, longer\n"
    assert os.stat(f).st_size == len(b"two, longer\n")
    assert sorted(os.listdir(view / "d")) == ["f.txt", "new.txt"]
    assert (view / "d" / "new.txt").read_bytes() == b"new\n"
    # A merge into it through this daemon's ctl.
    (mnt / "d" / "from-main.txt").write_bytes(b"m\n")
    assert ctl(mnt, "merge main --into side")["ok"]
    assert (view / "d" / "from-main.txt").read_bytes() == b"m\n"
    # Another daemon serving the branch: the entry leads there, and writes through it show.
    (tmp_path / "m2").mkdir()
    with branchfs.mounted(mounted_store.store_path, tmp_path / "m2", "side") as m2:
        (m2 / "d" / "f.txt").write_bytes(b"three\n")
        assert (m2 / "d" / "f.txt").read_bytes() == b"three\n"
        link = os.readlink(view) if os.path.islink(view) else None
        assert link in (None, str(m2))  # the entry turns into a symlink within a second
        assert (view / "d" / "f.txt").read_bytes() == b"three\n"
    assert (view / "d" / "f.txt").read_bytes() == b"three\n"
