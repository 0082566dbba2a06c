"""``dativo plugins list``: every installed plugin of every group, with where it comes from.

The groups: readers (``dativo.readers``), writers (``dativo.writers``), connectors
(``dativo.connectors``, with their default reader / writer), runtimes
(``dativo.runtimes``, what a job's ``type:`` names) and KMS clients (``dativo.kms``,
what ``kms: {type: ...}`` names). Each row is loaded, so a plugin that fails to import
shows its problem instead of breaking the listing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

__all__ = ["GROUPS", "PluginRow", "installed_plugins"]

#: Kind shown -> entry-point group, in the order listed.
GROUPS = {
    "reader": "dativo.readers",
    "writer": "dativo.writers",
    "connector": "dativo.connectors",
    "runtime": "dativo.runtimes",
    "kms": "dativo.kms",
}


@dataclass(frozen=True)
class PluginRow:
    """One installed plugin: its group's kind, name, distribution, SDK API version (readers and writers),
    details (a connector's roles and default plugins, a runtime's or KMS client's object) and its problem."""

    kind: str
    name: str
    origin: str
    api_version: str | None
    details: str
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON-ready values."""
        return asdict(self)


def installed_plugins() -> list[PluginRow]:
    """Every plugin of every group, sorted by group then name. Never raises: a broken one carries its problem."""
    from dativo.core.registry import list_plugins

    rows = [PluginRow(kind, name, origin, api, "", problem) for kind, name, origin, api, problem in list_plugins()]
    for kind, describe in (("connector", _connector), ("runtime", _runtime), ("kms", _kms)):
        for entry in sorted(entry_points(group=GROUPS[kind]), key=lambda e: e.name):
            origin = _origin(entry)
            try:
                details, problem = describe(entry.load()), None
            except Exception as exc:  # a broken third-party package is a row with its problem, not a crash
                details, problem = entry.value, f"{entry.value} failed to load: {type(exc).__name__}: {exc}"
            rows.append(PluginRow(kind, entry.name, origin, None, details, problem))
    return rows


def _connector(declared: object) -> str:
    from dativo.sdk_connectors import Connector

    if not isinstance(declared, Connector):
        raise TypeError(f"a {type(declared).__name__}, not a dativo.sdk_connectors.Connector")
    parts = []
    if declared.is_source:
        reader = declared.default_reader({}) if declared.choose_reader else declared.reader
        chosen = f" (chosen per job, else {declared.reader})" if declared.choose_reader else ""
        parts.append(f"source, reader: {reader or 'none (name one)'}{chosen}")
        if declared.change_reader:
            parts.append(f"changes: {declared.change_reader}")
        if declared.planner:
            parts.append("source planner")
    if declared.is_target:
        parts.append(f"target, writer: {declared.writer or 'none (name one)'}")
    return "; ".join(parts)


def _runtime(runtime: object) -> str:
    from dativo.core.hosting import LazyRuntime, Runtime

    if not isinstance(runtime, Runtime):
        raise TypeError("it does not define host_reader and host_writer")
    if isinstance(runtime, ModuleType):
        return f"module {runtime.__name__}"
    if isinstance(runtime, LazyRuntime):
        return f"{runtime.target} (imported when first used)"
    return f"{type(runtime).__module__}.{type(runtime).__qualname__}"


def _kms(cls: object) -> str:
    from dativo.encryption.kms import KmsClient

    if not (isinstance(cls, type) and issubclass(cls, KmsClient)):
        raise TypeError("not a subclass of dativo.encryption.kms.KmsClient")
    return f"{cls.__module__}.{cls.__qualname__}"


def _origin(entry: EntryPoint) -> str:
    return f"{entry.dist.name} {entry.dist.version}" if entry.dist is not None else "unknown distribution"
