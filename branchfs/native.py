"""The guard against stale compiled modules in a source checkout.

setup.py compiles the hot modules with mypyc into extension files next to their ``.py``
(``branchfs/meta.cpython-311-x86_64-linux-gnu.so`` beside ``branchfs/meta.py``), and Python
imports the extension first. In an editable install (``make install``) that is a trap:
after an edit, a ``git pull`` or a rebase, the old compiled code would run while the
``.py`` says otherwise. :func:`refuse_stale` makes the import fail instead, naming the
command that rebuilds.

Only a source checkout pays for the check (a scan of each package's directories at its first
import, ~0.3 ms): an installed wheel's extensions were built from the files beside them,
and its directory has no ``setup.py`` one level up, which is what the check looks for.
"""

from __future__ import annotations

import os
from importlib.machinery import EXTENSION_SUFFIXES

#: The file name that marks a source checkout: the parent directory of the package holds it.
CHECKOUT_MARK = "setup.py"
#: Extension files of mypyc's shared library carry this in their name (no ``.py`` beside).
SHARED_LIB = "__mypyc"


def stale_modules(package_dir: str) -> list[str]:
    """The ``.py`` files of ``package_dir`` (a directory path) and its subpackages changed
    after their compiled extension was built, or whose extension has no ``.py`` left; empty
    outside a source checkout."""
    if not os.path.exists(os.path.join(os.path.dirname(package_dir), CHECKOUT_MARK)):
        return []
    stale: list[str] = []
    _scan(package_dir, stale)
    return stale


def _scan(directory: str, stale: list[str]) -> None:
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if entry.name != "__pycache__":
                    _scan(entry.path, stale)
                continue
            for suffix in EXTENSION_SUFFIXES:
                if entry.name.endswith(suffix) and SHARED_LIB not in entry.name:
                    source = entry.path[: -len(suffix)] + ".py"
                    try:
                        changed = os.stat(source).st_mtime_ns > entry.stat().st_mtime_ns
                    except FileNotFoundError:
                        changed = True
                    if changed:
                        stale.append(source)
                    break


def refuse_stale(package_dir: str) -> None:
    """Raise ImportError if a compiled module of ``package_dir`` is older than its source.

    Raises:
        ImportError: naming the files and ``make install``, which rebuilds them
            (``BRANCHFS_PURE=1 make install`` removes them and runs the sources).
    """
    stale = stale_modules(package_dir)
    if stale:
        names = ", ".join(os.path.relpath(s) for s in sorted(stale))
        raise ImportError(
            f"branchfs: the compiled build is older than its source ({names}): run "
            "`make install` to rebuild it (BRANCHFS_PURE=1 make install: no compiled modules)"
        )
