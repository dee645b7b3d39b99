"""Verbs that look after the whole store: ``gc`` and ``fsck`` (command line only: they take
time in proportion to the store, which a mount's request loop must not wait for)."""

from __future__ import annotations

from .spec import CLI, EXIT_FAILED, Context, Outcome, Values, Verb


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def _gc(ctx: Context, _v: Values) -> Outcome:
    store = ctx.store()
    with ctx.progress("gc", None):
        report = store.gc()
    data = report.to_json()
    text = (
        f"gc freed {_size(report.bytes_freed)} ({report.chunks_freed} chunks, "
        f"{report.layers_removed} layers removed, {report.layers_squashed} squashed) "
        f"in {report.seconds:.2f} s"
    )
    return Outcome(data, text)


def _fsck(ctx: Context, _v: Values) -> Outcome:
    store = ctx.store()
    with ctx.progress("fsck", None):
        report = store.fsck()
    data = {k: v for k, v in report.to_json().items() if k != "ok"}
    head = (
        f"checked {report.trees} trees, {report.layers} layers, {report.inodes} inode records, "
        f"{report.chunks} chunks ({_size(report.bytes_checked)}) in {report.seconds:.2f} s"
    )
    if report.ok:
        return Outcome(data, f"{head}: no problems")
    lines = [f"{head}: {len(report.problems)} problem(s)", *(f"  {p}" for p in report.problems)]
    return Outcome(data, "\n".join(lines), EXIT_FAILED)


VERBS = (
    Verb(
        "gc",
        "Reclaim the space of discarded branches and unused data; safe beside writers and mounts.",
        "branchfs gc",
        _gc,
        fronts=frozenset({CLI}),
    ),
    Verb(
        "fsck",
        "Check the whole store (every record, every chunk against its digest); exit status 1 "
        "if anything is wrong.",
        "branchfs fsck --json",
        _fsck,
        fronts=frozenset({CLI}),
    ),
)
