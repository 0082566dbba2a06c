"""Where the plugin under test runs: in process, as a process plugin, or behind an Arrow Flight endpoint.

:class:`PluginUnderTest` turns one description of a plugin into fresh,
initialized :class:`~dativo.sdk.DataReader` / :class:`~dativo.sdk.DataWriter`
instances through the same runtimes a job uses (:func:`dativo.core.hosting.host_reader`
/ :func:`~dativo.core.hosting.host_writer`), so every conformance check sees exactly
what the engine would see.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dativo.config.models import PluginSpec
from dativo.core.registry import PluginKind, PluginPlan, PluginRef, resolve_plugin
from dativo.errors import ConfigError, PluginError
from dativo.sdk import DataReader, DataWriter

__all__ = ["PluginUnderTest", "Runtime", "serve_command", "served_by_flight"]

Runtime = Literal["custom", "process", "flight"]


def serve_command(implementation: str) -> list[str]:
    """The command that runs a Python plugin as a process plugin (``dativo serve process IMPLEMENTATION``)."""
    return [sys.executable, "-m", "dativo.runtimes.serve", "process", implementation]


@dataclass(frozen=True)
class PluginUnderTest:
    """One plugin and the runtime to host it in.

    * ``runtime="custom"``: ``implementation`` is resolved like a job's (entry-point
      name, ``pkg.mod.Class``, ``path/file.py:Class`` relative to ``base_dir``).
    * ``runtime="process"``: ``command`` is started as a process plugin; for a
      Python plugin give ``implementation`` alone and ``dativo serve process`` is used.
    * ``runtime="flight"``: ``endpoint`` (``grpc://host:port``) is called; see
      :func:`served_by_flight` to serve a Python plugin for the duration of a test.

    ``spec`` holds further ``reader:``/``writer:`` keys (``sandbox``, ``timeouts``,
    ``env``, ``token``, ``tls``). Raises :class:`~dativo.errors.ConfigError` when
    the runtime lacks what it needs.
    """

    kind: PluginKind
    runtime: Runtime = "custom"
    implementation: str | None = None
    command: Sequence[str] | None = None
    endpoint: str | None = None
    base_dir: Path = field(default_factory=Path.cwd)
    spec: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.runtime == "custom" and not self.implementation:
            raise ConfigError("certify: the custom runtime needs an implementation (import path, file or name)")
        if self.runtime == "process" and not (self.command or self.implementation):
            raise ConfigError("certify: the process runtime needs a command (or a Python implementation to serve)")
        if self.runtime == "flight" and not self.endpoint:
            raise ConfigError("certify: the flight runtime needs an endpoint (grpc://host:port)")

    @property
    def label(self) -> str:
        """How reports name the plugin: ``reader my_pkg.Reader (custom)``."""
        what = self.implementation or (" ".join(self.command) if self.command else None) or self.endpoint
        return f"{self.kind} {what} ({self.runtime})"

    def plan(self, config: Mapping[str, Any], writable: Sequence[Path] = ()) -> PluginPlan:
        """The PluginPlan a job would build for this plugin with ``config`` as its ``initialize`` config."""
        name = self.implementation or (Path(self.command[0]).name if self.command else None) or "plugin-under-test"
        if self.runtime == "custom":
            assert self.implementation is not None
            ref = resolve_plugin(self.kind, self.implementation, self.base_dir)
            return PluginPlan(ref=ref, runtime="custom", config=dict(config), spec=None)
        extra = dict(self.spec)
        if self.runtime == "process":
            command = list(self.command) if self.command else serve_command(str(self.implementation))
            sandbox = dict(extra.pop("sandbox", {}))
            paths = [*sandbox.get("writable_paths", []), *(str(path) for path in writable)]
            sandbox["writable_paths"] = paths
            spec = PluginSpec.model_validate(
                {"type": "process", "command": command, "name": name, "sandbox": sandbox, **extra}
            )
            cls: type = DataReader if self.kind == "reader" else DataWriter
            ref = PluginRef(kind=self.kind, name=name, cls=cls, origin="process " + " ".join(command))
        else:
            spec = PluginSpec.model_validate({"type": "flight", "endpoint": self.endpoint, "name": name, **extra})
            cls = DataReader if self.kind == "reader" else DataWriter
            ref = PluginRef(kind=self.kind, name=name, cls=cls, origin=f"flight {self.endpoint}")
        return PluginPlan(ref=ref, runtime=self.runtime, config=dict(config), spec=spec)

    def reader(self, config: Mapping[str, Any]) -> DataReader:
        """A fresh reader, initialized with ``config``; raises what ``initialize`` raises."""
        from dativo.core.hosting import host_reader

        return host_reader(self.plan(config))

    def writer(self, config: Mapping[str, Any], writable: Sequence[Path] = ()) -> DataWriter:
        """A fresh writer, initialized with ``config`` (``writable``: folders a sandboxed plugin may write)."""
        from dativo.core.hosting import host_writer

        return host_writer(self.plan(config, writable))


def _drain(stream: Any) -> None:
    with contextlib.suppress(ValueError, OSError):
        for _ in stream:
            pass


_SERVING = re.compile(r"serving .* on (grpc(?:\+tls)?://[^\s]+)")


@contextlib.contextmanager
def served_by_flight(implementation: str, kind: PluginKind, startup_s: float = 60.0) -> Iterator[str]:
    """Serve a Python plugin over Arrow Flight on loopback (``dativo serve flight``); yields its endpoint.

    The server is a child process, stopped (SIGTERM, then SIGKILL) when the block ends.
    Raises PluginError with the server's last output when it does not come up within ``startup_s``.
    """
    command = [
        sys.executable,
        "-m",
        "dativo.runtimes.serve",
        "flight",
        implementation,
        "--kind",
        kind,
        "--port",
        "0",
    ]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    try:
        deadline = time.monotonic() + startup_s
        seen: list[str] = []
        endpoint = None
        os.set_blocking(proc.stderr.fileno(), True)
        while endpoint is None:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise PluginError(
                    f"dativo serve flight {implementation} did not start: {' | '.join(seen[-3:]) or 'no output'}"
                )
            line = proc.stderr.readline()
            seen.append(line.strip())
            match = _SERVING.search(line)
            if match:
                endpoint = match.group(1)
        drain = threading.Thread(target=_drain, args=(proc.stderr,), name="dativo-certify-flight-log", daemon=True)
        drain.start()  # keep reading the server's log so that it never blocks on a full pipe
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
