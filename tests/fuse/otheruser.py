"""A real second user for permission tests: ``setpriv`` to uid/gid 65534 (nobody).

Such tests need root (to switch user), ``setpriv`` (util-linux) and a mount with
``allow_other``, in a directory the other user can traverse (pytest's own temporary
directories are private to their user, so :func:`shared_dir` makes one in /tmp).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

UID = GID = 65534


def other_user_missing() -> str | None:
    """Why a second user cannot be used here, or None if it can."""
    if os.geteuid() != 0:
        return "switching to a second user needs root"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    return None


needs_other_user = pytest.mark.skipif(
    other_user_missing() is not None, reason=str(other_user_missing())
)


@contextmanager
def shared_dir() -> Iterator[Path]:
    """A fresh directory under /tmp that the second user may traverse; removed after."""
    path = Path(tempfile.mkdtemp(prefix="branchfs-shared-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_other(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` (with ``args`` in ``sys.argv[1:]``) as uid/gid 65534, no groups.

    The interpreter is the system's real executable, which the second user can run (a
    virtualenv or pyenv shim under /root is not reachable for it).
    """
    python = os.path.realpath(sys.base_exec_prefix + "/bin/python3")
    if not os.access(python, os.X_OK) or python.startswith("/root"):
        python = "/usr/bin/python3"
    cmd = ["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups"]
    return subprocess.run(
        [*cmd, python, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd="/",
    )
