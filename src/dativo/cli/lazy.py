"""Sub-commands whose modules load only when they run (or when ``--help`` lists them).

``dativo validate`` should not pay for the audit verifier, the KMS clients, the CDC
slot code or Iceberg maintenance: their Typer apps are registered here by name and
the module is imported the first time click asks for the command (issue 15).

Every command is registered this way, also those defined in ``dativo.cli`` itself: Typer
builds a command (its parameters, from the function's signature and annotations) only when
click asks for it, so ``dativo run`` builds ``run`` alone instead of all thirteen (~9 ms).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:
    from typer import _click as click  # the click typer itself uses (vendored since typer 0.2x)

__all__ = ["LazyGroup", "lazy_command"]

#: name -> ("module:attribute" of a Typer app (a group) or of a command function, the command's settings).
_LAZY: dict[str, tuple[str, dict[str, Any]]] = {}


def lazy_command(name: str, target: str, **settings: Any) -> None:
    """Register ``dativo NAME`` as ``module:attribute`` (a ``typer.Typer`` or a command function), loaded on use.

    ``settings`` are ``Typer.command()``'s keyword arguments for a function (``context_settings``...).
    The help lists the commands in the order they were registered.
    """
    _LAZY[name] = (target, settings)


def _load(name: str, target: str, settings: dict[str, Any]) -> click.Command:
    module, _, attribute = target.partition(":")
    value: Any = getattr(importlib.import_module(module), attribute)
    if isinstance(value, typer.Typer):
        command: click.Command = typer.main.get_group(value)
    else:
        single = typer.Typer(add_completion=False)
        single.command(name, **settings)(value)
        command = typer.main.get_command(single)
    command.name = name  # the help lists commands by their name
    return command


class _Commands(MutableMapping[str, "click.Command"]):
    """The group's commands: the eager ones, then the lazy ones, each imported when first looked up."""

    def __init__(self, eager: MutableMapping[str, click.Command]) -> None:
        self._eager = eager

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._eager and name in _LAZY:
            self._eager[name] = _load(name, *_LAZY[name])
        return self._eager[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._eager[name] = command

    def __delitem__(self, name: str) -> None:
        del self._eager[name]

    def __iter__(self) -> Iterator[str]:
        yield from self._eager
        yield from (name for name in _LAZY if name not in self._eager)

    def __len__(self) -> int:
        return len(set(self._eager) | set(_LAZY))

    def __contains__(self, name: object) -> bool:
        return name in self._eager or name in _LAZY


class LazyGroup(TyperGroup):
    """A Typer group that also offers the commands registered with :func:`lazy_command`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _Commands(self.commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command name, in registration order (lazy ones last), without importing them."""
        return list(self.commands)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command, importing its module if it is a lazy one; None for an unknown name."""
        return self.commands.get(cmd_name)
