"""Jobs with ``streams:``: many source tables (or queries) in one file; see docs/many-tables.md.

A streams file is expanded, stream by stream, into ordinary single-table jobs:
``defaults:`` deep-merged with the stream's own ``source:`` / ``target:``, the
stream's key as ``source.table`` (unless the stream gives a ``query``), and the
target name filled from its template (``raw.{schema}_{table}``). Each expanded
job is validated exactly like a single-table file, and a problem points at the
line that caused it: the stream's override if it has the key, else ``defaults:``.
Wildcard keys (``public.*``) keep the pattern as their table until the engine
resolves them against the source (dativo.engine.streams).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydantic.main
from pydantic import ConfigDict, Field

from dativo.config.models import EngineConfig, _Strict

__all__ = [
    "PLACEHOLDERS",
    "LoadedStreams",
    "StreamDefaults",
    "StreamEntry",
    "StreamLines",
    "StreamSpec",
    "StreamsJobConfig",
    "deep_merge",
    "fill_template",
    "is_wildcard",
    "merged_stream",
    "split_name",
]

KeyPath = tuple[str | int, ...]

#: What a target name template may use: ``{schema}``, ``{table}`` (of the source table),
#: ``{stream}`` (the stream's name) and ``{job}`` (the job's name).
PLACEHOLDERS = ("schema", "table", "stream", "job")
_WILDCARD = re.compile(r"[*?\[]")
_PATH_TARGETS = {"parquet", "encrypted-parquet"}
#: The streams models' validators are built when a streams file is first validated, not when a single-table
#: job is loaded (~2 ms of every run's start-up, issue 15); validation and errors are the same. Only with a
#: pydantic whose model rebuilds are thread-safe (its global rebuild lock, pydantic#13438): before it, two
#: threads first validating a deferred model could use its parent's validator (pydantic#11849).
_DEFERRED = ConfigDict(defer_build=getattr(pydantic.main, "_rebuild_lock", None) is not None)


class StreamSpec(_Strict):
    """One entry of ``streams:`` — overrides of ``defaults:`` for this stream."""

    model_config = _DEFERRED

    source: dict[str, Any] = Field(default_factory=dict, description="Merged over defaults.source.")
    target: dict[str, Any] = Field(default_factory=dict, description="Merged over defaults.target.")
    exclude: list[str] = Field(
        default_factory=list, description="Wildcard streams: tables to leave out (names or patterns)."
    )


class StreamDefaults(_Strict):
    """``defaults:`` — the source and target settings every stream starts from."""

    model_config = _DEFERRED

    source: dict[str, Any] = Field(default_factory=dict)
    target: dict[str, Any] = Field(default_factory=dict)


class StreamsJobConfig(_Strict):
    """A job file with ``streams:``."""

    model_config = _DEFERRED

    version: Literal[1] = 1
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]+$")
    defaults: StreamDefaults = Field(default_factory=StreamDefaults)
    streams: dict[str, StreamSpec | str | None] = Field(min_length=1)
    engine: EngineConfig = Field(default_factory=EngineConfig)  # type: ignore[arg-type]  # pydantic fills defaults


def is_wildcard(key: str) -> bool:
    """Whether a stream key is a pattern (``public.*``, ``sales.order_?``, ``[ab]*``)."""
    return _WILDCARD.search(key) is not None


def split_name(name: str) -> tuple[str, str]:
    """``"public.orders"`` -> ``("public", "orders")``; a name without a schema gets ``""``."""
    schema, _, table = name.rpartition(".")
    return schema, table


def fill_template(template: str, stream: str, job: str) -> str:
    """Fill ``{schema}``, ``{table}``, ``{stream}``, ``{job}`` in a target name; raises KeyError/ValueError."""
    schema, table = split_name(stream)
    values = {"schema": schema, "table": table, "stream": stream, "job": job}
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is not None and (name not in values or spec or conversion):
            raise KeyError(name)
    return template.format_map(values)


@dataclass(frozen=True)
class StreamEntry:
    """One ``streams:`` entry after merging: a validated single-table job (a pattern's table is the pattern)."""

    key: str
    job: Any  # dativo.config.loader.LoadedJob (not imported: the loader imports this module)
    exclude: tuple[str, ...] = ()
    #: ``{"table": ...}`` or ``{"path": ...}``: the target name before its placeholders were filled.
    templates: Mapping[str, str] = field(default_factory=dict)

    @property
    def wildcard(self) -> bool:
        """True for a pattern of table names, resolved against the source when the job is planned."""
        return self.job.config.source.query is None and is_wildcard(self.key)


@dataclass(frozen=True)
class LoadedStreams:
    """A validated streams file: its entries in file order, plus where it came from."""

    config: StreamsJobConfig
    path: Path
    dir: Path
    entries: tuple[StreamEntry, ...]
    lines: Mapping[KeyPath, int] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        """The job's name: ``name:`` from the file, else the file name without extension."""
        return self.config.name or self.path.stem

    def locate(self, key: str) -> str:
        """``FILE:LINE`` of a dotted key of the file (``"streams"``), or of its closest parent present."""
        parts = tuple(key.split("."))
        for end in range(len(parts), -1, -1):
            if parts[:end] in self.lines:
                return f"{self.path}:{self.lines[parts[:end]]}"
        return f"{self.path}:1"


class StreamLines(Mapping[KeyPath, int]):
    """The lines of one stream's job keys: the stream's override where it has the key, else ``defaults:``."""

    def __init__(self, lines: Mapping[KeyPath, int], key: str) -> None:
        self._lines = lines
        self._key = key

    def origin(self, path: KeyPath) -> KeyPath:
        """Where in the file the stream's key ``path`` comes from (its deepest existing prefix decides)."""
        for end in range(len(path), 0, -1):
            for candidate in (("streams", self._key, *path[:end]), ("defaults", *path[:end])):
                if candidate in self._lines:
                    return (*candidate[: len(candidate) - end], *path)
        return ("streams", self._key, *path)

    def __getitem__(self, path: KeyPath) -> int:
        if path == ():
            return self._lines[("streams", self._key)]
        for candidate in (("streams", self._key, *path), ("defaults", *path)):
            if candidate in self._lines:
                return self._lines[candidate]
        raise KeyError(path)

    def __iter__(self) -> Iterator[KeyPath]:
        prefix = ("streams", self._key)
        for path in self._lines:
            if path[:2] == prefix:
                yield path[2:]
            elif path[:1] == ("defaults",):
                yield path[1:]

    def __len__(self) -> int:
        return sum(1 for _ in self)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``; nested mappings merge, everything else (lists included) is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def merged_stream(
    config: StreamsJobConfig, key: str, job_name: str, *, fill: bool = True
) -> tuple[dict[str, Any], dict[str, str]]:
    """The single-table job dict of stream ``key`` and its target templates (filled unless ``fill`` is False).

    Raises KeyError naming a placeholder the template may not use.
    """
    spec = config.streams[key]
    override = spec if isinstance(spec, StreamSpec) else StreamSpec()
    source = deep_merge(config.defaults.source, override.source)
    target = deep_merge(config.defaults.target, override.target)
    if isinstance(spec, str):
        target["path" if target.get("connector") in _PATH_TARGETS else "table"] = spec
    if source.get("query") is None:
        source["table"] = key
    templates: dict[str, str] = {}
    for name in ("table", "path"):
        value = target.get(name)
        if isinstance(value, str) and "{" in value:
            templates[name] = value
            if fill:
                target[name] = fill_template(value, key, job_name)
    job = {"version": 1, "name": job_name, "source": source, "target": target, "engine": config.engine.model_dump()}
    return job, templates
