"""Crash safety: a worker doing writes, forks, snapshots, discards and merges is SIGKILLed at
random moments; every time, the store reopens, fsck is clean, and every acknowledged call is
there (the call in flight may or may not be).

The moments are events, not times: after a seeded number of calls, once the worker has
logged the intent of the next one, so that a loaded machine changes nothing but speed.

The worker (tests/crash_worker.py) logs an intent before each call and an acknowledgement
after it returned, fsync'ing the ledger each time. The test replays the acknowledged calls on
a model of every branch's and snapshot's files and compares it with the reopened store.
"""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import randomized
from crash_worker import tree_hashes

import branchfs

WORKER = Path(__file__).with_name("crash_worker.py")
ROUNDS = 24

State = dict[str, dict[str, dict[str, str]]]


def read_state(store: branchfs.Store) -> State:
    return {
        "branches": {n: tree_hashes(store.branch(n)) for n in store.branches()},
        "snapshots": {n: tree_hashes(store.snapshot_tree(n)) for n in store.snapshots()},
    }


def apply(state: State, intent: dict[str, Any], ack: dict[str, Any] | None) -> State:
    """The state after one call; for a merge without its acknowledgement, main is unknown."""
    s = copy.deepcopy(state)
    br, op = s["branches"], intent["op"]
    if op == "create":
        br["main"] = {}
    elif op == "write":
        br[intent["b"]][intent["path"]] = intent["sha"]
    elif op == "delete":
        br[intent["b"]].pop(intent["path"])
    elif op == "fork":
        br[intent["new"]] = dict(br[intent["b"]])
    elif op == "snapshot":
        s["snapshots"][intent["name"]] = dict(br[intent["b"]])
    elif op == "discard":
        del br[intent["b"]]
    elif op == "merge":
        br["main"] = ack["tree"] if ack is not None else {"?": "unknown"}
    return s


def replay(state: State, ledger: Path) -> tuple[State, dict[str, Any] | None, int]:
    """State after every acknowledged call, the call in flight (if any), and how many acks."""
    lines = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]
    intent: dict[str, Any] | None = None
    acks = 0
    for rec in lines:
        if rec["k"] == "I":
            intent = rec
        elif rec["k"] == "A":
            assert intent is not None
            state = apply(state, intent, rec)
            intent = None
            acks += 1
        else:  # X: the call raised, so it must have changed nothing
            intent = None
    return state, intent, acks


def matches(actual: State, expected: State) -> bool:
    if actual["snapshots"] != expected["snapshots"]:
        return False
    exp = expected["branches"]
    if set(actual["branches"]) != set(exp):
        return False
    return all(exp[n] == {"?": "unknown"} or actual["branches"][n] == exp[n] for n in exp)


def in_flight_after(ledger: bytes, calls: int) -> bool:
    """Whether the ledger shows ``calls`` calls ended and the intent of the next one."""
    lines = ledger.splitlines()
    ended = sum(1 for ln in lines if ln.startswith((b'{"k": "A"', b'{"k": "X"')))
    return ended >= calls and bool(lines) and lines[-1].startswith(b'{"k": "I"')


def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    rng = random.Random(randomized.seed(1234))
    store_path = tmp_path / "store"
    state: State = {"branches": {}, "snapshots": {}}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(WORKER.parent), *sys.path]))
    total_acks = 0
    in_flight_seen = 0
    for rnd in range(ROUNDS):
        ledger = tmp_path / f"ledger-{rnd}.jsonl"
        ledger.touch()
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(store_path), str(ledger), str(randomized.seed(rnd))],
            env=env,
            stderr=subprocess.PIPE,
        )
        # The kill waits for events, not a clock: the worker has acknowledged ``calls``
        # calls and logged its intent for the next one, which is then in flight.
        calls = rng.randrange(3, 30)
        try:
            deadline = time.monotonic() + 60
            while not in_flight_after(ledger.read_bytes(), calls):
                assert proc.poll() is None, f"worker died: {proc.stderr.read().decode()}"  # type: ignore[union-attr]
                assert time.monotonic() < deadline, f"worker made no progress in round {rnd}"
                time.sleep(0.002)  # poll the ledger for the event
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
            proc.stderr.close()  # type: ignore[union-attr]
        expected, inflight, acks = replay(state, ledger)
        total_acks += acks
        with branchfs.Store.open(store_path) as store:
            report = store.fsck()
            assert report.ok, f"round {rnd}: {report.problems}"
            actual = read_state(store)
        if not matches(actual, expected):
            assert inflight is not None, f"round {rnd}: an acknowledged call is missing"
            in_flight_seen += 1
            assert matches(actual, apply(expected, inflight, None)), (
                f"round {rnd}: the store is neither before nor after {inflight}"
            )
        state = actual
    print(f"{ROUNDS} kills, {total_acks} acknowledged calls, {in_flight_seen} in-flight applied")
