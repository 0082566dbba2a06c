"""What the conformance checks share: the certification context, the pass/fail/skip signals, small helpers.

A check function takes a :class:`Context` and returns a one-line message (pass),
or raises :class:`Failed` (what was seen) or :class:`Skipped` (why it cannot run).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from dativo.core.batches import as_record_batches
from dativo.sdk import DataReader, DataWriter
from dativo.testing.host import PluginUnderTest
from dativo.testing.scenarios import Scenarios
from dativo.testing.type_table import sample_table

__all__ = ["Context", "Failed", "Skipped", "close_twice", "describe", "quietly_closed", "schema_difference"]


class Failed(Exception):
    """A rule failed; the message says what was seen."""


class Skipped(Exception):
    """A rule cannot run; the message says why."""


def describe(exc: BaseException) -> str:
    """``Type: first line of the message`` of ``exc``, for a result message."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def quietly_closed(plugin: DataReader | DataWriter | None) -> Iterator[None]:
    """Close ``plugin`` when the block ends, ignoring what ``close()`` raises (a rule of its own checks that)."""
    try:
        yield
    finally:
        if plugin is not None:
            with contextlib.suppress(Exception):
                plugin.close()


class Context:
    """What the checks of one certification share: the plugin, its scenarios, a work folder, cached reads."""

    def __init__(self, target: PluginUnderTest, scenarios: Scenarios, workdir: Path) -> None:
        self.target = target
        self.scenarios = scenarios
        self.workdir = workdir
        self.name = target.implementation or target.label
        self._standard: tuple[pa.Schema, list[pa.RecordBatch], pa.Schema] | BaseException | None = None
        self._written: tuple[dict[str, Any] | None, Path, dict[str, Any]] | BaseException | None = None
        self._counter = 0

    # -- readers -----------------------------------------------------------------------------------

    def source(self, scenario: str) -> dict[str, Any]:
        """The reader config of ``scenario`` (as a job's plan builds it); raises Skipped when it was not given."""
        section = getattr(self.scenarios, scenario)
        if section is None:
            raise Skipped(f"no '{scenario}' scenario was given (add it to the scenario file or Scenarios)")
        config: dict[str, Any] = {
            "connector": "custom",
            "connection": {},
            "table": None,
            "query": None,
            "path": None,
            "format": None,
            "cast_to_text": [],
            "options": {},
        }
        config.update(dict(section))
        config["job"] = {"name": "certify", "dir": str(self.workdir), "run_id": uuid.uuid4().hex}
        return config

    def read(self, scenario: str, batch_size: int) -> tuple[pa.Schema, list[pa.RecordBatch], pa.Schema]:
        """(declared schema, batches, schema asked again after reading); raises what the plugin raises."""
        reader = self.target.reader(self.source(scenario))
        with quietly_closed(reader):
            declared = reader.get_schema()
            batches = [batch for item in reader.read_batch(batch_size) for batch in as_record_batches(item, self.name)]
            after = reader.get_schema()
        return declared, batches, after

    def standard(self) -> tuple[pa.Schema, list[pa.RecordBatch], pa.Schema]:
        """The standard scenario read once with read_batch(1024) (cached); raises Failed if that read raised."""
        if self._standard is None:
            try:
                self._standard = self.read("standard", 1024)
            except Exception as exc:
                self._standard = exc
        if isinstance(self._standard, BaseException):
            raise Failed(f"reading the standard scenario raised {describe(self._standard)}")
        return self._standard

    # -- writers -----------------------------------------------------------------------------------

    def target_config(self) -> tuple[dict[str, Any], Path]:
        """A writer config for a fresh target folder under the work folder, and that folder."""
        self._counter += 1
        path = self.workdir / f"target-{self._counter}"
        config: dict[str, Any] = {"connector": "custom", "table": None, "catalog": {}, "connection": {}, "options": {}}
        config.update(dict(self.scenarios.standard))
        config["path"] = str(path)
        config["mode"] = "append"
        config["job"] = {"name": "certify", "dir": str(self.workdir), "run_id": uuid.uuid4().hex}
        return config, path

    def writer(self) -> tuple[DataWriter, Path]:
        """A fresh, initialized writer on a fresh target folder; raises what ``initialize`` raises."""
        config, path = self.target_config()
        return self.target.writer(config, writable=[self.workdir]), path

    def written(self) -> tuple[dict[str, Any] | None, Path, dict[str, Any]]:
        """(finalize()'s return value, target folder, the writer's config) of writing the sample table once."""
        if self._written is None:
            try:
                config, path = self.target_config()
                writer = self.target.writer(config, writable=[self.workdir])
                with quietly_closed(writer):
                    table = sample_table()
                    writer.prepare(table.schema)
                    for batch in table.to_batches(max_chunksize=3):
                        writer.write_batch(batch)
                    self._written = (writer.finalize(), path, config)
            except Exception as exc:
                self._written = exc
        if isinstance(self._written, BaseException):
            raise Failed(f"writing the type table raised {describe(self._written)}")
        return self._written


def schema_difference(batch: pa.RecordBatch, schema: pa.Schema) -> str | None:
    """How ``batch``'s columns differ from ``schema`` (names, order, types), or None when they match."""
    actual = batch.schema
    if actual.names != schema.names:
        return f"has columns {actual.names}, declared {schema.names}"
    for got, want in zip(actual, schema, strict=True):
        if got.type != want.type:
            return f"has column '{got.name}' as {got.type}, declared {want.type}"
    return None


def close_twice(plugin: DataReader | DataWriter, when: str) -> None:
    """Call ``close()`` twice; raises Failed naming the call and ``when`` if either raises."""
    for call in ("first", "second"):
        try:
            plugin.close()
        except Exception as exc:
            raise Failed(f"close() raised {describe(exc)} on the {call} call {when}") from None
