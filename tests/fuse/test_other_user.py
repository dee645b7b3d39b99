"""A second, unprivileged user in a mount with ``allow_other``, compared with the native disk.

Root makes a file set-user-ID / set-group-ID; uid 65534 opens it (``O_WRONLY``, which the
mount serves with direct I/O, and ``O_RDWR``, through the page cache), writes one byte and
``fstat``s the same descriptor; root ``stat``s it after close. Linux clears set-user-ID on
a write by a caller without CAP_FSETID, and set-group-ID too when the file is
group-executable or the writer is not in its group; the mount must show the same modes at
the same moments.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fusecheck import needs_fuse
from otheruser import as_other, needs_other_user, shared_dir

import branchfs

pytestmark = [needs_fuse, needs_other_user]

WRITE_AND_FSTAT = """
import json, os, sys
fd = os.open(sys.argv[1], int(sys.argv[2]))
os.write(fd, b"y")
during = os.fstat(fd).st_mode
os.close(fd)
print(json.dumps([during, os.stat(sys.argv[1]).st_mode]))
"""


@pytest.fixture(scope="module")
def roots() -> Iterator[tuple[Path, Path]]:
    """A native directory and a mount with ``allow_other``, both writable by everyone."""
    with shared_dir() as base:
        with branchfs.Store.open(base / "store", create=True) as s:
            s.create_branch("main")
        native, mnt = base / "native", base / "mnt"
        native.mkdir()
        mnt.mkdir()
        with branchfs.mounted(base / "store", mnt, allow_other=True) as m:
            for d in (native, m):
                d.chmod(0o777)
            yield native, m


def modes_after_other_write(root: Path, mode: int, flags: int) -> tuple[int, int, int]:
    """(mode seen by the writer's fstat, by its stat after close, by root's stat after)."""
    f = root / f"setid-{mode:o}-{flags}"
    f.write_bytes(b"x")
    os.chmod(f, mode)
    res = as_other(WRITE_AND_FSTAT, str(f), str(flags))
    assert res.returncode == 0, res.stderr
    during, after = json.loads(res.stdout)
    return during, after, os.stat(f).st_mode


@pytest.mark.parametrize("flags", [os.O_WRONLY, os.O_RDWR], ids=["wronly", "rdwr"])
@pytest.mark.parametrize("mode", [0o4777, 0o2777, 0o6777, 0o2767, 0o4755 | 0o022])
def test_a_write_by_another_user_clears_setid_as_on_the_native_disk(
    roots: tuple[Path, Path], mode: int, flags: int
) -> None:
    native, mnt = roots
    expected = modes_after_other_write(native, mode, flags)
    assert modes_after_other_write(mnt, mode, flags) == expected
    assert not expected[0] & 0o4000  # the case is really exercised
