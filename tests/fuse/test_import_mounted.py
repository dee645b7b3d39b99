"""An import into a mounted branch is published as a whole and shows in the mount (issue 20).

The import builds in a hidden layer and publishes it with one ref update; the mount must
commit what it holds before the import starts (else the publish would find the branch
changed) and show the published tree on the next syscall.
"""

from __future__ import annotations

import os
from pathlib import Path

from conftest import Mounted


def test_an_import_into_a_mounted_branch_shows_in_the_mount(
    mounted_store: Mounted, tmp_path: Path
) -> None:
    mnt, store = mounted_store.path, mounted_store.store
    (mnt / "before.txt").write_bytes(b"written through the mount")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(50):
        (src / "sub" / f"f{i}").write_bytes(os.urandom(5000))
    assert os.listdir(mnt) == ["before.txt"]
    assert store.branch("main").import_dir(src) == 50
    assert sorted(os.listdir(mnt)) == ["before.txt", "sub"]
    assert len(os.listdir(mnt / "sub")) == 50
    assert (mnt / "sub" / "f7").read_bytes() == (src / "sub" / "f7").read_bytes()
    (mnt / "after.txt").write_bytes(b"the mount writes to the published tree")
    assert store.branch("main").read_bytes("after.txt") == b"the mount writes to the published tree"
    assert store.branch("main").read_bytes("before.txt") == b"written through the mount"
