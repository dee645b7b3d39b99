"""The LMDB environment of a store: its named databases, transactions and map growth.

One environment is opened per store per process (LMDB forbids opening the same file twice in
one process); :func:`branchfs.envs.open_meta` hands out a shared, reference-counted
:class:`Meta`.
Every write goes through :meth:`Meta.write`, which runs a function inside one write
transaction, grows the map and retries on ``MapFullError``, and turns a full disk into
``OSError(ENOSPC)`` with nothing half-written (LMDB aborts the whole transaction).

Two concerns live in modules of their own: group commit (one thread's writes batched into
one transaction, :mod:`branchfs.batches`) and following a compaction
(:mod:`branchfs.following`); :class:`Meta` holds one of each and calls them around its
transactions.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
import time
from collections.abc import Callable
from typing import TypeAlias, TypeVar

import lmdb

from . import keys, readers, reserve
from .batches import Batches, BatchRead, Moved
from .damage import DAMAGE_ERRORS, check_size, damaged, refuse_emptied, unreadable
from .errors import (
    NotAStore,
    ReadersFull,
    StoreCorrupt,
    StoreNotFound,
    StoreVersionError,
    os_error,
)
from .following import Follower

T = TypeVar("T")

#: A named database of the environment (lmdb's C module and stubs call it ``_Database``).
#: Not behind ``TYPE_CHECKING``: mypyc, which compiles this module, takes that as true.
Database: TypeAlias = lmdb._Database

#: Written into every store; a store without it is foreign.
MAGIC = b"branchfs store"
#: The on-disk format this code writes and reads.
#: 3: every record carries a digest (:func:`branchfs.keys.seal`, seeded by its key); 1 (no
#: digests) and 2 (digests over a copy of the key, for an hour of development) are migrated.
FORMAT_VERSION = 3

DB_NAMES = (
    "meta",  # format, counters, topology token
    "layers",  # layer id -> {parent, frozen}
    "children",  # parent layer + child layer -> "" (who sits on a layer)
    "branches",  # name -> {id, top}
    "snapshots",  # name -> {layer, branch}
    "merges",  # layer + merge parent -> "" (and the reverse): the merge history
    "inodes",  # layer + ino -> inode record ("" = deleted)
    "dirents",  # layer + dir ino + name -> ino ("" = deleted)
    "extents",  # layer + ino + chunk index -> chunk key
    "chunks",  # chunk key -> bytes
    "chunkrefs",  # chunk key -> reference count
)

#: Inode numbers a batched call reserves at once (see :meth:`Meta.next_id`).
INO_BLOCK = 64
DEFAULT_MAP_SIZE = 1 << 30
DEFAULT_MAX_MAP_SIZE = 1 << 42
#: Reader slots of a store (the first process to open it sets the size of the table).
MAX_READERS = 1024


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


#: Disk space kept allocated past the end of ``data.mdb`` (see :meth:`Meta.preallocate`).
HEADROOM_BYTES = 8 << 20
_FALLOC_FL_KEEP_SIZE = 1
# glibc's fallocate(), unlike posix_fallocate(), never falls back to writing zeros, which
# could race with another process's commit into the same file.
_fallocate: Callable[[int, int, int, int], int] | None
try:
    _fallocate_fn = ctypes.CDLL(None, use_errno=True).fallocate
    _fallocate_fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate = _fallocate_fn
except (OSError, AttributeError):  # not Linux: the store works, without preallocation
    _fallocate = None


#: A process clears reader slots left by dead processes at most this often (and always
#: when the table is full): a stale slot pins old pages for at most this long of writes.
READER_CHECK_S = 1.0


class Meta:
    """An open LMDB environment with the store's named databases.

    Besides running transactions it keeps the environment usable next to processes that die
    at any moment: reader slots left by dead processes are cleared (at open, every
    ``READER_CHECK_S`` and whenever the table is full), LMDB errors that mean damage become
    :class:`StoreCorrupt`, a truncated ``data.mdb`` is refused before it is mapped (a read
    past its end would be a SIGBUS), and an environment replaced by a compaction is re-opened
    (see :mod:`branchfs.compact` and :mod:`branchfs.following`).
    """

    def __init__(self, path: str, *, map_size: int, max_map_size: int, create: bool) -> None:
        self.path = path
        self.max_map_size = max_map_size
        self.refcount = 0
        self.lock = threading.RLock()
        self.data_file = os.path.join(path, "data.mdb")
        #: This process's open transactions; following a compaction.
        self.follower = Follower(self)
        #: The batching thread and its open batch (group commit).
        self.batches = Batches(self)
        self._next_reader_check = 0.0
        #: Whether the last preallocation kept the full headroom (else writes commit alone).
        self.roomy = True
        #: Whether ``STORE/reserve`` is known to exist (see :mod:`branchfs.reserve`).
        self._reserved = False
        #: Bytes of new chunks the running write transaction stored (``LmdbChunkStore``),
        #: and whether it deleted a name, a chunk or a ref: a write that deletes and stores
        #: no new content may spend the reserve (see :mod:`branchfs.reserve`).
        self.put_bytes = 0
        self.frees = False
        if not os.path.exists(self.data_file) and not create:
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
        self._open(map_size, create)

    def _open(self, map_size: int, create: bool) -> None:
        """Open the environment, check it against its own header, open the databases."""
        for _attempt in range(3):
            refuse_emptied(self.path, self.data_file)
            try:
                before = os.stat(self.data_file).st_ino
            except FileNotFoundError:
                before = None
            self.env = self._open_env(map_size, create)
            try:
                self._data_fd = os.open(self.data_file, os.O_RDWR | os.O_CLOEXEC)
            except BaseException:
                self.env.close()
                raise
            if before is None or os.fstat(self._data_fd).st_ino == before:
                break
            # A compaction replaced data.mdb between the two opens: take the new one.
            self.env.close()
            os.close(self._data_fd)
        try:
            self.env.reader_check()
            check_size(self.env, self._data_fd, self.path)
            self._open_dbs(create)
        except DAMAGE_ERRORS as exc:
            self._close_files()
            raise damaged(self.path, exc) from exc
        except BaseException:
            self._close_files()
            raise
        #: ``data.mdb`` is allocated on disk up to here (0: not known yet).
        self._allocated = 0
        self._next_reader_check = time.monotonic() + READER_CHECK_S
        self.follower.clean_id = -1
        self.preallocate()

    def _open_env(self, map_size: int, create: bool) -> lmdb.Environment:
        try:
            try:
                return self._lmdb_open(map_size, create)
            except lmdb.ReadersFullError:
                # python-lmdb reads inside lmdb.open: free the dead's slots without it (this
                # failed open holds no lock on lock.mdb any more), then try once more
                if not readers.clear_dead(self.path, MAX_READERS):
                    raise
                return self._lmdb_open(map_size, create)
        except lmdb.ReadersFullError as exc:
            listed = readers.table(self.path, MAX_READERS)
            raise readers.full(self.path, listed, MAX_READERS) from exc
        except lmdb.InvalidError as exc:
            raise unreadable(self.path, self.data_file, exc) from exc
        except DAMAGE_ERRORS as exc:
            raise damaged(self.path, exc) from exc
        except lmdb.Error as exc:
            if _is_enospc(exc):
                raise os_error(errno.ENOSPC, self.path) from exc
            raise NotAStore(f"{self.path} cannot be opened as a branchfs store: {exc}") from exc

    def _lmdb_open(self, map_size: int, create: bool) -> lmdb.Environment:
        return lmdb.open(
            self.path,
            map_size=map_size,
            subdir=True,
            create=create,
            mode=0o600,
            max_dbs=len(DB_NAMES) + 2,
            sync=False,
            metasync=False,
            readahead=True,  # chunks are read sequentially: 6.6x faster cold reads
            max_readers=MAX_READERS,
            lock=True,
        )

    def _close_files(self) -> None:
        self.env.close()
        os.close(self._data_fd)

    def data_fd(self) -> int:
        """The descriptor of the ``data.mdb`` this process has mapped."""
        return self._data_fd

    def reopen_files(self) -> None:
        """Close the environment and open ``data.mdb`` again, at the same map size (for
        :class:`~branchfs.following.Follower`, which first waits for open transactions)."""
        map_size = int(self.env.info()["map_size"])
        self._close_files()
        self._open(map_size, create=False)

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
                txn.put(keys.FORMAT, keys.U64.pack(FORMAT_VERSION), db=meta)
                for counter in keys.COUNTERS:
                    txn.put(counter, keys.u64(2), db=meta)
                txn.put(keys.TOPOLOGY, os.urandom(8), db=meta)
            elif magic != MAGIC:
                raise NotAStore(f"{self.path} is not a branchfs store (foreign magic {magic!r})")
            raw_version = txn.get(keys.FORMAT, db=meta)
            # unsealed, so that every version can read it
            if raw_version is None or len(raw_version) != keys.U64.size:
                raise StoreCorrupt(f"{self.path}: the format record is missing or damaged")
            version = keys.U64.unpack(raw_version)[0]
            if version > FORMAT_VERSION:
                raise StoreVersionError(
                    f"{self.path} was written by a newer branchfs (format {version}; this "
                    f"version reads format {FORMAT_VERSION}); upgrade branchfs to open it"
                )
            if version < FORMAT_VERSION:
                self._migrate(txn, version)
        self.meta_db = self.dbs["meta"]
        self.layers_db = self.dbs["layers"]
        self.children_db = self.dbs["children"]
        self.branches_db = self.dbs["branches"]
        self.snapshots_db = self.dbs["snapshots"]
        self.merges_db = self.dbs["merges"]
        self.inodes_db = self.dbs["inodes"]
        self.dirents_db = self.dbs["dirents"]
        self.extents_db = self.dbs["extents"]
        self.chunks_db = self.dbs["chunks"]
        self.chunkrefs_db = self.dbs["chunkrefs"]

    def _migrate(self, txn: lmdb.Transaction, version: int) -> None:
        """Format 1 or 2 to 3: give every record its digest, in the opening write transaction
        (all or nothing). Processes of an older branchfs must not use the store after it."""
        strip = keys.DIGEST_SIZE if version == 2 else 0  # format 2's digests are replaced
        for name, db in self.dbs.items():
            changed = []
            for key, raw in txn.cursor(db=db):
                old = bytes(raw)
                if strip and keys.reseal_v1(name, bytes(key), old) is not None:
                    old = old[:-strip]
                new = keys.reseal_v1(name, bytes(key), old)
                if new is not None:
                    changed.append((bytes(key), new))
            for key, new in changed:
                txn.put(key, new, db=db)
        txn.put(keys.FORMAT, keys.U64.pack(FORMAT_VERSION), db=self.dbs["meta"])

    # -- transactions -------------------------------------------------------------------

    def clear_stale_readers(self) -> int:
        """Free the reader slots of processes that died in a read; returns how many.

        LMDB finds them itself (a live process holds an ``fcntl`` lock on its pid's byte of
        ``lock.mdb``; ``mdb_reader_check``). A stale slot pins the snapshot it was reading,
        so until it is cleared no page freed after that snapshot can be reused.
        """
        try:
            return int(self.env.reader_check())
        except lmdb.Error:
            return 0

    def _readers_full(self) -> ReadersFull:
        return readers.full(self.path, self.env.readers(), MAX_READERS)

    def begin(self, write: bool, buffers: bool = False) -> lmdb.Transaction:
        """A raw LMDB transaction: stale readers cleared, a grown map adopted, damage as
        :class:`StoreCorrupt`; neither counted, batched nor checked for a compaction (for
        :mod:`branchfs.following` and :mod:`branchfs.batches`; others use :meth:`read` and
        :meth:`write`)."""
        now = time.monotonic()
        if now >= self._next_reader_check:
            self._next_reader_check = now + READER_CHECK_S
            self.clear_stale_readers()
        cleared = False
        while True:
            try:
                if buffers:
                    return self.env.begin(write=write, buffers=True)
                return self.env.begin(write=write)
            except lmdb.MapResizedError:
                # Another process grew the map: adopt its size and start again.
                self.env.set_mapsize(0)
            except lmdb.ReadersFullError as exc:
                if cleared:
                    raise self._readers_full() from exc
                cleared = True
                self.clear_stale_readers()
            except DAMAGE_ERRORS as exc:
                raise damaged(self.path, exc) from exc

    def read(self, *, buffers: bool = False) -> ReadTxn | BatchRead:
        """A read-only snapshot of the whole store for the duration of a ``with`` block.

        With ``buffers`` values come back as memoryviews into the map, not copies; they
        are valid only inside the block. The snapshot keeps every page it can see from
        being reused until the block ends, so blocks must stay short. In the batching
        thread with a batch open, the block gets the batch itself (values are then always
        copies) and must not write.
        """
        batches = self.batches
        if batches.txn is not None and batches.owner == threading.get_ident():
            return BatchRead(batches.txn)
        follower = self.follower
        while True:
            follower.enter()
            try:
                txn = self.begin(False, buffers)
                moved = follower.moved(txn, txn.id())  # on damage it aborts txn
            except BaseException:
                follower.leave()
                raise
            if not moved:
                return ReadTxn(self, txn)
            txn.abort()
            follower.leave()
            follower.follow()

    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``fn(txn)`` in one write transaction and commit it; all or nothing.

        ``fn`` may run more than once (after the map is grown, or after following a
        compaction), so it must not change in-memory state that outlives a failed attempt.
        In the batching thread the commit is that of the batch (:meth:`commit_batch`);
        ``fn`` still runs all or nothing.
        """
        if self.batches.owner == threading.get_ident():
            if self.roomy:
                try:
                    return self.batches.write(fn)
                except Moved:
                    pass  # a compaction is under way: the usual path follows it
                except lmdb.MapFullError:
                    self._end_batch()  # what the batch holds is kept; this call starts anew
                    with self.lock:
                        self.grow_map()
            else:  # a nearly full disk: each write commits alone and hears its own ENOSPC
                self._end_batch()
        follower = self.follower
        with self.lock:
            while True:
                follower.enter()
                grown = False  # the map grew: try again at once, nothing to follow
                try:
                    txn = self.begin(True)
                    try:
                        if not follower.moved(txn, txn.id() - 1):
                            self.put_bytes = 0
                            self.frees = False
                            result = fn(txn)
                            committed = txn.id()
                            txn.commit()
                            follower.clean_id = committed  # fn never writes the mark
                            self.preallocate()
                            return result
                        txn.abort()
                    except lmdb.MapFullError:
                        txn.abort()
                        self.grow_map()
                        grown = True
                    except DAMAGE_ERRORS as exc:
                        txn.abort()
                        raise damaged(self.path, exc) from exc
                    except lmdb.Error as exc:
                        txn.abort()
                        if not _is_enospc(exc, self.path):
                            raise
                        self.roomy = False
                        if not self._spend_reserve():
                            raise os_error(errno.ENOSPC) from exc
                        grown = True  # the reserve's space is free: run the call again
                    except BaseException:
                        txn.abort()
                        raise
                finally:
                    follower.leave()
                if not grown:  # (no ``continue`` in the try: mypyc cannot compile one)
                    follower.follow()

    # -- batches (group commit, see branchfs.batches) ------------------------------------

    def batch_thread(self, ident: int) -> None:
        """Batch the writes of thread ``ident`` from now on (0: nobody's); see
        :meth:`branchfs.batches.Batches.set_thread`."""
        self.batches.set_thread(ident)

    @property
    def batch_owner(self) -> int:
        """The thread whose writes are batched (0: none)."""
        return self.batches.owner

    @property
    def batch_open(self) -> bool:
        """Whether the batching thread holds uncommitted writes (and LMDB's writer)."""
        return self.batches.txn is not None

    @property
    def batch_started_ns(self) -> int:
        """When the open batch took its first write (``perf_counter_ns``)."""
        return self.batches.started_ns

    @property
    def batch_writes(self) -> int:
        """How many writes the open batch holds."""
        return self.batches.writes

    def commit_batch(self) -> None:
        """Commit the open batch (nothing if none); see
        :meth:`branchfs.batches.Batches.commit` (``OSError`` on failure)."""
        self.batches.commit()

    def _end_batch(self) -> None:
        """Commit the open batch before a call that must run alone. If that fails, the
        batch's calls (which have returned) are lost and ``Batches.lost`` keeps the errno
        for the next fsync; the call at hand is not theirs and goes on (an unlink on a
        full disk must still free space)."""
        with contextlib.suppress(OSError):
            self.batches.commit()

    def _spend_reserve(self) -> bool:
        """After ENOSPC: give the reserve's space back to the disk if the failed call deleted
        something and stored no new content (see :mod:`branchfs.reserve`); whether it may
        run again."""
        if not self.frees or self.put_bytes or not reserve.release(self.path):
            return False
        self._reserved = False
        return True

    def commit_error(self, exc: lmdb.Error) -> OSError:
        """The ``OSError`` (ENOSPC or EIO, naming the store) that a failed commit means."""
        if _is_enospc(exc, self.path):
            self.roomy = False  # the calls that follow commit alone, and may use the reserve
            return os_error(errno.ENOSPC, self.path)
        return os_error(errno.EIO, self.path)

    def preallocate(self) -> None:
        """Keep ``data.mdb`` allocated on disk from its start to HEADROOM past its end.

        LMDB leaves holes in the file: a page that a transaction took and gave back before
        committing is never written. On a full disk a later commit that reuses such a page
        fails, and so would the very deletion meant to free space. With every byte up to
        the end and some headroom beyond it allocated, a deletion always finds room for the
        few pages it writes. One ``fstat`` per commit; an ``fallocate`` every few MiB.
        """
        if _fallocate is None:
            return
        if not self._reserved:  # first: deletions on a full disk need it more than writes
            self._reserved = reserve.make(self.path)
        size = os.fstat(self._data_fd).st_size
        if size + HEADROOM_BYTES // 2 <= self._allocated:
            return
        want = size + HEADROOM_BYTES
        start = self._allocated  # 0 at first: fills the holes a store already has
        if _fallocate(self._data_fd, _FALLOC_FL_KEEP_SIZE, start, want - start) == 0:
            self._allocated = want
            self.roomy = True
        elif ctypes.get_errno() not in (errno.ENOSPC, errno.EINTR):
            self._allocated = 1 << 62  # the filesystem cannot (EOPNOTSUPP …): do not ask again
            self._reserved = reserve.make(self.path)  # (which writes zeros where it must)
        else:
            # ENOSPC: the disk is full; the headroom left is what deletions will use, and
            # writes are committed one by one again so that each hears its own ENOSPC.
            self.roomy = False

    def grow_map(self) -> None:
        """Double LMDB's map, up to ``max_map_size`` (then ``OSError`` ENOSPC)."""
        current = self.env.info()["map_size"]
        if current >= self.max_map_size:
            raise os_error(errno.ENOSPC, self.path)
        self.env.set_mapsize(min(current * 2, self.max_map_size))

    def next_id(self, txn: lmdb.Transaction, counter: bytes, count: int = 1) -> int:
        """Allocate the next ``count`` numbers of a store-wide counter (inodes, layers,
        branches); returns the first.

        A call of the batching thread (``txn`` is the call nested in the open batch) takes
        inode numbers from a block of :data:`INO_BLOCK` it reserves in the counter: one
        counter read and write per block instead of per created inode. The reservation is
        written in that call, so it reaches the store with the call or not at all, and is
        dropped when it may not have (``Batches``); unused numbers of a block are never
        handed out again (gaps, as after a crash).
        """
        batches = self.batches
        pooled = count == 1 and txn is batches.child and counter == keys.NEXT_INO
        if pooled:
            n = batches.ino_next
            if n < batches.ino_end:
                batches.ino_next = n + 1
                return n
            count = INO_BLOCK
        raw = txn.get(counter, None, self.meta_db)
        if raw is None:
            raise StoreCorrupt(f"the counter {counter.decode()} is missing; run fsck")
        n = keys.read_u64(raw)
        txn.put(counter, keys.u64(n + count), True, True, False, self.meta_db)
        if pooled:
            batches.ino_next, batches.ino_end = n + 1, n + count
        return n

    def sync(self) -> None:
        """Force everything committed so far to stable storage (survives power loss)."""
        try:
            self.env.sync(True)
        except lmdb.Error as exc:
            raise self.commit_error(exc) from exc

    def close(self) -> None:
        """Close the environment; callers go through :func:`.envs.release_meta`."""
        self._close_files()


class ReadTxn:
    """The ``with`` block of :meth:`Meta.read`: yields the transaction, ends it on exit.

    (A class rather than a ``contextmanager`` generator: a read is begun per call of the
    API, and the generator machinery cost about 1 µs of its 25.)
    """

    __slots__ = ("meta", "txn")

    def __init__(self, meta: Meta, txn: lmdb.Transaction) -> None:
        self.meta = meta
        self.txn = txn

    def __enter__(self) -> lmdb.Transaction:
        return self.txn

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        self.txn.abort()
        self.meta.follower.leave()
        if exc is not None and isinstance(exc, DAMAGE_ERRORS):
            raise damaged(self.meta.path, exc) from exc
