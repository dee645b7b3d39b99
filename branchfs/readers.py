"""The reader table of a store's ``lock.mdb``, reached without python-lmdb's ``lmdb.open``.

python-lmdb begins a read transaction inside ``lmdb.open`` (to open the main database), so a
process that finds every reader slot taken cannot open the store at all, and so cannot call
``Environment.reader_check`` to free the slots of dead processes. This module opens a bare
LMDB environment handle on the store through the very LMDB that python-lmdb bundles (the
per-engine function table its extension exports, ``lmdb_api_v09``/``lmdb_api_v10``, chosen
by the data file's format version like python-lmdb does), which takes no reader slot, and
runs ``mdb_reader_check`` (free the slots of dead processes) and ``mdb_reader_list`` (who
holds them) there. Where that table is not available (another python-lmdb), the functions
answer ``None`` and callers fall back to what they did before.

POSIX ``fcntl`` locks belong to a (process, file) pair: closing this handle's descriptor of
``lock.mdb`` drops every lock the process holds on that file, including those of another
environment of the same store it has open (LMDB's liveness check for this process's slots).
So call these functions only while this process has no environment of the store open;
:class:`branchfs.meta.Meta` calls them after a failed ``lmdb.open``, which has already
closed its own descriptor.
"""

from __future__ import annotations

import ctypes
import os
import struct
from functools import cache

import lmdb

from .errors import ReadersFull

#: The function-table layout below is that of python-lmdb 3.0 (``lmdb/mdb_api.h``).
_LAYOUT_MAJOR = "3."
#: Fields of ``MdbApi`` up to the two used here, in order (all function pointers).
_FUNCTIONS = (
    "env_create",
    "env_open",
    "env_close",
    "env_copy2",
    "env_copyfd2",
    "env_copy3",
    "env_copyfd3",
    "env_sync",
    "env_stat",
    "env_info",
    "env_get_flags",
    "env_set_flags",
    "env_get_maxkeysize",
    "env_get_maxreaders",
    "env_get_path",
    "env_set_mapsize",
    "env_set_maxdbs",
    "env_set_maxreaders",
    "reader_check",
    "reader_list",
)
#: ``(major, minor)`` of each bundled engine and the ``MDB_DATA_VERSION`` it reads.
_ENGINES = {"lmdb_api_v09": ((0, 9), 1), "lmdb_api_v10": ((1, 0), 3)}
#: ``mdb_env_open`` flag: map the data file read-only (this handle never writes it).
_MDB_RDONLY = 0x20000
#: ``MDB_meta`` after the 16-byte page header of page 0: ``mm_magic``, ``mm_version``.
_META = struct.Struct("<II")
_MDB_MAGIC = 0xBEEFC0DE


class _Api(ctypes.Structure):
    _fields_ = [
        ("major", ctypes.c_int),
        ("minor", ctypes.c_int),
        ("patch", ctypes.c_int),
        ("data_version", ctypes.c_uint),
        *((name, ctypes.c_void_p) for name in _FUNCTIONS),
    ]


_Env = ctypes.c_void_p
_MsgFunc = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


class _Engine:
    """The entry points of one bundled LMDB engine."""

    def __init__(self, api: _Api) -> None:
        fn = ctypes.CFUNCTYPE
        self.env_create = fn(ctypes.c_int, ctypes.POINTER(_Env))(api.env_create)
        self.env_open = fn(ctypes.c_int, _Env, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint)(
            api.env_open
        )
        self.env_close = fn(None, _Env)(api.env_close)
        self.env_set_maxreaders = fn(ctypes.c_int, _Env, ctypes.c_uint)(api.env_set_maxreaders)
        self.reader_check = fn(ctypes.c_int, _Env, ctypes.POINTER(ctypes.c_int))(api.reader_check)
        self.reader_list = fn(ctypes.c_int, _Env, _MsgFunc, ctypes.c_void_p)(api.reader_list)


@cache
def _engines() -> dict[int, _Engine]:
    """Bundled engines by the data format version they read (empty: none usable)."""
    if not lmdb.__version__.startswith(_LAYOUT_MAJOR):
        return {}
    try:
        from lmdb import cpython  # type: ignore[attr-defined]

        lib = ctypes.CDLL(cpython.__file__)
    except (ImportError, OSError, AttributeError):
        return {}
    found = {}
    for symbol, (version, data_version) in _ENGINES.items():
        try:
            api = _Api.in_dll(lib, symbol)
        except ValueError:
            continue
        # a table whose header does not say what it should is not read any further
        if (api.major, api.minor) == version and api.data_version == data_version:
            found[data_version] = _Engine(api)
    return found


def _engine(path: str) -> _Engine | None:
    try:
        with open(os.path.join(path, "data.mdb"), "rb") as f:
            head = f.read(16 + _META.size)
    except OSError:
        return None
    if len(head) < 16 + _META.size:
        return None
    magic, version = _META.unpack_from(head, 16)
    if magic != _MDB_MAGIC:
        return None
    return _engines().get(version)


def _with_env(path: str, max_readers: int, use: str) -> int | str | None:
    """Open a bare handle on the store's environment and run ``use`` there."""
    engine = _engine(path)
    if engine is None:
        return None
    env = _Env()
    if engine.env_create(ctypes.byref(env)) != 0:
        return None
    try:
        engine.env_set_maxreaders(env, max_readers)
        if engine.env_open(env, os.fsencode(path), _MDB_RDONLY, 0o600) != 0:
            return None
        if use == "check":
            dead = ctypes.c_int()
            if engine.reader_check(env, ctypes.byref(dead)) != 0:
                return None
            return dead.value
        lines: list[bytes] = []

        def collect(msg: bytes | None, _ctx: object) -> int:
            lines.append(msg or b"")
            return 0

        if engine.reader_list(env, _MsgFunc(collect), None) < 0:
            return None
        return b"".join(lines).decode(errors="replace")
    finally:
        engine.env_close(env)


def clear_dead(path: str, max_readers: int) -> int | None:
    """Free the reader slots of dead processes in the store at ``path``; how many were.

    ``None``: this python-lmdb offers no way to do it before ``lmdb.open``. Only while this
    process has no environment of the store open (see the module docstring).
    """
    cleared = _with_env(path, max_readers, "check")
    return cleared if isinstance(cleared, int) else None


def table(path: str, max_readers: int) -> str | None:
    """The reader table as ``Environment.readers()`` prints it (``None``: not available).

    Same condition as :func:`clear_dead`.
    """
    listed = _with_env(path, max_readers, "list")
    return listed if isinstance(listed, str) else None


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a]
    if words:  # the program by its name: what it runs is the telling part
        words[0] = os.path.basename(words[0])
    text = " ".join(words)
    return text if len(text) <= 120 else text[:117] + "..."


def full(path: str, listed: str | None, max_readers: int) -> ReadersFull:
    """The error for a reader table that is still full after the dead were cleared.

    ``listed`` is the table as ``Environment.readers()`` prints it (``pid thread txnid``
    lines after a header), or ``None`` when it could not be read; the message then says
    how to find the holders.
    """
    holders: dict[int, int] = {}
    for line in (listed or "").splitlines()[1:]:
        fields = line.split()
        if fields and fields[0].isdigit():
            holders[int(fields[0])] = holders.get(int(fields[0]), 0) + 1
    if not holders:
        return ReadersFull(
            f"all {max_readers} reader slots of {path} are taken; each open read "
            "transaction holds one, and a process that has the store open frees those of "
            "dead processes within a second. If this persists, end the processes that keep "
            f"many reads open (`lsof {path}/lock.mdb` lists those that have the store open) "
            "and try again"
        )
    by_command: dict[str, list[int]] = {}
    for pid in holders:
        by_command.setdefault(_command(pid), []).append(pid)
    ranked = sorted(by_command.items(), key=lambda kv: -sum(holders[p] for p in kv[1]))
    named = "; ".join(
        f"{sum(holders[p] for p in pids)} by {_pids(pids)}: {command}"
        for command, pids in ranked[:3]
    )
    more = f"; and {len(ranked) - 3} other commands" if len(ranked) > 3 else ""
    return ReadersFull(
        f"all {sum(holders.values())} reader slots of {path} are held by live processes "
        f"({named}{more}); each open read transaction holds one, and the slots of dead "
        "processes were already cleared. End the processes that hold many slots (or their "
        "long reads) and try again"
    )


def _pids(pids: list[int]) -> str:
    if len(pids) == 1:
        return f"pid {pids[0]}"
    shown = ", ".join(str(p) for p in sorted(pids)[:3])
    return f"{len(pids)} processes (pids {shown}{', ...' if len(pids) > 3 else ''})"
