"""``O_TMPFILE``: a file without a name, named later with ``linkat``, as on the native disk.

The FUSE protocol has ``FUSE_TMPFILE`` (7.37); the daemon creates an orphan inode that
lives while open and is named by ``link`` through ``/proc/self/fd``. With ``O_EXCL`` it can
never be named. Each case runs on a native directory and in the mount and must agree.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fusecheck import needs_fuse

if TYPE_CHECKING:
    from conftest import Mounted

pytestmark = needs_fuse


_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
AT_SYMLINK_FOLLOW = 0x400


def link_fd(fd: int, path: Path) -> None:
    """Name open file ``fd`` as ``path``: linkat of /proc/self/fd/FD, following it (what
    open(2) suggests for O_TMPFILE files without CAP_DAC_READ_SEARCH)."""
    src = f"/proc/self/fd/{fd}".encode()
    if _libc.linkat(AT_FDCWD, src, AT_FDCWD, os.fsencode(path), AT_SYMLINK_FOLLOW) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))


def tmpfile_story(root: Path) -> list[Any]:
    d = root / "tmpdir"
    d.mkdir()
    out: list[Any] = []
    fd = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o640)
    try:
        os.write(fd, b"unnamed data")
        st = os.fstat(fd)
        out += [st.st_nlink, oct(st.st_mode), st.st_size, sorted(os.listdir(d))]
        link_fd(fd, d / "named")
        st = os.fstat(fd)
        out += [st.st_nlink, st.st_ino == os.stat(d / "named").st_ino]
        out += [(d / "named").read_bytes(), sorted(os.listdir(d))]
    finally:
        os.close(fd)
    fd = os.open(d, os.O_TMPFILE | os.O_WRONLY | os.O_EXCL, 0o600)
    try:
        link_fd(fd, d / "never")
        out.append("linked")
    except OSError as exc:
        out.append(f"errno {exc.errno}")
    finally:
        os.close(fd)
    with tempfile.TemporaryFile(dir=d) as fh:  # glibc/Python try O_TMPFILE first
        fh.write(b"scratch")
        fh.seek(0)
        out.append(fh.read())
    out.append(sorted(os.listdir(d)))
    return out


def test_o_tmpfile_then_linkat_as_on_the_native_disk(module_mount: Mounted, tmp_path: Path) -> None:
    native = tmpfile_story(tmp_path)
    assert native[0] == 0 and native[4] == 1
    assert tmpfile_story(module_mount.path) == native
    # The unnamed files are gone from the store once closed (and forgotten).
    os.sync()
    tree = module_mount.store.branch("main")
    assert sorted(tree.listdir("tmpdir")) == ["named"]
