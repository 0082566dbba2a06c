"""The ``dativo`` command's entry point: ``dativo --version`` answers before anything heavy is imported.

:func:`command` is what the ``dativo`` script and ``python -m dativo`` run: a command that succeeded
ends there without the interpreter's teardown (:func:`finish`; freeing a run's objects and modules
cost ~15-20 ms of CPU, up to ~60 ms of wall, after the last output). :func:`main` is the command
itself for a caller that goes on afterwards: it returns or raises ``SystemExit`` as always.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

from dativo import _gc

__all__ = ["command", "finish", "main"]


def main() -> None:
    """Run the CLI; a bare ``--version`` is answered from package metadata alone (no pyarrow, no typer)."""
    if sys.argv[1:] == ["--version"]:
        from dativo import __version__
        from dativo._sdk_version import SDK_API_VERSION

        print(f"dativo {__version__} (plugin SDK API {SDK_API_VERSION})")
        return
    # Arrow's memory pool is chosen when pyarrow loads, so the command sets it before anything imports pyarrow:
    # jemalloc (in pyarrow's Linux wheels) held a wide-table run's peak RSS 15-35 MB below pyarrow's default
    # (mimalloc) and flat from 1M to 5M rows at no CPU cost (docs/performance.md, session 4). The command only:
    # an application importing dativo keeps its own choice. A value the user set wins.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc" if sys.platform.startswith("linux") else "system")
    # Collect cycles rarely while the command imports and sets up; the run restores the thresholds (dativo._gc).
    _gc.defer_during_startup()
    from dativo.cli import main as cli_main

    cli_main()


def command() -> None:
    """The ``dativo`` script and ``python -m dativo``: :func:`main`, then :func:`finish` when it exits with 0."""
    try:
        main()
    except SystemExit as stop:
        finish(stop.code)
        raise


def finish(code: object) -> None:
    """End the successful ``dativo`` command now: what the interpreter's exit does that matters, then ``_exit``.

    Only for exit code 0 (``None`` or ``0``): any other exit, an exception, ``python -X dev`` or
    ``DATIVO_FULL_EXIT=1`` returns, and the interpreter exits as always. Otherwise, in the
    interpreter's own order: non-daemon threads are joined and ``threading`` exit hooks run
    (``threading._shutdown``: thread pools are shut down), every ``atexit`` handler runs (logging is
    flushed and closed, ``weakref.finalize`` objects such as temporary folders are cleaned up,
    coverage and multiprocessing finish), stdout and stderr are flushed, then the process exits with
    0 without freeing its objects. A flush that fails (a closed pipe) returns, so the interpreter
    reports it and exits with 120 as before. Called by :func:`command` only, never by ``import dativo``.
    """
    if code not in (None, 0) or sys.flags.dev_mode or os.environ.get("DATIVO_FULL_EXIT") == "1":
        return
    shutdown = getattr(threading, "_shutdown", None)
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if shutdown is None or run_exit_handlers is None:  # not CPython: exit as usual
        return
    shutdown()
    run_exit_handlers()
    try:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            if stream is not None and not stream.closed:
                stream.flush()
    except Exception:
        return
    os._exit(0)
