"""Runtimes host a plugin and present it to the engine as a DataReader or DataWriter.

Each is registered under the ``dativo.runtimes`` entry-point group (see
:mod:`dativo.core.hosting`), by the name a job's ``type:`` uses: ``custom``
(:mod:`.inprocess`), ``process`` (:mod:`.process`) and ``flight`` (:mod:`.flight`,
through :data:`flight_runtime`). The engine finds them there, never by import.
"""

from __future__ import annotations

from dativo.core.hosting import LazyRuntime

__all__ = ["flight_runtime"]

#: The ``flight`` runtime's entry point: :mod:`dativo.runtimes.flight` (and pyarrow.flight, gRPC)
#: is imported when it first hosts a plugin, so listing or loading runtimes stays cheap.
flight_runtime = LazyRuntime("dativo.runtimes.flight:runtime")
