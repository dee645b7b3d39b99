"""The LMDB environment of a store: its named databases, transactions and map growth.

One environment is opened per store per process (LMDB forbids opening the same file twice in
one process); :func:`open_meta` hands out a shared, reference-counted :class:`Meta`.
Every write goes through :meth:`Meta.write`, which runs a function inside one write
transaction, grows the map and retries on ``MapFullError``, and turns a full disk into
``OSError(ENOSPC)`` with nothing half-written (LMDB aborts the whole transaction).
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import lmdb

from . import keys
from .errors import NotAStore, StoreCorrupt, StoreNotFound, StoreVersionError, os_error

T = TypeVar("T")

#: Written into every store; a store without it is foreign.
MAGIC = b"branchfs store"
#: The on-disk format this code writes and reads.
FORMAT_VERSION = 1

DB_NAMES = (
    "meta",  # format, counters, topology token
    "layers",  # layer id -> {parent, frozen}
    "children",  # parent layer + child layer -> "" (who sits on a layer)
    "branches",  # name -> {id, top}
    "snapshots",  # name -> {layer, branch}
    "bases",  # branch id pair -> merge base layer
    "inodes",  # layer + ino -> inode record ("" = deleted)
    "dirents",  # layer + dir ino + name -> ino ("" = deleted)
    "extents",  # layer + ino + chunk index -> chunk key
    "chunks",  # chunk key -> bytes
    "chunkrefs",  # chunk key -> reference count
)

DEFAULT_MAP_SIZE = 1 << 30
DEFAULT_MAX_MAP_SIZE = 1 << 42


#: Less free space than this after a failed commit means the disk is full (see below).
FULL_DISK_BYTES = 16 << 20


def _is_enospc(exc: lmdb.Error, path: str | None = None) -> bool:
    """Whether ``exc`` means the disk (or quota) is full.

    LMDB reports a short ``pwrite`` (the disk filled up in the middle of a commit) as EIO,
    not ENOSPC, so an EIO counts as a full disk when the store's filesystem has (almost) no
    space left.
    """
    text = str(exc)
    if "No space left" in text or "ENOSPC" in text or "Disk quota" in text:
        return True
    if path is None or "Input/output error" not in text:
        return False
    try:
        fs = os.statvfs(path)
    except OSError:
        return False
    free = fs.f_bfree if os.geteuid() == 0 else fs.f_bavail  # root may use the reserve
    return free * fs.f_frsize < FULL_DISK_BYTES


#: Disk space kept allocated past the end of ``data.mdb`` (see :meth:`Meta._preallocate`).
HEADROOM_BYTES = 8 << 20
_FALLOC_FL_KEEP_SIZE = 1
# glibc's fallocate(), unlike posix_fallocate(), never falls back to writing zeros, which
# could race with another process's commit into the same file.
try:
    _fallocate = ctypes.CDLL(None, use_errno=True).fallocate
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
except (OSError, AttributeError):  # not Linux: the store works, without preallocation
    _fallocate = None


class Meta:
    """An open LMDB environment with the store's named databases."""

    def __init__(self, path: str, *, map_size: int, max_map_size: int, create: bool) -> None:
        self.path = path
        self.max_map_size = max_map_size
        self.refcount = 0
        self.lock = threading.RLock()
        data_file = os.path.join(path, "data.mdb")
        if not os.path.exists(data_file) and not create:
            if os.path.isdir(path):
                raise NotAStore(
                    f"{path} is a directory but not a branchfs store (no data.mdb); "
                    "create one with `branchfs init PATH` or Store.open(path, create=True)"
                )
            raise StoreNotFound(
                errno.ENOENT,
                f"no branchfs store at {path}; create one with `branchfs init {path}` "
                "or Store.open(path, create=True)",
            )
        try:
            self.env = lmdb.open(
                path,
                map_size=map_size,
                subdir=True,
                create=create,
                mode=0o600,
                max_dbs=len(DB_NAMES) + 2,
                sync=False,
                metasync=False,
                readahead=True,  # chunks are read sequentially: 6.6x faster cold reads
                max_readers=1024,
                lock=True,
            )
        except lmdb.InvalidError as exc:
            raise NotAStore(f"{path} is not a branchfs store: {exc}") from exc
        except lmdb.Error as exc:
            if _is_enospc(exc):
                raise os_error(errno.ENOSPC, path) from exc
            raise NotAStore(f"{path} cannot be opened as a branchfs store: {exc}") from exc
        try:
            self._open_dbs(create)
            self._data_fd = os.open(data_file, os.O_RDWR | os.O_CLOEXEC)
        except BaseException:
            self.env.close()
            raise
        #: ``data.mdb`` is allocated on disk up to here (0: not known yet).
        self._allocated = 0
        self._preallocate()

    def _open_dbs(self, create: bool) -> None:
        with self.env.begin() as txn:
            has_meta = txn.get(b"meta") is not None
            foreign = not has_meta and txn.stat()["entries"] > 0
        if not has_meta and (not create or foreign):
            raise NotAStore(
                f"{self.path} holds an LMDB database that is not a branchfs store; "
                "point branchfs at a store made by `branchfs init`"
            )
        with self.env.begin(write=True) as txn:
            self.dbs = {name: self.env.open_db(name.encode(), txn=txn) for name in DB_NAMES}
            meta = self.dbs["meta"]
            magic = txn.get(keys.MAGIC, db=meta)
            if magic is None:
                if not create or txn.stat(self.dbs["layers"])["entries"]:
                    raise NotAStore(f"{self.path} is not a branchfs store (no format record)")
                txn.put(keys.MAGIC, MAGIC, db=meta)
                txn.put(keys.FORMAT, keys.u64(FORMAT_VERSION), db=meta)
                for counter in keys.COUNTERS:
                    txn.put(counter, keys.u64(2), db=meta)
                txn.put(keys.TOPOLOGY, os.urandom(8), db=meta)
            elif magic != MAGIC:
                raise NotAStore(f"{self.path} is not a branchfs store (foreign magic {magic!r})")
            raw_version = txn.get(keys.FORMAT, db=meta)
            if raw_version is None:
                raise StoreCorrupt(f"{self.path}: the format record is missing or damaged")
            try:
                version = keys.read_u64(raw_version)
            except StoreCorrupt:
                raise StoreCorrupt(
                    f"{self.path}: the format record is missing or damaged"
                ) from None
            if version > FORMAT_VERSION:
                raise StoreVersionError(
                    f"{self.path} was written by a newer branchfs (format {version}; this "
                    f"version reads format {FORMAT_VERSION}); upgrade branchfs to open it"
                )
        self.meta_db = self.dbs["meta"]
        self.layers_db = self.dbs["layers"]
        self.children_db = self.dbs["children"]
        self.branches_db = self.dbs["branches"]
        self.snapshots_db = self.dbs["snapshots"]
        self.bases_db = self.dbs["bases"]
        self.inodes_db = self.dbs["inodes"]
        self.dirents_db = self.dbs["dirents"]
        self.extents_db = self.dbs["extents"]
        self.chunks_db = self.dbs["chunks"]
        self.chunkrefs_db = self.dbs["chunkrefs"]

    # -- transactions -------------------------------------------------------------------

    def _begin(self, write: bool, buffers: bool = False) -> lmdb.Transaction:
        try:
            return self.env.begin(write=write, buffers=buffers)
        except lmdb.MapResizedError:
            # Another process grew the map: adopt its size and start again.
            self.env.set_mapsize(0)
            return self.env.begin(write=write, buffers=buffers)

    @contextmanager
    def read(self, *, buffers: bool = False) -> Iterator[lmdb.Transaction]:
        """A read-only snapshot of the whole store for the duration of the block.

        With ``buffers`` values come back as memoryviews into the map, not copies; they
        are valid only inside the block.
        """
        txn = self._begin(False, buffers)
        try:
            yield txn
        finally:
            txn.abort()

    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``fn(txn)`` in one write transaction and commit it; all or nothing.

        ``fn`` may run more than once (after the map is grown), so it must not change
        in-memory state that outlives a failed attempt.
        """
        with self.lock:
            while True:
                txn = self._begin(True)
                try:
                    result = fn(txn)
                    txn.commit()
                    self._preallocate()
                    return result
                except lmdb.MapFullError:
                    txn.abort()
                    self._grow()
                except lmdb.Error as exc:
                    txn.abort()
                    if _is_enospc(exc, self.path):
                        raise os_error(errno.ENOSPC) from exc
                    raise
                except BaseException:
                    txn.abort()
                    raise

    def _preallocate(self) -> None:
        """Keep ``data.mdb`` allocated on disk from its start to HEADROOM past its end.

        LMDB leaves holes in the file: a page that a transaction took and gave back before
        committing is never written. On a full disk a later commit that reuses such a page
        fails, and so would the very deletion meant to free space. With every byte up to
        the end and some headroom beyond it allocated, a deletion always finds room for the
        few pages it writes. One ``fstat`` per commit; an ``fallocate`` every few MiB.
        """
        if _fallocate is None:
            return
        size = os.fstat(self._data_fd).st_size
        if size + HEADROOM_BYTES // 2 <= self._allocated:
            return
        want = size + HEADROOM_BYTES
        start = self._allocated  # 0 at first: fills the holes a store already has
        if _fallocate(self._data_fd, _FALLOC_FL_KEEP_SIZE, start, want - start) == 0:
            self._allocated = want
        elif ctypes.get_errno() not in (errno.ENOSPC, errno.EINTR):
            self._allocated = 1 << 62  # the filesystem cannot (EOPNOTSUPP …): do not ask again
        # ENOSPC: the disk is full; the headroom left is what deletions will use.

    def _grow(self) -> None:
        current = self.env.info()["map_size"]
        if current >= self.max_map_size:
            raise os_error(errno.ENOSPC, self.path)
        self.env.set_mapsize(min(current * 2, self.max_map_size))

    def next_id(self, txn: lmdb.Transaction, counter: bytes) -> int:
        """Allocate the next number of a store-wide counter (inodes, layers, branches)."""
        raw = txn.get(counter, db=self.meta_db)
        if raw is None:
            raise StoreCorrupt(f"the counter {counter.decode()} is missing; run fsck")
        n = keys.read_u64(raw)
        txn.put(counter, keys.u64(n + 1), db=self.meta_db)
        return n

    def sync(self) -> None:
        """Force everything committed so far to stable storage (survives power loss)."""
        try:
            self.env.sync(True)
        except lmdb.Error as exc:
            code = errno.ENOSPC if _is_enospc(exc, self.path) else errno.EIO
            raise os_error(code, self.path) from exc

    def close(self) -> None:
        """Close the environment; callers go through :func:`release_meta`."""
        self.env.close()
        os.close(self._data_fd)


_registry: dict[tuple[int, int], Meta] = {}
_registry_lock = threading.Lock()


def _ensure_store_dir(path: str, create: bool) -> None:
    if os.path.isdir(path):
        return
    if os.path.exists(path):
        raise NotAStore(f"{path} is a file, not a branchfs store directory")
    if not create:
        raise StoreNotFound(
            errno.ENOENT,
            f"no branchfs store at {path}; create one with `branchfs init {path}` "
            "or Store.open(path, create=True)",
        )
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def open_meta(
    path: str,
    *,
    create: bool,
    map_size: int = DEFAULT_MAP_SIZE,
    max_map_size: int = DEFAULT_MAX_MAP_SIZE,
) -> Meta:
    """Open (or share the already open) environment of the store at ``path``."""
    path = os.path.abspath(path)
    with _registry_lock:
        _ensure_store_dir(path, create)
        st = os.stat(path)
        key = (st.st_dev, st.st_ino)
        meta = _registry.get(key)
        if meta is None:
            meta = Meta(path, map_size=map_size, max_map_size=max_map_size, create=create)
            _registry[key] = meta
        meta.refcount += 1
        return meta


def release_meta(meta: Meta) -> None:
    """Drop one reference; the environment closes with the last one."""
    with _registry_lock:
        meta.refcount -= 1
        if meta.refcount == 0:
            for key, value in list(_registry.items()):
                if value is meta:
                    del _registry[key]
            meta.close()
