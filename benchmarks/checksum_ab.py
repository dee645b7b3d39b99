"""What the record checksums cost: this tree against a copy of it whose records carry none.

Every record a store writes is sealed with a 4-byte xxh3 digest (``branchfs.keys.seal``) and
checked when read (issue 20, format 3). To measure what that costs, this script copies
``branchfs/`` and ``benchmarks/`` into a temporary directory, rewrites the copy's
``keys.py`` so that sealing appends nothing and reading checks nothing (each rewrite must
apply, or the script stops: keep :data:`REWRITES` in step with ``keys.py``), and runs
``benchmarks/ab_cpu.py`` with that copy as the baseline: paired CPU time, interleaved
rounds. The copy is a measuring device only; no setting of branchfs turns checksums off.

Usage::

    .venv/bin/python benchmarks/checksum_ab.py [--files 100000] [--rounds 12] [--ops ...]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE / "benchmarks"))

from ab_cpu import main as ab_main  # noqa: E402

#: (text in branchfs/keys.py, its digest-less replacement): every place a digest is made or
#: checked. Each must occur exactly once.
REWRITES = [
    (  # seal
        "    return payload + _pack_digest(_xxh3(payload, seed) & 0xFFFFFFFF)",
        "    return payload",
    ),
    (  # unseal
        """    end = len(raw) - DIGEST_SIZE
    if end < 0:
        raise _damaged()
    payload = raw[:end]
    if _xxh3(payload, seed) & 0xFFFFFFFF != _digest_at(raw, end)[0]:
        raise _damaged()
    return payload""",
        "    return raw",
    ),
    (  # u64
        """    payload = U64.pack(n)  # seal(payload), inlined: three of these in every fork
    return payload + _pack_digest(_xxh3(payload) & 0xFFFFFFFF)""",
        "    return U64.pack(n)",
    ),
    (  # read_u64
        """    if len(raw) != 12:  # 8 bytes and the digest
        raise StoreCorrupt(f"a counter record is damaged ({len(raw)} bytes); run fsck")
    if _xxh3(raw[:8]) & 0xFFFFFFFF != _digest_at(raw, 8)[0]:  # unseal(raw), inlined
        raise _damaged()""",
        "    pass",
    ),
    (  # pack
        """    payload = _packb(obj)  # seal(payload), inlined
    return payload + _pack_digest(_xxh3(payload) & 0xFFFFFFFF)""",
        "    return _packb(obj)",
    ),
    (  # inode_fields
        """    end = len(raw) - DIGEST_SIZE  # unseal(raw, ino), inlined: this is every stat's path
    if end < 0:
        raise _damaged()
    payload = raw[:end]
    if _xxh3(payload, ino) & 0xFFFFFFFF != _digest_at(raw, end)[0]:
        raise _damaged()""",
        "    payload = raw",
    ),
    (  # encode_dirent
        "    return seal(U64.pack(ino), _xxh3(name, parent))",
        "    return U64.pack(ino)",
    ),
    (  # decode_dirent
        """    seed = _xxh3(name, parent)  # unseal(raw, dirent_seed(...)), inlined: 2 in every stat
    if len(raw) != 12 or _xxh3(raw[:8], seed) & 0xFFFFFFFF != _digest_at(raw, 8)[0]:
        raise _damaged()""",
        "    pass",
    ),
]


def digestless_copy(dest: Path) -> None:
    """Copy this tree's ``branchfs`` and ``benchmarks`` to ``dest``, without digests."""
    for name in ("branchfs", "benchmarks"):
        shutil.copytree(HERE / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    keys = dest / "branchfs" / "keys.py"
    text = keys.read_text()
    for old, new in REWRITES:
        if text.count(old) != 1:
            raise SystemExit(f"keys.py changed: update REWRITES in {__file__} ({old[:60]!r})")
        text = text.replace(old, new)
    keys.write_text(text)


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="checksum-ab-") as tmp:
        digestless_copy(Path(tmp))
        print("baseline: records without digests; current: this tree (sealed records)")
        return ab_main([tmp, *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
