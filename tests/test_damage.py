"""A damaged or truncated store is reported as damage, never as wrong bytes or a signal.

Every case damages a closed store on disk, then a fresh process opens it, reads what it
holds and runs fsck. It must exit normally (a truncated file used to kill it with SIGBUS),
every read must return the right bytes or fail with ``StoreCorrupt`` (EIO), at least one
thing must fail, and fsck must list the damage (``Store.check`` also reports a store too
damaged to open).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from lmdbfile import P_BRANCH, PAGE, flip, flip_all, named_db, newest_meta

import branchfs

READER = r"""
import hashlib, json, sys
import branchfs
path, expected = sys.argv[1], json.loads(sys.argv[2])
out = {"reads": {}, "open": None}
try:
    store = branchfs.Store.open(path)
except (branchfs.StoreCorrupt, branchfs.NotAStore) as exc:
    out["open"] = type(exc).__name__ + ": " + str(exc)
else:
    b = store.branch("main")
    for name, digest in expected.items():
        try:
            data = b.read_bytes(name)
            xattrs = {k: b.getxattr(name, k).hex() for k in b.listxattr(name)}
            got = hashlib.sha256(data + json.dumps(xattrs, sort_keys=True).encode()).hexdigest()
            out["reads"][name] = "right" if got == digest else "WRONG"
        except branchfs.StoreCorrupt as exc:
            assert exc.errno == 5
            out["reads"][name] = "corrupt"
        except OSError as exc:
            out["reads"][name] = f"errno {exc.errno}"
    store.close()
report = branchfs.Store.check(path)
out["fsck"] = [p.kind for p in report.problems]
out["fsck_text"] = [str(p) for p in report.problems][:5]
print(json.dumps(out))
"""


def _digest(b: branchfs.Branch, name: str) -> str:
    xattrs = {k: b.getxattr(name, k).hex() for k in b.listxattr(name)}
    data = b.read_bytes(name) + json.dumps(xattrs, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def damaged_store(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A closed store: a 1 MiB file, an inline file, a file with an xattr, 400 small files."""
    path = tmp_path / "store.bfs"
    with branchfs.Store.open(path, create=True) as s:
        b = s.create_branch("main")
        b.write_bytes("big", os.urandom(1 << 20))
        b.write_bytes("small", b"INLINE-MARKER-" + os.urandom(40))
        b.write_bytes("tagged", b"t")
        b.setxattr("tagged", "user.tag", b"XATTR-MARKER-" + os.urandom(8))
        b.write_bytes("dirent-marker-name", b"d")
        for i in range(400):
            b.write_bytes(f"many{i:03}", b"m")
        expected = {n: _digest(b, n) for n in ("big", "small", "tagged", "dirent-marker-name")}
    return path, expected


def _run(path: Path, expected: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", READER, str(path), json.dumps(expected)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"exit status {proc.returncode}: {proc.stderr[-2000:]}"
    out = json.loads(proc.stdout)
    assert "WRONG" not in out["reads"].values(), out
    return out


def _assert_reported(out: dict) -> None:
    failed = out["open"] is not None or "corrupt" in out["reads"].values()
    assert failed, out
    assert out["fsck"], out


@pytest.mark.parametrize("size", ["0", "8KiB", "half"])
def test_truncated_data_file(damaged_store: tuple[Path, dict[str, str]], size: str) -> None:
    path, expected = damaged_store
    data = path / "data.mdb"
    length = {"0": 0, "8KiB": 8192, "half": os.path.getsize(data) // 2}[size]
    os.truncate(data, length)
    out = _run(path, expected)
    assert out["open"] is not None and out["open"].startswith("StoreCorrupt"), out
    assert "truncated" in out["open"] and str(path) in out["open"]
    assert out["fsck"] == ["unreadable"]
    assert os.path.getsize(data) == length  # nothing was re-created over it


def test_flipped_byte_in_a_chunk(damaged_store: tuple[Path, dict[str, str]]) -> None:
    path, expected = damaged_store
    with branchfs.Store.open(path) as s:
        needle = s.branch("main").read_bytes("big")[70000:70032]
    assert flip_all(path / "data.mdb", needle, 5) >= 1
    out = _run(path, expected)
    assert out["reads"]["big"] == "corrupt"
    assert "corrupt-chunk" in out["fsck"]


def test_flipped_byte_in_a_branch_page(damaged_store: tuple[Path, dict[str, str]]) -> None:
    path, expected = damaged_store
    data = path / "data.mdb"
    root, depth = named_db(data.read_bytes(), b"inodes")
    assert depth >= 2, "the inodes database should have a branch page"
    assert struct.unpack_from("<H", data.read_bytes(), root * PAGE + 10)[0] & P_BRANCH
    flip(data, root * PAGE + 10, P_BRANCH)  # no longer a branch page, nor a leaf
    out = _run(path, expected)
    _assert_reported(out)
    assert "unreadable" in out["fsck"]


def test_flipped_magic_in_a_meta_page(damaged_store: tuple[Path, dict[str, str]]) -> None:
    path, expected = damaged_store
    flip(path / "data.mdb", 16)  # MDB_meta.mm_magic of page 0
    out = _run(path, expected)
    assert out["open"] is not None and out["open"].startswith("NotAStore"), out
    assert "meta pages" in out["open"] and "backup" in out["open"]
    assert out["fsck"] == ["unreadable"]


def test_flipped_root_in_a_meta_page(damaged_store: tuple[Path, dict[str, str]]) -> None:
    path, expected = damaged_store
    data = path / "data.mdb"
    meta = newest_meta(data.read_bytes())
    flip(data, meta + 16 + 24 + 48 + 40 + 3, 0x10)  # the main database's root page number
    out = _run(path, expected)
    assert out["open"] is not None and out["open"].startswith("StoreCorrupt"), out
    assert out["fsck"] == ["unreadable"]


def test_flipped_byte_in_an_inline_file(damaged_store: tuple[Path, dict[str, str]]) -> None:
    path, expected = damaged_store
    assert flip_all(path / "data.mdb", b"INLINE-MARKER-", 3) >= 1
    out = _run(path, expected)
    assert out["reads"]["small"] == "corrupt"
    assert "corrupt-record" in out["fsck"], out


def test_flipped_byte_in_an_inode_record(damaged_store: tuple[Path, dict[str, str]]) -> None:
    path, expected = damaged_store
    assert flip_all(path / "data.mdb", b"XATTR-MARKER-", 2) >= 1
    out = _run(path, expected)
    assert out["reads"]["tagged"] == "corrupt"
    assert "corrupt-record" in out["fsck"], out


def test_flipped_byte_in_a_directory_entry(damaged_store: tuple[Path, dict[str, str]]) -> None:
    path, expected = damaged_store
    data = path / "data.mdb"
    # the entry's key: layer, directory (the root, inode 1), name; its value follows it
    needle = struct.pack(">Q", 1) + b"dirent-marker-name"
    assert flip_all(data, needle, len(needle) + 7) >= 1  # the low byte of the inode it names
    out = _run(path, expected)
    assert out["reads"]["dirent-marker-name"] == "corrupt", out
    assert "corrupt-record" in out["fsck"], out
