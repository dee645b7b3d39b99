"""The process that tests/test_crash.py kills: random API calls, each one logged to a ledger.

Usage: ``python crash_worker.py STORE LEDGER SEED``. Before each call it appends an intent
line (``I``) and after the call returned an acknowledgement (``A``), or ``X`` if the call
raised (a failed call must change nothing); each line is fsync'd before going on, so the
ledger never claims more than really happened. It runs until it is killed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys

import branchfs


def tree_hashes(b: branchfs.Branch) -> dict[str, str]:
    """path -> sha256 of every regular file of a branch (directories are implied)."""
    out = {}
    for dirpath, _dirs, files in b.walk(""):
        for name in files:
            p = f"{dirpath}/{name}" if dirpath else name
            out[p] = hashlib.sha256(b.read_bytes(p)).hexdigest()
    return out


def main() -> None:
    """Run random calls forever against the store named on the command line."""
    store_path, ledger_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    ledger = open(ledger_path, "a")  # noqa: SIM115 - held open for the process's life

    def log(kind: str, **fields: object) -> None:
        ledger.write(json.dumps({"k": kind, **fields}) + "\n")
        ledger.flush()
        os.fsync(ledger.fileno())

    store = branchfs.Store.open(store_path, create=True)
    if "main" not in store.branches():
        log("I", op="create")
        store.create_branch("main")
        log("A")
    files = {name: set(tree_hashes(store.branch(name))) for name in store.branches()}
    n = 0
    while True:
        n += 1
        names = sorted(files)
        b = rng.choice(names)
        roll = rng.random()
        if roll < 0.5 or len(files[b]) < 2:
            path = f"d{rng.randrange(3)}/f{rng.randrange(6)}"
            data = rng.randbytes(rng.choice([10, 3000, 70_000, 200_000]))
            intent = {"op": "write", "b": b, "path": path, "sha": hashlib.sha256(data).hexdigest()}

            def call(b: str = b, path: str = path, data: bytes = data) -> None:
                store.branch(b).write_bytes(path, data, parents=True)
                files[b].add(path)
        elif roll < 0.62:
            path = rng.choice(sorted(files[b]))
            intent = {"op": "delete", "b": b, "path": path}

            def call(b: str = b, path: str = path) -> None:
                store.branch(b).remove(path)
                files[b].discard(path)
        elif roll < 0.75 and len(files) < 6:
            new = f"w{seed}-{n}"
            intent = {"op": "fork", "b": b, "new": new}

            def call(b: str = b, new: str = new) -> None:
                store.fork(b, new)
                files[new] = set(files[b])
        elif roll < 0.82:
            name = f"s{seed}-{n}"
            intent = {"op": "snapshot", "b": b, "name": name}

            def call(b: str = b, name: str = name) -> None:
                store.snapshot(b, name)
        elif roll < 0.88 and b != "main":
            intent = {"op": "discard", "b": b}

            def call(b: str = b) -> None:
                store.discard(b)
                del files[b]
        elif b != "main":
            intent = {"op": "merge", "b": "main", "source": b}

            def call(b: str = b) -> None:
                store.merge("main", b, strategy="theirs")
                files["main"] = set(tree_hashes(store.branch("main")))
        else:
            continue
        log("I", **intent)
        try:
            call()
        except Exception as exc:  # a failed call must leave the store as it was
            log("X", error=f"{type(exc).__name__}: {exc}")
            files.clear()
            files.update({n: set(tree_hashes(store.branch(n))) for n in store.branches()})
            continue
        if intent["op"] == "merge":
            log("A", tree=tree_hashes(store.branch("main")))
        else:
            log("A")


if __name__ == "__main__":
    main()
