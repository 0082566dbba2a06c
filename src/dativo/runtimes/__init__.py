"""Runtimes host a plugin and present it to the engine as a DataReader or DataWriter.

The engine never cares where a plugin runs; it asks :func:`host_reader` /
:func:`host_writer` and gets the SDK interface back.
"""

from __future__ import annotations

from dativo.core.registry import PluginPlan
from dativo.errors import PluginError
from dativo.runtimes import inprocess, process
from dativo.sdk import DataReader, DataWriter

__all__ = ["host_reader", "host_writer"]


def host_reader(plan: PluginPlan) -> DataReader:
    """Start the planned reader in its runtime and initialize it. Raises PluginError or the reader's own error."""
    if plan.runtime == "custom":
        return inprocess.host(plan, DataReader)  # type: ignore[type-abstract]  # used for isinstance only
    if plan.runtime == "process":
        return process.host_reader(plan)
    if plan.runtime == "flight":
        from dativo.runtimes import flight  # imports pyarrow.flight (gRPC) only when asked for

        return flight.host_reader(plan)
    raise PluginError(f"reader '{plan.ref.name}': unknown runtime type '{plan.runtime}'")


def host_writer(plan: PluginPlan) -> DataWriter:
    """Start the planned writer in its runtime and initialize it. Raises PluginError or the writer's own error."""
    if plan.runtime == "custom":
        return inprocess.host(plan, DataWriter)  # type: ignore[type-abstract]  # used for isinstance only
    if plan.runtime == "process":
        return process.host_writer(plan)
    if plan.runtime == "flight":
        from dativo.runtimes import flight  # imports pyarrow.flight (gRPC) only when asked for

        return flight.host_writer(plan)
    raise PluginError(f"writer '{plan.ref.name}': unknown runtime type '{plan.runtime}'")
