"""The ``branchfs`` console script: Ctrl-C handling first, then the command line.

The script ``[project.scripts]`` installs imports this module and calls :func:`main`
(``python -m branchfs`` does the same). The module imports only ``contextlib``, ``os``,
``signal`` and ``sys``, and from its import on a Ctrl-C never prints a traceback: until the command
starts it exits at once; then, during the command line's imports (:mod:`branchfs.cli`:
click, the command layer and, inside the verb, the engine — the ~0.1 s in which a Ctrl-C
used to print an import-time traceback) and the verb itself, it raises
``KeyboardInterrupt`` so that the ``finally`` blocks and ``with`` exits on the way out run
(a store opened is closed; LMDB aborts an unfinished write transaction, so nothing
acknowledged is lost), and the command ends with one line, ``branchfs: interrupted``, and
exit status 130 (128 + SIGINT, the shell's convention for a command ended by Ctrl-C). A
Ctrl-C while those clean-ups run, or while the interpreter shuts down, exits at once with
130.

Importing this module installs a SIGINT handler: only the command line does. Only the
interpreter's own start (``site``, before any branchfs code runs) is outside its reach.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

#: The exit status of a command ended by Ctrl-C: 128 + SIGINT (bash(1), EXIT STATUS).
EXIT_INTERRUPTED = 128 + signal.SIGINT

_said = False


def _say_interrupted() -> None:
    global _said
    if not _said:
        _said = True
        # The raw fd: safe inside a handler. If stderr is gone (a closed terminal), the
        # exit status still says it.
        with contextlib.suppress(OSError):
            os.write(2, b"branchfs: interrupted\n")


def _exit_now(_signum: int, _frame: object) -> None:
    _say_interrupted()
    os._exit(EXIT_INTERRUPTED)


def _quick_exit_on_ctrl_c() -> None:
    # ValueError: not the main thread, so this process is not the command line.
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, _exit_now)


# From the moment this module is imported until guarded() runs the command (the console
# script's next line), a Ctrl-C has nothing to clean up: it exits at once.
_quick_exit_on_ctrl_c()


def interrupted() -> None:
    """Report a Ctrl-C and exit 130; a Ctrl-C from now on exits at once, quietly."""
    _quick_exit_on_ctrl_c()
    _say_interrupted()
    sys.exit(EXIT_INTERRUPTED)


def guarded(run: Callable[[], object]) -> None:
    """Call ``run`` with Ctrl-C answered as the module docstring says.

    While ``run`` runs, Ctrl-C raises ``KeyboardInterrupt`` as usual (Python's default
    handler), so that ``finally`` blocks and ``with`` exits run on the way out.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        answered = run()
        # click answers --help or --version by returning their exit status (0).
        exit_without_teardown(answered if isinstance(answered, int) else 0)
    except SystemExit as done:
        exit_without_teardown(done.code)
        raise
    except KeyboardInterrupt:
        interrupted()
    finally:
        # The command has answered: a Ctrl-C while the interpreter shuts down ends it
        # at once instead of printing a traceback from whatever code it interrupted.
        _quick_exit_on_ctrl_c()


def exit_without_teardown(code: object) -> None:
    """End the process now with status ``code`` (an int or None), skipping the
    interpreter's teardown, if nothing needs it; else return.

    The teardown frees every module and object one by one: after a command that imported
    the engine, ~15 ms of CPU (a sixth of ``branchfs fork``) that change nothing outside the
    process. Skipped only when nothing is registered with ``atexit`` (``logging``, a
    ``weakref.finalize``, a temporary directory register there), no thread but daemon
    threads is running, and stdout and stderr flush (else the normal exit reports the
    error). A store the command opened is closed by then (``Context.close``), and what an
    LMDB transaction committed is in the kernel's page cache whatever ends the process: the
    store's promise holds even under SIGKILL (DESIGN §1).
    """
    if code is None:
        code = 0
    if not isinstance(code, int):
        return
    threading = sys.modules.get("threading")
    if threading is not None and any(
        not t.daemon for t in threading.enumerate() if t is not threading.main_thread()
    ):
        return
    import atexit

    callbacks = getattr(atexit, "_ncallbacks", None)  # CPython's count of registrations
    if callbacks is None or callbacks() > 0:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(code)


def _command_line() -> object:
    from .cli import main as cli

    return cli()


def main() -> None:
    """Run the command line on ``sys.argv`` (the console script ``branchfs``)."""
    guarded(_command_line)
