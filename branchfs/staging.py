"""Hidden layers: a tree built where no branch shows it, then published with one ref update.

An import (:meth:`branchfs.Branch.import_dir`) builds its copy in a *staging* layer over the
target branch's current state (frozen for it, as a fork freezes it), in as many
transactions as it likes; nothing is visible meanwhile. At the end :meth:`Stage.publish`
makes the staging layer the branch's top in one write transaction, provided the branch did
not change meanwhile (its top is still the empty layer the stage was opened beside), else
:class:`~branchfs.errors.BranchChanged` and nothing is published. An interrupted build
(an exception, Ctrl-C) drops its record at once; a killed one is found by gc.

Bookkeeping: the record ``STAGING + layer`` in the ``meta`` database (the value names the
owner's lock token) makes the layer a gc root (:func:`layers`, used by
:func:`branchfs.gc.ref_roots`); gc and a discard's tidy-up never squash a staging layer into
its parent. The owner holds an ``flock`` on ``STORE/staging/TOKEN.lock`` from before the
record exists to after it is gone; :func:`reap` (run by gc) drops the records whose lock it
can take (their owner died), and their layers are then garbage like any other.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import lmdb

from . import keys
from .errors import BranchChanged
from .layers import View, scan_prefix

if TYPE_CHECKING:
    from .engine import Engine
    from .meta import Database

T = TypeVar("T")

log = logging.getLogger(__name__)

#: Subdirectory of a store holding the owners' lock files.
STAGING_DIR = "staging"


def layers(txn: lmdb.Transaction, engine: Engine) -> set[int]:
    """The staging layers of the store (gc roots; never squashed into their parents)."""
    n = len(keys.STAGING)
    return {
        keys.U64.unpack(bytes(key[n : n + 8]))[0]
        for key, _v in scan_prefix(txn, engine.meta.meta_db, keys.STAGING)
    }


def _lock_path(store_path: str, token: str) -> str:
    return os.path.join(store_path, STAGING_DIR, f"{token}.lock")


def reap(engine: Engine) -> int:
    """Drop the records of staging layers whose owner died; returns how many.

    A record whose lock file can be locked (or is missing) has no live owner. Its layer
    stays until gc's dead-layer pass, which runs after this.
    """
    meta = engine.meta
    with meta.read() as txn:
        found = [
            (bytes(key), bytes(keys.unseal(raw)).decode(errors="replace"))
            for key, raw in scan_prefix(txn, meta.meta_db, keys.STAGING)
        ]
    dropped = 0
    for key, token in found:
        path = _lock_path(meta.path, token)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = -1
        try:
            if fd >= 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its owner lives
            meta.write(_deleter(key, meta.meta_db))
            dropped += 1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        finally:
            if fd >= 0:
                os.close(fd)
    return dropped


def _deleter(key: bytes, db: Database) -> Callable[[lmdb.Transaction], None]:
    def delete(txn: lmdb.Transaction) -> None:
        txn.delete(key, db=db)

    return delete


class Stage:
    """One staging layer over branch ``branch``, owned by this process until published or
    abandoned; a tree host (``read_tree``/``write_tree``) whose every name means that layer.

    ``settle(names)`` asks the mounts serving ``names`` to commit what they hold (the
    store's settler); ``changed(names)`` tells them a tree changed (its observer).
    """

    def __init__(
        self,
        engine: Engine,
        branch: str,
        settle: Callable[[tuple[str, ...]], None],
        changed: Callable[[tuple[str, ...]], None],
    ) -> None:
        self.engine = engine
        self.branch = branch
        self._settle = settle
        self._changed = changed
        meta = engine.meta
        self.token = os.urandom(8).hex()
        os.makedirs(os.path.join(meta.path, STAGING_DIR), mode=0o700, exist_ok=True)
        self._lock_file = _lock_path(meta.path, self.token)
        self._lock = os.open(self._lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX)  # before the record exists: see reap()
            settle((branch,))
            self.layer, self.beside = meta.write(self._open)
        except BaseException:
            self._unlock()
            raise
        self.done = False

    def _open(self, txn: lmdb.Transaction) -> tuple[int, int]:
        refs, index = self.engine.refs, self.engine.layers
        state = refs.freeze_state(txn, self.branch)
        top = refs.branch(txn, self.branch).top
        layer = index.create(txn, state)
        txn.put(self._key(layer), keys.seal(self.token.encode()), db=self.engine.meta.meta_db)
        return layer, top

    @staticmethod
    def _key(layer: int) -> bytes:
        return keys.STAGING + keys.U64.pack(layer)

    def _unlock(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._lock_file)
        os.close(self._lock)

    # -- the tree host ----------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The store's directory."""
        return self.engine.meta.path

    def read_tree(self, name: str, fn: Callable[[View], T], *, snapshot: bool = False) -> T:
        """Run ``fn`` on a read-only view of the staging layer's tree."""
        with self.engine.meta.read() as txn:
            return fn(self.engine.layer_view(txn, self.layer, False))

    def write_tree(self, name: str, fn: Callable[[View], T], *, snapshot: bool = False) -> T:
        """Run ``fn`` on a writable view of the staging layer's tree, one transaction."""
        return self.engine.meta.write(lambda txn: fn(self.engine.layer_view(txn, self.layer, True)))

    # -- the end ------------------------------------------------------------------------------

    def publish(self) -> None:
        """Make the staging layer the branch's top (one write transaction), and tell mounts.

        :class:`BranchChanged` (nothing published, the stage abandoned) if the branch was
        written, reset, merged into or discarded since the stage was opened.
        """
        self._settle((self.branch,))
        try:
            self.engine.meta.write(self._publish)
        except BaseException:
            self.abandon()
            raise
        self.done = True
        self._unlock()
        self._changed((self.branch,))

    def _publish(self, txn: lmdb.Transaction) -> None:
        refs, index, history = self.engine.refs, self.engine.layers, self.engine.history
        if not refs.has_branch(txn, self.branch):
            raise BranchChanged(f"branch {self.branch!r} was discarded while it was written to")
        rec = refs.branch(txn, self.branch)
        if (
            rec.top != self.beside
            or not index.is_empty(txn, rec.top)
            or history.merge_parents(txn, rec.top)
        ):
            raise BranchChanged(
                f"branch {self.branch!r} changed while the import ran (another writer, a "
                "mount, a reset or a merge), so nothing was imported; import again when "
                "nothing else writes to it, or import into a fork and merge that"
            )
        refs.replace_top(txn, self.branch, self.layer)  # the empty top beside it: gc's
        txn.delete(self._key(self.layer), db=self.engine.meta.meta_db)

    def abandon(self) -> None:
        """Give the staging layer up: its record goes now, its records at the next gc.

        Never raises for the store's sake (it runs while another error propagates): if
        the record cannot be deleted now (a full disk), the lock is released all the same
        and gc's :func:`reap` deletes it.
        """
        if self.done:
            return
        self.done = True
        try:
            self.engine.meta.write(_deleter(self._key(self.layer), self.engine.meta.meta_db))
        except Exception as exc:
            log.warning("staging layer %d is left for gc to reap: %s", self.layer, exc)
        finally:
            self._unlock()
