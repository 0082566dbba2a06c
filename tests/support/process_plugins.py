"""Readers and writers hosted out of process, as classes the reader/writer tests can instantiate like any other.

``process_reader("go", [...command...])`` returns a DataReader class whose
instances start ``command`` as a ``type: process`` plugin (sandboxed, network
allowed so that it can reach the test PostgreSQL server); the Go reader is
built by ``scripts/test.sh`` (see :data:`GO_READER`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from dativo.config.connectors import connector as find_connector
from dativo.config.models import PluginSpec
from dativo.core.registry import PluginPlan, PluginRef
from dativo.engine.plan import with_source_plan
from dativo.runtimes.flight import FlightReader
from dativo.runtimes.process import ProcessReader
from dativo.sdk import DataReader

REPO = Path(__file__).resolve().parents[2]
GO_READER = REPO / "plugins" / "go-postgres-reader" / "bin" / "go-postgres-reader"
SERVE = [sys.executable, "-m", "dativo.runtimes.serve"]


def plugin_plan(kind: str, name: str, **spec: Any) -> PluginPlan:
    base = DataReader
    return PluginPlan(
        ref=PluginRef(kind=kind, name=name, cls=base, origin="test"),  # type: ignore[arg-type]
        runtime=spec.get("type", "process"),
        config={},
        spec=PluginSpec(**spec),
    )


def process_reader(name: str, command: list[str], connector: str | None = None, **spec: Any) -> type[DataReader]:
    """A DataReader class running ``command`` as a sandboxed process plugin (network allowed).

    ``connector`` is added to the config when the test's config lacks it (the engine always sets it).
    """
    spec.setdefault("sandbox", {"network": True})
    spec.setdefault("timeouts", {"startup_s": 60, "idle_s": 60})

    class Hosted(ProcessReader):
        def __init__(self) -> None:
            super().__init__(plugin_plan("reader", name, type="process", command=command, **spec))

        def initialize(self, config: Any) -> None:
            config = {"connector": connector, **config} if connector else config
            if spec.get("source_plan"):  # what build_plan does at plan time for a reader that asks
                config = with_source_plan(config, find_connector(config["connector"], "source"), name)
            super().initialize(config)

    Hosted.__name__ = Hosted.__qualname__ = f"ProcessReader[{name}]"
    return Hosted


def flight_reader(name: str, endpoint: str, **spec: Any) -> type[DataReader]:
    """A DataReader class reading from the Flight endpoint ``endpoint``."""

    class Hosted(FlightReader):
        def __init__(self) -> None:
            super().__init__(plugin_plan("reader", name, type="flight", endpoint=endpoint, **spec))

    Hosted.__name__ = Hosted.__qualname__ = f"FlightReader[{name}]"
    return Hosted


GoPostgresReader = process_reader("go-postgres-reader", [str(GO_READER)], connector="postgres", source_plan=True)
ServedAdbcReader = process_reader("served-adbc", [*SERVE, "process", "postgres-adbc"], connector="postgres")


_flight_servers: dict[str, Any] = {}


def _flight_endpoint(implementation: str) -> str:
    """A Flight server (the serve() helper) hosting ``implementation`` on loopback, started once per session."""
    if implementation not in _flight_servers:
        import atexit
        import threading

        from dativo.core.registry import resolve_plugin
        from dativo.runtimes.serve import PluginFlightServer

        cls = resolve_plugin("reader", implementation, Path.cwd()).cls
        server = PluginFlightServer(cls, "grpc://127.0.0.1:0", name=implementation)
        threading.Thread(target=server.serve, name=f"flight-{implementation}", daemon=True).start()
        atexit.register(server.shutdown)
        _flight_servers[implementation] = server
    return f"grpc://127.0.0.1:{_flight_servers[implementation].port}"


def served_flight_reader(name: str, implementation: str, connector: str | None = None) -> type[DataReader]:
    """A DataReader class reading ``implementation`` through a Flight server started on first use."""

    class Hosted(FlightReader):
        def __init__(self) -> None:
            endpoint = _flight_endpoint(implementation)
            super().__init__(plugin_plan("reader", name, type="flight", endpoint=endpoint))

        def initialize(self, config: Any) -> None:
            super().initialize({"connector": connector, **config} if connector else config)

    Hosted.__name__ = Hosted.__qualname__ = f"FlightReader[{name}]"
    return Hosted


FlightAdbcReader = served_flight_reader("flight-adbc", "postgres-adbc", connector="postgres")
