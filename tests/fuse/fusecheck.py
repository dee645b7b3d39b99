"""Whether this machine can run FUSE tests; skip them (saying why) if not, or fail them
where the environment says FUSE must be there.

A developer machine without ``/dev/fuse`` or ``fusermount3`` gets a skip with the reason.
CI (``CI=true``, which CI services set) and ``.ci/run`` (``BRANCHFS_REQUIRE_FUSE=1``) must
test the mount, so there a missing FUSE fails every test that needs it instead: ``make
test`` can never pass there having tested only the engine.
"""

from __future__ import annotations

import os
import shutil

import pytest


def fuse_missing() -> str | None:
    """Why this machine cannot run FUSE tests, or None if it can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (FUSE is not available in this machine or container)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian package fuse3)"
    return None


def fuse_required() -> str | None:
    """Which setting of the environment demands FUSE tests, or None."""
    if os.environ.get("BRANCHFS_REQUIRE_FUSE", "") not in ("", "0"):
        return "BRANCHFS_REQUIRE_FUSE is set"
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        return "CI is set"
    return None


def check_fuse() -> None:
    """Return if FUSE can be used; else skip the test, or fail it where FUSE is required."""
    reason = fuse_missing()
    if reason is None:
        return
    required = fuse_required()
    if required is not None:
        pytest.fail(f"FUSE tests must run here ({required}), but {reason}", pytrace=False)
    pytest.skip(reason)


#: Put ``pytestmark = needs_fuse`` in a module whose every test needs a mount.
needs_fuse = pytest.mark.usefixtures("need_fuse")
