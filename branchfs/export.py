"""Copy a tree of a branch out into a real directory: :func:`export_dir`.

Regular files (holes stay holes), directories, symlinks, hard links, FIFOs, modes (setuid,
setgid and sticky included), owners (as root), nanosecond atime/mtime and extended
attributes are kept. Safety: every name is created relative to a directory descriptor this
module made itself, with ``O_EXCL | O_NOFOLLOW``, and names a hostile store could use to
climb out (``..``, ``/``) are refused, so no tree can make an export write outside its
destination. The export runs in one read transaction, so it writes one consistent state of
the tree even while other writers change the branch. File data is read by the extents
visible through the chain (:func:`branchfs.content.visible_extents`) and written in runs of
up to :data:`WRITE_RUN` bytes per ``pwritev``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat as st

from . import paths, tree
from .content import visible_extents
from .errors import StoreCorrupt, with_path
from .layers import BoundTree, View
from .records import CHUNK_SIZE, Inode
from .transfer import O_DIR, XATTR_SKIP_ERRNOS, Progress

log = logging.getLogger(__name__)

#: Export hands the kernel up to this many bytes per ``pwritev``.
WRITE_RUN = 1 << 20


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
        try:
            root_ino = paths.resolve(v, source)
            root_rec = tree.get_dir(v, root_ino)
        except OSError as exc:
            raise with_path(exc, os.fsdecode(source)) from None
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
                        sub = os.open(name, O_DIR, dir_fd=dfd)
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
            self._attrs_at(dfd, name, rec)
        elif st.S_ISFIFO(mode):
            os.mkfifo(name, 0o600, dir_fd=dfd)
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW, dir_fd=dfd)
            try:
                self._attrs_fd(fd, rec)
            finally:
                os.close(fd)
        else:  # a socket or a device file: mknod(2) makes it, a device only as root
            try:
                if not self.root and not st.S_ISSOCK(mode):
                    raise PermissionError(errno.EPERM, "not root")
                os.mknod(name, st.S_IFMT(mode) | 0o600, rec.rdev, dir_fd=dfd)
            except PermissionError:  # not root, or root without CAP_MKNOD (a container)
                self.skipped += 1
                log.warning("export_dir skips device file %r: this process may not make one", name)
                return
            self._attrs_at(dfd, name, rec)
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
                nfd = os.open(comp, O_DIR, dir_fd=pfd)
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

    def _attrs_at(self, dfd: int, name: bytes, rec: Inode) -> None:
        """:meth:`_attrs_fd` by name, for a node that cannot or must not be opened (a
        symlink, whose mode Linux does not keep; a device file), never following it."""
        if self.root:
            os.chown(name, rec.uid, rec.gid, dir_fd=dfd, follow_symlinks=False)
        proc = f"/proc/self/fd/{dfd}/{os.fsdecode(name)}"
        for key, value in rec.xattrs.items():
            _set_xattr(proc, key, value, follow=False)
        if not st.S_ISLNK(rec.mode):  # chmod(2) would follow it
            os.chmod(name, st.S_IMODE(rec.mode), dir_fd=dfd)
        os.utime(name, ns=(rec.atime_ns, rec.mtime_ns), dir_fd=dfd, follow_symlinks=False)


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
        if exc.errno not in XATTR_SKIP_ERRNOS:
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


def _staging_dir(target: bytes) -> bytes | None:
    """A new hidden sibling of ``target`` to export into and rename onto it at the end, so
    that an interrupted export leaves nothing at ``target``; ``None``: export in place.

    In place when ``target`` is not a new or empty directory (the usual errors follow), is
    a symlink or a mountpoint (a rename would replace it, or cannot), or when its parent
    does not let us make the sibling.
    """
    path = target.rstrip(b"/") or b"/"
    try:
        s = os.lstat(path)
    except FileNotFoundError:
        s = None
    except OSError:
        return None
    parent = os.path.dirname(os.path.abspath(path))
    if s is not None:
        if not st.S_ISDIR(s.st_mode) or path == b"/":
            return None
        try:
            if os.stat(parent).st_dev != s.st_dev or os.listdir(path):
                return None
        except OSError:
            return None
    tmp = os.path.join(
        parent,
        b".%s.export-%d-%s" % (os.path.basename(path), os.getpid(), os.urandom(4).hex().encode()),
    )
    try:
        os.makedirs(parent, exist_ok=True)
        os.mkdir(tmp, 0o700)
    except OSError:
        return None
    return tmp


def export_dir(
    branch: BoundTree, dest: paths.PathArg, source: paths.PathArg = "", progress: Progress = None
) -> int:
    """Copy directory ``source`` of ``branch`` into the real directory ``dest``.

    ``dest`` is created (with its parents) or must be an empty directory, else
    ``FileExistsError``; ``OSError`` if it cannot be made or opened (its filename ``dest``
    as a str), or if ``source`` is not a directory of the tree (its filename ``source``).
    ``dest`` receives the attributes of ``source``. Owners are restored only when running
    as root; xattrs the destination refuses are skipped with a log note. Returns the
    number of non-directory entries written, hard links included.

    All or nothing where it can be: the tree is written into a hidden sibling
    ``.NAME.export-PID-XXXXXXXX`` and renamed onto ``dest`` at the end, so an export that
    fails or is interrupted (Ctrl-C) leaves ``dest`` as it was; one killed outright
    (SIGKILL) leaves only that hidden sibling, to delete. Where no sibling can be made
    (an unwritable parent) or ``dest`` is a symlink or a mountpoint, the export writes in
    place, and an interrupted one leaves ``dest`` partly filled: empty it and export again.
    """
    target = os.fsencode(dest)
    tmp = _staging_dir(target)
    try:
        root_fd = _open_dest(target if tmp is None else tmp)
    except OSError as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise with_path(exc, os.fsdecode(dest)) from None
    try:
        files = branch.read_view(
            lambda v: _Exporter(v, root_fd, target.rstrip(b"/") or b"/", progress).run(source)
        )
        if tmp is not None:
            try:
                os.rename(tmp, target.rstrip(b"/"))
            except OSError as exc:  # dest appeared meanwhile, not empty (or not a directory)
                raise FileExistsError(
                    errno.EEXIST,
                    "export_dir writes only into a new or empty directory, and one that is "
                    f"not appeared there during the export ({exc.strerror})",
                    os.fsdecode(target),
                ) from None
        return files
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(root_fd)


__all__ = ["export_dir"]
