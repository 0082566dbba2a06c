"""Scenarios: the configurations the conformance suite initializes a plugin with (``conformance.yaml``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from dativo.errors import ConfigError

__all__ = ["LOSSLESS_WIDENINGS", "ReadBack", "Scenarios", "load_read_back"]

_SCENARIO_KEYS = ("standard", "empty", "large_values", "error", "all_types")

#: Reads a writer's files back for ``writer.types-roundtrip``: ``(files finalize() listed, the writer's
#: initialize config) -> pyarrow.Table``.
ReadBack = Callable[[list[str], Mapping[str, Any]], pa.Table]

#: The widenings a writer may declare in ``widens``: every value of the first type is a value of the second.
LOSSLESS_WIDENINGS: frozenset[tuple[str, str]] = frozenset(
    {("int16", "int32"), ("int16", "int64"), ("int32", "int64"), ("float32", "float64")}
)


@dataclass(frozen=True)
class Scenarios:
    """Configurations (sections of ``source:`` / ``target:``) the suite initializes the plugin with.

    Readers: ``standard`` reads a small, deterministic, non-empty dataset (the
    same rows on every read); ``empty`` reads no rows; ``large_values`` produces
    at least one text/binary value of 1 MiB or more; ``error`` fails (at
    initialize or mid-stream); ``all_types`` produces the types of the type
    table the source can produce. Writers: ``standard`` only (``path`` is set by
    the suite to a fresh folder). A missing scenario skips the rules that need it.

    ``read_back`` (writers whose files a plain Parquet reader cannot open, such as
    encrypted Parquet): a :data:`ReadBack` function, or its import path
    ``"pkg.module:function"``, that ``writer.types-roundtrip`` reads the written
    files with instead of ``pyarrow.parquet``. ``widens`` (writers whose format has
    no such type, such as Iceberg without 16-bit integers): ``{"int16": "int32"}``,
    a lossless widening the round trip then accepts for that type, values compared
    after the same widening; only those of :data:`LOSSLESS_WIDENINGS` can be declared.
    """

    standard: Mapping[str, Any] = field(default_factory=dict)
    empty: Mapping[str, Any] | None = None
    large_values: Mapping[str, Any] | None = None
    error: Mapping[str, Any] | None = None
    all_types: Mapping[str, Any] | None = None
    read_back: str | ReadBack | None = None
    widens: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "scenarios") -> Scenarios:
        """Build from a mapping such as ``{"standard": {"options": {...}}, "empty": {...}}``; ConfigError otherwise."""
        unknown = sorted(set(data) - {*_SCENARIO_KEYS, "read_back", "widens"})
        if unknown:
            raise ConfigError(
                f"{where}: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(_SCENARIO_KEYS)} "
                "(and read_back, widens)"
            )
        widens = data.get("widens") or {}
        if not isinstance(widens, Mapping):
            raise ConfigError(f"{where}: widens must be a mapping such as {{int16: int32}}")
        for narrow, wide in widens.items():
            if (str(narrow), str(wide)) not in LOSSLESS_WIDENINGS:
                known = ", ".join(f"{a} -> {b}" for a, b in sorted(LOSSLESS_WIDENINGS))
                raise ConfigError(f"{where}: widens {narrow} -> {wide} is not a lossless widening (known: {known})")
        read_back = data.get("read_back")
        if read_back is not None and not callable(read_back) and not (isinstance(read_back, str) and ":" in read_back):
            raise ConfigError(f"{where}: read_back must be an import path 'pkg.module:function', not {read_back!r}")
        values: dict[str, Any] = {}
        for key in _SCENARIO_KEYS:
            value = data.get(key)
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(f"{where}: scenario '{key}' must be a mapping (e.g. {{options: {{rows: 10}}}})")
            values[key] = value
        values["standard"] = values["standard"] or {}
        return cls(**values, read_back=read_back, widens={str(k): str(v) for k, v in widens.items()})

    @classmethod
    def from_file(cls, path: Path, kind: str) -> Scenarios:
        """Load the ``reader:``/``writer:`` part of a YAML scenario file (``conformance.yaml``); ConfigError if bad."""
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read the scenario file {path}: {exc}") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: expected a mapping with 'reader:' and/or 'writer:'")
        section = data.get(kind, {}) or {}
        if not isinstance(section, Mapping):
            raise ConfigError(f"{path}: '{kind}:' must be a mapping of scenarios")
        return cls.from_mapping(section, f"{path} ({kind})")


def load_read_back(read_back: str | ReadBack) -> ReadBack:
    """The function ``read_back`` names (``"pkg.module:function"``); ConfigError when it cannot be imported."""
    if callable(read_back):
        return read_back
    module, _, name = read_back.partition(":")
    try:
        function = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"scenarios: read_back '{read_back}' cannot be imported: {exc}") from None
    if not callable(function):
        raise ConfigError(f"scenarios: read_back '{read_back}' is a {type(function).__name__}, not a function")
    return function  # type: ignore[no-any-return]
