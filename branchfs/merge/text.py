"""The line-level text merge of one file: pure functions over bytes, no store access.

A 3-way merge (``merge3``, the algorithm of bzr and breezy) takes every change made on one
side only and the changes both sides made alike; where both sides changed the same lines
differently the result is a conflict. With markers, a conflict is written as git writes it
with ``merge.conflictStyle=diff3`` (``git merge-file -p --diff3``): each marker on a line of
its own, even when the conflicting text is the file's last line without a final newline.
A file both sides *added* has no base; it is merged two ways as git merges an add/add
(``git merge-file -p OURS /dev/null THEIRS``): the lines both sides share are kept, the
rest is bracketed by ``<<<<<<<``/``=======``/``>>>>>>>``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import merge3

#: Files larger than this (bytes, on any side) are not text-merged: they conflict as binary.
TEXT_MERGE_MAX = 32 << 20

START, BASE, MID, END = b"<<<<<<<", b"|||||||", b"=======", b">>>>>>>"


@dataclass(frozen=True)
class TextMerge:
    """The outcome of merging one file's text.

    ``merged`` holds the result bytes when the merge was clean, or the text with conflict
    markers when it was not (``clean`` False); ``conflicts`` counts the conflicting hunks.
    """

    merged: bytes
    clean: bool
    conflicts: int = 0


def is_text(*blobs: bytes) -> bool:
    """Whether every blob looks like text (no NUL byte, as git's binary heuristic)."""
    return all(b"\0" not in b for b in blobs)


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def _emit(out: list[bytes], lines: list[bytes]) -> None:
    out.extend(lines)


def _marker(out: list[bytes], marker: bytes, label: bytes) -> None:
    """Append a marker line, first ending the previous line if it had no newline."""
    if out and not out[-1].endswith(b"\n"):
        out[-1] = out[-1] + b"\n"
    out.append(marker + (b" " + label if label else b"") + b"\n")


def merge_text(
    base: bytes,
    ours: bytes,
    theirs: bytes,
    labels: tuple[str, str, str] = ("ours", "base", "theirs"),
) -> TextMerge:
    """3-way merge of ``ours`` and ``theirs`` against ``base``, diff3-style markers.

    ``labels`` name ours, the base and theirs on the marker lines. Byte-for-byte what
    ``git merge-file -p --diff3 -L ours -L base -L theirs`` writes for the cases in
    tests/test_merge_text.py.
    """
    m = merge3.Merge3(_lines(base), _lines(ours), _lines(theirs))
    out: list[bytes] = []
    lo, lb, lt = (label.encode("utf-8", "surrogateescape") for label in labels)
    conflicts = 0
    for group in m.merge_groups():
        if group[0] != "conflict":
            _emit(out, list(group[1]))
            continue
        conflicts += 1
        _, g_base, g_ours, g_theirs = group
        _marker(out, START, lo)
        _emit(out, list(g_ours))
        _marker(out, BASE, lb)
        _emit(out, list(g_base))
        _marker(out, MID, b"")
        _emit(out, list(g_theirs))
        _marker(out, END, lt)
    return TextMerge(b"".join(out), conflicts == 0, conflicts)


def merge_added(
    ours: bytes, theirs: bytes, labels: tuple[str, str] = ("ours", "theirs")
) -> TextMerge:
    """Two-way merge of a file both sides added with different text (an add/add).

    Lines both sides share stay; each differing run is a conflict with two-way markers, as
    ``git merge-file -p -L ours -L base -L theirs OURS /dev/null THEIRS`` writes it.
    """
    a, b = _lines(ours), _lines(theirs)
    lo, lt = (label.encode("utf-8", "surrogateescape") for label in labels)
    out: list[bytes] = []
    conflicts = 0
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            _emit(out, a[i1:i2])
            continue
        conflicts += 1
        _marker(out, START, lo)
        _emit(out, a[i1:i2])
        _marker(out, MID, b"")
        _emit(out, b[j1:j2])
        _marker(out, END, lt)
    return TextMerge(b"".join(out), conflicts == 0, conflicts)


def union(base: bytes, ours: bytes, theirs: bytes) -> bytes:
    """Both sides' changes, conflicting hunks one after the other (ours first), no markers.

    git's ``merge=union`` driver: meant for append-only files such as logs and reflogs.
    """
    m = merge3.Merge3(_lines(base), _lines(ours), _lines(theirs))
    out: list[bytes] = []
    for group in m.merge_groups():
        if group[0] != "conflict":
            _emit(out, list(group[1]))
            continue
        _, _g_base, g_ours, g_theirs = group
        for part in (g_ours, g_theirs):
            if out and not out[-1].endswith(b"\n"):
                out[-1] = out[-1] + b"\n"
            _emit(out, list(part))
    return b"".join(out)
