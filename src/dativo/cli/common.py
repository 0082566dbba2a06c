"""What every ``dativo`` command module shares: the consoles, the global flags, one way to fail.

An error ends a command with one ``error: ...`` line per problem on stderr (the
traceback too with ``--debug``) and exit code 2 for a bad job file, plugin or
command line, 1 for anything else. Messages pass through ``redact`` (and the
caller's own cleaner, e.g. the KMS scrubber) so no secret is printed.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

import typer

from dativo._secrets import redact
from dativo.errors import ConfigError, DativoError, PluginError

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["err", "escape", "fail", "guard", "out", "real_console", "say_ok", "state"]

T = TypeVar("T")


class _LazyConsole:
    """A rich ``Console`` made on first use: importing rich is ~8% of ``validate --offline`` (issue 15)."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    @property
    def created(self) -> bool:
        return self._console is not None

    @property
    def console(self) -> Console:
        """The console itself (for rich APIs that take one, e.g. ``Progress(console=...)``)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)


def real_console(console: Console) -> Console:
    """The rich ``Console`` behind ``out`` or ``err`` (they are made on first use)."""
    return console.console if isinstance(console, _LazyConsole) else console


out = cast("Console", _LazyConsole(soft_wrap=True))  # a long path stays on one line (copyable); tables still fit
err = cast("Console", _LazyConsole(stderr=True))


def escape(text: str) -> str:
    """``text`` with rich markup escaped (rich is imported on first use)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def say_ok(text: str) -> None:
    """Print ``ok TEXT`` on stdout: a green ``ok`` through rich on a terminal, plain text otherwise.

    Plain is what rich prints when stdout is not a terminal (``out`` does not wrap), so scripts
    and CI see the same line without paying for rich's import.
    """
    plain = not sys.stdout.isatty() and not os.environ.get("FORCE_COLOR") and not os.environ.get("TTY_COMPATIBLE")
    if plain and not cast(_LazyConsole, out).created:
        print(f"ok {text}", flush=True)
    else:
        out.print(f"[green]ok[/green] {escape(text)}")


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
