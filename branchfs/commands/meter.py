"""A progress bar (rich) for the command line, shown only on a terminal and only once a job
has run for more than a second, so quick commands print nothing extra."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: Seconds a job runs before its bar appears.
DELAY = 1.0


@contextmanager
def meter(label: str, total: int | None) -> Iterator[Callable[[int], object]]:
    """Yield ``step(done)``; after :data:`DELAY` s a bar (or a spinner when ``total`` is None)
    appears on stderr and follows ``done`` until the block ends."""
    lock = threading.Lock()
    state: dict[str, Any] = {"done": 0, "progress": None, "task": None, "over": False}

    def start() -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        with lock:
            if state["over"]:
                return
            columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
            if total:
                columns += [BarColumn(), MofNCompleteColumn()]
            columns.append(TimeElapsedColumn())
            progress = Progress(*columns, console=Console(file=sys.stderr), transient=True)
            state["task"] = progress.add_task(label, total=total, completed=state["done"])
            progress.start()
            state["progress"] = progress

    def step(done: int) -> None:
        with lock:
            state["done"] = done
            if state["progress"] is not None:
                state["progress"].update(state["task"], completed=done)

    timer = threading.Timer(DELAY, start)
    timer.daemon = True
    timer.start()
    try:
        yield step
    finally:
        timer.cancel()
        with lock:
            state["over"] = True
            if state["progress"] is not None:
                state["progress"].stop()


def wanted() -> bool:
    """Whether to show bars: stderr is a terminal."""
    return sys.stderr.isatty()
