"""The kept list of mutants that ``make mutate`` plants one at a time (see tools/mutate.py).

Each entry is a realistic bug: the file, a snippet of today's code that must occur exactly
once in it, the same snippet with the bug, what the bug is, and the tests that must catch
it (pytest arguments; keep them a fast subset). When code moves and a snippet is no longer
found, ``make mutate`` reports the mutant STALE: re-anchor it on the code as it is now.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    """One planted bug: replace ``original`` by ``mutated`` in ``file``, run ``tests``."""

    id: str
    file: str
    original: str
    mutated: str
    description: str
    tests: tuple[str, ...]


ENGINE = ("tests/test_tree.py", "tests/test_chunks.py")
MERGE = ("tests/test_merge.py", "tests/test_diff.py")
FSCK = ("tests/test_gc_fsck.py", "tests/test_chunks.py", "tests/test_store_errors.py")
CTL = ("tests/fuse/test_control.py",)

MUTANTS: list[Mutant] = [
    # -- the six blind spots of issue 21 -------------------------------------------------------
    Mutant(
        "ctl-no-flush",
        "fuse/ctldir.py",
        "        if request.needs_flush:\n            self.wb.flush_all()\n",
        "",
        "ctl commands run without flushing the write buffers first",
        CTL,
    ),
    Mutant(
        "merge-drops-xattr-removal",
        "branchfs/merge/plan.py",
        "        if xo == xb and not uncertain:\n            if xt is None:\n"
        "                rec.xattrs.pop(key, None)\n",
        "        if xo == xb and not uncertain:\n            if xt is None:\n"
        "                pass\n",
        "merge drops an xattr removal made only on the source side",
        MERGE,
    ),
    Mutant(
        "fsck-ignores-missing-chunk",
        "branchfs/fsck.py",
        "        for key, n in refcounts.items():\n            if key not in stored:\n",
        "        for key, n in refcounts.items():\n            if False:\n",
        "fsck does not report an extent naming a chunk that is not stored",
        FSCK,
    ),
    Mutant(
        "chown-setid-needs-both-ids",
        "branchfs/attrs.py",
        "if (uid is not None or gid is not None) and not rec.is_dir and mode is None:",
        "if (uid not in (None, -1) and gid not in (None, -1)) and not rec.is_dir and mode is None:",
        "chown clears set-user-ID only when both uid and gid are given",
        ENGINE,
    ),
    Mutant(
        "copy-up-keeps-lower-cut",
        "branchfs/layers.py",
        "        if rec is not None and pos > 0:\n            rec.cut = None\n",
        "        if rec is not None and pos > 0:\n            pass\n",
        "a record copied up keeps the lower layer's cut (metadata change after truncate)",
        ENGINE,
    ),
    Mutant(
        "fsck-ignores-orphaned-inode",
        "branchfs/fsck.py",
        "        self.check_unnamed(label, v, names)\n",
        "",
        "fsck does not report an inode that no directory entry names",
        FSCK,
    ),
    Mutant(
        "removexattr-keeps-lower-cut",
        "branchfs/attrs.py",
        "    rec = for_write(v, ino)\n    if name not in rec.xattrs:\n",
        "    rec = v.inode(ino)\n    assert rec is not None\n    if name not in rec.xattrs:\n",
        "removexattr copies a record up with the cut of the layer it came from",
        ENGINE,
    ),
    # -- path resolution and POSIX rules (branchfs/paths.py, branchfs/tree.py) --------------
    Mutant(
        "symlink-loop-off-by-one",
        "branchfs/paths.py",
        "            if budget[0] < 0:\n",
        "            if budget[0] < -1:\n",
        "one symlink more than MAXSYMLINKS is followed before ELOOP",
        ENGINE,
    ),
    Mutant(
        "absolute-symlink-relative",
        "branchfs/paths.py",
        'base = ROOT_INO if target.startswith(b"/") else parent',
        "base = parent",
        "an absolute symlink target is resolved from the link's directory",
        ENGINE,
    ),
    Mutant(
        "trailing-slash-ignored",
        "branchfs/paths.py",
        '    follow = follow_symlinks or raw.endswith(b"/")\n',
        "    follow = follow_symlinks\n",
        "a trailing slash does not follow a final symlink (lstat('link/'))",
        ENGINE,
    ),
    Mutant(
        "name-max-off-by-one",
        "branchfs/tree.py",
        "        if len(name) > NAME_MAX:\n            raise os_error(errno.ENAMETOOLONG)\n"
        "        raise os_error(errno.ENOENT)\n",
        "        if len(name) > NAME_MAX + 1:\n            raise os_error(errno.ENAMETOOLONG)\n"
        "        raise os_error(errno.ENOENT)\n",
        "a lookup of a 256-byte name is ENOENT instead of ENAMETOOLONG",
        ENGINE,
    ),
    Mutant(
        "setgid-dir-not-inherited",
        "branchfs/tree.py",
        "    if prec.mode & st.S_ISGID:\n        gid = prec.gid\n        if st.S_ISDIR(mode):\n",
        "    if False:\n        gid = prec.gid\n        if st.S_ISDIR(mode):\n",
        "a new entry in a set-group-ID directory keeps the caller's gid",
        ENGINE,
    ),
    Mutant(
        "link-to-directory",
        "branchfs/tree.py",
        "    if rec.is_dir:\n        raise os_error(errno.EPERM)\n",
        "",
        "link() of a directory is allowed",
        ENGINE,
    ),
    Mutant(
        "unlink-directory",
        "branchfs/tree.py",
        "    if rec.is_dir:\n        raise os_error(errno.EISDIR)\n"
        "    v.delete_dirent(parent, name)\n",
        "    v.delete_dirent(parent, name)\n",
        "unlink() of a directory removes it",
        ENGINE,
    ),
    Mutant(
        "rmdir-not-empty",
        "branchfs/tree.py",
        "    if v.has_entries(ino):\n        raise os_error(errno.ENOTEMPTY)\n    v.delete_dirent",
        "    v.delete_dirent",
        "rmdir() of a non-empty directory succeeds",
        ENGINE,
    ),
    Mutant(
        "rename-into-itself",
        "branchfs/tree.py",
        "    if rec.is_dir and is_ancestor(v, ino, new_parent):\n"
        "        raise os_error(errno.EINVAL)\n"
        "    if target is not None and is_ancestor",
        "    if target is not None and is_ancestor",
        "rename() of a directory into its own subdirectory is allowed",
        ENGINE,
    ),
    Mutant(
        "rename-hard-link-onto-itself",
        "branchfs/tree.py",
        "    if target == ino:\n        return None  # both names are links to the same file",
        "    if False:\n        return None  # both names are links to the same file",
        "rename() between two links of one file removes one (POSIX: do nothing)",
        ENGINE,
    ),
    Mutant(
        "rename-replaced-dir-not-empty",
        "branchfs/tree.py",
        "            if v.has_entries(target):\n                raise os_error(errno.ENOTEMPTY)\n",
        "",
        "rename() over a non-empty directory succeeds",
        ENGINE,
    ),
    Mutant(
        "chmod-drops-setid-bits",
        "branchfs/attrs.py",
        "        rec.mode = st.S_IFMT(rec.mode) | st.S_IMODE(mode)\n",
        "        rec.mode = st.S_IFMT(rec.mode) | (mode & 0o777)\n",
        "chmod() cannot set set-user-ID, set-group-ID or sticky",
        ENGINE,
    ),
    Mutant(
        "xattr-create-inverted",
        "branchfs/attrs.py",
        "    if flags & XATTR_CREATE and exists:\n",
        "    if flags & XATTR_CREATE and not exists:\n",
        "setxattr(XATTR_CREATE) fails on a new name instead of an existing one",
        ENGINE,
    ),
    Mutant(
        "unlinked-open-file-dropped",
        "branchfs/tree.py",
        "    if rec.links or keep:\n",
        "    if rec.links:\n",
        "an unlinked file still open loses its record at once (keep_orphan ignored)",
        ("tests/fuse/test_mount_basic.py", "tests/fuse/test_kernel_caches.py"),
    ),
    # -- file contents, chunks and the cut -----------------------------------------------------
    Mutant(
        "hole-not-zero-filled",
        "branchfs/content.py",
        "        if len(piece) < hi - lo:  # a hole",
        "        if False:  # a hole",
        "reading a hole or a short chunk returns fewer bytes instead of zeros",
        ENGINE,
    ),
    Mutant(
        "partial-chunk-write-drops-old-bytes",
        "branchfs/content.py",
        "        if coff == 0 and n == CHUNK_SIZE:\n",
        "        if coff == 0:\n",
        "a write at the start of a chunk loses the bytes after it in that chunk",
        ENGINE,
    ),
    Mutant(
        "truncate-keep-off-by-one",
        "branchfs/content.py",
        "        keep = nchunks(size)\n",
        "        keep = size // CHUNK_SIZE\n",
        "truncate drops the chunk at the new end of file",
        ENGINE,
    ),
    Mutant(
        "truncate-cut-max",
        "branchfs/content.py",
        "rec.cut = keep if rec.cut is None else min(rec.cut, keep)",
        "rec.cut = keep if rec.cut is None else max(rec.cut, keep)",
        "a second, longer truncate in a layer forgets the first, shorter one",
        ENGINE,
    ),
    Mutant(
        "extent-cut-off-by-one",
        "branchfs/layers.py",
        "            if cut is not None and idx >= cut:\n",
        "            if cut is not None and idx > cut:\n",
        "the chunk just past a layer's cut shows the lower layer's old bytes",
        ENGINE,
    ),
    Mutant(
        "delete-without-tombstone",
        "branchfs/layers.py",
        "                below = raw != TOMBSTONE\n                break\n        if below:\n"
        "            self.txn.put(keys.inode_key(",
        "                below = False\n                break\n        if below:\n"
        "            self.txn.put(keys.inode_key(",
        "deleting an inode a lower layer holds leaves no tombstone: it comes back",
        (*ENGINE, *MERGE),
    ),
    Mutant(
        "chunk-digest-unchecked",
        "branchfs/chunks.py",
        "        if digest(data) != key[:16]:\n            raise StoreCorrupt(",
        "        if False:\n            raise StoreCorrupt(",
        "a damaged chunk is returned instead of raising StoreCorrupt (EIO)",
        ENGINE,
    ),
    Mutant(
        "chunk-dedup-unconfirmed",
        "branchfs/chunks.py",
        "            if stored == data:\n",
        "            if True:\n",
        "a digest match is not confirmed by comparing bytes",
        ENGINE,
    ),
    Mutant(
        "chunk-refcount-leak",
        "branchfs/chunks.py",
        "        if count <= 1:\n",
        "        if count < 1:\n",
        "a chunk's last reference dropped leaves the chunk stored",
        ENGINE,
    ),
    # -- branches, merge, diff -----------------------------------------------------------------
    Mutant(
        "fork-over-existing-branch",
        "branchfs/refs.py",
        "        if self.has_branch(txn, name):\n            raise BranchExists(",
        "        if False:\n            raise BranchExists(",
        "a fork or create onto an existing branch name replaces it",
        ("tests/test_refs.py",),
    ),
    Mutant(
        "merge-ignores-source-chmod",
        "branchfs/merge/plan.py",
        "        if vo == vb and not uncertain:\n            setattr(rec, name, vt)\n",
        "        if vo == vb and not uncertain:\n            pass\n",
        "a merge drops a mode or owner change made only on the source",
        MERGE,
    ),
    Mutant(
        "merge-ignores-source-content",
        "branchfs/merge/plan.py",
        "        if changed_t and not changed_o:\n            content = TAKE_THEIRS\n",
        "        if changed_t and not changed_o:\n            content = KEEP_OURS\n",
        "a merge keeps the target's bytes of a file only the source changed",
        MERGE,
    ),
    Mutant(
        "merge-text-conflict-unseen",
        "branchfs/merge/text.py",
        "        _emit(out, list(g_theirs))\n        _marker(out, END, lt)\n"
        '    return TextMerge(b"".join(out), conflicts == 0, conflicts)\n',
        "        _emit(out, list(g_theirs))\n        _marker(out, END, lt)\n"
        '    return TextMerge(b"".join(out), True, conflicts)\n',
        "a conflicting text merge is written with markers instead of raising MergeConflict",
        MERGE,
    ),
    Mutant(
        "merge-not-all-or-nothing",
        "branchfs/merge/__init__.py",
        "        if plan.conflicts and strategy is None:\n            raise MergeConflict(",
        "        if False:\n            raise MergeConflict(",
        "a merge with conflicts writes the rest instead of leaving the target as it was",
        MERGE,
    ),
    Mutant(
        "merge-base-not-moved",
        "branchfs/merge/__init__.py",
        "        engine.history.record(txn, tgt.top, src_state)\n",
        "",
        "a merge does not record its base: the next merge replays old changes",
        MERGE,
    ),
    Mutant(
        "diff-misses-mode",
        "branchfs/diff.py",
        '    if owner_mode(ra) != owner_mode(rb):\n        out.append((where, "mode", None))\n',
        "",
        "diff does not report a chmod",
        MERGE,
    ),
    Mutant(
        "fsck-ignores-corrupt-chunk",
        "branchfs/fsck.py",
        "            if digest(bytes(value)) != key[:16]:\n",
        "            if False:\n",
        "fsck does not re-hash the stored chunks",
        FSCK,
    ),
    Mutant(
        "fsck-ignores-refcount",
        "branchfs/fsck.py",
        "            if count != refcounts.get(key, 0):\n",
        "            if False:\n",
        "fsck does not compare reference counts with the extents naming each chunk",
        FSCK,
    ),
    Mutant(
        "fsck-no-damaged-file",
        "branchfs/fsck.py",
        "            if key is not None and bytes(key).hex() in self._bad_chunks:\n",
        "            if False:\n",
        "fsck reports a bad chunk without naming the files that use it",
        FSCK,
    ),
    # -- the mount's filesystem object (fuse/) -------------------------------------------------
    Mutant(
        "read-skips-buffered-writes",
        "fuse/nodes.py",
        "        if key in self.wb.buffers:\n            self.wb.flush(key)\n"
        "        tree = key[0]\n",
        "        tree = key[0]\n",
        "a read through the mount does not flush the inode's buffered writes first",
        ("tests/fuse/test_mount_basic.py", "tests/fuse/test_posix_differential.py"),
    ),
    Mutant(
        "close-does-not-flush",
        "fuse/nodes.py",
        "        self.wb.raise_error(h.key)\n        if h.key in self.wb.buffers:\n"
        "            self.wb.flush(h.key)\n",
        "        self.wb.raise_error(h.key)\n",
        "close() leaves the data in the daemon (no close-to-open consistency)",
        ("tests/fuse/test_mount_basic.py", "tests/fuse/test_consistency.py"),
    ),
    Mutant(
        "append-at-offset",
        "fuse/nodes.py",
        "        if h.append:\n            off = self.wb.size(key)\n",
        "",
        "an O_APPEND write goes to the file offset the kernel sent, not the end",
        ("tests/fuse/test_posix_differential.py", "tests/fuse/test_mount_basic.py"),
    ),
    Mutant(
        "setattr-before-buffered-data",
        "fuse/nodes.py",
        "            if buf is not None:  # buffered data first, in the same transaction\n"
        "                apply_buffer(v, eng, buf)\n            rec = A.setattr(v, eng, **kw)\n",
        "            rec = A.setattr(v, eng, **kw)\n            if buf is not None:\n"
        "                apply_buffer(v, eng, buf)\n",
        "a truncate through the mount is applied before the writes buffered before it",
        ("tests/fuse/test_write_behind.py", "tests/fuse/test_posix_differential.py"),
    ),
    Mutant(
        "write-buffer-joins-wrongly",
        "fuse/buffers.py",
        "            and (segs[-1][0] + len(last) == offset)\n",
        "            and (segs[-1][0] + len(last) <= offset)\n",
        "a small write after a gap is joined to the previous segment (the gap vanishes)",
        ("tests/fuse/test_write_behind.py", "tests/fuse/test_posix_differential.py"),
    ),
    Mutant(
        "write-behind-not-awaited",
        "fuse/writeback.py",
        "        if self.behind is None:\n            return\n"
        "        self.coherence.group.commit()",
        "        if True:\n            return\n        self.coherence.group.commit()",
        "requests do not wait for the write-behind commit in flight",
        ("tests/fuse/test_write_behind.py",),
    ),
    Mutant(
        "write-drops-no-capability",
        "fuse/privs.py",
        '    if b"security.capability" in rec.xattrs:\n',
        "    if False:\n",
        "a write through the mount keeps security.capability (Linux clears it)",
        ("tests/fuse/test_kernel_caches.py",),
    ),
    Mutant(
        "ctl-merge-leaves-cache-stale",
        "fuse/ctldir.py",
        "            for name in changed:\n                self.co.changed(TreeRef(name))\n",
        "            pass\n",
        "a merge or reset through ctl leaves the mount's caches stale",
        CTL,
    ),
]
