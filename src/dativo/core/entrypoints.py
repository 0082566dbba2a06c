"""Entry points by group and name: the one lookup behind every kind of plugin dativo finds by name.

Readers and writers (``dativo.readers`` / ``dativo.writers``, through ``core/registry.py``,
which also takes import paths and files), KMS clients (``dativo.kms``), runtimes
(``dativo.runtimes``, ``core/hosting.py``) and executors (``dativo.executors``,
``engine/executor.py``) are all found here, and a name nothing registers fails the same
way everywhere (:func:`unknown_name`). Standard library only: ``validate --offline``
finds the executor without importing pyarrow.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from importlib.metadata import EntryPoint
from typing import TypeGuard, TypeVar

from dativo._installed import entry_points
from dativo.errors import PluginError

__all__ = ["entries", "entry_point_names", "load", "load_entry_point", "unknown_name"]

T = TypeVar("T")


def entry_point_names(group: str) -> list[str]:
    """The names registered under the entry-point ``group``, sorted."""
    return sorted(entries(group))


def load_entry_point(
    group: str,
    name: str,
    what: str,
    valid: Callable[[object], TypeGuard[T]],
    defines: str,
    *,
    who: str = "",
    how: str = "",
) -> T:
    """Load the object registered as ``name`` under the entry-point ``group`` (a runtime, an executor ...).

    ``what`` names the kind in messages (``"runtime"``), ``who`` what asked for it
    (``"reader 'x'"``), ``how`` says how to install one; ``valid`` checks what was loaded,
    which must define ``defines``. Raises PluginError: when no entry point has that name
    (:func:`unknown_name`, then ``how``); naming the entry point and the exception when
    importing it fails; naming the entry point and ``defines`` when ``valid`` rejects it.
    """
    entry = entries(group).get(name)
    if entry is None:
        raise PluginError(unknown_name(what, name, group, who) + (f"; {how}" if how else ""))
    loaded = load(what, entry)
    if not valid(loaded):
        raise PluginError(f"{what} '{name}' ({entry.value}) does not define {defines}")
    return loaded


def unknown_name(what: str, name: str, group: str, who: str = "") -> str:
    """The one message for a name nothing in ``group`` registers: the closest name and every installed one.

    ``reader 'x': runtime 'nope': no installed runtime has that name (did you mean 'process'?
    installed: custom, flight, process; entry-point group 'dativo.runtimes')``.
    """
    names = entry_point_names(group)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    return (
        (f"{who}: " if who else "")
        + f"{what} '{name}': no installed {what} has that name ("
        + (f"did you mean '{close[0]}'? " if close else "")
        + f"installed: {', '.join(names) or 'none'}; entry-point group '{group}')"
    )


def entries(group: str) -> dict[str, EntryPoint]:
    """The entry points of ``group`` by name (one scan shared by every lookup until an installation changes)."""
    return {entry.name: entry for entry in entry_points(group)}


def load(what: str, entry: EntryPoint) -> object:
    """``entry.load()``; raises PluginError naming ``what``, the entry point and the exception when it fails."""
    try:
        return entry.load()
    except Exception as exc:
        raise PluginError(
            f"{what} '{entry.name}' ({entry.value}) failed to import: {type(exc).__name__}: {exc}"
        ) from exc
