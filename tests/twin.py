"""A branch and a real directory driven side by side: every call must end the same way.

``Twin.do(op, *args)`` runs one operation on the branch and the same operation with ``os``
on a directory of the native disk, and asserts that both return the same (normalised)
result or fail with the same exception type and errno. ``Twin.check_trees`` compares the
whole of both trees, so a failed call that left something half-done is caught too.
"""

from __future__ import annotations

import os
import stat as st
from collections.abc import Callable
from pathlib import Path
from typing import Any

import branchfs


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    """``("ok", result)`` or ``("err", (exception type, errno))`` of calling ``fn``.

    Types are compared by their ``OSError`` subclass (``FileNotFoundError`` …); anything
    that is not an ``OSError`` keeps its own type.
    """
    try:
        return "ok", fn()
    except OSError as exc:
        return "err", (_os_type(exc), exc.errno)
    except (ValueError, TypeError) as exc:
        return "err", (type(exc), None)


def _os_type(exc: OSError) -> type:
    """The most specific builtin ``OSError`` class of ``exc`` (ignoring branchfs mixins)."""
    for cls in type(exc).__mro__:
        if cls.__module__ == "builtins" and issubclass(cls, OSError):
            return cls
    return OSError


def norm_stat(s: Any) -> tuple:
    """The stat fields both sides can agree on (directories: no nlink or size, like btrfs)."""
    is_dir = st.S_ISDIR(s.st_mode)
    return (
        st.S_IFMT(s.st_mode),
        st.S_IMODE(s.st_mode),
        None if is_dir else s.st_size,
        None if is_dir else s.st_nlink,
        s.st_uid,
        s.st_gid,
    )


def _r(root: str, p: str) -> str:
    return os.path.join(root, p)


def _open_write(path: str, data: bytes) -> int:
    with open(path, "wb") as fh:
        return fh.write(data)


def _open_read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


# op name -> (call on the branch, call with os on the real root); both get the raw args.
OPS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "read": (lambda b, p: b.read_bytes(p), lambda r, p: _open_read(_r(r, p))),
    "write": (lambda b, p, d: b.write_bytes(p, d), lambda r, p, d: _open_write(_r(r, p), d)),
    "stat": (lambda b, p: norm_stat(b.stat(p)), lambda r, p: norm_stat(os.stat(_r(r, p)))),
    "lstat": (lambda b, p: norm_stat(b.lstat(p)), lambda r, p: norm_stat(os.lstat(_r(r, p)))),
    "listdir": (lambda b, p: sorted(b.listdir(p)), lambda r, p: sorted(os.listdir(_r(r, p)))),
    "mkdir": (lambda b, p, m=0o777: b.mkdir(p, m), lambda r, p, m=0o777: os.mkdir(_r(r, p), m)),
    "makedirs": (
        lambda b, p, ok=False: b.makedirs(p, exist_ok=ok),
        lambda r, p, ok=False: os.makedirs(_r(r, p), exist_ok=ok),
    ),
    "rmdir": (lambda b, p: b.rmdir(p), lambda r, p: os.rmdir(_r(r, p))),
    "remove": (lambda b, p: b.remove(p), lambda r, p: os.remove(_r(r, p))),
    "rename": (lambda b, s, d: b.rename(s, d), lambda r, s, d: os.rename(_r(r, s), _r(r, d))),
    "replace": (lambda b, s, d: b.replace(s, d), lambda r, s, d: os.replace(_r(r, s), _r(r, d))),
    "symlink": (lambda b, t, p: b.symlink(t, p), lambda r, t, p: os.symlink(t, _r(r, p))),
    "link": (
        lambda b, s, d: b.link(s, d),
        lambda r, s, d: os.link(_r(r, s), _r(r, d), follow_symlinks=False),
    ),
    "readlink": (lambda b, p: b.readlink(p), lambda r, p: os.readlink(_r(r, p))),
    "truncate": (lambda b, p, n: b.truncate(p, n), lambda r, p, n: os.truncate(_r(r, p), n)),
    "chmod": (lambda b, p, m: b.chmod(p, m), lambda r, p, m: os.chmod(_r(r, p), m)),
    "chown": (lambda b, p, u, g: b.chown(p, u, g), lambda r, p, u, g: os.chown(_r(r, p), u, g)),
    "utime": (
        lambda b, p, ns: b.utime(p, ns=ns),
        lambda r, p, ns: os.utime(_r(r, p), ns=ns),
    ),
    "getxattr": (lambda b, p, n: b.getxattr(p, n), lambda r, p, n: os.getxattr(_r(r, p), n)),
    "setxattr": (
        lambda b, p, n, v, f=0: b.setxattr(p, n, v, f),
        lambda r, p, n, v, f=0: os.setxattr(_r(r, p), n, v, f),
    ),
    "removexattr": (
        lambda b, p, n: b.removexattr(p, n),
        lambda r, p, n: os.removexattr(_r(r, p), n),
    ),
    "listxattr": (
        lambda b, p: sorted(b.listxattr(p)),
        lambda r, p: sorted(os.listxattr(_r(r, p))),
    ),
    "exists": (lambda b, p: b.exists(p), lambda r, p: os.path.exists(_r(r, p))),
    "isdir": (lambda b, p: b.isdir(p), lambda r, p: os.path.isdir(_r(r, p))),
    "isfile": (lambda b, p: b.isfile(p), lambda r, p: os.path.isfile(_r(r, p))),
    "islink": (lambda b, p: b.islink(p), lambda r, p: os.path.islink(_r(r, p))),
}


def tree_of_branch(b: branchfs.Branch) -> dict[str, tuple]:
    """Every path of the branch with its type, mode, size, nlink and content or target."""
    out: dict[str, tuple] = {}
    for dirpath, dirs, files in b.walk(""):
        for name in dirs + files:
            p = f"{dirpath}/{name}" if dirpath else name
            s = b.lstat(p)
            if st.S_ISREG(s.st_mode):
                body: Any = b.read_bytes(p)
            elif st.S_ISLNK(s.st_mode):
                body = b.readlink(p)
            else:
                body = None
            out[p] = (norm_stat(s), body)
    return out


def tree_of_dir(root: str) -> dict[str, tuple]:
    """The same description as :func:`tree_of_branch` for a real directory."""
    out: dict[str, tuple] = {}
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            p = name if rel == "." else f"{rel}/{name}"
            s = os.lstat(full)
            if st.S_ISREG(s.st_mode):
                body: Any = Path(full).read_bytes()
            elif st.S_ISLNK(s.st_mode):
                body = os.readlink(full)
            else:
                body = None
            out[p] = (norm_stat(s), body)
    return out


class Twin:
    """A branch and a real directory that receive the same calls."""

    def __init__(self, branch: branchfs.Branch, root: Path) -> None:
        self.branch = branch
        self.root = str(root)

    def do(self, op: str, *args: Any) -> tuple[str, Any]:
        """Run ``op`` on both sides; assert the same result or the same error. Returns it."""
        ours_fn, os_fn = OPS[op]
        ours = outcome(lambda: ours_fn(self.branch, *args))
        theirs = outcome(lambda: os_fn(self.root, *args))
        assert ours == theirs, f"{op}{args!r}: branchfs gave {ours!r}, os gave {theirs!r}"
        return theirs

    def ok(self, op: str, *args: Any) -> Any:
        """Run ``op`` on both sides; it must succeed on both."""
        kind, value = self.do(op, *args)
        assert kind == "ok", f"{op}{args!r} failed on both sides: {value!r}"
        return value

    def fails(self, op: str, *args: Any) -> tuple[type, int | None]:
        """Run ``op`` on both sides; it must fail the same way on both. Returns the failure."""
        kind, value = self.do(op, *args)
        assert kind == "err", f"{op}{args!r} succeeded on both sides, expected a failure"
        return value

    def check_trees(self) -> None:
        """Both whole trees are identical."""
        assert tree_of_branch(self.branch) == tree_of_dir(self.root)
