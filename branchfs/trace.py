"""Phase timestamps of best-of and ``run``, for the benchmarks: off unless asked for.

With ``BRANCHFS_TRACE=FILE`` in the environment, :func:`mark` appends one JSON line to FILE
per call: ``{"pid": …, "what": "…", "wall": …, "cpu": …}`` where ``wall`` is
``time.time()`` (seconds since the epoch, comparable across processes) and ``cpu`` the
calling process's own CPU time so far (user + system, all threads, seconds; see
``time.process_time``). Every process of a run (the command line, the zygote, the mount
daemons it forks) writes to the same file; each line is one ``write(2)`` on a descriptor
opened with ``O_APPEND``, so lines from different processes do not interleave.
``benchmarks/bestof.py`` reads the file back and reports each phase's wall and CPU time.

Without the variable, :func:`mark` costs one dictionary lookup.
"""

from __future__ import annotations

import json
import os
import time

#: The environment variable naming the trace file.
ENV = "BRANCHFS_TRACE"


def enabled() -> bool:
    """Whether phases are being recorded."""
    return bool(os.environ.get(ENV))


def mark(what: str, **extra: str | int | float) -> None:
    """Record that phase ``what`` was reached now (``extra``: small facts, e.g. an attempt).

    Never raises: a trace file that cannot be written is ignored.
    """
    path = os.environ.get(ENV)
    if not path:
        return
    line = {"pid": os.getpid(), "what": what, "wall": time.time(), "cpu": time.process_time()}
    line.update(extra)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, json.dumps(line).encode() + b"\n")
        finally:
            os.close(fd)
    except OSError:
        pass


__all__ = ["ENV", "enabled", "mark"]
