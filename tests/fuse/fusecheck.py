"""Whether this machine can run FUSE tests, and the marker that skips them (saying why) if not."""

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


#: Put ``pytestmark = needs_fuse`` in a module whose every test needs a mount.
needs_fuse = pytest.mark.skipif(fuse_missing() is not None, reason=str(fuse_missing()))
