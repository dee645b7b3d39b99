"""POSIX semantics on top of layers: inode operations with Linux's errno for every failure.

Every function takes a :class:`~branchfs.layers.View` (one transaction, one tree) and works
on inode numbers, like a FUSE filesystem does. The path-based ``Branch`` API and the FUSE
daemon are both thin wrappers over these functions. Errors are raised as ``OSError`` with
the errno Linux gives for the same call; callers add the path.
"""

from __future__ import annotations

import errno
import stat as st
import time
from collections.abc import Iterable, Sequence

from . import content
from .errors import ReadOnlyError, os_error
from .layers import View
from .records import INLINE_MAX, ROOT_INO, Inode

NAME_MAX = 255
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4


def now_ns() -> int:
    """The current time in nanoseconds, for timestamps."""
    return time.time_ns()


def writable(v: View) -> None:
    """Raise EROFS unless the view may be written (snapshots may not)."""
    if v.top is None:
        raise ReadOnlyError("snapshots are read-only; fork a branch from the snapshot to edit it")


def check_name(name: bytes) -> None:
    """Raise the errno Linux gives for a name that cannot be a directory entry."""
    if not name or b"/" in name or b"\0" in name:
        raise os_error(errno.EINVAL)
    if name in (b".", b".."):
        raise os_error(errno.EEXIST)
    if len(name) > NAME_MAX:
        raise os_error(errno.ENAMETOOLONG)


def get(v: View, ino: int) -> Inode:
    """The record of ``ino``, or ENOENT."""
    rec = v.inode(ino)
    if rec is None:
        raise os_error(errno.ENOENT)
    return rec


def check_dir(v: View, ino: int) -> None:
    """ENOENT unless ``ino`` exists, ENOTDIR unless it is a directory (:func:`get_dir`
    without building the record)."""
    mode = v.mode(ino)
    if mode is None:
        raise os_error(errno.ENOENT)
    if not st.S_ISDIR(mode):
        raise os_error(errno.ENOTDIR)


def get_dir(v: View, ino: int) -> Inode:
    """The record of directory ``ino``: ENOENT if gone, ENOTDIR if not a directory."""
    rec = get(v, ino)
    if not rec.is_dir:
        raise os_error(errno.ENOTDIR)
    return rec


def for_write(v: View, ino: int) -> Inode:
    """The record of ``ino`` ready to edit into the top layer: EROFS on a snapshot, ENOENT
    if it is gone."""
    writable(v)
    rec = v.inode_for_write(ino)
    if rec is None:
        raise os_error(errno.ENOENT)
    return rec


def remove_tree(v: View, ino: int) -> None:
    """Remove everything inside directory ``ino`` (it stays, empty)."""
    for name, child in v.list_dir(ino):
        rec = v.inode(child)
        if rec is not None and rec.is_dir:
            remove_tree(v, child)
            rmdir(v, ino, name)
        else:
            unlink(v, ino, name)


def lookup(v: View, parent: int, name: bytes) -> int:
    """The inode that ``name`` names in directory ``parent``; ENOENT if none."""
    if name == b".":
        check_dir(v, parent)
        return parent
    if name == b"..":
        return parent_of(v, parent)
    ino = v.dirent(parent, name)
    if ino is None:
        check_dir(v, parent)
        if len(name) > NAME_MAX:
            raise os_error(errno.ENAMETOOLONG)
        raise os_error(errno.ENOENT)
    return ino


def parent_of(v: View, ino: int) -> int:
    """The parent directory of directory ``ino`` (the root is its own parent)."""
    rec = get_dir(v, ino)
    if ino == ROOT_INO or not rec.links:
        return ROOT_INO
    return rec.links[0][0]


def _touch_dir(v: View, parent: int, rec: Inode | None = None, t: int | None = None) -> Inode:
    """Update a directory's mtime and ctime after its entries changed; its record as put
    (the caller's: nothing else holds it)."""
    if rec is None:
        rec = v.inode_for_write(parent)
        assert rec is not None
    t = t or now_ns()
    rec.mtime_ns = rec.ctime_ns = t
    v.put_inode(parent, rec)
    return rec


def _new_entry_checks(v: View, parent: int, name: bytes) -> Inode:
    if v.top is None:
        writable(v)  # raises EROFS
    check_name(name)
    prec = v.inode_for_write(parent)
    if prec is None:
        raise os_error(errno.ENOENT)
    if not st.S_ISDIR(prec.mode):
        raise os_error(errno.ENOTDIR)
    if v.dirent(parent, name) is not None:
        raise os_error(errno.EEXIST)
    if not prec.links and parent != ROOT_INO:
        raise os_error(errno.ENOENT)  # a removed directory that is still open
    return prec


def make_node(
    v: View,
    parent: int,
    name: bytes,
    mode: int,
    uid: int,
    gid: int,
    *,
    rdev: int = 0,
    target: bytes | None = None,
) -> tuple[int, Inode]:
    """Create a file, directory, symlink or special file named ``name`` in ``parent``
    (``mode`` includes the file-type bits); the new inode number and record."""
    ino, rec, _prec = make_node_in(v, parent, name, mode, uid, gid, rdev=rdev, target=target)
    return ino, rec


def make_node_in(
    v: View,
    parent: int,
    name: bytes,
    mode: int,
    uid: int,
    gid: int,
    *,
    rdev: int = 0,
    target: bytes | None = None,
) -> tuple[int, Inode, Inode]:
    """:func:`make_node`, also returning the parent's record as it now is (its new mtime):
    the mount caches it for the kernel's next question about the directory, without
    reading it back. Each record is the caller's (nothing else holds it)."""
    prec = _new_entry_checks(v, parent, name)
    t = now_ns()
    if prec.mode & st.S_ISGID:
        gid = prec.gid
        if st.S_ISDIR(mode):
            mode |= st.S_ISGID
    inline: bytes | None = None
    if st.S_ISLNK(mode):
        inline = target or b""
    elif st.S_ISREG(mode):
        inline = b""
    # positional: the dataclass's keyword matching is a tenth of a create's Python
    size = len(inline) if inline else 0
    rec = Inode(mode, uid, gid, size, t, t, t, rdev, [], inline, 0, {})
    ino = add_node(v, parent, name, rec)
    _touch_dir(v, parent, prec, t)
    return ino, rec, prec


def add_node(
    v: View,
    parent: int,
    name: bytes,
    rec: Inode,
    chunks: Iterable[tuple[int, bytes | memoryview]] = (),
) -> int:
    """Create the node ``rec`` named ``name`` in ``parent``, with the chunks of its content
    (chunk index, bytes); returns its new inode number. ``rec`` gets the one link.

    The primitive behind :func:`make_node`, and its batch form: it checks nothing and leaves
    the parent's times alone, so an import creating thousands of nodes in one transaction
    (which has checked the names and sets the directories' times itself) pays only for the
    records. ``rec.cut`` should be 0 (nothing beneath a new inode may show through).
    """
    ino = v.new_ino()
    rec.links = [(parent, name)]
    if chunks:  # the default (): a node made empty
        content.put_chunks(v, ino, chunks)
    v.put_inode(ino, rec)
    v.put_dirent(parent, name, ino)
    return ino


def make_unnamed(v: View, parent: int, mode: int, uid: int, gid: int) -> tuple[int, Inode]:
    """A regular file with no name yet, as ``open(dir, O_TMPFILE)`` makes in ``parent``.

    It has no links (an orphan: the caller keeps it while it is open, and ``link`` may name
    it later); ``parent`` must be a directory that still has a name. The directory itself
    is not changed (Linux's ``vfs_tmpfile`` leaves its times alone).
    """
    writable(v)
    prec = get_dir(v, parent)
    if not prec.links and parent != ROOT_INO:
        raise os_error(errno.ENOENT)
    ino = v.new_ino()
    t = now_ns()
    if prec.mode & st.S_ISGID:
        gid = prec.gid
    rec = Inode(
        mode=st.S_IFREG | (mode & 0o7777), uid=uid, gid=gid, atime_ns=t, mtime_ns=t, ctime_ns=t
    )
    rec.cut = 0
    rec.inline = b""
    v.put_inode(ino, rec)
    return ino, rec


def link(v: View, ino: int, parent: int, name: bytes) -> Inode:
    """Give ``ino`` one more name: ``name`` in ``parent``. Directories cannot be linked."""
    return link_in(v, ino, parent, name)[0]


def link_in(
    v: View, ino: int, parent: int, name: bytes, rec: Inode | None = None
) -> tuple[Inode, Inode]:
    """:func:`link`: the record of ``ino`` and the parent's record, as they now are (see
    :func:`unlink_in`). ``rec``: the record of ``ino`` as this transaction has left it, not
    yet put (the mount's write buffer of a file just closed, applied in the same
    transaction: one put of the record instead of two)."""
    if rec is None:
        rec = for_write(v, ino)
    else:
        writable(v)
    prec = _new_entry_checks(v, parent, name)
    if rec.is_dir:
        raise os_error(errno.EPERM)
    t = now_ns()
    rec.links.append((parent, name))
    rec.ctime_ns = t
    v.put_inode(ino, rec)
    v.put_dirent(parent, name, ino)
    return rec, _touch_dir(v, parent, prec, t)


def _drop_link(v: View, ino: int, rec: Inode, parent: int, name: bytes, keep: bool) -> None:
    """Remove the link (parent, name) from ``rec``; delete the inode when it was the last."""
    link = (parent, name)
    if link in rec.links:  # no contextlib.suppress object: rm -rf's every unlink comes here
        rec.links.remove(link)
    if rec.links or keep:
        rec.ctime_ns = now_ns()
        v.put_inode(ino, rec)
    else:
        v.delete_inode(ino, has_extents(rec))


def has_extents(rec: Inode) -> bool:
    """Whether the layer holding ``rec`` may hold extents of its inode: only a regular file
    not inline (a layer's record turns inline only with its extents dropped, ``content``)."""
    return rec.inline is None and st.S_ISREG(rec.mode)


def unlink(v: View, parent: int, name: bytes) -> int:
    """Remove the non-directory entry ``name`` from ``parent``; returns its inode."""
    return unlink_in(v, parent, name)[0]


def unlink_in(
    v: View,
    parent: int,
    name: bytes,
    *,
    keep_orphan: bool = False,
    known: tuple[int, Inode] | None = None,
) -> tuple[int, Inode]:
    """:func:`unlink`, also returning the parent's record as it now is (its new mtime): the
    mount caches it for the kernel's next question about the directory. With
    ``keep_orphan`` an inode that loses its last link keeps its record (with no
    links) so that open file handles can still use it; :func:`forget_orphan` drops it.
    ``known``: the inode ``name`` names and its record from ``v.inode_for_write``, if the
    caller has read them in this transaction (they are not read again; ``rec`` is edited).
    """
    writable(v)
    if known is None:
        ino = lookup(v, parent, name)
        rec = for_write(v, ino)
    else:
        ino, rec = known
    if rec.is_dir:
        raise os_error(errno.EISDIR)
    v.delete_dirent(parent, name)
    _drop_link(v, ino, rec, parent, name, keep_orphan)
    return ino, _touch_dir(v, parent)


def forget_orphan(v: View, ino: int) -> None:
    """Delete an inode that has no links left (its last open handle closed)."""
    rec = v.inode(ino)
    if rec is not None and not rec.links and ino != ROOT_INO:
        v.delete_inode(ino, has_extents(rec))


def rmdir(v: View, parent: int, name: bytes) -> int:
    """Remove the empty directory ``name`` from ``parent``; returns its inode."""
    return rmdir_in(v, parent, name)[0]


def rmdir_in(v: View, parent: int, name: bytes, *, keep_orphan: bool = False) -> tuple[int, Inode]:
    """:func:`rmdir`, also returning the parent's record as it now is (see
    :func:`unlink_in`). With ``keep_orphan`` the directory keeps its record (with no
    links), as a file does in :func:`unlink_in`, so that a process holding it open (or as
    its working directory) still sees an empty directory with ``st_nlink`` 0;
    :func:`forget_orphan` drops it."""
    writable(v)
    if name == b".":
        raise os_error(errno.EINVAL)
    if name == b"..":
        raise os_error(errno.ENOTEMPTY)
    ino = lookup(v, parent, name)
    rec = for_write(v, ino)  # read once: edited below when it stays as an orphan
    if not rec.is_dir:
        raise os_error(errno.ENOTDIR)
    if v.has_entries(ino):
        raise os_error(errno.ENOTEMPTY)
    v.delete_dirent(parent, name)
    if keep_orphan:
        rec.links = []
        rec.ctime_ns = now_ns()
        v.put_inode(ino, rec)
    else:
        v.delete_inode(ino, False)  # a directory has no extents
    return ino, _touch_dir(v, parent)


def is_ancestor(v: View, maybe_ancestor: int, ino: int) -> bool:
    """Whether directory ``maybe_ancestor`` contains directory ``ino`` (or is it)."""
    seen = 0
    while True:
        if ino == maybe_ancestor:
            return True
        if ino == ROOT_INO:
            return False
        rec = v.inode(ino)
        if rec is None or not rec.links:
            return False
        ino = rec.links[0][0]
        seen += 1
        if seen > 100_000:
            return False


Touched = list[tuple[int, Inode]]  #: directories a call changed: ``(inode, record as put)``


def rename_in(
    v: View, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int = 0
) -> tuple[int | None, Inode | None, Touched]:
    """rename(2)/renameat2(2): move ``old_name`` to ``new_name`` (``RENAME_NOREPLACE``,
    ``RENAME_EXCHANGE``). Returns the inode that was replaced and lost its last name (None
    if none did) and its record with no links, *not put* (the caller puts it to keep an
    orphan, or deletes the inode: one write of it, not two), and the directories the
    rename changed with their records as put (see :func:`unlink_in`)."""
    writable(v)
    if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or (
        flags & RENAME_NOREPLACE and flags & RENAME_EXCHANGE
    ):
        raise os_error(errno.EINVAL)
    if old_name in (b".", b".."):
        raise os_error(errno.EBUSY)
    if new_name in (b".", b".."):
        raise os_error(errno.EEXIST if flags & RENAME_NOREPLACE else errno.EBUSY)
    check_name(new_name)
    ino = lookup(v, old_parent, old_name)
    get_dir(v, new_parent)
    target = v.dirent(new_parent, new_name)
    rec = v.inode_for_write(ino)
    assert rec is not None
    if flags & RENAME_EXCHANGE:
        if target is None:
            raise os_error(errno.ENOENT)
        touched = _exchange(v, old_parent, old_name, ino, rec, new_parent, new_name, target)
        return None, None, touched
    if target == ino:
        return None, None, []  # both names are links to the same file: POSIX says do nothing
    if target is not None and flags & RENAME_NOREPLACE:
        raise os_error(errno.EEXIST)
    if rec.is_dir and is_ancestor(v, ino, new_parent):
        raise os_error(errno.EINVAL)
    if target is not None and is_ancestor(v, target, old_parent):
        raise os_error(errno.ENOTEMPTY)  # the target contains the source (Linux's "trap")
    replaced: int | None = None
    orphan: Inode | None = None
    if target is not None:
        trec = v.inode_for_write(target)
        assert trec is not None
        if trec.is_dir:
            if not rec.is_dir:
                raise os_error(errno.EISDIR)
            if v.has_entries(target):
                raise os_error(errno.ENOTEMPTY)
            trec.links = []
            replaced, orphan = target, trec
        else:
            if rec.is_dir:
                raise os_error(errno.ENOTDIR)
            trec.links.remove((new_parent, new_name))
            if trec.links:
                trec.ctime_ns = now_ns()
                v.put_inode(target, trec)
            else:
                replaced, orphan = target, trec
    t = now_ns()
    v.delete_dirent(old_parent, old_name)
    v.put_dirent(new_parent, new_name, ino)
    rec.links.remove((old_parent, old_name))
    rec.links.append((new_parent, new_name))
    rec.ctime_ns = t
    v.put_inode(ino, rec)
    touched = [(old_parent, _touch_dir(v, old_parent, t=t))]
    if new_parent != old_parent:
        touched.append((new_parent, _touch_dir(v, new_parent, t=t)))
    return replaced, orphan, touched


def _exchange(
    v: View,
    op: int,
    on: bytes,
    ino: int,
    rec: Inode,
    np: int,
    nn: bytes,
    target: int,
) -> Touched:
    if target == ino:
        return []
    trec = v.inode_for_write(target)
    assert trec is not None
    if rec.is_dir and is_ancestor(v, ino, np):
        raise os_error(errno.EINVAL)
    if trec.is_dir and is_ancestor(v, target, op):
        raise os_error(errno.EINVAL)
    t = now_ns()
    v.put_dirent(op, on, target)
    v.put_dirent(np, nn, ino)
    rec.links.remove((op, on))
    rec.links.append((np, nn))
    trec.links.remove((np, nn))
    trec.links.append((op, on))
    rec.ctime_ns = trec.ctime_ns = t
    v.put_inode(ino, rec)
    v.put_inode(target, trec)
    touched = [(op, _touch_dir(v, op, t=t))]
    if np != op:
        touched.append((np, _touch_dir(v, np, t=t)))
    return touched


# -- file data ---------------------------------------------------------------------------------


def read(v: View, ino: int, offset: int, size: int) -> bytes:
    """Up to ``size`` bytes of regular file ``ino`` from ``offset`` (short at end of file)."""
    pieces = read_pieces(v, ino, offset, size)
    return bytes(pieces[0]) if len(pieces) == 1 else b"".join(pieces)


def read_pieces(v: View, ino: int, offset: int, size: int) -> list[bytes | memoryview]:
    """:func:`read` as the pieces whose concatenation is the data, without joining them.

    Whole chunks are the chunk store's own objects, so a caller that writes the pieces out
    with one ``writev`` copies nothing itself. In a view from :meth:`Store.viewing` they are
    memoryviews into the store's map (the mount reads this way): one copy, to the kernel.
    """
    rec = get(v, ino)
    if rec.is_dir:
        raise os_error(errno.EISDIR)
    if not rec.is_reg:
        raise os_error(errno.EINVAL)
    if offset < 0:
        raise os_error(errno.EINVAL)
    end = min(rec.size, offset + size)
    if end <= offset:
        return [b""]
    return content.read_pieces(v, ino, rec, offset, end)


def write(v: View, ino: int, offset: int, data: bytes | memoryview) -> Inode:
    """Write ``data`` into regular file ``ino`` at ``offset`` (holes read as zeros)."""
    writable(v)
    if offset < 0:
        raise os_error(errno.EINVAL)
    rec = for_write(v, ino)
    if rec.is_dir:
        raise os_error(errno.EISDIR)
    if not rec.is_reg:
        raise os_error(errno.EINVAL)
    content.write(v, ino, rec, offset, data)
    t = now_ns()
    rec.mtime_ns = rec.ctime_ns = t
    v.put_inode(ino, rec)
    return rec


def write_inline(
    v: View,
    ino: int,
    segments: Sequence[tuple[int, bytes | bytearray]],
    mtime_ns: int,
    attrs: Inode | None = None,
    put: bool = True,
) -> Inode | None:
    """Several writes into a small regular file, and its mtime and ctime set to
    ``mtime_ns``: what :func:`write` of each ``(offset, data)`` then :func:`.attrs.setattr` of the
    times leave, with the record read and put once; then, given ``attrs``, the mode, owner
    and times of ``attrs``. Only for data that stays inline in the record (the file was
    inline and ends within :data:`INLINE_MAX` bytes): returns None, having changed
    nothing, otherwise. Errors as :func:`write`. Without ``put`` the record is returned
    and not put: the caller puts it, with its own changes, in the same transaction."""
    writable(v)
    rec = for_write(v, ino)
    if rec.is_dir:
        raise os_error(errno.EISDIR)
    if not rec.is_reg:
        raise os_error(errno.EINVAL)
    if rec.inline is None:
        return None
    for offset, data in segments:
        if offset < 0:
            raise os_error(errno.EINVAL)
        if offset + len(data) > INLINE_MAX:
            return None
    for offset, data in segments:
        content.write(v, ino, rec, offset, data if isinstance(data, bytes) else memoryview(data))
    rec.mtime_ns = rec.ctime_ns = mtime_ns
    if attrs is not None:
        rec.mode, rec.uid, rec.gid = attrs.mode, attrs.uid, attrs.gid
        rec.atime_ns, rec.mtime_ns, rec.ctime_ns = attrs.atime_ns, attrs.mtime_ns, attrs.ctime_ns
    if put:
        v.put_inode(ino, rec)
    return rec


def truncate(v: View, ino: int, size: int, rec: Inode | None = None) -> Inode:
    """Set the size of regular file ``ino``: cut it short or extend it with a hole."""
    writable(v)
    if size < 0:
        raise os_error(errno.EINVAL)
    if rec is None:
        rec = for_write(v, ino)
    if rec.is_dir:
        raise os_error(errno.EISDIR)
    if not rec.is_reg:
        raise os_error(errno.EINVAL)
    content.truncate(v, ino, rec, size)
    t = now_ns()
    rec.mtime_ns = rec.ctime_ns = t
    v.put_inode(ino, rec)
    return rec


def readlink(v: View, ino: int) -> bytes:
    """The target of symlink ``ino``; EINVAL if it is not a symlink."""
    rec = get(v, ino)
    if not rec.is_link:
        raise os_error(errno.EINVAL)
    return rec.inline or b""
