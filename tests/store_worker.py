"""A helper process for the durability tests, driven line by line over stdin.

``python store_worker.py STORE`` opens nothing until told. Commands (one per line; each
answer is one line on stdout, ``ok ...`` or ``err TYPE: message``):

- ``open`` — open the store and keep it open (a *holder*);
- ``read PATH`` / ``write PATH SIZE`` — read a file of branch ``main`` (answers its length)
  or write SIZE random bytes to it;
- ``readers N`` — fork N children that each open the store, start a read transaction,
  read a file, report through a pipe that they are inside it, and are then SIGKILLed there
  (all N at once); answers how many got in;
- ``raw-readers N`` — the same with plain ``lmdb.open`` children that never clear stale
  reader slots themselves (a process that is not branchfs, or one killed before it could);
- ``hold-readers N`` — the same, but the children stay alive inside their read transactions
  (plain ``lmdb.open`` ones) until ``release``, which SIGKILLs them; answers how many got in;
- ``compact`` — compact the store (with ``pause STEP`` first, stop before that step and
  answer ``paused STEP`` instead, to be killed there);
- ``exit``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
import traceback

import lmdb

import branchfs
from branchfs import compact as compact_mod
from branchfs.meta import DB_NAMES, MAX_READERS

_PR_SET_PDEATHSIG = 1


def _child(path: str, raw: bool, w: int) -> None:
    # die with the worker, whichever way it ends (a held reader must not outlive the test)
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    try:
        if raw:
            env = lmdb.open(path, max_readers=MAX_READERS, max_dbs=len(DB_NAMES) + 2)
            txn = env.begin()
            txn.get(b"x")
        else:
            store = branchfs.Store.open(path)
            ctx = store.viewing("main")
            view = ctx.__enter__()
            view.inode(1)
        os.write(w, b"r")
    except BaseException as exc:
        os.write(w, b"e")
        sys.stderr.write(f"reader child failed: {exc!r}\n")
        os._exit(1)
    while True:
        time.sleep(60)


def readers(path: str, n: int, raw: bool, *, hold: list[int] | None = None) -> int:
    """Fork ``n`` reader children; SIGKILL them inside their reads, or (``hold``) append
    their pids to ``hold`` and leave them reading."""
    r, w = os.pipe()
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os.close(r)
            _child(path, raw, w)
        pids.append(pid)
    os.close(w)
    inside = 0
    for _ in range(n):
        b = os.read(r, 1)
        if not b:
            break
        inside += b == b"r"
    os.close(r)
    if hold is not None:
        hold.extend(pids)
    else:
        kill(pids)
    return inside


def kill(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:
        os.waitpid(pid, 0)


def main() -> None:
    path = sys.argv[1]
    store: branchfs.Store | None = None
    pause: str | None = None
    held: list[int] = []
    for line in sys.stdin:
        cmd, *args = line.split()
        try:
            if cmd == "open":
                store = branchfs.Store.open(path)
                answer = "ok"
            elif cmd == "read":
                assert store is not None
                answer = f"ok {len(store.branch('main').read_bytes(args[0]))}"
            elif cmd == "write":
                assert store is not None
                store.branch("main").write_bytes(args[0], os.urandom(int(args[1])))
                answer = "ok"
            elif cmd in ("readers", "raw-readers"):
                answer = f"ok {readers(path, int(args[0]), cmd == 'raw-readers')}"
            elif cmd == "hold-readers":
                answer = f"ok {readers(path, int(args[0]), True, hold=held)}"
            elif cmd == "release":
                kill(held)
                held.clear()
                answer = "ok"
            elif cmd == "pause":
                pause = args[0]
                answer = "ok"
            elif cmd == "compact":
                assert store is not None
                if pause is not None:

                    def step(name: str, wanted: str = pause) -> None:
                        if name == wanted:
                            print(f"paused {name}", flush=True)
                            time.sleep(600)

                    compact_mod._step = step  # the test seam: stop here to be killed
                report = store.compact()
                answer = f"ok {report.bytes_before} {report.bytes_after}"
            elif cmd == "exit":
                kill(held)
                return
            else:
                answer = f"err ValueError: unknown command {cmd}"
        except Exception as exc:
            traceback.print_exc()
            answer = f"err {type(exc).__name__}: {exc}".replace("\n", " ")
        print(answer, flush=True)


if __name__ == "__main__":
    main()
