"""Verbs that look after the whole store: ``gc`` (``--compact``) and ``fsck`` (command line
only: they take time in proportion to the store, which a mount's request loop must not wait
for)."""

from __future__ import annotations

from ..errors import NotAStore, StoreCorrupt
from .spec import CLI, EXIT_FAILED, Context, Opt, Outcome, Values, Verb

COMPACT = Opt(
    "compact",
    "Then give the freed space back to the filesystem: rewrite data.mdb without free pages "
    "(safe beside other processes and mounts; needs free space for the copy).",
    flag=True,
)


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def _gc(ctx: Context, v: Values) -> Outcome:
    store = ctx.store()
    with ctx.progress("gc", None):
        report = store.gc()
    data: dict[str, object] = dict(report.to_json())
    data["seconds"] = round(report.seconds, 3)
    text = (
        f"gc freed {_size(report.bytes_freed)} ({report.chunks_freed} chunks, "
        f"{report.layers_removed} layers removed, {report.layers_squashed} squashed) "
        f"in {report.seconds:.2f} s"
    )
    if v.opt("compact"):
        with ctx.progress("compact", None):
            compacted = store.compact()
        data["compact"] = {**compacted.to_json(), "seconds": round(compacted.seconds, 3)}
        text += (
            f"\ncompacted data.mdb from {_size(compacted.bytes_before)} to "
            f"{_size(compacted.bytes_after)} in {compacted.seconds:.2f} s"
        )
    return Outcome(data, text)


def _fsck(ctx: Context, _v: Values) -> Outcome:
    try:
        store = ctx.store()
    except (StoreCorrupt, NotAStore) as exc:  # too damaged to open: that is the finding
        problem = {"kind": "unreadable", "where": ctx.store_path, "message": str(exc)}
        return Outcome({"problems": [problem]}, f"the store cannot be opened: {exc}", EXIT_FAILED)
    with ctx.progress("fsck", None):
        report = store.fsck()
    data = {k: v for k, v in report.to_json().items() if k != "ok"}
    data["seconds"] = round(report.seconds, 3)
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
        "branchfs gc --compact",
        _gc,
        opts=(COMPACT,),
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
