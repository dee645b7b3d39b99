"""The ``branchfs`` command line: click over the command layer (:mod:`branchfs.commands`).

Every verb is declared once in the command layer; this module turns each declaration into
a click command (its arguments, options, ``--help`` with an example), finds the store, runs
the verb and prints its answer — human text, or one JSON object with ``--json``.

Exit status: 0 success, 1 a conflict or a failed check, 2 a usage error or bad input. A
user's mistake prints one line (``branchfs: …``) saying what was wrong and what to do,
never a traceback. The engine is imported only when a verb runs, so ``branchfs --help``
and ``branchfs fork`` start fast.

The store is ``--store PATH``, else ``$BRANCHFS_STORE``, else the branchfs mount that the
working directory is inside (whose branch is then the default for verbs that take one:
the mounted branch, or NAME inside its ``.branchfs/branches/NAME``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import click

from .commands import CLI, CommandError, Context, Verb, execute, verbs
from .commands.spec import EXIT_USAGE, Progress, no_progress


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


def _where(given: str | None) -> tuple[str | None, str | None, str]:
    """(store path, current branch, why there is none inside a mount) for this invocation;
    see the module docstring."""
    given = given or os.environ.get("BRANCHFS_STORE") or None
    try:
        cwd = os.path.realpath(os.getcwd())
        root = _mount_root(cwd)
    except OSError:
        root = None
    if root is None:
        return given, None, ""
    with open(os.path.join(root, ".branchfs", "store")) as fh:
        mounted_store = fh.read().strip()
    if given and os.path.realpath(given) != os.path.realpath(mounted_store):
        return given, None, ""
    # Inside .branchfs/branches/NAME the tree at hand is NAME's, not the mount's; inside a
    # snapshot's there is no branch to default to.
    parts = os.path.relpath(cwd, root).split(os.sep)
    if parts[0] == ".branchfs" and len(parts) >= 3:
        if parts[1] == "branches":
            return given or mounted_store, parts[2], ""
        if parts[1] == "snapshots":
            why = f"this directory is in snapshot @{parts[2]}, which is read-only and no branch"
            return given or mounted_store, None, why
    from .mount import find_mount

    found = find_mount(root)
    return given or mounted_store, (found[1].branch if found else None), ""


def _meter(label: str, total: int | None) -> AbstractContextManager[Callable[[int], object]]:
    """The progress bar, imported only by the verbs that show one (rich is slow to load)."""
    from .commands.meter import meter

    return meter(label, total)


def _fail(err: CommandError, as_json: bool) -> None:
    if as_json:
        import json

        from .commands.answers import error_json

        click.echo(json.dumps(error_json(err), default=str))
    lines = err.message.splitlines() or [err.kind]
    click.echo(f"branchfs: {lines[0]}", err=True)
    for line in lines[1:]:
        click.echo(line, err=True)
    sys.exit(err.code)


def _command(verb: Verb) -> click.Command:
    def callback(**kw: Any) -> None:
        words = list(kw.pop("words", ()))
        as_json = bool(kw.get("json"))
        root = click.get_current_context().find_root()
        store_path, current, no_current = _where(root.params.get("store"))
        progress: Progress = no_progress
        if not as_json and sys.stderr.isatty():
            progress = _meter
        ctx = Context(CLI, store_path, current=current, progress=progress, no_current=no_current)
        try:
            values = verb.bind(words, kw)
            outcome = execute(verb, ctx, values)
        except CommandError as err:
            _fail(err, as_json)
            return
        finally:
            ctx.close()
        if as_json:
            import json

            click.echo(json.dumps(outcome.to_json(), default=str))
        elif outcome.text:
            click.echo(outcome.text)
        sys.exit(outcome.code)

    params: list[click.Parameter] = []
    if verb.args:
        metavar = " ".join(a.metavar for a in verb.args)
        params.append(click.Argument(["words"], nargs=-1, metavar=metavar))
    for o in verb.all_opts:
        decls = [f"--{o.name}", *([f"-{o.short}"] if o.short else []), o.key]
        if o.flag:
            params.append(click.Option(decls, is_flag=True, help=o.help))
        elif o.choices:
            params.append(click.Option(decls, type=click.Choice(o.choices), help=o.help))
        else:
            params.append(click.Option(decls, metavar=o.metavar, help=o.help))
    args_help = "".join(f"\n\n  {a.metavar}: {a.help}" for a in verb.args)
    # A verb that runs a command takes the command's own options as words (after `--`).
    rest = bool(verb.args) and verb.args[-1].rest
    return (_RestCommand if rest else click.Command)(
        verb.name,
        context_settings={"ignore_unknown_options": True} if rest else None,
        callback=callback,
        params=params,
        help=f"{verb.summary}{args_help}\n\nExample:\n\n\b\n  {verb.example}",
        short_help=verb.summary.split(". ")[0].rstrip("."),
        no_args_is_help=False,
    )


class _RestCommand(click.Command):
    """A verb that runs a command: its first ``--`` is kept among the words (click drops
    it), so the verb knows which words came before it (``run -- CMD`` has no BRANCH)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            args = [*args[:cut], "--", *args[cut:]]  # click ends the options at the first
        return super().parse_args(ctx, args)


#: What click (8.2+) raises for a group run without a command.
_NO_ARGS: type[click.UsageError] = getattr(click.exceptions, "NoArgsIsHelpError", click.UsageError)


def _help_command(group: click.Group) -> click.Command:
    """``branchfs help [COMMAND]``: what ``--help`` prints, for the group or one verb."""

    def show(words: tuple[str, ...]) -> None:
        ctx = click.get_current_context()
        root = ctx.find_root()
        if not words:
            click.echo(root.get_help())
            return
        cmd = group.get_command(root, words[0])
        if cmd is None or words[0] == "help":
            raise click.UsageError(f"no command {words[0]!r}", root)
        with click.Context(cmd, info_name=words[0], parent=root) as sub:
            click.echo(cmd.get_help(sub))

    return click.Command(
        "help",
        callback=show,
        params=[click.Argument(["words"], nargs=-1, metavar="[COMMAND]")],
        help="Show the help of COMMAND (or of branchfs).\n\nExample:\n\n\b\n  branchfs help merge",
        hidden=True,
    )


class _Group(click.Group):
    """The verbs in the command layer's order, each click command built when it is first
    asked for (a command runs one verb: building all twenty cost ~2 ms of every start),
    and usage errors as one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [verb.name for verb in verbs(CLI)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "help":  # as ctl answers `help`, and as a new user types it
            return _help_command(self)
        if cmd_name not in self.commands:
            verb = next((v for v in verbs(CLI) if v.name == cmd_name), None)
            if verb is None:
                return None
            self.add_command(_command(verb))
        return self.commands[cmd_name]

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("prog_name", "branchfs")
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except _NO_ARGS as exc:  # `branchfs` alone: the help, as the usage error it is
            click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message(), err=True)
            sys.exit(EXIT_USAGE)
        except click.UsageError as exc:
            sub = exc.ctx.command_path if exc.ctx else "branchfs"
            click.echo(f"branchfs: {exc.format_message()} (see `{sub} --help`)", err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as exc:
            click.echo(f"branchfs: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("branchfs: interrupted", err=True)
            sys.exit(130)


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="A tree is a branch NAME or a snapshot @NAME. Exit status: 0 done, 1 a conflict "
    "or a failed check, 2 a usage error or bad input. `branchfs COMMAND --help` (or "
    "`branchfs help COMMAND`) shows an example of each.",
)
@click.option(
    "--store",
    type=click.Path(),
    default=None,
    metavar="PATH",
    help="The store directory (default: $BRANCHFS_STORE, else the mount you are inside).",
)
@click.version_option(package_name="branchfs", prog_name="branchfs")
def main(store: str | None) -> None:
    """branchfs: fork a working tree in microseconds, edit copies, diff, merge, discard."""


if __name__ == "__main__":
    from .entry import guarded

    guarded(main)
