"""Copy a real directory into a branch (:func:`import_dir`) and out of one (:func:`export_dir`).

Both keep regular files (holes stay holes), directories, symlinks, hard links, FIFOs, modes
(setuid, setgid and sticky included), owners, nanosecond atime/mtime and extended attributes.

Safety: a symlink is copied as a link and never followed, in either direction. Import opens
every name relative to its parent directory's descriptor with ``O_NOFOLLOW``; export creates
every name relative to a directory descriptor it made itself, with ``O_EXCL | O_NOFOLLOW``,
and refuses names a hostile store could use to climb out (``..``, ``/``), so no tree can make
an export write outside its destination.

Speed: import reads each file with one large ``os.read`` (or by data extent for sparse
files) and commits a few hundred files or a few MiB per LMDB write transaction, building the
inode records directly instead of one :class:`~branchfs.Branch` call per file. An import is
therefore not one atomic transaction: a crash in the middle leaves the files committed so
far, each batch whole. Export runs in one read transaction, so it writes one consistent
state of the tree even while other writers change the branch.
"""

from __future__ import annotations

import contextlib
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
#: Export hands the kernel up to this many bytes per ``pwritev``.
WRITE_RUN = 1 << 20

_XATTR_SKIP_ERRNOS = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.EINVAL)
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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
        if exc.errno in _XATTR_SKIP_ERRNOS:
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
        self.skipped = 0
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
                        sub = os.open(name, _O_DIR, dir_fd=dfd)
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
        proc = f"/proc/self/fd/{dfd}/{entry.name}"
        if st.S_ISLNK(s.st_mode):
            rec = _record(s, self.now)
            rec.inline = os.readlink(name, dir_fd=dfd)
            rec.size = len(rec.inline)
            rec.cut = 0
            rec.xattrs = _xattrs_of(proc, follow=False)
        elif st.S_ISFIFO(s.st_mode):
            rec = _record(s, self.now)
            rec.xattrs = _xattrs_of(proc, follow=False)
        else:
            self.skipped += 1
            log.info("import_dir skips %s: sockets and device files are not copied", entry.name)
            return
        self.files += 1
        yield _Make(self._nid(), dnid, name, rec)

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
    non-directory entries copied (files, symlinks, FIFOs, extra hard links); sockets and
    device files are skipped with a log note. ``progress(files_done)`` is called after
    each committed batch.
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
        if imp.skipped:
            log.info("import_dir skipped %d sockets or device files", imp.skipped)
        return imp.files
    finally:
        os.close(root_fd)


# -- export ------------------------------------------------------------------------------------


def _check_name(name: bytes) -> None:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise StoreCorrupt(f"the tree holds an impossible name {name!r}; run fsck")


class _Exporter:
    """Writes one tree of a read transaction into a directory it owns by descriptor."""

    def __init__(self, v: View, root_fd: int, dest: bytes, progress: Progress) -> None:
        self.v = v
        self.root_fd = root_fd
        self.dest = dest
        self.progress = progress
        self.root = os.geteuid() == 0
        self.first_name: dict[int, tuple[tuple[bytes, ...], bytes]] = {}
        self.files = 0
        self.skipped = 0

    def run(self, source: paths.PathArg) -> int:
        v = self.v
        root_ino = paths.resolve(v, source)
        root_rec = tree.get_dir(v, root_ino)
        seen = {root_ino}
        stack: list[tuple[int, Inode, tuple[bytes, ...], list[tuple[bytes, int]]]] = []
        stack.append((self.root_fd, root_rec, (), list(reversed(v.list_dir(root_ino)))))
        try:
            while stack:
                dfd, drec, comps, pending = stack[-1]
                if not pending:
                    stack.pop()
                    self._attrs_fd(dfd, drec)
                    if dfd != self.root_fd:
                        os.close(dfd)
                    continue
                name, ino = pending.pop()
                _check_name(name)
                rec = v.inode(ino)
                if rec is None:
                    raise StoreCorrupt(f"entry {name!r} names a missing inode {ino}; run fsck")
                try:
                    if rec.is_dir:
                        if ino in seen:
                            raise StoreCorrupt(f"directory inode {ino} appears twice; run fsck")
                        seen.add(ino)
                        os.mkdir(name, 0o700, dir_fd=dfd)
                        sub = os.open(name, _O_DIR, dir_fd=dfd)
                        stack.append((sub, rec, (*comps, name), list(reversed(v.list_dir(ino)))))
                    else:
                        self._leaf(dfd, comps, name, ino, rec)
                except OSError as exc:
                    where = b"/".join((self.dest, *comps, name))
                    raise with_path(exc, os.fsdecode(where)) from None
        finally:
            for dfd, _r, _c, _p in stack:
                if dfd != self.root_fd:
                    os.close(dfd)
        if self.progress is not None:
            self.progress(self.files)
        return self.files

    def _leaf(self, dfd: int, comps: tuple[bytes, ...], name: bytes, ino: int, rec: Inode) -> None:
        if len(rec.links) > 1:
            first = self.first_name.get(ino)
            if first is not None:
                self._hard_link(first, dfd, name)
                self._count()
                return
        mode = rec.mode
        if st.S_ISREG(mode):
            fd = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dfd,
            )
            try:
                self._write_data(fd, ino, rec)
                self._attrs_fd(fd, rec)
            finally:
                os.close(fd)
        elif st.S_ISLNK(mode):
            os.symlink(rec.inline or b"", name, dir_fd=dfd)
            if self.root:
                os.chown(name, rec.uid, rec.gid, dir_fd=dfd, follow_symlinks=False)
            proc = f"/proc/self/fd/{dfd}/{os.fsdecode(name)}"
            for key, value in rec.xattrs.items():
                _set_xattr(proc, key, value, follow=False)
            os.utime(name, ns=(rec.atime_ns, rec.mtime_ns), dir_fd=dfd, follow_symlinks=False)
        elif st.S_ISFIFO(mode):
            os.mkfifo(name, 0o600, dir_fd=dfd)
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW, dir_fd=dfd)
            try:
                self._attrs_fd(fd, rec)
            finally:
                os.close(fd)
        else:
            self.skipped += 1
            log.info("export_dir skips %r: sockets and device files are not copied", name)
            return
        if len(rec.links) > 1:
            self.first_name[ino] = (comps, name)
        self._count()

    def _count(self) -> None:
        self.files += 1
        if self.progress is not None and self.files % 1000 == 0:
            self.progress(self.files)

    def _hard_link(self, first: tuple[tuple[bytes, ...], bytes], dfd: int, name: bytes) -> None:
        comps, first_name = first
        pfd = self.root_fd
        try:
            for comp in comps:
                nfd = os.open(comp, _O_DIR, dir_fd=pfd)
                if pfd != self.root_fd:
                    os.close(pfd)
                pfd = nfd
            os.link(first_name, name, src_dir_fd=pfd, dst_dir_fd=dfd, follow_symlinks=False)
        finally:
            if pfd != self.root_fd:
                os.close(pfd)

    def _write_data(self, fd: int, ino: int, rec: Inode) -> None:
        size = rec.size
        if rec.inline is not None:
            data = memoryview(rec.inline)[:size]
            while data:
                data = data[os.write(fd, data) :]
            if len(rec.inline) >= size:
                return
        else:
            get = self.v.chunks.get
            txn = self.v.txn
            run: list[bytes | memoryview] = []
            run_start = run_end = 0
            for idx, key in visible_extents(self.v, ino, size):
                offset = idx * CHUNK_SIZE
                if run and (offset != run_end or run_end - run_start >= WRITE_RUN):
                    _pwrite_all(fd, run, run_start)
                    run = []
                chunk = get(txn, key)[: max(0, size - offset)]
                if not run:
                    run_start = offset
                run.append(chunk)
                run_end = offset + len(chunk)
            if run:
                _pwrite_all(fd, run, run_start)
        os.ftruncate(fd, size)

    def _attrs_fd(self, fd: int, rec: Inode) -> None:
        # Order matters: chown clears setuid bits and file capabilities, and an ACL xattr
        # rewrites the group mode bits, so the mode goes last, then the times.
        if self.root:
            os.fchown(fd, rec.uid, rec.gid)
        for key, value in rec.xattrs.items():
            _set_xattr(fd, key, value)
        os.fchmod(fd, st.S_IMODE(rec.mode))
        os.utime(fd, ns=(rec.atime_ns, rec.mtime_ns))


def _pwrite_all(fd: int, bufs: list[bytes | memoryview], offset: int) -> None:
    total = sum(len(b) for b in bufs)
    done = os.pwritev(fd, bufs, offset)
    if done < total:  # short write: finish it piece by piece
        rest = b"".join(bufs)[done:]
        while rest:
            n = os.pwrite(fd, rest, offset + done)
            done += n
            rest = rest[n:]


def _set_xattr(target: int | str, key: bytes, value: bytes, follow: bool = True) -> None:
    try:
        os.setxattr(target, key, value, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno not in _XATTR_SKIP_ERRNOS:
            raise
        log.info("export_dir cannot set xattr %r here (%s); skipped", key, exc.strerror)


def _open_dest(dest: bytes) -> int:
    """A descriptor of the destination directory, created if missing; it must be empty."""
    with contextlib.suppress(FileExistsError):
        os.makedirs(dest, mode=0o700)
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except NotADirectoryError:
        raise FileExistsError(
            errno.EEXIST,
            "export_dir needs a new or empty directory, and this is a file",
            os.fsdecode(dest),
        ) from None
    if os.listdir(fd):
        os.close(fd)
        raise FileExistsError(
            errno.EEXIST,
            "export_dir writes only into a new or empty directory, and this one is not empty",
            os.fsdecode(dest),
        )
    return fd


def export_dir(
    branch: BoundTree, dest: paths.PathArg, source: paths.PathArg = "", progress: Progress = None
) -> int:
    """Copy directory ``source`` of ``branch`` into the real directory ``dest``.

    ``dest`` is created (with its parents) or must be an empty directory, else
    ``FileExistsError``. It receives the attributes of ``source``. Owners are restored
    only when running as root; xattrs the destination refuses are skipped with a log note.
    Returns the number of non-directory entries written, hard links included.
    """
    target = os.fsencode(dest)
    root_fd = _open_dest(target)
    try:
        return branch.read_view(
            lambda v: _Exporter(v, root_fd, target.rstrip(b"/") or b"/", progress).run(source)
        )
    finally:
        os.close(root_fd)


__all__ = ["export_dir", "import_dir", "visible_extents"]
