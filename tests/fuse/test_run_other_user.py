"""``branchfs run BRANCH --at PATH`` as a real second user (uid 65534, through ``setpriv``).

A non-root user gets its private mount namespace inside a user namespace. Where the kernel
allows that, two runs at the same PATH each see only their own tree and PATH is unchanged
for everyone else; where it does not, the command says in one line what to enable. The
second test makes the kernel refuse for real: inside a user namespace whose
``user.max_user_namespaces`` is 1 (user_namespaces(7): the limit holds for every namespace
nested below), one nested namespace is made for the caller and the probe's would be the
second.

The second user runs this checkout's ``branchfs`` through a tiny virtualenv made in a
directory it owns under /tmp: the system's ``python3`` (the same minor version) with
copies of the package and of its runtime dependencies (the checkout, pytest's and this
virtualenv's interpreter may all be unreadable to the second user).

A user mounts FUSE through the setuid ``fusermount3``, which opens ``/dev/fuse`` with the
user's own rights: a distribution's udev makes it 0666, a container often leaves it 0600.
Where the second user cannot open it, each run gets a mount namespace of its own (made by
root, for that run alone) in which a 0666 node of the same device is bind-mounted over
``/dev/fuse``; nothing changes for the rest of the machine.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import branchfs_fuse
import pytest
from fusecheck import needs_fuse
from leftovers import leftovers
from otheruser import GID, UID, other_user_missing

import branchfs

pytestmark = needs_fuse

SYSTEM_PYTHON = "/usr/bin/python3"
AS_OTHER = ["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups"]


def _runtime_dists() -> set[str]:
    """branchfs's runtime distributions and theirs (no extras), by normalized name."""
    seen: set[str] = set()
    todo = ["branchfs"]
    while todo:
        name = todo.pop()
        for req in importlib.metadata.requires(name) or []:
            if "extra ==" in req:
                continue
            dep = re.split(r"[^A-Za-z0-9_.-]", req, maxsplit=1)[0].lower().replace("_", "-")
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def _link(src: str, dst: str) -> None:
    """A hard link (files stay read-only to others), else a copy (another filesystem)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _mini_venv(root: Path) -> Path:
    """A virtualenv at ``root`` on the system's python holding copies of this checkout's
    packages and of their runtime dependencies (the checkout may be unreadable to others)."""
    minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python3").symlink_to(SYSTEM_PYTHON)
    (root / "pyvenv.cfg").write_text(
        f"home = {os.path.dirname(SYSTEM_PYTHON)}\ninclude-system-site-packages = false\n"
    )
    site = root / "lib" / minor / "site-packages"
    site.mkdir(parents=True)
    for pkg in (branchfs, branchfs_fuse):
        source = Path(str(pkg.__file__)).parent
        shutil.copytree(source, site / pkg.__name__, copy_function=_link)
    ours = Path(sysconfig.get_paths()["purelib"])  # this virtualenv's site-packages
    wanted = _runtime_dists()
    tops = {
        top
        for top, dists in importlib.metadata.packages_distributions().items()
        if any(d.lower().replace("_", "-") in wanted for d in dists)
    }
    for top in tops:
        if (ours / top).is_dir():
            shutil.copytree(ours / top, site / top, copy_function=_link)
        for single in [*ours.glob(f"{top}.py"), *ours.glob(f"{top}.*.so")]:
            _link(str(single), str(site / single.name))
    for sub in [site, *site.rglob("*")]:
        if sub.is_dir():  # the user may write __pycache__ (as a pip install would have)
            os.chown(sub, UID, GID)
    return root / "bin" / "python3"


@pytest.fixture
def other_home() -> Iterator[tuple[Path, Path]]:
    """(a fresh directory owned by the second user, the python it runs branchfs with)."""
    why = other_user_missing()
    if why is not None:
        pytest.skip(why)
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is missing: the second user needs an interpreter")
    home = Path(tempfile.mkdtemp(prefix="branchfs-otheruser-", dir="/tmp"))
    try:
        home.chmod(0o755)
        os.chown(home, UID, GID)
        python = _mini_venv(home / "venv")
        probe = subprocess.run(
            [*AS_OTHER, str(python), "-c", "import sys, branchfs.cli, branchfs_fuse.zygote; "
             "print(sys.version_info[:2])"],
            capture_output=True, text=True, check=False, cwd="/",
        )  # fmt: skip
        if probe.returncode != 0 or probe.stdout.strip() != str(sys.version_info[:2]):
            pytest.skip(
                "the second user cannot run a copy of this checkout's branchfs with "
                f"{SYSTEM_PYTHON} (is it Python "
                f"{sys.version_info.major}.{sys.version_info.minor}, as the copied C "
                "extensions need?): "
                + (probe.stderr.strip().splitlines() or [probe.stdout.strip()])[-1]
            )
        yield home, python
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _store(home: Path, python: Path) -> Path:
    """A store in ``home`` with main (shared.txt) forked as a1 and a2, made by the user (so
    that its trees' files are the user's), and PATH (``home/work``) with a file of its own."""
    store_path = home / "s.bfs"
    code = (
        "import sys, branchfs\n"
        "with branchfs.Store.open(sys.argv[1], create=True) as store:\n"
        "    store.create_branch('main').write_text('shared.txt', 'base\\n')\n"
        "    store.fork('main', 'a1')\n"
        "    store.fork('main', 'a2')\n"
    )
    done = subprocess.run([*AS_OTHER, str(python), "-c", code, str(store_path)],
                          capture_output=True, text=True, check=False, cwd="/")  # fmt: skip
    assert done.returncode == 0, done.stderr
    at = home / "work"
    at.mkdir()
    (at / "host.txt").write_text("the host's\n")
    os.chown(at, UID, GID)
    return store_path


def _fuse_for_other(home: Path) -> list[str]:
    """The argv prefix that lets the second user open /dev/fuse (empty if it already can)."""
    can = subprocess.run([*AS_OTHER, "test", "-r", "/dev/fuse", "-a", "-w", "/dev/fuse"],
                         check=False, cwd="/")  # fmt: skip
    if can.returncode == 0:
        return []
    st = os.stat("/dev/fuse")
    node = home / "fuse"
    os.mknod(node, 0o666 | 0o020000, st.st_rdev)  # S_IFCHR, the same major:minor
    node.chmod(0o666)
    wrap = 'mount --bind "$0" /dev/fuse || exit 99; exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", wrap, str(node)]


def _userns_allowed() -> bool:
    done = subprocess.run(
        [*AS_OTHER, "unshare", "--user", "--map-root-user", "--mount", "true"],
        capture_output=True, check=False, cwd="/",
    )  # fmt: skip
    return done.returncode == 0


def test_two_runs_at_the_same_path_as_a_second_user(other_home: tuple[Path, Path]) -> None:
    home, python = other_home
    store_path = _store(home, python)
    at = home / "work"
    barrier = home / "barrier"
    barrier.mkdir()
    os.chown(barrier, UID, GID)
    fuse = _fuse_for_other(home)
    cli = [*fuse, *AS_OTHER, str(python), "-m", "branchfs.cli", "--store", str(store_path), "run"]
    if not _userns_allowed():
        done = subprocess.run(
            [*cli, "a1", "--at", str(at), "--", "true"],
            capture_output=True, text=True, check=False, cwd="/", timeout=120,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("branchfs: "), done.stderr
        assert "user namespace" in lines[0] and ("sysctl" in lines[0] or "allow" in lines[0])
        assert sorted(os.listdir(at)) == ["host.txt"]
        return
    # Each writes its own file at PATH, waits until the other has written too, then says
    # who it runs as and lists PATH: both are inside their namespaces at once.
    script = (
        f'echo "$BRANCHFS_BRANCH" > "$BRANCHFS_BRANCH.txt"; touch {barrier}/"$BRANCHFS_BRANCH"; '
        f"while [ $(ls {barrier} | wc -l) -lt 2 ]; do sleep 0.02; done; "
        "id -u; pwd; ls; cat shared.txt; "
        f'touch {barrier}/"$BRANCHFS_BRANCH".seen; '
        f"while [ $(ls {barrier} | wc -l) -lt 4 ]; do sleep 0.02; done"
    )
    procs = {}
    for b in ("a1", "a2"):
        procs[b] = subprocess.Popen(
            [*cli, b, "--at", str(at), "--", "sh", "-c", script],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
        )  # fmt: skip
    deadline = time.monotonic() + 120
    try:
        # While both run, everyone else sees PATH unchanged.
        while len(os.listdir(barrier)) < 4 and time.monotonic() < deadline:
            assert sorted(os.listdir(at)) == ["host.txt"]
            if any(p.poll() is not None for p in procs.values()):
                break
            time.sleep(0.01)
        outputs = {b: p.communicate(timeout=120) for b, p in procs.items()}
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
    for b, (out, err) in outputs.items():
        assert procs[b].returncode == 0, err
        assert out.split() == [str(UID), str(at), f"{b}.txt", "shared.txt", "base"], err
    assert sorted(os.listdir(at)) == ["host.txt"]
    with branchfs.Store.open(store_path) as store:
        assert store.branch("a1").read_text("a1.txt") == "a1\n"
        assert not store.branch("a1").exists("a2.txt")
        assert store.branch("a2").read_text("a2.txt") == "a2\n"
        assert not store.branch("main").exists("a1.txt")
    assert leftovers(store_path, []) == []


def test_refused_user_namespace_says_what_to_enable(other_home: tuple[Path, Path]) -> None:
    home, python = other_home
    if not _userns_allowed():
        pytest.skip("user namespaces are refused here already (the other test checks that)")
    store_path = _store(home, python)
    at = home / "work"
    # Outer namespace A (the user is its root) allows one namespace below it; the command
    # runs in B, as a plain user again, where making one more is refused (ENOSPC).
    inner = (
        "echo 1 > /proc/sys/user/max_user_namespaces && exec unshare --user --map-user=1000 "
        '--map-group=1000 -- "$@"'
    )
    done = subprocess.run(
        [*AS_OTHER, "unshare", "--user", "--map-root-user", "--", "sh", "-c", inner, "sh",
         str(python), "-m", "branchfs.cli", "--store", str(store_path), "run", "a1", "--at",
         str(at), "--", "true"],
        capture_output=True, text=True, check=False, cwd="/", timeout=120,
    )  # fmt: skip
    if "max_user_namespaces" in done.stderr and "Permission denied" in done.stderr:
        pytest.skip("this kernel does not let a namespace's owner lower its own limit")
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("branchfs: "), done.stderr
    assert "user.max_user_namespaces" in lines[0] and "sysctl -w" in lines[0], lines[0]
    assert sorted(os.listdir(at)) == ["host.txt"]
