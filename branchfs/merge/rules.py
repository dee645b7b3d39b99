"""Merge rules per path: which paths merge line by line, take one side, union, or never merge.

A tree may hold a ``.branchfs-merge`` file at its root, in the style of ``.gitattributes``:
one ``PATTERN RULE`` per line, ``#`` comments, gitignore patterns (matched with the
``pathspec`` library, as git matches ``.gitignore``; a pattern ending in ``/`` names a
directory and everything in it), and, as in ``.gitattributes``, the last matching line
wins, with one exception taken from ``.gitignore``: everything under a directory whose
rule is ``exclude`` is excluded, whatever later line matches it ("it is not possible to
re-include a file if a parent directory of that file is excluded"). A later
``README.md union`` therefore leaves ``.pytest_cache/README.md`` excluded with its
directory; to merge a directory that a rule excludes, give the directory itself another
rule (``.pytest_cache/ line``)::

    # .branchfs-merge
    scores/            exclude     # each attempt's own scratch: never merged
    CHANGELOG.md       union
    poetry.lock        theirs

Rules (what happens to a path both sides changed, or that one side changed, for exclude):

- ``line``    the default: 3-way line merge; clashing lines conflict;
- ``ours``    keep the target's version when both sides changed it (no conflict);
- ``theirs``  take the source's version when both sides changed it (no conflict);
- ``union``   both sides' lines, without markers (git's ``merge=union``, for logs);
- ``exclude`` never merged: the source's changes to the path are left out.

Built-in defaults (:data:`DEFAULT_RULES`) come first, so a rule file overrides them: git's
index and the files git rewrites when it only reads (``git status`` refreshes the index),
its reflogs (union), Python bytecode, and test-runner and linter caches. They keep a git
repository with a test suite from conflicting on tools' own files.

The rule file is read from the target's tree when the merge starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pathspec

from ..errors import BranchFSError

LINE, OURS, THEIRS, UNION, EXCLUDE = "line", "ours", "theirs", "union", "exclude"
RULES = (LINE, OURS, THEIRS, UNION, EXCLUDE)

#: The rule file's path in a tree.
RULES_FILE = ".branchfs-merge"

#: Built-in rules, overridden by any later line of a tree's rule file. Why each one:
DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    # The index caches the tree of HEAD plus stat data; `git status` rewrites it on a read.
    # It must follow the commit the merge brings in: when both sides committed, the branch
    # ref itself conflicts, which is the clash to show.
    (".git/index", THEIRS),
    (".git/COMMIT_EDITMSG", THEIRS),
    (".git/ORIG_HEAD", THEIRS),
    (".git/FETCH_HEAD", THEIRS),
    (".git/objects/info/packs", THEIRS),
    (".git/*.lock", EXCLUDE),
    (".git/**/*.lock", EXCLUDE),
    # Reflogs only ever get lines appended.
    (".git/logs/**", UNION),
    # Python bytecode: regenerated from the sources on import.
    ("__pycache__/", EXCLUDE),
    ("*.py[cod]", EXCLUDE),
    # Test runners' and linters' caches.
    (".pytest_cache/", EXCLUDE),
    (".mypy_cache/", EXCLUDE),
    (".ruff_cache/", EXCLUDE),
    (".hypothesis/", EXCLUDE),
)


class RuleFileError(BranchFSError):
    """A merge rule file has a line that is not ``PATTERN RULE``."""


@dataclass(frozen=True)
class Rules:
    """An ordered list of (pattern, rule); the last pattern that matches a path decides."""

    entries: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        spec = pathspec.GitIgnoreSpec.from_lines([p for p, _r in self.entries])
        object.__setattr__(self, "_spec", spec)
        # One regular expression for "does any pattern match at all": most paths match
        # none, and pathspec tries its patterns one by one (about 4 µs each).
        # pathspec searches (``*/`` is the unanchored ``(?P<ps_d>/)``): an unanchored
        # part may start anywhere.
        parts = []
        for pat in spec.patterns:
            regex = getattr(pat, "regex", None)
            if regex is not None:
                part = re.sub(r"\(\?P<\w+>", "(?:", regex.pattern)
                parts.append(part if part.startswith("^") else "(?s:.*?)" + part)
        any_match = re.compile("|".join(f"(?:{p})" for p in parts)) if parts else None
        object.__setattr__(self, "_any", any_match)
        # whether a directory ("a/b/") is excluded: the files of a merge share directories
        object.__setattr__(self, "_excluded_dirs", {})

    @classmethod
    def defaults(cls) -> Rules:
        """The built-in rules only."""
        return _DEFAULTS

    @classmethod
    def parse(cls, text: str, source: str = RULES_FILE) -> Rules:
        """The built-in rules followed by the lines of a rule file; :class:`RuleFileError`
        (naming the file and line) for a line that is not ``PATTERN RULE``."""
        entries = list(DEFAULT_RULES)
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
            if not line:
                continue
            parts = line.rsplit(None, 1)
            rule = parts[-1].removeprefix("merge=") if len(parts) == 2 else ""
            if rule not in RULES or parts[0].startswith("!"):
                raise RuleFileError(
                    f"{source}, line {number}: {raw.strip()!r} is not 'PATTERN RULE'; a rule is "
                    f"one of {', '.join(RULES)} (fix or delete the line and merge again)"
                )
            entries.append((parts[0], rule))
        return cls(tuple(entries))

    def rule_for(self, path: bytes | str, is_dir: bool = False) -> str:
        """The rule of ``path`` (relative to the tree's root; ``is_dir`` for a directory):
        ``exclude`` if one of its parent directories is excluded (gitignore semantics),
        else that of the last line that matches it."""
        if isinstance(path, bytes):
            path = path.decode("utf-8", "surrogateescape")
        if not path:
            return LINE
        if is_dir:
            path += "/"
        any_match: re.Pattern[str] | None = self._any  # type: ignore[attr-defined]
        # A pattern that matches a directory matches everything under it too (gitignore),
        # so a path that matches no pattern has no excluded parent either.
        if any_match is None or not any_match.match(path):
            return LINE
        # A directory left out takes its entries with it: a file under it that a later line
        # gave another rule would have no directory to go into in the merged tree.
        cut = path.find("/")
        while 0 < cut < len(path) - 1:
            if self._dir_excluded(path[: cut + 1], any_match):
                return EXCLUDE
            cut = path.find("/", cut + 1)
        return self._last_match(path)

    def _dir_excluded(self, path: str, any_match: re.Pattern[str]) -> bool:
        known: dict[str, bool] = self._excluded_dirs  # type: ignore[attr-defined]
        hit = known.get(path)
        if hit is None:
            hit = any_match.match(path) is not None and self._last_match(path) == EXCLUDE
            if len(known) > 4096:
                known.clear()
            known[path] = hit
        return hit

    def _last_match(self, path: str) -> str:
        index = self._spec.check_file(path).index  # type: ignore[attr-defined]
        return LINE if index is None else self.entries[index][1]


_DEFAULTS = Rules(DEFAULT_RULES)
