"""The in-process runtime (``custom``): the plugin is a Python class (or a PyO3 module) in dativo's own process.

Registered as the ``custom`` runtime under the ``dativo.runtimes`` entry points (this module is the runtime).
"""

from __future__ import annotations

from typing import TypeVar

from dativo.core.registry import PluginPlan
from dativo.errors import DativoError, PluginError
from dativo.sdk import DataReader, DataWriter

__all__ = ["host", "host_reader", "host_writer"]

P = TypeVar("P", DataReader, DataWriter)


def host(plan: PluginPlan, base: type[P]) -> P:
    """Instantiate the planned plugin and call its ``initialize``.

    A DativoError raised by ``initialize`` (a wrong password, say) passes through
    unchanged; any other exception becomes a PluginError naming the plugin.
    """
    name = plan.ref.name
    try:
        plugin = plan.ref.cls()
    except Exception as exc:
        raise PluginError(f"{plan.ref.kind} '{name}': constructing it failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(plugin, base):
        raise PluginError(f"{plan.ref.kind} '{name}' is not a {base.__name__}")
    try:
        plugin.initialize(plan.config)
    except DativoError:
        plugin.close()
        raise
    except Exception as exc:
        plugin.close()
        raise PluginError(f"{plan.ref.kind} '{name}': initialize() failed: {type(exc).__name__}: {exc}") from exc
    return plugin


def host_reader(plan: PluginPlan) -> DataReader:
    """Instantiate and initialize the planned reader class; raises as :func:`host`."""
    return host(plan, DataReader)  # type: ignore[type-abstract]  # used for isinstance only


def host_writer(plan: PluginPlan) -> DataWriter:
    """Instantiate and initialize the planned writer class; raises as :func:`host`."""
    return host(plan, DataWriter)  # type: ignore[type-abstract]  # used for isinstance only
