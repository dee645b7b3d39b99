"""Change notices between processes: the registry of mount daemons and the notice protocol.

A ``Store`` is given an :data:`Observer` when it is opened; it calls it as
``observer(store_path, branch_names)`` after a call changed those branches' trees (a
refused merge changes nothing and calls nobody). The default observer,
:func:`notify_mounts`, tells every other process's daemon that serves one of those branches,
synchronously: each answers only once the kernel dropped what it cached, so a change made
from outside a mount shows in the mount on the next syscall. A daemon opens its store with a
:class:`Pending` observer instead and announces its own changes after each request.

The registry: every running daemon registers itself in ``STORE/mounts/`` (one small JSON file
naming its pid, branch, mountpoint and an abstract unix socket). :func:`serving` answers "is
branch B of store S mounted?"; :func:`claiming` serializes mounting, so that a branch has
at most one daemon. The protocol: one line ``{"changed": [names]}`` to the
daemon's socket, answered ``ok`` (:func:`poke` sends, :func:`answer` receives). Before a
call reads or changes a branch, a ``Store`` also asks the daemons serving it to *settle*
(``{"settle": [names]}``, :func:`settle_mounts`): a daemon groups the calls it serves into
batches (fuse/groupcommit.py) and answers once every call it served is committed.

The mount daemon (``branchfs_fuse``) is this module's only consumer on the mount side;
:mod:`branchfs.mount` (starting and stopping daemons) reads the registry.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

# json and socket are imported by the functions that talk to a daemon or read a record:
# every API call runs the settler, and the common case (nothing mounted) needs neither,
# so a short command such as `branchfs fork` does not load them (~3 ms).
if TYPE_CHECKING:
    import socket

#: ``observer(store_path, branch_names)``: told after a call changed those branches.
Observer = Callable[[str, tuple[str, ...]], None]

#: Subdirectory of a store that holds one registration file per running mount daemon.
MOUNTS_DIR = "mounts"
#: How long a writer waits for a daemon to acknowledge a change notification, in seconds.
NOTIFY_TIMEOUT = 10.0


#: Name prefixes of the private temp mountpoints that ``run`` and best-of attempts make
#: (:func:`branchfs.run.private_tree`): no user mounted those, a running command uses them.
PRIVATE_PREFIXES = ("branchfs-run-", "branchfs-attempt-")


@dataclass(frozen=True)
class Registration:
    """One running mount daemon, as recorded in ``STORE/mounts/``."""

    path: str
    pid: int
    branch: str
    mountpoint: str
    socket: str
    #: Other branches the daemon shows under ``.branchfs/branches/`` (their changes must
    #: reach it too).
    views: tuple[str, ...] = ()

    def user(self) -> str:
        """Who uses this mount, in words for a message: a ``branchfs run`` (or best-of
        attempt) when the mountpoint is the private temp directory one makes
        (:data:`PRIVATE_PREFIXES`), else the daemon's mountpoint and pid."""
        import tempfile

        head, tail = os.path.split(self.mountpoint)
        if head == tempfile.gettempdir() and tail.startswith(PRIVATE_PREFIXES):
            return (
                f"a `branchfs run` is using it (its mount daemon, pid {self.pid}, serves it "
                f"at the run's private mountpoint {self.mountpoint}); wait for the run to "
                "end, or end it"
            )
        return (
            f"it is mounted at {self.mountpoint} by pid {self.pid} (a branchfs run or mount); "
            f"unmount it first (`branchfs umount {self.mountpoint}`)"
        )

    def alive(self) -> bool:
        """Whether the daemon process still runs (a zombie waiting to be reaped does not)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:
            with open(f"/proc/{self.pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (OSError, IndexError):
            return True


# -- registrations ------------------------------------------------------------------------------


_dirs: dict[str, str] = {}


def mounts_dir(store_path: str) -> str:
    """The directory holding the registrations of a store's daemons."""
    d = _dirs.get(store_path)
    if d is None:
        d = _dirs[store_path] = os.path.join(store_path, MOUNTS_DIR)
    return d


def register(
    store_path: str,
    branch: str,
    mountpoint: str,
    sock_name: str,
    *,
    views: tuple[str, ...] = (),
) -> str:
    """Record a daemon serving ``branch`` at ``mountpoint`` (and showing ``views``, other
    branches, under ``.branchfs/``); returns the file to remove later. Called again to
    change ``views``: the record is replaced atomically."""
    d = mounts_dir(store_path)
    os.makedirs(d, mode=0o700, exist_ok=True)
    path = registration_file(store_path)
    tmp = path + ".tmp"
    data = {
        "pid": os.getpid(),
        "branch": branch,
        "mountpoint": mountpoint,
        "socket": sock_name,
        "views": list(views),
    }
    import json

    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)
    _cache.pop(store_path, None)
    return path


def registration_file(store_path: str) -> str:
    """The file :func:`register` writes for this process."""
    return os.path.join(mounts_dir(store_path), f"{os.getpid()}.json")


def _read_registrations(d: str) -> list[Registration]:
    out = []
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    import json

    for name in names:
        if not name.endswith(".json"):
            continue
        path = os.path.join(d, name)
        try:
            with open(path) as fh:
                data = json.load(fh)
            out.append(
                Registration(
                    path,
                    int(data["pid"]),
                    data["branch"],
                    data["mountpoint"],
                    data["socket"],
                    tuple(data.get("views", ())),
                )
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


_cache: dict[str, tuple[int, list[Registration]]] = {}

#: How long after the registry directory last changed its listing may be cached, when the
#: filesystem keeps sub-second times. Linux stamps a change with its coarse clock, which
#: advances once per tick (1/HZ: 1 to 10 ms); a listing read more than a tick after the
#: directory's mtime cannot miss a later change that leaves the mtime unchanged.
FINE_GRAIN_NS = 50_000_000
#: The same for a filesystem that keeps whole seconds (an mtime with no sub-second part).
COARSE_GRAIN_NS = 2_000_000_000


def cacheable(mtime_ns: int, read_ns: int) -> bool:
    """Whether a listing of a directory whose mtime was ``mtime_ns`` (ns since the epoch),
    read at ``read_ns`` or later, may be reused while the mtime stays the same.

    A registration written in the same clock tick as the listing leaves the mtime as it
    was; so the listing must have been read more than one timestamp grain after that
    mtime. The grain is a tick where the filesystem keeps sub-second times, and taken as
    2 s (FAT's) where it does not.
    """
    grain = COARSE_GRAIN_NS if mtime_ns % 1_000_000_000 == 0 else FINE_GRAIN_NS
    return read_ns - mtime_ns > grain


def registrations(store_path: str) -> list[Registration]:
    """The daemons registered on a store (a stat of the directory when nothing changed, an
    ``access`` when it does not exist).

    The listing is cached by the directory's mtime, once that mtime is older than the
    timestamp grain (:func:`cacheable`): a registration made in the same clock tick as the
    listing is never missed. A daemon re-registers when the kernel first shows a branch
    view, and then asks here on each request of that view: it reads the directory again
    for 50 ms at most, not for a whole second.
    """
    d = mounts_dir(store_path)
    cached = _cache.get(store_path)
    # never mounted: the common case, where an access is 2 µs cheaper than a stat that
    # raises FileNotFoundError (this runs twice in every API write); a directory seen
    # before is stat'ed at once (a daemon's request path)
    if cached is None and not os.access(d, os.F_OK):
        return []
    try:
        mtime = os.stat(d).st_mtime_ns
    except FileNotFoundError:
        _cache.pop(store_path, None)
        return []
    if cached is not None and cached[0] == mtime:
        return cached[1]
    read_ns = time.time_ns()  # before the listing: it is at least this recent
    regs = _read_registrations(d)
    if cacheable(mtime, read_ns):
        _cache[store_path] = (mtime, regs)
    else:
        _cache.pop(store_path, None)
    return regs


def find_registration(store_path: str, mountpoint: str) -> Registration | None:
    """The registration of the daemon serving ``mountpoint`` on this store (read afresh)."""
    real = os.path.realpath(mountpoint)
    for reg in _read_registrations(mounts_dir(store_path)):
        if os.path.realpath(reg.mountpoint) == real:
            return reg
    return None


#: The lock file that serializes "is this branch mounted? then mount and register it".
CLAIM_LOCK = "claim.lock"


@contextlib.contextmanager
def claiming(store_path: str) -> Iterator[None]:
    """Hold the store's mount claim for the block: a daemon checks that nobody serves its
    branch, mounts and registers under it, so two daemons started at once for one branch
    cannot both succeed (an ``flock`` on ``STORE/mounts/claim.lock``, released if the
    daemon dies)."""
    import fcntl

    d = mounts_dir(store_path)
    os.makedirs(d, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(d, CLAIM_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _drop_stale(reg: Registration) -> None:
    if not reg.alive():
        with contextlib.suppress(OSError):
            os.unlink(reg.path)


def branchfs_mountpoints(mountinfo: bytes) -> set[str]:
    """The mountpoints of ``fuse.branchfs`` mounts in a ``/proc/PID/mountinfo`` text (proc(5):
    field 5 is the mount point, with space, tab, newline and backslash written ``\\ooo``;
    the filesystem type follows the `` - `` separator)."""
    out = set()
    for line in mountinfo.splitlines():
        left, _, right = line.partition(b" - ")
        if right.split(b" ", 1)[0] == b"fuse.branchfs":
            raw = left.split(b" ")[4]
            if b"\\" in raw:
                raw = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), raw)
            out.add(os.fsdecode(raw))
    return out


def mount_root(reg: Registration) -> str | None:
    """The path by which this process reaches the mount that ``reg``'s daemon serves.

    Its mountpoint when the daemon shares this process's mount namespace; else
    ``/proc/PID/root`` + its mountpoint (proc(5): path lookups under a process's root follow
    the mounts of its namespace), so one branch keeps one kernel identity even when its
    daemon runs in another namespace. None when no branchfs mount is at that mountpoint in
    the daemon's namespace (it is starting or stopping), or the daemon's ``/proc`` entries
    cannot be read (another user's daemon, unless this process is root). Reads only
    ``/proc``, never the mount itself (a daemon asking must not wait on another daemon).
    """
    proc = f"/proc/{reg.pid}"
    try:
        same = os.readlink(f"{proc}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
        with open(f"{proc}/mountinfo", "rb") as fh:
            mountinfo = fh.read()
    except OSError:
        return None
    if reg.mountpoint not in branchfs_mountpoints(mountinfo):
        return None
    return reg.mountpoint if same else proc + "/root" + reg.mountpoint


# -- change notification -------------------------------------------------------------------------


def poke(reg: Registration, names: tuple[str, ...]) -> bool:
    """Tell one daemon that ``names`` changed and wait for its acknowledgement."""
    return _ask(reg, "changed", names)


def _ask(reg: Registration, kind: str, names: tuple[str, ...]) -> bool:
    """Send one notice (``changed`` or ``settle``) to a daemon and wait for its ``ok``."""
    return _request(reg, kind, names) == b"ok"


def _request(reg: Registration, kind: str, names: tuple[str, ...]) -> bytes | None:
    """Send ``{kind: names}`` to a daemon; its one-line answer (stripped), None if none."""
    import json
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(NOTIFY_TIMEOUT)
    try:
        s.connect(reg.socket.encode("latin-1"))
        s.sendall(json.dumps({kind: list(names)}).encode() + b"\n")
        return recv_line(s).strip()
    except (ConnectionRefusedError, FileNotFoundError):
        _drop_stale(reg)
        return None
    except OSError:
        return None
    finally:
        s.close()


def open_through_views(store_path: str, branch: str) -> list[Registration]:
    """The live daemons of other processes that show ``branch`` under
    ``.branchfs/branches/`` (not as their mounted branch) and have a file of it open now.

    A discard or a second mount of ``branch`` would pull the tree from under those files:
    writes to them would fail, and locks taken through them would not exclude those taken
    through another mount. A live daemon that does not answer (stopped, hung) counts as
    having one open; one from before this question (it answers ``bad``) as having none.
    """
    import json

    out = []
    for reg in targets(store_path, (branch,)):
        if reg.branch == branch or branch not in reg.views or not reg.alive():
            continue
        reply = _request(reg, "busy", (branch,))
        if not reply:  # None (no answer in time) or nothing before the daemon hung up
            if reg.alive():
                out.append(reg)
            continue
        try:
            busy = json.loads(reply)["busy"]
        except (ValueError, KeyError, TypeError):
            busy = []
        if branch in busy:
            out.append(reg)
    return out


def recv_line(sock: socket.socket) -> bytes:
    """Bytes from ``sock`` up to and including a newline, or up to EOF if none comes."""
    data = b""
    while not data.endswith(b"\n"):
        part = sock.recv(4096)
        if not part:
            break
        data += part
    return data


def targets(store_path: str, names: tuple[str, ...]) -> list[Registration]:
    """The other processes' daemons that serve or show one of the branches ``names``."""
    me = os.getpid()
    return [
        r
        for r in registrations(store_path)
        if r.pid != me and (r.branch in names or any(n in r.views for n in names))
    ]


def serving(store_path: str, branch: str, *, fresh: bool = False) -> list[Registration]:
    """The live daemons that serve branch ``branch`` of the store at ``store_path``.

    A registration whose process is gone is left out (and never blocks anything): this is
    the question "is this branch mounted right now?". ``fresh``: read the registry again
    rather than trust the listing cached by its mtime (the claim check of a new daemon).
    """
    regs = _read_registrations(mounts_dir(store_path)) if fresh else registrations(store_path)
    return [r for r in regs if r.branch == branch and r.alive()]


def poke_all(regs: list[Registration], names: tuple[str, ...]) -> None:
    """:func:`poke` each of ``regs`` in turn (each waits for its acknowledgement)."""
    for reg in regs:
        poke(reg, names)


def notify_mounts(store_path: str, names: tuple[str, ...]) -> None:
    """The default :data:`Observer` of a ``Store``: synchronously tell the other processes'
    daemons serving ``names``, each answering once the kernel dropped its caches."""
    poke_all(targets(store_path, names), names)


def settle_mounts(store_path: str, names: tuple[str, ...]) -> None:
    """The default settler of a ``Store``: before a call on ``names``, the other processes'
    daemons serving them commit every call they served, and answer. One stat of
    ``STORE/mounts/`` when none does: this runs before every API call, so the common case
    (nothing mounted) returns before anything else."""
    regs = registrations(store_path)
    if not regs:
        return
    me = os.getpid()
    for reg in regs:
        if reg.pid != me and (reg.branch in names or any(n in reg.views for n in names)):
            _ask(reg, "settle", names)


def answer(
    conn: socket.socket,
    on_change: Callable[[list[str]], None],
    on_settle: Callable[[list[str]], None] = lambda _names: None,
    on_busy: Callable[[list[str]], list[str]] = lambda _names: [],
) -> None:
    """The daemon's side of one notice on ``conn``: read it, call ``on_change(names)``
    (which drops the caches) or ``on_settle(names)`` (which waits until every call served
    is committed), then acknowledge with ``ok`` (``bad`` if it is not a notice); or, asked
    ``busy``, answer ``{"busy": on_busy(names)}``: those of ``names`` with a file open
    through the mount (:func:`open_through_views`)."""
    import json

    data = recv_line(conn)
    if not data.endswith(b"\n"):
        return  # the writer went away before it finished
    try:
        message = json.loads(data)
        kind = next((k for k in ("settle", "busy") if k in message), "changed")
        names = message[kind]
        if not isinstance(names, list):
            raise TypeError(names)
    except (ValueError, KeyError, TypeError):
        conn.sendall(b"bad\n")
        return
    if kind == "busy":
        conn.sendall(json.dumps({"busy": on_busy([str(n) for n in names])}).encode() + b"\n")
        return
    (on_settle if kind == "settle" else on_change)([str(n) for n in names])
    conn.sendall(b"ok\n")


class Pending:
    """An :data:`Observer` that only remembers which branches changed, for a daemon to
    announce after the request (:meth:`take`). Thread-safe: the daemon's request loop and
    its flush thread both write through the store that reports here."""

    def __init__(self) -> None:
        self._names: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, _store_path: str, names: tuple[str, ...]) -> None:
        """Remember that ``names`` changed."""
        with self._lock:
            self._names.update(names)

    def waiting(self) -> bool:
        """Whether a change waits to be taken (no lock: a name added meanwhile waits for
        the next call)."""
        return bool(self._names)

    def take(self) -> tuple[str, ...]:
        """The branches changed since the last call, and forget them."""
        with self._lock:
            names = tuple(self._names)
            self._names.clear()
        return names
