"""Copy a real directory into a branch (:func:`import_dir`); :mod:`branchfs.export` copies one
out (``export_dir``).

Both keep regular files (holes stay holes), directories, symlinks, hard links, FIFOs, modes
(setuid, setgid and sticky included), owners, nanosecond atime/mtime and extended attributes.

Safety: a symlink is copied as a link and never followed, in either direction. Import opens
every name relative to its parent directory's descriptor with ``O_NOFOLLOW``; export creates
every name relative to a directory descriptor it made itself, with ``O_EXCL | O_NOFOLLOW``,
and refuses names a hostile store could use to climb out (``..``, ``/``), so no tree can make
an export write outside its destination.

Speed: import reads each file with one large ``os.read`` (or by data extent for sparse
files) and commits a few hundred files or a few MiB per LMDB write transaction, building the
inode records directly instead of one :class:`~branchfs.Branch` call per file. The tree it
is given is a hidden staging layer (:meth:`branchfs.Branch.import_dir` opens it with
:meth:`branchfs.Store.staged`), published with one ref update at the end: an interrupted
import leaves nothing visible. Export runs in one read transaction, so it writes one consistent
state of the tree even while other writers change the branch.
"""

from __future__ import annotations

import errno
import logging
import os
import stat as st
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from . import content, paths, tree
from .content import split, visible_extents
from .errors import StoreCorrupt, with_path
from .layers import BoundTree, View
from .records import CHUNK_SIZE, INLINE_MAX, Inode

log = logging.getLogger(__name__)

Progress = Callable[[int], object] | None

#: A write transaction of an import takes at most this many entries …
BATCH_ENTRIES = 512
#: … or this many bytes of file data, whichever comes first.
BATCH_BYTES = 8 << 20
#: Files larger than this are read and committed piece by piece.
STREAM_PIECE = 4 << 20

#: Errors that mean "this filesystem does not take that xattr": skipped, not fatal.
XATTR_SKIP_ERRNOS = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.EINVAL)
#: How a directory is opened: never through a symlink.
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# -- import ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Make:
    """Create a node ``name`` in the directory with walker id ``parent``."""

    nid: int
    parent: int
    name: bytes
    rec: Inode
    chunks: list[tuple[int, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class _Link:
    """Give the node with walker id ``target`` one more name."""

    target: int
    parent: int
    name: bytes


@dataclass(slots=True)
class _Data:
    """More chunks of a large file created by an earlier :class:`_Make`, and its size so far."""

    nid: int
    chunks: list[tuple[int, bytes]]
    size: int


@dataclass(slots=True)
class _Attrs:
    """Set a directory's attributes (the import root, or a directory merged into)."""

    nid: int
    rec: Inode
    times_only: bool


_Op = _Make | _Link | _Data | _Attrs


def _xattrs_of(target: int | str, follow: bool = True) -> dict[bytes, bytes]:
    """The extended attributes of an open descriptor or a path (unsupported: none)."""
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in XATTR_SKIP_ERRNOS:
            return {}
        raise
    out: dict[bytes, bytes] = {}
    for name in names:
        try:
            out[os.fsencode(name)] = os.getxattr(target, name, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
    return out


def _record(s: os.stat_result, now: int) -> Inode:
    return Inode(
        mode=s.st_mode,
        uid=s.st_uid,
        gid=s.st_gid,
        atime_ns=s.st_atime_ns,
        mtime_ns=s.st_mtime_ns,
        ctime_ns=now,
        cut=0,
    )


class _Importer:
    """Walks a source directory, turning it into batches of record operations."""

    def __init__(self, branch: BoundTree, root_ino: int, progress: Progress) -> None:
        self.branch = branch
        self.progress = progress
        self.inos: dict[int, int] = {0: root_ino}  # walker id -> committed inode number
        self.fresh: set[int] = set()  # walker ids of directories this import created
        self.merged: list[tuple[int, Inode]] = []  # pre-existing directories merged into
        self.keep: set[int] = {0}  # walker ids later operations refer to
        self.links: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) -> walker id
        self.next_nid = 1
        self.root_rec: Inode | None = None
        self.files = 0
        self.committed_files = 0
        self.now = tree.now_ns()

    # -- the walk --------------------------------------------------------------------------

    def walk(self, root_fd: int, source: bytes) -> Iterator[_Op]:
        """Every operation that copies the tree open at ``root_fd`` (named ``source``)."""
        self.root_rec = _record(os.fstat(root_fd), self.now)
        self.root_rec.xattrs = _xattrs_of(root_fd)
        # The stack holds, per open directory: its descriptor, walker id and pending names.
        stack: list[tuple[int, int, bytes, list[os.DirEntry[str]]]] = []
        stack.append((root_fd, 0, source, self._entries(root_fd)))
        try:
            while stack:
                dfd, dnid, dpath, pending = stack[-1]
                if not pending:
                    stack.pop()
                    if dfd != root_fd:
                        os.close(dfd)
                    continue
                entry = pending.pop()
                name = os.fsencode(entry.name)
                where = dpath + b"/" + name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        sub = os.open(name, O_DIR, dir_fd=dfd)
                        try:
                            s = os.fstat(sub)
                            nid = self._nid(keep=True)
                            rec = _record(s, self.now)
                            rec.xattrs = _xattrs_of(sub)
                            entries = self._entries(sub)
                        except BaseException:
                            os.close(sub)
                            raise
                        stack.append((sub, nid, where, entries))
                        yield _Make(nid, dnid, name, rec)
                    elif entry.is_file(follow_symlinks=False):
                        yield from self._file(dfd, dnid, name)
                    else:
                        yield from self._special(dfd, dnid, name, entry)
                except OSError as exc:  # named by the full source path, not the dir_fd name
                    raise with_path(exc, os.fsdecode(where)) from None
        finally:
            for dfd, _n, _p, _e in stack:
                if dfd != root_fd:
                    os.close(dfd)

    def _entries(self, dfd: int) -> list[os.DirEntry[str]]:
        with os.scandir(dfd) as it:
            entries = list(it)
        entries.sort(key=lambda e: e.name, reverse=True)  # popped from the end: name order
        return entries

    def _nid(self, keep: bool = False) -> int:
        nid = self.next_nid
        self.next_nid += 1
        if keep:
            self.keep.add(nid)
        return nid

    def _file(self, dfd: int, dnid: int, name: bytes) -> Iterator[_Op]:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        try:
            s = os.fstat(fd)
            if not st.S_ISREG(s.st_mode):  # replaced since it was listed
                raise OSError(errno.EAGAIN, "the file changed type while it was copied")
            if s.st_nlink > 1:
                key = (s.st_dev, s.st_ino)
                first = self.links.get(key)
                if first is not None:
                    self.files += 1
                    yield _Link(first, dnid, name)
                    return
            rec = _record(s, self.now)
            rec.xattrs = _xattrs_of(fd)
            sparse = s.st_size > CHUNK_SIZE and s.st_blocks * 512 < s.st_size
            big = s.st_size > STREAM_PIECE or sparse
            nid = self._nid(keep=big or s.st_nlink > 1)
            if s.st_nlink > 1:
                self.links[(s.st_dev, s.st_ino)] = nid
            self.files += 1
            if not big:
                data = _read_all(fd, s.st_size)
                rec.size = len(data)
                if len(data) <= INLINE_MAX:
                    rec.inline = data
                    yield _Make(nid, dnid, name, rec)
                else:
                    yield _Make(nid, dnid, name, rec, list(split(data, 0)))
                return
            rec.size = 0
            yield _Make(nid, dnid, name, rec)
            size = 0
            for offset, data in _read_pieces(fd, s.st_size, sparse):
                size = max(size, offset + len(data))
                yield _Data(nid, list(split(data, offset // CHUNK_SIZE)), size)
            if size < s.st_size:
                yield _Data(nid, [], s.st_size)  # a hole at the end
        finally:
            os.close(fd)

    def _special(self, dfd: int, dnid: int, name: bytes, entry: os.DirEntry[str]) -> Iterator[_Op]:
        s = entry.stat(follow_symlinks=False)
        if s.st_nlink > 1:  # hard links to a symlink, FIFO, socket or device, as cp -a keeps
            first = self.links.get((s.st_dev, s.st_ino))
            if first is not None:
                self.files += 1
                yield _Link(first, dnid, name)
                return
        proc = f"/proc/self/fd/{dfd}/{entry.name}"
        if st.S_ISLNK(s.st_mode):
            rec = _record(s, self.now)
            rec.inline = os.readlink(name, dir_fd=dfd)
            rec.size = len(rec.inline)
            rec.cut = 0
            rec.xattrs = _xattrs_of(proc, follow=False)
        else:  # a FIFO, a socket or a device file: its record (and device number) only
            rec = _record(s, self.now)
            rec.rdev = s.st_rdev if st.S_ISCHR(s.st_mode) or st.S_ISBLK(s.st_mode) else 0
            rec.xattrs = _xattrs_of(proc, follow=False)
        self.files += 1
        nid = self._nid(keep=s.st_nlink > 1)
        if s.st_nlink > 1:
            self.links[(s.st_dev, s.st_ino)] = nid
        yield _Make(nid, dnid, name, rec)

    # -- the batches -----------------------------------------------------------------------

    def run(self, ops: Iterator[_Op]) -> None:
        """Commit ``ops`` in batches of a bounded number of entries and bytes, then give the
        import root (and every directory merged into) its source attributes and times."""
        batch: list[_Op] = []
        size = 0
        for op in ops:
            batch.append(op)
            if isinstance(op, _Make):
                size += len(op.rec.inline or b"") + sum(len(c) for _i, c in op.chunks)
            elif isinstance(op, _Data):
                size += sum(len(c) for _i, c in op.chunks)
            if len(batch) >= BATCH_ENTRIES or size >= BATCH_BYTES:
                self._commit(batch)
                batch, size = [], 0
        if batch:
            self._commit(batch)
        assert self.root_rec is not None
        # Last, once every directory merged into is known: replacing entries in them
        # touched their times.
        last: list[_Op] = [_Attrs(0, self.root_rec, False)]
        last.extend(_Attrs(nid, rec, True) for nid, rec in self.merged)
        self._commit(last)

    def _commit(self, batch: list[_Op]) -> None:
        files_before = self._files_in(batch)
        inos, fresh, merged = self.branch.write_view(lambda v: self._apply(v, batch))
        for nid, ino in inos.items():
            if nid in self.keep:
                self.inos[nid] = ino
        self.fresh |= fresh
        self.merged.extend(merged)
        self.committed_files += files_before
        if self.progress is not None:
            self.progress(self.committed_files)

    @staticmethod
    def _files_in(batch: list[_Op]) -> int:
        n = 0
        for op in batch:
            if isinstance(op, _Link) or (isinstance(op, _Make) and not op.rec.is_dir):
                n += 1
        return n

    def _apply(
        self, v: View, batch: list[_Op]
    ) -> tuple[dict[int, int], set[int], list[tuple[int, Inode]]]:
        """One transaction's work; touches no state of ``self`` (LMDB may run it twice)."""
        tree.writable(v)
        inos: dict[int, int] = {}
        fresh: set[int] = set()
        merged: list[tuple[int, Inode]] = []
        committed, committed_fresh = self.inos, self.fresh

        def ino_of(nid: int) -> int:
            ino = inos.get(nid)
            return committed[nid] if ino is None else ino

        for op in batch:
            if isinstance(op, _Make):
                parent = ino_of(op.parent)
                is_new_parent = op.parent in fresh or op.parent in committed_fresh
                if not is_new_parent:
                    existing = _make_room(v, parent, op.name, op.rec.is_dir)
                    if existing is not None:  # a directory merged into
                        rec = v.inode_for_write(existing)
                        assert rec is not None
                        rec.mode, rec.uid, rec.gid = op.rec.mode, op.rec.uid, op.rec.gid
                        rec.atime_ns, rec.mtime_ns = op.rec.atime_ns, op.rec.mtime_ns
                        rec.xattrs = op.rec.xattrs
                        rec.ctime_ns = self.now
                        v.put_inode(existing, rec)
                        inos[op.nid] = existing
                        merged.append((op.nid, op.rec))
                        continue
                rec = op.rec.copy()
                ino = tree.add_node(v, parent, op.name, rec, op.chunks)
                inos[op.nid] = ino
                if rec.is_dir:
                    fresh.add(op.nid)
            elif isinstance(op, _Link):
                parent = ino_of(op.parent)
                target = ino_of(op.target)
                if op.parent not in fresh and op.parent not in committed_fresh:
                    if v.dirent(parent, op.name) == target:
                        continue
                    _make_room(v, parent, op.name, False)
                rec = v.inode_for_write(target)
                if rec is None:
                    raise StoreCorrupt(f"inode {target} vanished during import")
                rec.links.append((parent, op.name))
                v.put_inode(target, rec)
                v.put_dirent(parent, op.name, target)
            elif isinstance(op, _Data):
                ino = ino_of(op.nid)
                content.put_chunks(v, ino, op.chunks)
                rec = v.inode_for_write(ino)
                assert rec is not None
                rec.size = op.size
                v.put_inode(ino, rec)
            else:
                ino = ino_of(op.nid)
                rec = v.inode_for_write(ino)
                assert rec is not None
                if not op.times_only:
                    rec.mode = st.S_IFMT(rec.mode) | st.S_IMODE(op.rec.mode)
                    rec.uid, rec.gid, rec.xattrs = op.rec.uid, op.rec.gid, op.rec.xattrs
                rec.atime_ns, rec.mtime_ns = op.rec.atime_ns, op.rec.mtime_ns
                rec.ctime_ns = self.now
                v.put_inode(ino, rec)
        return inos, fresh, merged


def _make_room(v: View, parent: int, name: bytes, want_dir: bool) -> int | None:
    """Clear ``name`` in ``parent`` for a new node; a directory kept for a directory is returned."""
    existing = v.dirent(parent, name)
    if existing is None:
        return None
    rec = v.inode(existing)
    if rec is not None and rec.is_dir:
        if want_dir:
            return existing
        tree.remove_tree(v, existing)
        tree.rmdir(v, parent, name)
    else:
        tree.unlink(v, parent, name)
    return None


def _read_all(fd: int, size_hint: int) -> bytes:
    """The whole content of ``fd``, in one ``read`` for a file that did not grow."""
    want = size_hint + 1
    data = os.read(fd, want)
    if len(data) < want:
        return data
    parts = [data]
    while True:
        more = os.read(fd, 1 << 20)
        if not more:
            return b"".join(parts)
        parts.append(more)


def _read_pieces(fd: int, size: int, sparse: bool) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of a large file in chunk-aligned pieces, skipping holes when sparse."""
    ranges: list[tuple[int, int]] | None = None
    if sparse:
        try:
            ranges = _data_ranges(fd, size)
        except OSError:
            ranges = None
    if ranges is None:
        offset = 0
        while data := os.pread(fd, STREAM_PIECE, offset):
            yield offset, data
            offset += len(data)
    else:
        for start, end in ranges:
            offset = start - start % CHUNK_SIZE
            while offset < end:
                n = min(STREAM_PIECE, end - offset)
                n += -(offset + n) % CHUNK_SIZE  # keep pieces chunk-aligned
                data = os.pread(fd, n, offset)
                if not data:
                    break
                yield offset, data
                offset += len(data)


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """The [start, end) ranges of ``fd`` that hold data, by SEEK_DATA / SEEK_HOLE."""
    out: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        if out and start <= out[-1][1] + CHUNK_SIZE:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
        pos = end
    return out


def import_dir(
    branch: BoundTree, source: paths.PathArg, dest: paths.PathArg = "", progress: Progress = None
) -> int:
    """Copy the real directory ``source`` into directory ``dest`` of ``branch``.

    ``dest`` is created if missing; if it exists, the copy merges into it (a name that
    exists on both sides is replaced, a directory merged). Returns the number of
    non-directory entries copied (files, symlinks, FIFOs, sockets, device files — their
    device numbers —, extra hard links), as ``cp -a`` copies them.
    ``progress(files_done)`` is called after each committed batch.
    """
    src = os.fsencode(source)
    try:
        root_fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise with_path(exc, os.fsdecode(src)) from None
    try:

        def find(v: View) -> int:
            ino = paths.resolve(v, dest)
            tree.get_dir(v, ino)
            return ino

        try:
            root_ino = branch.read_view(find)
        except FileNotFoundError:
            branch.makedirs(dest, exist_ok=True)
            root_ino = branch.read_view(find)
        except OSError as exc:
            raise with_path(exc, dest) from None
        imp = _Importer(branch, root_ino, progress)
        imp.run(imp.walk(root_fd, src))
        return imp.files
    finally:
        os.close(root_fd)


__all__ = ["Progress", "import_dir", "visible_extents"]
