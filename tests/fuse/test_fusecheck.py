"""Where FUSE is missing, FUSE tests skip with the reason on a developer machine and fail
where the environment requires FUSE (CI, ``BRANCHFS_REQUIRE_FUSE``): run by a real pytest
in a subprocess whose PATH has no ``fusermount3``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SAMPLE = [
    str(HERE / "test_control.py::test_control_dir_hidden_from_listing_but_reachable"),
    str(HERE / "test_mount_basic.py::test_cli_mount_umount_and_bad_input"),
]


def run_without_fuse(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "BRANCHFS_REQUIRE_FUSE")}
    empty = tmp_path / "bin"
    empty.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *SAMPLE],
        env={**clean, "PATH": str(empty), **env},
        cwd=HERE.parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_developer_machine_without_fuse_skips_saying_why(tmp_path: Path) -> None:
    res = run_without_fuse(tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 skipped" in res.stdout, res.stdout
    assert "is not installed" in res.stdout or "is missing" in res.stdout, res.stdout


@pytest.mark.parametrize("env", [{"CI": "true"}, {"BRANCHFS_REQUIRE_FUSE": "1"}])
def test_ci_without_fuse_fails(tmp_path: Path, env: dict[str, str]) -> None:
    res = run_without_fuse(tmp_path, **env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "skipped" not in res.stdout, res.stdout
    assert "FUSE tests must run here" in res.stdout, res.stdout
    assert "2 error" in res.stdout, res.stdout
