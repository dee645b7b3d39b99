"""The LMDB environments this process has open: one per store, shared and counted.

LMDB forbids opening the same environment twice in one process (lmdb.h, "Caveats"), so
every ``Store`` of the same directory shares one :class:`~branchfs.meta.Meta`:
:func:`open_meta` hands it out (making the store's directory first when asked to create
it), :func:`release_meta` closes it with its last user, and :func:`open_stores` says which
are open (a process must have none open to fork a child that opens a store).
"""

from __future__ import annotations

import errno
import os
import threading

from .errors import NotAStore, StoreNotFound
from .meta import DEFAULT_MAP_SIZE, DEFAULT_MAX_MAP_SIZE, Meta

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


def open_stores() -> list[str]:
    """The directories of the stores whose environment this process has open.

    A process that forks must have none open if the child is to open a store: LMDB forbids
    using an environment across ``fork()`` (lmdb.h), and py-lmdb refuses to open one its
    parent had open ("already open in this process").
    """
    with _registry_lock:
        return [meta.path for meta in _registry.values()]


def release_meta(meta: Meta) -> None:
    """Drop one reference; the environment closes with the last one."""
    with _registry_lock:
        meta.refcount -= 1
        if meta.refcount == 0:
            for key, value in list(_registry.items()):
                if value is meta:
                    del _registry[key]
            meta.close()
