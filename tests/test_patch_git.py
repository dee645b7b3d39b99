"""``diff --patch`` against ``git apply``: the patch from A to B, applied by git to a copy of
A, gives B (every file's bytes, whether it is executable, every symlink's target).

git is the oracle; GNU ``patch`` is checked on text too. Only what git tracks is compared
(files, symlinks, the execute bit): the patch leaves the rest out, as ``git diff`` does.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from clirun import bfs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

import branchfs
from branchfs import Branch, Store

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

#: A tree as git sees it: path (bytes) -> ("link", target) or ("x" / "f", bytes).
GitTree = dict[bytes, tuple[str, bytes]]


def git_tree(root: Path) -> GitTree:
    """Files and symlinks under ``root`` (``.git`` aside), as git would track them."""
    out: GitTree = {}
    top = os.fsencode(root)
    for dirpath, dirs, files in os.walk(top):
        if dirpath == top and b".git" in dirs:
            dirs.remove(b".git")
        for name in files + dirs:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, top)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                kind = "x" if info.st_mode & stat.S_IXUSR else "f"
                out[rel] = (kind, Path(os.fsdecode(path)).read_bytes())
    return out


def exported(branch: Branch, dest: Path) -> Path:
    branch.export_dir(dest)
    return dest


def git_apply(tree: Path, patch: str) -> subprocess.CompletedProcess[bytes]:
    """``git apply`` of ``patch`` in ``tree`` (a plain directory: no repository needed)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tree), "LC_ALL": "C"}
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    return subprocess.run(
        ["git", "apply", "-"], cwd=tree, input=os.fsencode(patch), capture_output=True, env=env
    )


def check_applies(base: Branch, other: Branch, work: Path) -> str:
    """Apply ``base.patch(other, binary=True)`` to an export of ``base`` with git and
    compare with an export of ``other``; the patch."""
    patch = base.patch(other, binary=True)
    tree = exported(base, work / "applied")
    if patch:  # git apply refuses an empty patch
        ran = git_apply(tree, patch)
        assert ran.returncode == 0, (ran.stderr.decode(), patch)
    assert git_tree(tree) == git_tree(exported(other, work / "want")), patch
    return patch


def check_gnu_patch(base: Branch, other: Branch, work: Path) -> None:
    """As :func:`check_applies`, with GNU ``patch -p1`` (text only) instead of git."""
    tree = exported(base, work / "t")
    ran = subprocess.run(
        ["patch", "-p1", "--quiet"], cwd=tree, input=base.patch(other).encode(), capture_output=True
    )
    assert ran.returncode == 0, ran
    assert git_tree(tree) == git_tree(exported(other, work / "want"))


def every_kind(store: Store) -> tuple[Branch, Branch]:
    """A base and a fork that changed it in every way a patch can say."""
    m = store.create_branch("main")
    m.write_bytes("edit.txt", b"".join(b"line %d\n" % i for i in range(30)))
    m.write_bytes("tail.txt", b"no newline at the end")
    m.write_bytes("gone.txt", b"bye\n")
    m.write_bytes("gone-empty", b"")
    m.write_bytes("run.sh", b"echo hi\n")
    m.write_bytes("was-x.sh", b"echo x\n")
    m.chmod("was-x.sh", 0o755)
    m.write_bytes("private.txt", b"p\n")
    m.write_bytes("move.txt", b"moved as it is\n")
    m.write_bytes("move-edit.txt", b"".join(b"m %d\n" % i for i in range(20)))
    m.write_bytes("bin.dat", bytes(range(256)) * 40)
    m.write_bytes("latin1.txt", "caf\xe9\n".encode("latin-1"))
    m.write_bytes("file-to-link", b"a file\n")
    m.symlink("edit.txt", "link-to-file")
    m.symlink("edit.txt", "retarget")
    m.symlink("gone.txt", "gone-link")
    m.makedirs("dir/sub")
    m.write_bytes("dir/sub/same.txt", b"same\n")
    m.write_bytes("dir/sub/changed.txt", b"before\n")
    m.write_bytes("dir/sub/deleted.txt", b"deleted\n")
    m.write_bytes("dir/renamed.txt", b"renamed inside\n")
    m.symlink("sub/same.txt", "dir/rel-link")
    m.makedirs("rmdir/a")
    m.write_bytes("rmdir/a/f", b"f\n")
    m.write_bytes(os.fsdecode(b'odd \t"name\xff.txt'), b"odd\n")
    f = m.fork("f")
    f.write_bytes("edit.txt", b"".join(b"line %d\n" % i for i in range(30)).replace(b"7", b"VII"))
    f.write_bytes("tail.txt", b"still no newline, changed")
    f.remove("gone.txt")
    f.remove("gone-empty")
    f.write_bytes("new-empty", b"")
    f.write_bytes("new/deep/file.txt", b"new\n", parents=True)
    f.chmod("run.sh", 0o755)
    f.chmod("was-x.sh", 0o644)
    f.chmod("private.txt", 0o600)  # not a git change
    f.rename("move.txt", "moved.txt")
    f.rename("move-edit.txt", "moved-edit.txt")
    f.write_bytes("moved-edit.txt", b"".join(b"m %d\n" % i for i in range(20)) + b"more\n")
    f.write_bytes("bin.dat", bytes(range(256)) * 39 + b"changed")
    f.write_bytes("latin1.txt", "caf\xe9!\n".encode("latin-1"))
    f.remove("file-to-link")
    f.symlink("run.sh", "file-to-link")
    f.remove("link-to-file")
    f.write_bytes("link-to-file", b"now a file\n")
    f.remove("retarget")
    f.symlink("run.sh", "retarget")
    f.remove("gone-link")
    f.rename("dir", "dir2")
    f.write_bytes("dir2/sub/changed.txt", b"after\n")
    f.remove("dir2/sub/deleted.txt")
    f.write_bytes("dir2/sub/added.txt", b"added\n")
    f.rename("dir2/renamed.txt", "dir2/sub/renamed-twice.txt")
    f.remove("rmdir/a/f")
    f.rmdir("rmdir/a")
    f.rmdir("rmdir")
    f.write_bytes(os.fsdecode(b'odd \t"name\xff.txt'), b"odder\n")
    return m, f


def test_git_apply_reproduces_every_kind_of_change(store: Store, tmp_path: Path) -> None:
    m, f = every_kind(store)
    patch = check_applies(m, f, tmp_path)
    assert "diff --git a/private.txt" not in patch  # 0644 -> 0600: git has no such change
    assert "new mode 100755" in patch and "new mode 100644" in patch
    assert "similarity index 100%\nrename from move.txt\nrename to moved.txt\n" in patch
    assert "rename from dir/sub/same.txt\nrename to dir2/sub/same.txt\n" in patch
    assert "deleted file mode 100644\n" in patch and "new file mode 120000\n" in patch
    assert "GIT binary patch\n" in patch
    assert 'diff --git "a/odd \\t\\"name\\377.txt" "b/odd \\t\\"name\\377.txt"\n' in patch


@pytest.mark.parametrize("sep", ["\f", "\v", "\r", "\x1c", "\x85", "\u2028"])
def test_lines_end_at_newlines_only(store: Store, tmp_path: Path, sep: str) -> None:
    """git splits lines at \\n alone; str.splitlines also at these (the patch was corrupt)."""
    m = store.create_branch("main")
    m.write_bytes("ff.c", f"int a;\n{sep}\nint b;\n".encode())
    f = m.fork("f")
    f.write_bytes("ff.c", f"int a;\n{sep}\nint c;\n".encode())
    assert "@@ -1,3 +1,3 @@" in check_applies(m, f, tmp_path)


def test_symlinked_directories_are_not_followed(store: Store, tmp_path: Path) -> None:
    """git sees no file under a symlink: a symlink replaced by a directory (and back) is a
    deletion of one and a creation of the other's files."""
    m = store.create_branch("main")
    m.write_bytes("e/x", b"hi\n", parents=True)
    m.symlink("e", "d")
    m.write_bytes("g/y", b"y\n", parents=True)
    f = m.fork("f")
    f.remove("d")
    f.write_bytes("d/x", b"hi\n", parents=True)
    f.remove("g/y")
    f.rmdir("g")
    f.symlink("e", "g")
    check_applies(m, f, tmp_path / "one")
    check_applies(f, m, tmp_path / "back")


def test_every_name_of_a_hard_linked_file_is_patched(store: Store, tmp_path: Path) -> None:
    m = store.create_branch("main")
    m.write_bytes("a", b"1\n")
    m.makedirs("sub")
    m.link("a", "sub/b")
    f = m.fork("f")
    f.write_bytes("sub/b", b"new\n")
    f.chmod("a", 0o755)
    check_applies(m, f, tmp_path)


@pytest.mark.skipif(shutil.which("patch") is None, reason="GNU patch is not installed")
def test_gnu_patch_takes_names_with_spaces(store: Store, tmp_path: Path) -> None:
    m = store.create_branch("main")
    m.write_bytes("sp ace", b"old\n")
    f = m.fork("f")
    f.write_bytes("sp ace", b"new\n")
    f.write_bytes(" leading space", b"x\n")  # (GNU patch drops a trailing one, as for git)
    check_gnu_patch(m, f, tmp_path)


def test_identical_trees_make_an_empty_patch(store: Store) -> None:
    m = store.create_branch("main")
    m.write_bytes("a.txt", b"a\n")
    assert m.patch(m.fork("f")) == ""


def test_without_binary_git_refuses_the_patch_and_changes_nothing(
    store: Store, tmp_path: Path
) -> None:
    m = store.create_branch("main")
    m.write_bytes("a.txt", b"a\n")
    m.write_bytes("b.bin", b"\0\1\2")
    f = m.fork("f")
    f.write_bytes("a.txt", b"A\n")
    f.write_bytes("b.bin", b"\0\1\3")
    patch = m.patch(f)
    assert "Binary files a/b.bin and b/b.bin differ\n" in patch
    tree = exported(m, tmp_path / "t")
    before = git_tree(tree)
    ran = git_apply(tree, patch)
    assert ran.returncode != 0 and b"b.bin" in ran.stderr
    assert git_tree(tree) == before  # git apply is all or nothing


@pytest.mark.skipif(shutil.which("patch") is None, reason="GNU patch is not installed")
def test_gnu_patch_applies_text_changes(store: Store, tmp_path: Path) -> None:
    m = store.create_branch("main")
    m.write_bytes("a.txt", b"one\ntwo\nthree\n")
    m.write_bytes("gone.txt", b"bye\n")
    f = m.fork("f")
    f.write_bytes("a.txt", b"one\n2\nthree\n")
    f.remove("gone.txt")
    f.write_bytes("sub/new.txt", b"new\n", parents=True)
    check_gnu_patch(m, f, tmp_path)


def test_cli_binary_needs_patch(store_path: Path) -> None:
    with branchfs.Store.open(store_path, create=True) as s:
        s.create_branch("main").fork("f")
    ran = bfs("diff", "main", "f", "--binary", store=store_path)
    assert ran.code == 2 and "add --patch" in ran.err, ran
    ran = bfs("diff", "main", "f", "--patch", "--binary", store=store_path)
    assert ran.code == 0, ran


# -- random change sets -----------------------------------------------------------------------

NAMES = ("a", "b", "d/c", "d/e/f", "g")
CONTENTS = hs.sampled_from(
    (
        b"",
        b"x\n",
        b"x\ny\n",
        b"no newline",
        b"\0\1binary\xff",
        "ü\n".encode(),
        b"x\nY\n",
        b"x\n\x0c\ny\r\n",
    )
)
OPS = hs.one_of(
    hs.tuples(hs.just("write"), hs.sampled_from(NAMES), CONTENTS),
    hs.tuples(hs.just("remove"), hs.sampled_from(NAMES)),
    hs.tuples(hs.just("rename"), hs.sampled_from((*NAMES, "d", "d/e")), hs.sampled_from(NAMES)),
    hs.tuples(hs.just("chmod"), hs.sampled_from(NAMES), hs.sampled_from((0o755, 0o644, 0o600))),
    hs.tuples(
        hs.just("symlink"),
        hs.sampled_from((*NAMES, "d")),
        hs.sampled_from(("a", "../a", "x", "d/e")),
    ),
    hs.tuples(hs.just("link"), hs.sampled_from(NAMES), hs.sampled_from(NAMES)),
)


def play(branch: Branch, ops: list[tuple[object, ...]]) -> None:
    """Apply ``ops`` to ``branch``, skipping those that fail (a missing path …)."""
    for op in ops:
        kind, path = str(op[0]), str(op[1])
        try:
            if kind == "write":
                if branch.islink(path):
                    branch.remove(path)
                branch.write_bytes(path, bytes(op[2]), parents=True)  # type: ignore[call-overload]
            elif kind == "remove":
                branch.remove(path)
            elif kind == "rename":
                branch.rename(path, str(op[2]))
            elif kind == "link":
                branch.link(path, str(op[2]))
            elif kind == "chmod":
                branch.chmod(path, int(op[2]))  # type: ignore[call-overload]
            else:
                if branch.lexists(path):
                    branch.remove(path)
                branch.symlink(str(op[2]), path)
        except OSError:
            pass


@settings(
    max_examples=int(os.environ.get("BRANCHFS_PATCH_EXAMPLES", "40")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(base_ops=hs.lists(OPS, max_size=8), ops=hs.lists(OPS, min_size=1, max_size=12))
def test_git_apply_reproduces_random_changes(
    tmp_path_factory: pytest.TempPathFactory,
    base_ops: list[tuple[object, ...]],
    ops: list[tuple[object, ...]],
) -> None:
    work = tmp_path_factory.mktemp("patch")
    with branchfs.Store.open(work / "s.bfs", create=True) as store:
        m = store.create_branch("main")
        play(m, [("write", "a", b"a\n"), ("write", "d/c", b"c\n"), *base_ops])
        f = m.fork("f")
        play(f, ops)
        check_applies(m, f, work)
