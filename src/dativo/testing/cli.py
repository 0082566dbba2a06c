"""What ``dativo plugins certify`` does, apart from printing: find the plugin, host it, run the suite."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from dativo.core.registry import PluginKind, resolve_plugin
from dativo.errors import ConfigError, PluginError
from dativo.testing.conformance import Report, Scenarios, certify
from dativo.testing.host import PluginUnderTest, Runtime, served_by_flight

__all__ = ["run_certification"]


def _detect_kind(implementation: str, base_dir: Path) -> PluginKind:
    problems: list[str] = []
    for kind in ("reader", "writer"):
        try:
            resolve_plugin(kind, implementation, base_dir)
            return kind
        except PluginError as exc:
            problems.append(str(exc))
    raise PluginError(problems[0] if "no installed" not in problems[0] else problems[-1])


def _is_executable(implementation: str, base_dir: Path) -> Path | None:
    path = Path(implementation).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if path.is_file() and os.access(path, os.X_OK) and path.suffix != ".py":
        return path.resolve()
    return None


@contextlib.contextmanager
def _target(
    implementation: str, kind: PluginKind | None, runtime: Runtime, base_dir: Path, sandbox: bool
) -> Iterator[PluginUnderTest]:
    spec = {} if sandbox else {"sandbox": {"enabled": False}}
    executable = _is_executable(implementation, base_dir)
    endpoint = implementation if implementation.startswith("grpc") else None
    if (executable or endpoint) and kind is None:
        raise ConfigError(f"certify {implementation}: say --kind reader or --kind writer for an executable or endpoint")
    if executable is not None:
        if runtime != "process":
            raise ConfigError(f"certify {implementation}: an executable is a process plugin; use --runtime process")
        assert kind is not None
        yield PluginUnderTest(kind, "process", command=[str(executable)], base_dir=base_dir, spec=spec)
        return
    if endpoint is not None:
        if runtime != "flight":
            raise ConfigError(f"certify {implementation}: an endpoint is a Flight plugin; use --runtime flight")
        assert kind is not None
        yield PluginUnderTest(kind, "flight", endpoint=endpoint, base_dir=base_dir)
        return
    kind = kind or _detect_kind(implementation, base_dir)
    if runtime == "flight":
        with served_by_flight(implementation, kind) as served:
            yield PluginUnderTest(kind, "flight", endpoint=served, implementation=implementation, base_dir=base_dir)
        return
    yield PluginUnderTest(kind, runtime, implementation=implementation, base_dir=base_dir, spec=spec)


def run_certification(
    implementation: str,
    kind: PluginKind | None = None,
    runtime: Runtime = "custom",
    config: Path | None = None,
    rules: Sequence[str] | None = None,
    base_dir: Path | None = None,
    sandbox: bool = True,
) -> Report:
    """Certify ``implementation`` (an installed name, import path, file, executable or grpc:// endpoint).

    A Python plugin under ``runtime`` process/flight is served by ``dativo serve``.
    ``config`` is a scenario file (``conformance.yaml``). Raises ConfigError /
    PluginError when the plugin cannot be found or the options do not fit;
    a misbehaving plugin is reported, never raised.
    """
    base = (base_dir or Path.cwd()).resolve()
    with _target(implementation, kind, runtime, base, sandbox) as target:
        scenarios = Scenarios.from_file(config, target.kind) if config is not None else Scenarios()
        return certify(target, scenarios, rules=rules)
