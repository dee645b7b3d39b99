"""What the daemon counts for ``stats`` on ``.branchfs/ctl``: requests by operation, the
loop's own time per request type (wall and CPU, ns), and a few events (flushes,
invalidations, batches committed, the largest write, getxattr names)."""

from __future__ import annotations


class Stats:
    """Counters shared by the parts of the mount; read and reset through ``ctl stats``."""

    __slots__ = ("cpu_ns", "events", "loop_ns", "requests", "xattr_names")

    def __init__(self) -> None:
        #: Requests that reached the daemon, by operation name.
        self.requests: dict[str, int] = {}
        #: Events by name (``flushes``, ``invalidations``, ``largest_write`` in bytes,
        #: ``listed_records``: inode records read to answer READDIRPLUS).
        self.events: dict[str, int] = {}
        #: ``getxattr`` requests by attribute name.
        self.xattr_names: dict[bytes, int] = {}
        #: Nanoseconds the loop spent per opcode, from decoding a request to its written
        #: reply: wall clock, and the loop thread's CPU time (added up by the request loop,
        #: :meth:`branchfs_fuse.session.Session._dispatch`).
        self.loop_ns: dict[int, int] = {}
        self.cpu_ns: dict[int, int] = {}

    def reset(self) -> None:
        """Zero the request counts and times (``stats --reset``)."""
        self.requests.clear()
        self.loop_ns.clear()
        self.cpu_ns.clear()

    def request(self, name: str) -> None:
        """One more request named ``name``."""
        counts = self.requests
        counts[name] = counts.get(name, 0) + 1

    def event(self, name: str) -> None:
        """One more event named ``name``."""
        self.count(name, 1)

    def count(self, name: str, n: int) -> None:
        """``n`` more of the events named ``name``."""
        self.events[name] = self.events.get(name, 0) + n

    def at_least(self, name: str, value: int) -> None:
        """Raise the figure ``name`` to ``value`` if it is lower (a high-water mark)."""
        if value > self.events.get(name, 0):
            self.events[name] = value
