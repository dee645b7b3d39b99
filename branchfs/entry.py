"""The ``branchfs`` console script: Ctrl-C handling first, then the command line.

The script ``[project.scripts]`` installs imports this module and calls :func:`main`
(``python -m branchfs`` does the same). The module imports only ``contextlib``, ``os``,
``signal`` and ``sys``, and from its import on a Ctrl-C never prints a traceback: until the command
starts it exits at once; then, during the command line's imports (:mod:`branchfs.cli`:
click, the command layer and, inside the verb, the engine — the ~0.1 s in which a Ctrl-C
used to print an import-time traceback) and the verb itself, the first Ctrl-C raises
``KeyboardInterrupt`` so that the ``finally`` blocks and ``with`` exits on the way out run
(a store opened is closed, best-of's attempts are stopped, unmounted and discarded; LMDB
aborts an unfinished write transaction, so nothing acknowledged is lost), and the command
ends with one line, ``branchfs: interrupted``, and exit status 130 (128 + SIGINT, the
shell's convention for a command ended by Ctrl-C).

A second Ctrl-C (an impatient user, or a terminal that signals the whole process group)
changes nothing: it is ignored while those clean-ups run, since cutting them short is what
would leave a mount, a daemon or a branch behind. An interrupted command then ends
without the interpreter's own exit, which could kill it by SIGINT (see
``_exit_interrupted``). Once the command has answered, Ctrl-C is ignored (``SIG_IGN``) for
the rest of the process's life: the exit status is decided, and the interpreter's
teardown, when it is not skipped, must not be cut. A Python handler would not do there:
the teardown puts back the default action (``SIG_DFL``) of every signal with a Python
handler before it frees the modules (CPython's ``_PySignal_Fini``), and a Ctrl-C then
killed the process by SIGINT (status -2 to ``subprocess``) instead of exiting 130.

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
    from typing import NoReturn

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


def _ignore_ctrl_c() -> None:
    # SIG_IGN, not a Python no-op: the interpreter's teardown keeps an ignored signal
    # ignored, but resets a Python handler to SIG_DFL (see the module docstring).
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)


#: Whether the command runs (:func:`guarded`), and whether a Ctrl-C has interrupted it.
_running = False
_interrupted = False


def _interrupt(_signum: int, _frame: object) -> None:
    """The SIGINT handler while the command runs: raise ``KeyboardInterrupt``, unless the
    clean-ups of an earlier one are under way (a Ctrl-C after the command answered, too,
    returns: it would escape :func:`guarded`'s own clauses)."""
    global _interrupted
    if _running and not _unwinding_from_ctrl_c():
        _interrupted = True
        raise KeyboardInterrupt


def _unwinding_from_ctrl_c() -> bool:
    """Whether this thread is handling a ``KeyboardInterrupt``, or an exception raised
    while one was handled (click's ``Abort``, an error in a clean-up): whether the code a
    Ctrl-C lands in is a ``finally``, an ``except`` or a ``with`` exit on the way out of
    one. A ``KeyboardInterrupt`` that some code swallowed (one raised in a ``__del__``
    is) is not: the next Ctrl-C raises again."""
    exc = sys.exception()
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__context__ if exc.__context__ is not None else exc.__cause__
    return False


def guarded(run: Callable[[], object]) -> None:
    """Call ``run`` with Ctrl-C answered as the module docstring says, then exit.

    While ``run`` runs, the first Ctrl-C raises ``KeyboardInterrupt`` (as Python's default
    handler would), so that ``finally`` blocks and ``with`` exits run on the way out; later
    ones are ignored. Exits with ``run``'s status (an int it returns, or a ``SystemExit``
    it raises), or 130 after a Ctrl-C.
    """
    global _running
    _running = True  # first: a Ctrl-C just after the handler is in place must raise
    signal.signal(signal.SIGINT, _interrupt)
    code: object
    try:
        try:
            answered = run()
        finally:
            # From here on no Ctrl-C raises: one that lands in the except clauses below
            # would escape them with a traceback.
            _running = False
        # click answers --help or --version by returning their exit status (0).
        code = answered if isinstance(answered, int) else 0
    except SystemExit as done:
        code = done.code
    except KeyboardInterrupt:
        _say_interrupted()
        code = EXIT_INTERRUPTED
    _ignore_ctrl_c()
    if _interrupted:
        _exit_interrupted(code)
    exit_without_teardown(code)
    sys.exit(code)


def _exit_interrupted(code: object) -> NoReturn:
    """End a process that a Ctrl-C interrupted with status ``code`` (130, or whatever the
    command chose), after what the interpreter's exit would do that matters outside it:
    wait for its non-daemon threads, run the ``atexit`` callbacks, flush stdout and stderr.

    Not the interpreter's own exit: in CPython (3.11 at least) a ``KeyboardInterrupt`` that
    passed through an ``exec`` of a string on its way out (``dataclasses`` and
    ``namedtuple`` build their methods so, on import) marks the process as ended by an
    unhandled Ctrl-C, and however the program then exits, the interpreter kills itself with
    SIGINT after its teardown (``_Py_UnhandledKeyboardInterrupt``, ``exit_sigint`` in
    Modules/main.c): status -2 to ``subprocess`` instead of 130. A Ctrl-C while best-of
    imports the merge code during its run did that.
    """
    threading = sys.modules.get("threading")
    if threading is not None:
        for t in threading.enumerate():
            if t is not threading.main_thread() and not t.daemon:
                t.join()
    import atexit

    atexit._run_exitfuncs()
    if code is None:
        code = 0
    elif not isinstance(code, int):
        with contextlib.suppress(OSError, ValueError):
            print(code, file=sys.stderr)
        code = 1
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(code)


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
    store's promise holds even under SIGKILL (contract 3, docs/architecture.md, "Contracts").
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
