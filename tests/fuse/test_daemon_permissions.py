"""A root daemon's private mount, where the daemon checks permissions (no ``default_permissions``).

Each test compares with the native disk: root with its capabilities (access(2), exec of a
file without x bits, chmod/chown/utimes of other users' files), and root without any
capability (``setpriv --bounding-set=-all``), for whom every check is the daemon's: the
same calls must fail with the same errno, and succeed with the same result. The tree is
made, then the mount is remounted, so that each of the capability-less caller's walks
reaches the daemon; another test walks names the kernel has cached (see docs/
architecture.md, "Permissions", for what the kernel still answers alone). A last test
counts requests: no GETATTR of the directory between the creates and unlinks in it, and
one per file with ``--default-permissions``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ctlclient import requests
from fusecheck import needs_fuse

import branchfs

pytestmark = [
    needs_fuse,
    pytest.mark.skipif(os.geteuid() != 0, reason="the daemon checks permissions only as root"),
]

OTHER = 1000  # an owner that is not root

#: (name, kind, mode, uid, gid) of the tree root makes before each comparison.
TREE = [
    ("open", "dir", 0o777, 0, 0),
    ("rootdir", "dir", 0o755, 0, 0),
    ("rootdir_ro", "dir", 0o555, 0, 0),
    ("otherdir", "dir", 0o755, OTHER, OTHER),
    ("otherdir_w", "dir", 0o777, OTHER, OTHER),
    ("private", "dir", 0o700, OTHER, OTHER),
    ("private/inside", "file", 0o644, OTHER, OTHER),
    ("groupdir", "dir", 0o070, OTHER, 0),
    ("groupdir/inside", "file", 0o644, OTHER, OTHER),
    ("sticky", "dir", 0o1777, 0, 0),
    ("sticky/theirs", "file", 0o666, OTHER, OTHER),
    ("sticky_theirs", "dir", 0o1777, OTHER, OTHER),
    ("sticky_theirs/theirs", "file", 0o666, OTHER, OTHER),
    ("rootdir/mine", "file", 0o644, 0, 0),
    ("rootdir/mine_ro", "file", 0o444, 0, 0),
    ("rootdir/mine_none", "file", 0o000, 0, 0),
    ("rootdir/theirs", "file", 0o644, OTHER, OTHER),
    ("rootdir/theirs_rw", "file", 0o666, OTHER, OTHER),
    ("rootdir/theirs_private", "file", 0o600, OTHER, OTHER),
    ("rootdir/theirs_group", "file", 0o060, OTHER, 0),
    ("rootdir/group_other", "file", 0o640, 0, OTHER),
    ("rootdir/script_theirs", "file", 0o744, OTHER, OTHER),
    ("rootdir/script_all", "file", 0o755, OTHER, OTHER),
    ("rootdir/script_none", "file", 0o644, 0, 0),
    ("otherdir/file", "file", 0o666, OTHER, OTHER),
    ("otherdir/sub", "dir", 0o777, OTHER, OTHER),
    ("otherdir_w/file", "file", 0o644, OTHER, OTHER),
    ("otherdir_w/sub", "dir", 0o755, OTHER, OTHER),
]

SCRIPT = b"#!/bin/sh\nexit 0\n"

#: Run a command as root without any capability (none in its bounding set: execve as
#: uid 0 then grants none).
NO_CAPABILITIES = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]


def make_tree(root: Path) -> None:
    """The tree of :data:`TREE` under ``root`` (children first made, modes set last)."""
    for name, kind, _mode, _uid, _gid in TREE:
        path = root / name
        if kind == "dir":
            path.mkdir()
        else:
            path.write_bytes(SCRIPT)
    for name, _kind, mode, uid, gid in reversed(TREE):
        os.chown(root / name, uid, gid)
        os.chmod(root / name, mode)


#: Calls a capability-less root makes, each reported as "ok", a result, or an errno name.
CALLS = r"""
import errno, json, os, subprocess, sys
root = sys.argv[1]
out = {}
def p(name): return os.path.join(root, name)
def run(label, fn):
    try:
        res = fn()
        out[label] = "ok" if res is None else res
    except OSError as exc:
        out[label] = errno.errorcode.get(exc.errno, str(exc.errno))
def read(name): return len(open(p(name), "rb").read())
def write(name):
    fd = os.open(p(name), os.O_WRONLY)
    os.close(fd)
def create(name):
    fd = os.open(p(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.close(fd)
def access(name):
    return "".join(c for c, m in (("r", os.R_OK), ("w", os.W_OK), ("x", os.X_OK))
                   if os.access(p(name), m))
def mode(name): return oct(os.stat(p(name)).st_mode)
def exec_(name):
    return subprocess.run([p(name)], check=False).returncode
names = [n for n in sys.argv[2].split(",")]
for n in names:
    run("access " + n, lambda: access(n))
    run("read " + n, lambda: read(n) if not os.path.isdir(p(n)) else sorted(os.listdir(p(n))))
    run("write " + n, lambda: write(n))
    run("stat " + n, lambda: mode(n))
for n in ["rootdir/script_theirs", "rootdir/script_all", "rootdir/script_none"]:
    run("exec " + n, lambda: exec_(n))
for d in ["open", "rootdir", "rootdir_ro", "otherdir", "otherdir_w", "private", "groupdir",
          "sticky"]:
    run("create in " + d, lambda: create(d + "/new"))
    run("mkdir in " + d, lambda: os.mkdir(p(d + "/newdir")))
    run("symlink in " + d, lambda: os.symlink("x", p(d + "/newlink")))
    run("link in " + d, lambda: os.link(p("rootdir/mine"), p(d + "/newhard")))
run("chdir private", lambda: os.chdir(p("private")))
run("listdir private", lambda: sorted(os.listdir(p("private"))))
run("stat private/inside", lambda: mode("private/inside"))
run("read private/inside", lambda: read("private/inside"))
run("read groupdir/inside", lambda: read("groupdir/inside"))
run("unlink sticky/theirs", lambda: os.unlink(p("sticky/theirs")))
run("unlink sticky_theirs/theirs", lambda: os.unlink(p("sticky_theirs/theirs")))
run("rename sticky_theirs/theirs",
    lambda: os.rename(p("sticky_theirs/theirs"), p("sticky_theirs/moved")))
def noatime(name): os.close(os.open(p(name), os.O_RDONLY | os.O_NOATIME))
run("noatime theirs_rw", lambda: noatime("rootdir/theirs_rw"))
run("noatime mine", lambda: noatime("rootdir/mine"))
run("unlink otherdir/file", lambda: os.unlink(p("otherdir/file")))
run("rmdir otherdir/sub", lambda: os.rmdir(p("otherdir/sub")))
run("unlink otherdir_w/file", lambda: os.unlink(p("otherdir_w/file")))
run("rename within otherdir_w",
    lambda: os.rename(p("otherdir_w/file2"), p("otherdir_w/file3")))
run("rename dir across", lambda: os.rename(p("otherdir_w/sub"), p("open/sub")))
run("rename file across", lambda: os.rename(p("open/new"), p("otherdir_w/moved")))
run("link theirs_private", lambda: os.link(p("rootdir/theirs_private"), p("open/hard1")))
run("link theirs_rw", lambda: os.link(p("rootdir/theirs_rw"), p("open/hard2")))
run("truncate theirs", lambda: os.truncate(p("rootdir/theirs"), 0))
run("truncate theirs_rw", lambda: os.truncate(p("rootdir/theirs_rw"), 1))
run("touch theirs", lambda: os.utime(p("rootdir/theirs")))
run("touch theirs_rw", lambda: os.utime(p("rootdir/theirs_rw")))
run("utime theirs_rw", lambda: os.utime(p("rootdir/theirs_rw"), (5, 5)))
run("chmod theirs", lambda: os.chmod(p("rootdir/theirs"), 0o600))
run("chown theirs", lambda: os.chown(p("rootdir/theirs"), 0, 0))
run("chgrp mine", lambda: os.chown(p("rootdir/mine"), -1, 5))
run("chown mine", lambda: os.chown(p("rootdir/mine"), OTHER := 1000, -1))
run("chmod g+s group_other", lambda: os.chmod(p("rootdir/group_other"), 0o2640))
run("mode group_other", lambda: mode("rootdir/group_other"))
run("utime mine", lambda: os.utime(p("rootdir/mine_ro"), (7, 7)))
run("setxattr theirs", lambda: os.setxattr(p("rootdir/theirs"), "user.k", b"v"))
run("getxattr theirs_private", lambda: os.getxattr(p("rootdir/theirs_private"), "user.k"))
run("setxattr mine_ro", lambda: os.setxattr(p("rootdir/mine_ro"), "user.k", b"v"))
print(json.dumps(out, sort_keys=True))
"""

PROBED = [n for n, *_ in TREE if "/" not in n or n.startswith("rootdir/")]


def as_root_without_capabilities(root: Path) -> dict[str, object]:
    """What :data:`CALLS` report in ``root`` for root without any capability."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    res = subprocess.run(
        [*NO_CAPABILITIES, sys.executable, "-c", CALLS, str(root), ",".join(PROBED)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd="/",
    )
    assert res.returncode == 0, res.stderr
    result: dict[str, object] = json.loads(res.stdout)
    return result


@pytest.fixture
def roots(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """(a native directory, the mountpoint, the store) of a root daemon's private mount."""
    store = tmp_path / "store"
    with branchfs.Store.open(store, create=True) as s:
        s.create_branch("main")
    native, mnt = tmp_path / "native", tmp_path / "mnt"
    native.mkdir()
    mnt.mkdir()
    tmp_path.chmod(0o755)
    yield native, mnt, store


def mount_options(mnt: Path) -> list[str]:
    """The options of the mount at ``mnt`` in /proc/mounts."""
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == str(mnt):
            return fields[3].split(",")
    raise AssertionError(f"{mnt} is not mounted")


def test_root_without_capabilities_gets_what_the_native_disk_gives(
    roots: tuple[Path, Path, Path],
) -> None:
    native, mnt, store = roots
    make_tree(native)
    with branchfs.mounted(store, mnt) as m:
        assert "default_permissions" not in mount_options(m)
        make_tree(m)
    with branchfs.mounted(store, mnt) as m:  # a fresh kernel cache: walks reach the daemon
        (m / "otherdir_w" / "file2").touch()  # full root: the kernel caches these names
        (native / "otherdir_w" / "file2").touch()
        expected = as_root_without_capabilities(native)
        got = as_root_without_capabilities(m)
    assert got == expected
    # the comparison exercises refusals of each kind, and successes
    assert {"EACCES", "EPERM", "ok"} <= {v for v in expected.values() if isinstance(v, str)}
    assert expected["mode group_other"] == "0o100640"  # set-group-ID dropped, not refused
    assert expected["unlink sticky_theirs/theirs"] == expected["noatime theirs_rw"] == "EPERM"


WALKS = r"""
import errno, json, os, sys
out = {}
def run(label, fn):
    try:
        out[label] = fn()
    except OSError as exc:
        out[label] = errno.errorcode[exc.errno]
root = sys.argv[1]
for d in ("private", "closed", "open"):
    for name in ("inside", "missing", "sub/inside"):
        path = os.path.join(root, d, name)
        run(f"stat {d}/{name}", lambda: os.stat(path).st_mode)
        run(f"read {d}/{name}", lambda: len(open(path, "rb").read()))
    run(f"cd {d}", lambda: os.chdir(os.path.join(root, d)))
print(json.dumps(out, sort_keys=True))
"""


def test_root_without_capabilities_cannot_walk_names_the_kernel_cached(
    roots: tuple[Path, Path, Path],
) -> None:
    """Names in a directory such a caller may not search reach the kernel uncached (and
    a chmod that closes a directory drops those it cached), so its walks ask the daemon."""
    native, mnt, store = roots
    with branchfs.mounted(store, mnt) as m:
        results = []
        for root in (native, m):
            for d, mode in (("private", 0o700), ("closed", 0o755), ("open", 0o755)):
                (root / d / "sub").mkdir(parents=True)
                (root / d / "inside").write_bytes(b"secret")
                (root / d / "sub" / "inside").write_bytes(b"secret")
                os.chown(root / d, OTHER, OTHER)
                os.chmod(root / d, mode)
            for d in ("private", "closed", "open"):  # root walks all: the kernel caches
                for name in ("inside", "missing", "sub/inside"):
                    os.path.exists(root / d / name)
            os.chmod(root / "closed", 0o700)
            if shutil.which("setpriv") is None:
                pytest.skip("setpriv (util-linux) is not installed")
            res = subprocess.run(
                [*NO_CAPABILITIES, sys.executable, "-c", WALKS, str(root)],
                capture_output=True,
                text=True,
                check=True,
            )
            results.append(json.loads(res.stdout))
    assert results[1] == results[0]
    assert results[0]["read closed/sub/inside"] == "EACCES"
    assert results[0]["read open/sub/inside"] == 6


ACCESS_PROBE = r"""
import json, os, sys
out = {}
for name in sys.argv[2].split(","):
    path = os.path.join(sys.argv[1], name)
    out[name] = [os.access(path, m) for m in (os.F_OK, os.R_OK, os.W_OK, os.X_OK)]
print(json.dumps(out))
"""


def test_root_gets_what_the_native_disk_gives(roots: tuple[Path, Path, Path]) -> None:
    """Root with its capabilities: access(2), exec without x bits, chmod/chown/utimes of
    files it does not own, and set-group-ID kept by chmod."""
    native, mnt, store = roots
    with branchfs.mounted(store, mnt) as m:
        results = []
        for root in (native, m):
            make_tree(root)
            probe = subprocess.run(
                [sys.executable, "-c", ACCESS_PROBE, str(root), ",".join(PROBED)],
                capture_output=True,
                text=True,
                check=True,
            )
            seen: dict[str, object] = json.loads(probe.stdout)
            for script in ("script_none", "script_all"):
                try:
                    seen["exec " + script] = subprocess.run([root / "rootdir" / script]).returncode
                except PermissionError as exc:
                    seen["exec " + script] = exc.errno
            theirs = root / "rootdir" / "theirs_private"
            os.chmod(theirs, 0o2600)
            os.chown(theirs, 7, 8)
            os.utime(theirs, ns=(5_000_000_000, 6_000_000_000))
            seen["utime"] = os.stat(theirs).st_mtime_ns
            with open(theirs, "a") as fh:
                fh.write("more")
            os.truncate(theirs, 3)
            st = os.stat(theirs)
            seen["theirs"] = [oct(st.st_mode), st.st_uid, st.st_gid, st.st_size]
            results.append(seen)
        assert "default_permissions" not in mount_options(m)
    assert results[1] == results[0]
    assert results[0]["rootdir/script_none"] == [True, True, True, False]  # really probed
    assert results[0]["exec script_none"] == 13  # EACCES
    assert results[0]["theirs"][0] == "0o102600"  # chown by root kept set-group-ID


def changes_per_file(root: Path, n: int) -> tuple[dict[str, int], dict[str, int]]:
    """Requests reaching the daemon for ``n`` creates, then ``n`` unlinks, in one directory."""
    d = root / "loop"
    d.mkdir()
    before = requests(root)
    for i in range(n):
        fd = os.open(d / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
    created = requests(root)
    for i in range(n):
        os.unlink(d / f"f{i}")
    removed = requests(root)

    def delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
        return {k: v - a.get(k, 0) for k, v in b.items() if v != a.get(k, 0)}

    return delta(before, created), delta(created, removed)


@pytest.mark.parametrize("kernel_checks", [False, True], ids=["daemon", "kernel"])
def test_no_directory_getattr_between_creates_and_unlinks(
    roots: tuple[Path, Path, Path], kernel_checks: bool
) -> None:
    _native, mnt, store = roots
    n = 50
    extra = ["--default-permissions"] if kernel_checks else []
    with branchfs.mounted(store, mnt, extra_args=extra) as m:
        assert ("default_permissions" in mount_options(m)) == kernel_checks
        create, unlink = changes_per_file(m, n)
    assert create.get("create") == n and unlink.get("unlink") == n
    if kernel_checks:  # the test can fail: the kernel asks before each create and unlink
        assert create.get("getattr", 0) >= n - 1 and unlink.get("getattr", 0) >= n - 1
    else:
        assert create.get("getattr", 0) <= 2 and unlink.get("getattr", 0) <= 2, (create, unlink)


def test_other_users_mounts_keep_kernel_checks(roots: tuple[Path, Path, Path]) -> None:
    _native, mnt, store = roots
    with branchfs.mounted(store, mnt, allow_other=True) as m:
        assert {"default_permissions", "allow_other"} <= set(mount_options(m))


#: Run a command as root of a new user namespace that maps root alone.
IN_USER_NAMESPACE = ["unshare", "--user", "--map-root-user"]

USERNS_PROBE = r"""
import errno, json, os, sys
out = {}
for name in ("theirs", "mine_ro"):
    for label, flags in (("read", os.O_RDONLY), ("write", os.O_WRONLY)):
        try:
            os.close(os.open(os.path.join(sys.argv[1], name), flags))
            out[f"{label} {name}"] = "ok"
        except OSError as exc:
            out[f"{label} {name}"] = errno.errorcode[exc.errno]
print(json.dumps(out, sort_keys=True))
"""


def test_root_in_a_user_namespace_has_capabilities_only_over_what_it_maps(
    roots: tuple[Path, Path, Path],
) -> None:
    """``unshare --user --map-root-user``: uid 0 with every capability of its namespace,
    which count only for files whose owner and group it maps (root's)."""
    native, mnt, store = roots
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    with branchfs.mounted(store, mnt) as m:
        results = []
        for root in (native, m):
            (root / "theirs").write_bytes(b"x")
            os.chown(root / "theirs", OTHER, OTHER)
            os.chmod(root / "theirs", 0o600)
            (root / "mine_ro").write_bytes(b"x")
            os.chmod(root / "mine_ro", 0o400)
            res = subprocess.run(
                [*IN_USER_NAMESPACE, sys.executable, "-c", USERNS_PROBE, str(root)],
                capture_output=True,
                text=True,
                check=False,
            )
            if res.returncode != 0:
                pytest.skip(f"no user namespace here: {res.stderr.strip()}")
            results.append(json.loads(res.stdout))
    assert results[1] == results[0]
    assert results[0] == {
        "read mine_ro": "ok",
        "read theirs": "EACCES",
        "write mine_ro": "ok",
        "write theirs": "EACCES",
    }
