"""The ``branchfs`` command line (click).

Exit status: 0 success, 1 a conflict or a failed check, 2 a usage error or bad input. A
user's mistake prints one line saying what was wrong and what to do, never a traceback.
Heavy modules (the engine, the FUSE daemon) are imported inside the commands, so that
``branchfs --help`` starts quickly.

The store is ``--store PATH``, else ``$BRANCHFS_STORE``, else the branchfs mount that the
working directory is inside.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class Failure(click.ClickException):
    """A one-line error with an exit status (2 unless told otherwise)."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = code  # type: ignore[misc]  # a ClassVar in click, read per instance

    def show(self, file: Any = None) -> None:
        """Print ``branchfs: MESSAGE`` on stderr."""
        click.echo(f"branchfs: {self.format_message()}", err=True)


def friendly(fn: F) -> F:
    """Turn branchfs and OS errors raised by a command into one-line messages."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .errors import BranchFSError, MergeConflict

        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except MergeConflict as exc:
            raise Failure(str(exc), EXIT_FAILED) from None
        except BranchFSError as exc:
            text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise Failure(str(text).splitlines()[0]) from None
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise Failure(f"{exc.strerror or exc}{where}") from None
        except KeyboardInterrupt:
            raise Failure("interrupted", 130) from None

    return wrapper  # type: ignore[return-value]


def _mount_root(path: str) -> str | None:
    """The mountpoint of the branchfs mount containing ``path``, if any."""
    path = os.path.realpath(path)
    while True:
        if os.path.ismount(path):
            return path if os.path.isfile(os.path.join(path, ".branchfs", "store")) else None
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def store_path(ctx: click.Context) -> str:
    """The store this invocation works on (see the module docstring)."""
    given = ctx.obj.get("store") or os.environ.get("BRANCHFS_STORE")
    if given:
        return str(given)
    root = _mount_root(os.getcwd())
    if root is not None:
        with open(os.path.join(root, ".branchfs", "store")) as fh:
            return fh.read().strip()
    raise Failure(
        "which store? pass --store PATH, set BRANCHFS_STORE, or run inside a branchfs mount"
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--store",
    type=click.Path(),
    default=None,
    help="The store directory (default: $BRANCHFS_STORE, else the mount you are inside).",
)
@click.version_option(package_name="branchfs", prog_name="branchfs")
@click.pass_context
def main(ctx: click.Context, store: str | None) -> None:
    """branchfs: fork a working tree in microseconds, edit copies, diff, merge, discard."""
    ctx.ensure_object(dict)
    ctx.obj["store"] = store


@main.command()
@click.argument("path", type=click.Path())
@friendly
def init(path: str) -> None:
    """Create a store at PATH holding an empty branch "main"."""
    from .store import Store

    if os.path.exists(os.path.join(path, "data.mdb")):
        raise Failure(f"{path} already holds a store; use it with --store {path}")
    if os.path.exists(path) and not os.path.isdir(path):
        raise Failure(f"{path} exists and is not a directory")
    if os.path.isdir(path) and os.listdir(path):
        raise Failure(f"{path} is a directory that is not empty; pick a new or empty one")
    with Store.open(path, create=True) as store:
        store.create_branch("main")
    click.echo(f"created store {path} with branch main")


@main.command()
@click.argument("args", nargs=-1, required=True, metavar="[STORE] MOUNTPOINT")
@click.option("--branch", "-b", default="main", show_default=True, help="Branch to mount.")
@click.option("--foreground", "-f", is_flag=True, help="Stay attached until unmounted.")
@click.pass_context
@friendly
def mount(
    ctx: click.Context,
    args: tuple[str, ...],
    branch: str,
    foreground: bool,
) -> None:
    """Mount BRANCH of the store at MOUNTPOINT; returns once the mount answers."""
    from . import mount as m
    from .store import Store

    if len(args) == 2:
        ctx.obj["store"] = ctx.obj.get("store") or args[0]
        mountpoint = args[1]
    elif len(args) == 1:
        mountpoint = args[0]
    else:
        raise Failure("usage: branchfs [--store STORE] mount MOUNTPOINT [--branch B]")
    spath = os.path.abspath(store_path(ctx))
    m.check_fuse()
    with Store.open(spath) as store:
        store.branch(branch)  # BranchNotFound before anything is started
    mp = m.check_mountpoint(mountpoint)
    if foreground:
        # The daemon package sits above the engine: import it by name, not statically.
        run: Callable[..., int] = importlib.import_module("branchfs_fuse.daemon").run
        click.echo(f"serving {branch!r} of {spath} at {mp}; Ctrl-C or umount to stop", err=True)
        sys.exit(run(spath, mp, branch))
    m.start_daemon(spath, mp, branch)
    click.echo(f"mounted branch {branch!r} of {spath} at {mp}")


@main.command()
@click.argument("mountpoint", type=click.Path())
@friendly
def umount(mountpoint: str) -> None:
    """Flush and unmount MOUNTPOINT (a dead mount left by a killed daemon is cleaned)."""
    from . import mount as m

    stale = m.is_stale(os.path.abspath(mountpoint))
    m.unmount(mountpoint)
    click.echo(f"{'cleaned dead mount' if stale else 'unmounted'} {mountpoint}")


if __name__ == "__main__":
    main()
