"""What every ``dativo`` command module shares: the consoles, the global flags, one way to fail.

An error ends a command with one ``error: ...`` line per problem on stderr (the
traceback too with ``--debug``) and exit code 2 for a bad job file, plugin or
command line, 1 for anything else. Messages pass through ``redact`` (and the
caller's own cleaner, e.g. the KMS scrubber) so no secret is printed.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console

from dativo._secrets import redact
from dativo.errors import ConfigError, DativoError, PluginError

__all__ = ["err", "fail", "guard", "out", "state"]

T = TypeVar("T")
out = Console()
err = Console(stderr=True)
#: ``debug``: the global --debug flag; ``job``: the LoadedJob of the command, so errors can point at a line.
state: dict[str, Any] = {"debug": False, "job": None}


def fail(exc: BaseException, clean: Callable[[str], str] = redact) -> NoReturn:
    """Print ``exc`` as one line per problem (``FILE:LINE`` first when it names a job key) and exit."""
    if state["debug"]:
        err.print(clean("".join(traceback.format_exception(exc))), highlight=False, markup=False)
    if isinstance(exc, DativoError):
        message = str(exc)
        job = state.get("job")
        if exc.config_key and job is not None:
            from dativo.config.loader import LoadedJob  # loaded already: state["job"] holds one

            if isinstance(job, LoadedJob):
                message = f"{job.locate(exc.config_key)}: {exc.config_key}: {message}"
    else:
        message = f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)"
    # One line per problem (a job file with three mistakes shows all three).
    for line in clean(message).splitlines() or [""]:
        err.print("error: " + line, highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(2 if isinstance(exc, ConfigError | PluginError) else 1)


def guard(action: Callable[[], T], clean: Callable[[str], str] = redact) -> T:
    """Run ``action``; an exception ends the command through :func:`fail`."""
    try:
        return action()
    except Exception as exc:
        fail(exc, clean)
