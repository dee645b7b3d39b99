"""The examples in examples/ run as documented and do what they say."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from fusecheck import needs_fuse

pytestmark = needs_fuse

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_best_of_patches_merges_the_passing_candidate() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "best_of_patches.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "attempt 4 (think forever): timeout" in out
    assert "winner: attempt 2 (keep only word characters)" in out
    assert "branches left: ['main']" in out
    assert "slugify: candidate 2" in out  # the winner's commit is in main's history
    assert "git status --porcelain: ''" in out
    logs = Path(re.search(r"logs in (\S+)", out).group(1))  # type: ignore[union-attr]
    try:
        assert (logs / "attempt-2.log").exists(), out  # the path printed still exists
    finally:
        shutil.rmtree(logs, ignore_errors=True)
