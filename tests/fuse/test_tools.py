"""Real programs inside a mounted branch: git, tar, ``python -m compileall`` and sqlite3.

Each tool's own checks are used as the oracle where it has one (``git fsck``, ``tar
--compare``, ``PRAGMA integrity_check``), and results are compared with the same work on the
native disk.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fusecheck import needs_fuse

import branchfs

pytestmark = needs_fuse

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
}


@pytest.fixture(scope="module")
def mnt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Branch ``main`` of a fresh store, mounted for the whole module."""
    base = tmp_path_factory.mktemp("tools")
    store = base / "store.bfs"
    with branchfs.Store.open(store, create=True) as s:
        s.create_branch("main")
    (base / "mnt").mkdir()
    with branchfs.mounted(store, base / "mnt") as m:
        yield m


def sh(*cmd: str, cwd: Path, env: dict[str, str] | None = None, input: bytes | None = None) -> str:
    """Run a command; fail the test with its output if it fails."""
    res = subprocess.run(cmd, cwd=cwd, env=env or GIT_ENV, capture_output=True, input=input)
    out = res.stdout.decode(errors="replace")
    assert res.returncode == 0, f"{cmd} failed ({res.returncode}): {res.stderr.decode()}{out}"
    return out


def make_tree(root: Path) -> None:
    """A small source tree: text, a 300 KiB binary, a symlink, a hard link, modes, empty dir."""
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "src" / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (root / "src" / "main.py").write_text("import pkg\nprint(pkg.VALUE)\n")
    (root / "blob.bin").write_bytes(os.urandom(300 * 1024))
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o755)
    os.symlink("src/main.py", root / "link")
    os.link(root / "src" / "main.py", root / "hard.py")


def test_git_init_add_commit_status_checkout(mnt: Path) -> None:
    repo = mnt / "repo"
    repo.mkdir()
    make_tree(repo)
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-q", "-m", "first", cwd=repo)
    assert sh("git", "status", "--porcelain", cwd=repo) == ""

    sh("git", "checkout", "-q", "-b", "other", cwd=repo)
    (repo / "src" / "main.py").write_text("print('other')\n")
    (repo / "new.txt").write_text("only on other\n")
    os.unlink(repo / "blob.bin")
    assert sorted(sh("git", "status", "--porcelain", cwd=repo).splitlines()) == [
        " D blob.bin",
        " M hard.py",  # a hard link of src/main.py
        " M src/main.py",
        "?? new.txt",
    ]
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-q", "-m", "second", cwd=repo)

    sh("git", "checkout", "-q", "main", cwd=repo)
    assert (repo / "src" / "main.py").read_text() == "import pkg\nprint(pkg.VALUE)\n"
    assert not (repo / "new.txt").exists()
    assert (repo / "blob.bin").stat().st_size == 300 * 1024
    assert sh("git", "status", "--porcelain", cwd=repo) == ""
    sh("git", "checkout", "-q", "other", cwd=repo)
    assert (repo / "new.txt").read_text() == "only on other\n"
    assert sh("git", "status", "--porcelain", cwd=repo) == ""
    assert sh("git", "rev-list", "--count", "HEAD", cwd=repo).strip() == "2"
    sh("git", "fsck", "--strict", "--no-progress", cwd=repo)


def test_tar_create_and_extract(mnt: Path, tmp_path: Path) -> None:
    native = tmp_path / "native"
    native.mkdir()
    make_tree(native)
    os.setxattr(native / "blob.bin", "user.origin", b"native")
    archive = tmp_path / "a.tar"
    sh("tar", "--xattrs", "-cf", str(archive), "-C", str(native), ".", cwd=tmp_path)

    inside = mnt / "untarred"
    inside.mkdir()
    sh("tar", "--xattrs", "-xf", str(archive), "-C", str(inside), cwd=tmp_path)
    # tar's own check: contents, sizes, modes, mtimes, link targets against the archive.
    sh("tar", "--xattrs", "--compare", "-f", str(archive), "-C", str(inside), cwd=tmp_path)
    assert os.getxattr(inside / "blob.bin", "user.origin") == b"native"
    assert os.stat(inside / "hard.py").st_ino == os.stat(inside / "src" / "main.py").st_ino

    # And the other way: an archive made inside the mount extracts to the same tree natively.
    archive2 = mnt / "b.tar"
    sh("tar", "--xattrs", "-cf", str(archive2), "-C", str(inside), ".", cwd=tmp_path)
    back = tmp_path / "back"
    back.mkdir()
    sh("tar", "--xattrs", "-xf", str(archive2), "-C", str(back), cwd=tmp_path)
    sh("tar", "--xattrs", "--compare", "-f", str(archive), "-C", str(back), cwd=tmp_path)
    assert sh("diff", "-r", "--no-dereference", str(native), str(back), cwd=tmp_path) == ""


def test_python_compileall(mnt: Path, tmp_path: Path) -> None:
    source = Path(os.path.dirname(os.__file__)) / "json"
    native, inside = tmp_path / "json_native", mnt / "json_mounted"
    for dest in (native, inside):
        shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
        # -d: the same file name inside the bytecode, wherever the tree is.
        sh(sys.executable, "-m", "compileall", "-q", "-d", "json", str(dest), cwd=tmp_path)
    pycs = sorted(p.relative_to(inside) for p in inside.rglob("*.pyc"))
    assert pycs == sorted(p.relative_to(native) for p in native.rglob("*.pyc"))
    assert len(pycs) >= 4
    for rel in pycs:  # same sources, same mtimes (copy2) -> byte-identical bytecode
        assert (inside / rel).read_bytes() == (native / rel).read_bytes(), rel
    # The bytecode is used: importing from the mount does not recompile (no new mtimes).
    before = {rel: (inside / rel).stat().st_mtime_ns for rel in pycs}
    env = {**os.environ, "PYTHONPATH": str(mnt)}
    out = sh(
        sys.executable, "-c", "import json_mounted as j; print(j.dumps([1]))", cwd=mnt, env=env
    )
    assert out.strip() == "[1]"
    assert {rel: (inside / rel).stat().st_mtime_ns for rel in pycs} == before


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="sqlite3 is not installed")
@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_sqlite3_transaction_and_query(mnt: Path, journal: str) -> None:
    d = mnt / f"db_{journal}"
    d.mkdir()
    script = f"""
PRAGMA journal_mode={journal};
CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, n INTEGER);
BEGIN;
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000)
INSERT INTO t (name, n) SELECT printf('row %d', x), x FROM c;
COMMIT;
BEGIN;
UPDATE t SET n = n * 2 WHERE id % 2 = 0;
ROLLBACK;
CREATE INDEX t_n ON t (n);
"""
    sh("sqlite3", "test.db", cwd=d, input=script.encode())
    query = "SELECT count(*), sum(n), max(name) FROM t WHERE n > 10;\nPRAGMA integrity_check;\n"
    out = sh("sqlite3", "test.db", cwd=d, input=query.encode()).splitlines()
    assert out == ["4990|12502445|row 999", "ok"]
    # A second process sees the committed data and the index (locks and, for WAL, the shm mmap).
    out = sh("sqlite3", "test.db", "SELECT count(*) FROM t INDEXED BY t_n WHERE n = 77;", cwd=d)
    assert out.strip() == "1"


@pytest.mark.parametrize("tool", ["sed -i", "cp -p"])
def test_tools_that_copy_permissions_keep_the_mode(mnt: Path, tmp_path: Path, tool: str) -> None:
    """``sed -i`` and ``cp -p`` copy a file's permissions with ``fsetxattr(system.posix_acl_
    access)`` and fall back to ``fchmod`` only on EOPNOTSUPP. The mount has no ACLs, so it
    must refuse them: stored as plain xattrs they left the new file 0600 (compared with the
    native disk)."""
    results = []
    for root in (tmp_path, mnt):
        work = root / f"acl-{tool.split()[0]}"
        work.mkdir()
        (work / "run.sh").write_text("#!/bin/sh\necho hi\n")
        os.chmod(work / "run.sh", 0o755)
        if tool == "sed -i":
            sh("sed", "-i", "s/hi/ho/", "run.sh", cwd=work)
            target = work / "run.sh"
        else:
            sh("cp", "-p", "run.sh", "copy.sh", cwd=work)
            target = work / "copy.sh"
        results.append((oct(target.stat().st_mode & 0o7777), sh(str(target), cwd=work)))
    assert results[1] == results[0]
    assert results[0][0] == "0o755"
    with pytest.raises(OSError) as exc:
        os.setxattr(target, "system.posix_acl_access", b"\x02\0\0\0")
    assert exc.value.errno == errno.EOPNOTSUPP
