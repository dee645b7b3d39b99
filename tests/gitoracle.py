"""git as the oracle for merges: the same history in a branchfs store and a real git repo.

Reusable by any test (tests/test_merge_git.py uses it; tests/test_model.py may too):

- :class:`GitTwin` plays one history on both sides, step by step: ``fork``, ``write``,
  ``rewrite`` (through a temporary file renamed over it), ``remove``, ``rename``,
  ``chmod`` and ``merge`` name branchfs branches and git branches alike (a git commit per
  step, ``git merge`` with the default strategy); :meth:`GitTwin.merge` returns both
  outcomes and keeps the two histories in step when only one side conflicted;
- :func:`merge_file` runs ``git merge-file -p`` on three byte strings (the reference for
  conflict markers).

Only regular files are compared (git does not track directories), with their bytes and
whether they are executable (the only mode bit git keeps). Tests that need git skip when
it is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import branchfs

GIT = shutil.which("git")

#: A tree as both sides are compared: path -> (executable, bytes).
Tree = dict[str, tuple[bool, bytes]]


def git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run git quietly in ``cwd`` with a fixed identity and no user configuration."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "LC_ALL": "C",
    }
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, check=check)


def merge_file(
    base: bytes,
    ours: bytes,
    theirs: bytes,
    labels: tuple[str, str, str] = ("ours", "base", "theirs"),
    *,
    diff3: bool = True,
) -> tuple[bytes, bool]:
    """``git merge-file -p [--diff3]`` of three texts: (output, clean)."""
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for name, data in (("ours", ours), ("base", base), ("theirs", theirs)):
            p = Path(d) / name
            p.write_bytes(data)
            paths.append(str(p))
        args = ["merge-file", "-p"] + (["--diff3"] if diff3 else [])
        for label in labels:
            args += ["-L", label]
        r = git(Path(d), *args, *paths, check=False)
        if r.returncode < 0 or r.returncode > 127:
            raise RuntimeError(r.stderr.decode())
        return r.stdout, r.returncode == 0


def branch_tree(b: branchfs.Branch) -> Tree:
    """The regular files of a branchfs branch."""
    out: Tree = {}
    for top, _dirs, files in b.walk(""):
        for f in files:
            p = f"{top}/{f}" if top else f
            s = b.lstat(p)
            if s.st_mode & 0o170000 == 0o100000:
                out[p] = (bool(s.st_mode & 0o100), b.read_bytes(p))
    return out


@dataclass
class MergeOutcome:
    """Both sides of one merge: did each merge cleanly, and the trees afterwards."""

    bfs_clean: bool
    git_clean: bool
    bfs_tree: Tree
    git_tree: Tree
    conflicts: list[branchfs.Conflict]


class GitTwin:
    """One history played on a branchfs store and a git repository side by side."""

    def __init__(self, store: branchfs.Store, repo: Path, first: str = "main") -> None:
        self.store = store
        self.repo = repo
        repo.mkdir(parents=True, exist_ok=True)
        git(repo, "init", "-q", "-b", first)
        git(repo, "config", "core.fileMode", "true")
        # git infers a directory rename when every file of a directory moved to one other
        # directory, and then calls a file the other side added there a conflict ("file
        # location"). branchfs keeps directories as inodes: one that still exists was not
        # renamed. Compare the merges without that inference.
        git(repo, "config", "merge.directoryRenames", "false")
        git(repo, "commit", "-q", "--allow-empty", "-m", "root")
        self.store.create_branch(first)
        self.current = first

    # -- git plumbing ---------------------------------------------------------------------

    def _checkout(self, name: str) -> None:
        if self.current != name:
            git(self.repo, "checkout", "-q", name)
            self.current = name

    def _commit(self, message: str) -> None:
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "--allow-empty", "-m", message)

    def git_tree(self, name: str) -> Tree:
        """The regular files of git branch ``name`` (its checked-out working tree)."""
        self._checkout(name)
        out: Tree = {}
        for top, dirs, files in os.walk(self.repo):
            if ".git" in dirs:
                dirs.remove(".git")
            for f in files:
                full = Path(top) / f
                if full.is_symlink():
                    continue
                rel = str(full.relative_to(self.repo))
                out[rel] = (bool(full.stat().st_mode & 0o100), full.read_bytes())
        return out

    # -- steps ----------------------------------------------------------------------------

    def fork(self, src: str, new: str) -> None:
        """Fork ``src`` as ``new`` on both sides."""
        self.store.fork(src, new)
        git(self.repo, "branch", new, src)

    def write(self, name: str, path: str, data: bytes) -> None:
        """Write a file (making its parent directories) and commit."""
        b = self.store.branch(name)
        parent = os.path.dirname(path)
        if parent:
            b.makedirs(parent, exist_ok=True)
        b.write_bytes(path, data)
        self._checkout(name)
        full = self.repo / path
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_bytes(data)
        self._commit(f"write {path}")

    def rewrite(self, name: str, path: str, data: bytes) -> None:
        """Replace a file's bytes as ``sed -i``, most editors and many tools do: write a
        temporary file beside it, then rename it over the file (a new inode at the path;
        git sees only the path's new bytes), and commit."""
        b = self.store.branch(name)
        tmp = f"{path}.sed-tmp"
        b.write_bytes(tmp, data)
        b.chmod(tmp, b.lstat(path).st_mode & 0o7777)
        b.replace(tmp, path)
        self._checkout(name)
        full = self.repo / path
        full.write_bytes(data)
        self._commit(f"rewrite {path}")

    def remove(self, name: str, path: str) -> None:
        """Delete a file and commit."""
        self.store.branch(name).remove(path)
        self._checkout(name)
        (self.repo / path).unlink()
        self._commit(f"remove {path}")

    def rename(self, name: str, src: str, dst: str) -> None:
        """Move a file (replacing ``dst``) and commit."""
        b = self.store.branch(name)
        parent = os.path.dirname(dst)
        if parent:
            b.makedirs(parent, exist_ok=True)
        b.replace(src, dst)
        self._checkout(name)
        (self.repo / dst).parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.repo / src, self.repo / dst)
        self._commit(f"rename {src} {dst}")

    def chmod(self, name: str, path: str, executable: bool) -> None:
        """Set or clear the executable bits and commit."""
        mode = 0o755 if executable else 0o644
        self.store.branch(name).chmod(path, mode)
        self._checkout(name)
        os.chmod(self.repo / path, mode)
        self._commit(f"chmod {path}")

    def merge(self, into: str, source: str) -> MergeOutcome:
        """Merge ``source`` into ``into`` on both sides.

        When only one side merged cleanly, that side's merge is undone (git: ``reset
        --hard ORIG_HEAD``; branchfs: a clean merge cannot be undone, so the caller should
        treat branchfs-clean/git-conflict as the failure it is), so that the next steps
        start from the same history.
        """
        self._checkout(into)
        r = git(self.repo, "merge", "--no-edit", "-q", source, check=False)
        git_clean = r.returncode == 0
        git_tree = self.git_tree(into) if git_clean else {}
        conflicts: list[branchfs.Conflict] = []
        try:
            self.store.merge(into, source)
            bfs_clean = True
        except branchfs.MergeConflict as exc:
            bfs_clean = False
            conflicts = exc.conflicts
        if not git_clean:
            git(self.repo, "merge", "--abort", check=False)
            git(self.repo, "reset", "-q", "--hard")
        elif not bfs_clean:
            git(self.repo, "reset", "-q", "--hard", "ORIG_HEAD")
        bfs_tree = branch_tree(self.store.branch(into))
        return MergeOutcome(bfs_clean, git_clean, bfs_tree, git_tree, conflicts)

    def trees_agree(self, name: str) -> bool:
        """Whether branch ``name`` holds the same files on both sides."""
        return branch_tree(self.store.branch(name)) == self.git_tree(name)
