"""The conformance checks: every rule of the reader and writer contracts, as functions with structured results.

:func:`certify` runs every rule for one :class:`~dativo.testing.host.PluginUnderTest`
and returns a :class:`Report`; :func:`run_rule` runs one. A check never raises
for a misbehaving plugin: whatever the plugin does (raise, hang up, leak) ends
up as a ``fail`` result naming the rule and what was seen. ``skip`` means the
rule needs a scenario the caller did not give (say, no ``error`` scenario).

Scenarios are sections of a job's ``source:`` (readers) or ``target:``
(writers) — usually just ``options`` — under which the plugin behaves in a
known way (see :class:`Scenarios` and ``docs/plugin-kit.md``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from dativo.core.batches import as_record_batches
from dativo.errors import ConfigError
from dativo.sdk import SDK_API_VERSION, DataReader, DataWriter
from dativo.testing.host import PluginUnderTest
from dativo.testing.type_table import FOUNDATION_TYPES, is_foundation_type, sample_table, storage_type, type_name

__all__ = [
    "READER_RULES",
    "WRITER_RULES",
    "CheckResult",
    "Report",
    "Rule",
    "Scenarios",
    "Status",
    "certify",
    "run_rule",
]

Status = Literal["pass", "fail", "skip"]

#: The smallest value the ``large_values`` scenario must produce.
LARGE_VALUE_BYTES = 1024 * 1024
#: How long released threads, descriptors and processes may take to disappear after ``close()``.
RELEASE_WAIT_S = 5.0


@dataclass(frozen=True)
class Rule:
    """One rule of a plugin contract: its id (``reader.empty-source``) and what it demands."""

    id: str
    title: str
    required: bool = True


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one rule: pass, fail (with what was seen) or skip (with why)."""

    rule: str
    title: str
    status: Status
    message: str
    required: bool = True
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``dativo plugins certify --json``)."""
        return asdict(self)


@dataclass
class Report:
    """Every result for one plugin in one runtime; ``passed`` when no required rule failed."""

    plugin: str
    kind: str
    runtime: str
    results: list[CheckResult] = field(default_factory=list)
    sdk_version: str = SDK_API_VERSION

    @property
    def passed(self) -> bool:
        """True when every required rule passed or was skipped."""
        return not any(result.status == "fail" and result.required for result in self.results)

    @property
    def failed_rules(self) -> list[str]:
        """Ids of the rules that failed (required or not)."""
        return [result.rule for result in self.results if result.status == "fail"]

    def result(self, rule: str) -> CheckResult:
        """The result of ``rule``; KeyError when it was not run."""
        for result in self.results:
            if result.rule == rule:
                return result
        raise KeyError(rule)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "plugin": self.plugin,
            "kind": self.kind,
            "runtime": self.runtime,
            "sdk_version": self.sdk_version,
            "passed": self.passed,
            "results": [result.to_dict() for result in self.results],
        }


_SCENARIO_KEYS = ("standard", "empty", "large_values", "error", "all_types")


@dataclass(frozen=True)
class Scenarios:
    """Configurations (sections of ``source:`` / ``target:``) the suite initializes the plugin with.

    Readers: ``standard`` reads a small, deterministic, non-empty dataset (the
    same rows on every read); ``empty`` reads no rows; ``large_values`` produces
    at least one text/binary value of 1 MiB or more; ``error`` fails (at
    initialize or mid-stream); ``all_types`` produces the types of the type
    table the source can produce. Writers: ``standard`` only (``path`` is set by
    the suite to a fresh folder). A missing scenario skips the rules that need it.
    """

    standard: Mapping[str, Any] = field(default_factory=dict)
    empty: Mapping[str, Any] | None = None
    large_values: Mapping[str, Any] | None = None
    error: Mapping[str, Any] | None = None
    all_types: Mapping[str, Any] | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "scenarios") -> Scenarios:
        """Build from a mapping such as ``{"standard": {"options": {...}}, "empty": {...}}``; ConfigError otherwise."""
        unknown = sorted(set(data) - set(_SCENARIO_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(_SCENARIO_KEYS)}")
        values: dict[str, Any] = {}
        for key in _SCENARIO_KEYS:
            value = data.get(key)
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(f"{where}: scenario '{key}' must be a mapping (e.g. {{options: {{rows: 10}}}})")
            values[key] = value
        values["standard"] = values["standard"] or {}
        return cls(**values)

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


READER_RULES: dict[str, Rule] = {
    rule.id: rule
    for rule in (
        Rule("reader.schema-before-data", "get_schema() returns a pyarrow.Schema before any data, the same every call"),
        Rule("reader.batches-match-schema", "every batch is valid Arrow with exactly the declared names, order, types"),
        Rule("reader.schema-stable", "the schema does not change mid-stream or after reading"),
        Rule("reader.batch-size-hint", "batches respect read_batch(batch_size) within a factor of two"),
        Rule("reader.empty-source", "an empty source declares its schema and ends with zero rows"),
        Rule("reader.errors-raise", "a failure raises an exception, never ends the data early"),
        Rule("reader.close-idempotent", "close() is safe twice, after reading, mid-stream and after errors"),
        Rule("reader.cancel-releases", "stopping mid-stream and closing releases threads, files and processes"),
        Rule("reader.large-values", "multi-MB text/binary values arrive intact"),
        Rule("reader.types", "every column is a type of the type table (docs/types.md) and reads back valid"),
    )
}

WRITER_RULES: dict[str, Rule] = {
    rule.id: rule
    for rule in (
        Rule("writer.types-roundtrip", "every type of the type table, NULLs included, reads back unchanged"),
        Rule("writer.finalize-metadata", "finalize() returns a JSON-ready dict with 'rows' (and 'files' as a list)"),
        Rule("writer.empty", "zero rows: prepare() then finalize() succeeds and reports rows = 0"),
        Rule("writer.abort-leaves-nothing", "abort() after prepare/write leaves no file behind"),
        Rule("writer.write-after-finalize", "write_batch() after finalize() raises"),
        Rule("writer.close-idempotent", "close() is safe twice, after finalize, after abort, without prepare"),
    )
}


class _Failed(Exception):
    """A rule failed; the message says what was seen."""


class _Skipped(Exception):
    """A rule cannot run; the message says why."""


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def _quietly_closed(plugin: DataReader | DataWriter | None) -> Iterator[None]:
    try:
        yield
    finally:
        if plugin is not None:
            with contextlib.suppress(Exception):
                plugin.close()


class _Context:
    """What the checks of one certification share: the plugin, its scenarios, a work folder, cached reads."""

    def __init__(self, target: PluginUnderTest, scenarios: Scenarios, workdir: Path) -> None:
        self.target = target
        self.scenarios = scenarios
        self.workdir = workdir
        self.name = target.implementation or target.label
        self._standard: tuple[pa.Schema, list[pa.RecordBatch], pa.Schema] | BaseException | None = None
        self._written: tuple[dict[str, Any] | None, Path] | BaseException | None = None
        self._counter = 0

    # -- readers -----------------------------------------------------------------------------------

    def source(self, scenario: str) -> dict[str, Any]:
        section = getattr(self.scenarios, scenario)
        if section is None:
            raise _Skipped(f"no '{scenario}' scenario was given (add it to the scenario file or Scenarios)")
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
        with _quietly_closed(reader):
            declared = reader.get_schema()
            batches = [batch for item in reader.read_batch(batch_size) for batch in as_record_batches(item, self.name)]
            after = reader.get_schema()
        return declared, batches, after

    def standard(self) -> tuple[pa.Schema, list[pa.RecordBatch], pa.Schema]:
        if self._standard is None:
            try:
                self._standard = self.read("standard", 1024)
            except Exception as exc:
                self._standard = exc
        if isinstance(self._standard, BaseException):
            raise _Failed(f"reading the standard scenario raised {_describe(self._standard)}")
        return self._standard

    # -- writers -----------------------------------------------------------------------------------

    def target_config(self) -> tuple[dict[str, Any], Path]:
        self._counter += 1
        path = self.workdir / f"target-{self._counter}"
        config: dict[str, Any] = {"connector": "custom", "table": None, "catalog": {}, "connection": {}, "options": {}}
        config.update(dict(self.scenarios.standard))
        config["path"] = str(path)
        config["mode"] = "append"
        config["job"] = {"name": "certify", "dir": str(self.workdir), "run_id": uuid.uuid4().hex}
        return config, path

    def writer(self) -> tuple[DataWriter, Path]:
        config, path = self.target_config()
        return self.target.writer(config, writable=[self.workdir]), path

    def written(self) -> tuple[dict[str, Any] | None, Path]:
        """(finalize()'s return value, target folder) of writing the sample table once."""
        if self._written is None:
            try:
                writer, path = self.writer()
                with _quietly_closed(writer):
                    table = sample_table()
                    writer.prepare(table.schema)
                    for batch in table.to_batches(max_chunksize=3):
                        writer.write_batch(batch)
                    self._written = (writer.finalize(), path)
            except Exception as exc:
                self._written = exc
        if isinstance(self._written, BaseException):
            raise _Failed(f"writing the type table raised {_describe(self._written)}")
        return self._written


# ------------------------------------------------------------------------------------------------
# Reader rules
# ------------------------------------------------------------------------------------------------


def _schema_difference(batch: pa.RecordBatch, schema: pa.Schema) -> str | None:
    actual = batch.schema
    if actual.names != schema.names:
        return f"has columns {actual.names}, declared {schema.names}"
    for got, want in zip(actual, schema, strict=True):
        if got.type != want.type:
            return f"has column '{got.name}' as {got.type}, declared {want.type}"
    return None


def _reader_schema_before_data(ctx: _Context) -> str:
    reader = ctx.target.reader(ctx.source("standard"))
    with _quietly_closed(reader):
        first = reader.get_schema()
        if not isinstance(first, pa.Schema):
            raise _Failed(f"get_schema() returned {type(first).__name__}, not a pyarrow.Schema")
        if len(first) == 0:
            raise _Failed("get_schema() declares no columns")
        again = reader.get_schema()
        if not again.equals(first):
            raise _Failed(f"get_schema() changed between two calls: {first} then {again}")
    return f"{len(first)} columns declared before any data"


def _reader_batches_match(ctx: _Context) -> str:
    declared, batches, _ = ctx.standard()
    rows = sum(batch.num_rows for batch in batches)
    if rows == 0:
        raise _Failed("the standard scenario produced no rows; it must read a small non-empty dataset")
    for index, batch in enumerate(batches):
        try:
            batch.validate(full=True)
        except pa.ArrowInvalid as exc:
            raise _Failed(f"batch {index} is not valid Arrow: {_describe(exc)}") from None
        difference = _schema_difference(batch, declared)
        if difference is not None:
            raise _Failed(f"batch {index} {difference}")
    return f"{len(batches)} batches, {rows} rows, all with the declared schema"


def _reader_schema_stable(ctx: _Context) -> str:
    declared, batches, after = ctx.standard()
    rows = sum(batch.num_rows for batch in batches)
    hint = max(1, rows // 8)
    try:
        _, small, _ = ctx.read("standard", hint)  # many batches: a change after the first shows
    except Exception as exc:
        raise _Failed(f"reading the standard scenario with read_batch({hint}) raised {_describe(exc)}") from None
    for label, stream in (("read_batch(1024)", batches), (f"read_batch({hint})", small)):
        if stream and _schema_difference(stream[0], declared) is None:
            for index, batch in enumerate(stream[1:], start=1):
                difference = _schema_difference(batch, stream[0].schema)
                if difference is not None:
                    raise _Failed(
                        f"the schema changed mid-stream ({label}): batch {index} {difference} (batch 0 did not)"
                    )
    if not after.equals(declared):
        raise _Failed(f"get_schema() after reading returned {after}, before reading {declared}")
    return "one schema from get_schema() to the last batch"


def _reader_batch_size(ctx: _Context) -> str:
    _, batches, _ = ctx.standard()
    rows = sum(batch.num_rows for batch in batches)
    if rows < 8:
        raise _Skipped(f"the standard scenario has {rows} rows; 8 or more are needed to test batch sizes")
    hint = max(1, rows // 8)
    _, small, _ = ctx.read("standard", hint)
    sizes = [batch.num_rows for batch in small]
    if sum(sizes) != rows:
        raise _Failed(
            f"read_batch({hint}) returned {sum(sizes)} rows, read_batch(1024) {rows}: "
            "the data must not depend on the batch size"
        )
    largest = max(sizes, default=0)
    if largest > 2 * hint:
        raise _Failed(f"read_batch({hint}) yielded a batch of {largest} rows (more than twice the hint)")
    return f"read_batch({hint}): {len(sizes)} batches of at most {largest} rows"


def _reader_empty(ctx: _Context) -> str:
    declared, batches, _ = ctx.read("empty", 1024)
    rows = sum(batch.num_rows for batch in batches)
    if rows:
        raise _Failed(f"the empty scenario produced {rows} rows")
    for index, batch in enumerate(batches):
        difference = _schema_difference(batch, declared)
        if difference is not None:
            raise _Failed(f"empty batch {index} {difference}")
    return f"schema with {len(declared)} columns, zero rows, normal end"


def _reader_errors_raise(ctx: _Context) -> str:
    config = ctx.source("error")
    rows = 0
    try:
        reader = ctx.target.reader(config)
    except Exception as exc:
        return f"initialize() raised {_describe(exc)}"
    with _quietly_closed(reader):
        try:
            reader.get_schema()
            for item in reader.read_batch(256):
                rows += sum(batch.num_rows for batch in as_record_batches(item, ctx.name))
        except Exception as exc:
            return f"raised {_describe(exc)} after {rows} rows"
    raise _Failed(
        f"the error scenario ended normally after {rows} rows: a failure must raise, never end the data early"
    )


def _close_twice(plugin: DataReader | DataWriter, when: str) -> None:
    for call in ("first", "second"):
        try:
            plugin.close()
        except Exception as exc:
            raise _Failed(f"close() raised {_describe(exc)} on the {call} call {when}") from None


def _reader_close(ctx: _Context) -> str:
    reader = ctx.target.reader(ctx.source("standard"))
    reader.get_schema()
    _close_twice(reader, "without reading")
    reader = ctx.target.reader(ctx.source("standard"))
    stream = reader.read_batch(1)
    try:
        next(iter(stream), None)
    finally:
        with contextlib.suppress(Exception):
            stream.close()  # type: ignore[attr-defined]  # a generator, usually
    _close_twice(reader, "mid-stream")
    checked = "without reading, mid-stream"
    if ctx.scenarios.error is not None:
        try:
            failing = ctx.target.reader(ctx.source("error"))
        except Exception:
            failing = None  # failed in initialize: the runtime closed it already
        if failing is not None:
            with contextlib.suppress(Exception):
                for _ in failing.read_batch(256):
                    pass
            _close_twice(failing, "after the error scenario failed")
            checked += ", after an error"
    return f"close() twice is safe ({checked})"


def _open_fds() -> set[int]:
    try:
        return {int(name) for name in os.listdir("/proc/self/fd")}
    except OSError:
        return set()


def _children() -> set[int]:
    me = str(os.getpid())
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            found.add(int(entry))
    return found


def _stop_early_and_close(ctx: _Context, rows: int) -> None:
    reader = ctx.target.reader(ctx.source("standard"))
    try:
        reader.get_schema()
        stream = reader.read_batch(max(1, rows // 8))
        next(iter(stream), None)
        try:
            stream.close()  # type: ignore[attr-defined]  # what the engine does when it stops early
        except RuntimeError as exc:
            raise _Failed(
                f"stopping the stream failed: {_describe(exc)} (a generator must not swallow GeneratorExit)"
            ) from None
    finally:
        with contextlib.suppress(Exception):
            reader.close()


def _reader_cancel(ctx: _Context) -> str:
    _, batches, _ = ctx.standard()  # also warms up lazily created pools (gRPC, drivers)
    rows = sum(batch.num_rows for batch in batches)
    # One untimed cycle first: what a stop-and-close creates once (a cache, a pool) is not a leak.
    _stop_early_and_close(ctx, rows)
    # A leak recurs with every cycle; a descriptor a background thread (gRPC, a server in the
    # same process) happened to hold during one measurement does not. Fail only if two cycles leak.
    leaks = _leaks_of_one_cycle(ctx, rows)
    if leaks:
        leaks = _leaks_of_one_cycle(ctx, rows)
    if leaks:
        raise _Failed(f"{RELEASE_WAIT_S:g} s after close(), still running/open: {'; '.join(leaks)}")
    return "after stopping mid-stream and close(): no thread, file descriptor or process left"


def _leaks_of_one_cycle(ctx: _Context, rows: int) -> list[str]:
    """Stop a read early, close it, and list what it left behind after waiting up to RELEASE_WAIT_S."""
    threads_before = {thread.ident for thread in threading.enumerate()}
    fds_before = _open_fds()
    children_before = _children()
    _stop_early_and_close(ctx, rows)
    deadline = time.monotonic() + RELEASE_WAIT_S
    while True:
        threads = [t for t in threading.enumerate() if t.ident not in threads_before and t.is_alive()]
        fds = _open_fds() - fds_before
        children = _children() - children_before
        if not (threads or fds or children):
            return []
        if time.monotonic() > deadline:
            leaks = []
            if threads:
                leaks.append(f"{len(threads)} thread(s) ({', '.join(sorted(t.name for t in threads))})")
            if fds:
                leaks.append(f"{len(fds)} file descriptor(s)")
            if children:
                leaks.append(f"{len(children)} child process(es)")
            return leaks
        time.sleep(0.05)


def _reader_large_values(ctx: _Context) -> str:
    declared, batches, _ = ctx.read("large_values", 1024)
    largest = 0
    for index, batch in enumerate(batches):
        batch.validate(full=True)
        difference = _schema_difference(batch, declared)
        if difference is not None:
            raise _Failed(f"batch {index} {difference}")
        for column in batch.columns:
            if (
                pa.types.is_string(column.type)
                or pa.types.is_binary(column.type)
                or pa.types.is_large_string(column.type)
                or pa.types.is_large_binary(column.type)
            ):
                lengths = pc.max(pc.binary_length(column)).as_py()
                largest = max(largest, lengths or 0)
    if largest < LARGE_VALUE_BYTES:
        raise _Failed(
            f"the largest text/binary value read is {largest} bytes; the large_values scenario must produce "
            f"one of at least {LARGE_VALUE_BYTES} bytes"
        )
    return f"largest value {largest / 1e6:.1f} MB, batches valid"


def _reader_types(ctx: _Context) -> str:
    declared, batches, _ = ctx.read("all_types", 1024)
    odd = [f"'{f.name}' ({f.type})" for f in declared if not is_foundation_type(f.type)]
    if odd:
        raise _Failed(f"column(s) {', '.join(odd)} are not types of the type table (docs/types.md)")
    for index, batch in enumerate(batches):
        try:
            batch.validate(full=True)
        except pa.ArrowInvalid as exc:
            raise _Failed(f"batch {index} is not valid Arrow: {_describe(exc)}") from None
        difference = _schema_difference(batch, declared)
        if difference is not None:
            raise _Failed(f"batch {index} {difference}")
    produced = {type_name(f.type.value_type if pa.types.is_list(f.type) else f.type) for f in declared}
    missing = [type_name(t) for t in FOUNDATION_TYPES if type_name(t) not in produced]
    rows = sum(batch.num_rows for batch in batches)
    note = f"; not produced: {', '.join(missing)}" if missing else ""
    return f"{len(declared)} columns, {rows} rows, all table types{note}"


# ------------------------------------------------------------------------------------------------
# Writer rules
# ------------------------------------------------------------------------------------------------


def _files_of(metadata: Mapping[str, Any], path: Path) -> list[Path]:
    listed = metadata.get("files")
    if isinstance(listed, list) and listed:
        return [Path(str(item)) for item in listed]
    return sorted(p for p in path.rglob("*.parquet") if not any(part.startswith((".", "_")) for part in p.parts[-1:]))


def _writer_roundtrip(ctx: _Context) -> str:
    metadata, path = ctx.written()
    if not isinstance(metadata, Mapping):
        raise _Skipped("finalize() returned no dict (see writer.finalize-metadata); nothing to read back")
    files = _files_of(metadata, path)
    if not files:
        raise _Skipped("no Parquet files were listed in finalize()'s 'files' or found under the target path")
    if any(str(file).startswith(("s3://", "gs://", "az://")) or file.suffix != ".parquet" for file in files):
        raise _Skipped("the written files are not local Parquet files; round-trips are checked for Parquet only")
    missing = [str(file) for file in files if not file.is_file()]
    if missing:
        raise _Failed(f"finalize() lists files that do not exist: {', '.join(missing[:3])}")
    expected = sample_table()
    try:
        got = pa.concat_tables([pq.read_table(file) for file in files], promote_options="permissive")
    except (pa.ArrowException, OSError) as exc:
        raise _Failed(f"reading the written Parquet back failed: {_describe(exc)}") from None
    if got.num_rows != expected.num_rows:
        raise _Failed(f"{got.num_rows} rows read back, {expected.num_rows} written")
    if "id" not in got.column_names:
        raise _Failed(f"column 'id' is missing from what was written (columns: {got.column_names})")
    got = got.sort_by("id")
    wrong: list[str] = []
    for name in expected.column_names:
        if name not in got.column_names:
            wrong.append(f"'{name}' missing")
            continue
        want = expected.column(name)
        have = got.column(name)
        if storage_type(have.type) != storage_type(want.type):
            wrong.append(f"'{name}' came back as {have.type}, written as {want.type}")
            continue
        have = _to_storage(have)
        if not have.equals(_to_storage(want)):
            wrong.append(f"'{name}' ({type_name(want.type)}) values differ: {have.to_pylist()[:3]}...")
    if wrong:
        raise _Failed("round-trip differs: " + "; ".join(wrong))
    return f"{len(expected.column_names)} columns of every table type read back equal from {len(files)} file(s)"


def _to_storage(array: pa.ChunkedArray) -> pa.ChunkedArray:
    if isinstance(array.type, pa.ExtensionType):
        return pa.chunked_array([chunk.storage for chunk in array.chunks], type=array.type.storage_type)
    return array


def _check_metadata(metadata: object, rows: int) -> str:
    if not isinstance(metadata, Mapping):
        raise _Failed(f"finalize() returned {type(metadata).__name__}; it must return a dict such as {{'rows': N}}")
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise _Failed(f"finalize()'s dict is not JSON-serialisable: {exc}") from None
    if "rows" not in metadata:
        raise _Failed(f"finalize()'s dict lacks 'rows' (keys: {', '.join(map(str, metadata)) or 'none'})")
    if metadata["rows"] != rows or isinstance(metadata["rows"], bool):
        raise _Failed(f"finalize() reports rows = {metadata['rows']!r}, but {rows} rows were written")
    files = metadata.get("files")
    if files is not None and not (isinstance(files, list) and all(isinstance(item, str) for item in files)):
        raise _Failed(f"finalize()'s 'files' must be a list of paths, not {files!r}")
    return f"{dict(metadata)}"[:200]


def _writer_metadata(ctx: _Context) -> str:
    metadata, _ = ctx.written()
    return _check_metadata(metadata, sample_table().num_rows)


def _writer_empty(ctx: _Context) -> str:
    writer, _ = ctx.writer()
    with _quietly_closed(writer):
        writer.prepare(sample_table().schema)
        metadata = writer.finalize()
    return _check_metadata(metadata, 0)


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _writer_abort(ctx: _Context) -> str:
    table = sample_table()
    for label, batches in (("after prepare()", []), ("after write_batch()", table.to_batches(max_chunksize=3))):
        before = _tree(ctx.workdir)
        writer, _ = ctx.writer()
        with _quietly_closed(writer):
            writer.prepare(table.schema)
            for batch in batches:
                writer.write_batch(batch)
            try:
                writer.abort()
            except Exception as exc:
                raise _Failed(f"abort() {label} raised {_describe(exc)}") from None
        left = sorted(set(_tree(ctx.workdir)) - set(before))
        if left:
            raise _Failed(f"abort() {label} left {len(left)} file(s) behind: {', '.join(left[:3])}")
    return "nothing left behind after abort() (after prepare, after writing)"


def _writer_after_finalize(ctx: _Context) -> str:
    table = sample_table()
    writer, _ = ctx.writer()
    with _quietly_closed(writer):
        writer.prepare(table.schema)
        writer.write_batch(table.to_batches()[0])
        writer.finalize()
        try:
            writer.write_batch(table.to_batches()[0])
        except Exception as exc:
            return f"raised {_describe(exc)}"
    raise _Failed("write_batch() after finalize() was accepted; it must raise (the data is already published)")


def _writer_close(ctx: _Context) -> str:
    table = sample_table()
    writer, _ = ctx.writer()
    _close_twice(writer, "without prepare()")
    writer, _ = ctx.writer()
    writer.prepare(table.schema)
    writer.write_batch(table.to_batches()[0])
    writer.finalize()
    _close_twice(writer, "after finalize()")
    writer, _ = ctx.writer()
    writer.prepare(table.schema)
    writer.abort()
    _close_twice(writer, "after abort()")
    return "close() twice is safe (without prepare, after finalize, after abort)"


_CHECKS: dict[str, Callable[[_Context], str]] = {
    "reader.schema-before-data": _reader_schema_before_data,
    "reader.batches-match-schema": _reader_batches_match,
    "reader.schema-stable": _reader_schema_stable,
    "reader.batch-size-hint": _reader_batch_size,
    "reader.empty-source": _reader_empty,
    "reader.errors-raise": _reader_errors_raise,
    "reader.close-idempotent": _reader_close,
    "reader.cancel-releases": _reader_cancel,
    "reader.large-values": _reader_large_values,
    "reader.types": _reader_types,
    "writer.types-roundtrip": _writer_roundtrip,
    "writer.finalize-metadata": _writer_metadata,
    "writer.empty": _writer_empty,
    "writer.abort-leaves-nothing": _writer_abort,
    "writer.write-after-finalize": _writer_after_finalize,
    "writer.close-idempotent": _writer_close,
}


def _run(ctx: _Context, rule: Rule) -> CheckResult:
    started = time.monotonic()
    status: Status
    try:
        message = _CHECKS[rule.id](ctx)
        status = "pass"
    except _Skipped as exc:
        status, message = "skip", str(exc)
    except _Failed as exc:
        status, message = "fail", str(exc)
    except Exception as exc:
        status, message = "fail", f"raised {_describe(exc)}"
    return CheckResult(rule.id, rule.title, status, message, rule.required, round(time.monotonic() - started, 3))


def _rules(kind: str) -> dict[str, Rule]:
    return READER_RULES if kind == "reader" else WRITER_RULES


def certify(
    target: PluginUnderTest,
    scenarios: Scenarios | Mapping[str, Any] | None = None,
    workdir: Path | None = None,
    rules: Sequence[str] | None = None,
) -> Report:
    """Run every rule (or ``rules``) of the plugin's kind against ``target``; never raises for a bad plugin.

    ``workdir`` holds what writers write (a temporary folder, removed afterwards, when None).
    Raises ConfigError for unknown rule ids or malformed scenarios.
    """
    if not isinstance(scenarios, Scenarios):
        scenarios = Scenarios.from_mapping(scenarios or {})
    known = _rules(target.kind)
    chosen = list(rules) if rules is not None else list(known)
    unknown = [rule for rule in chosen if rule not in known]
    if unknown:
        raise ConfigError(f"unknown {target.kind} rule(s): {', '.join(unknown)} (known: {', '.join(known)})")
    report = Report(plugin=target.label, kind=target.kind, runtime=target.runtime)
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dativo-certify-")))
        workdir.mkdir(parents=True, exist_ok=True)
        ctx = _Context(target, scenarios, workdir.resolve())
        report.results = [_run(ctx, known[rule]) for rule in chosen]
    return report


def run_rule(
    target: PluginUnderTest,
    rule: str,
    scenarios: Scenarios | Mapping[str, Any] | None = None,
    workdir: Path | None = None,
) -> CheckResult:
    """Run one rule (``reader.empty-source``); see :func:`certify`."""
    return certify(target, scenarios, workdir, [rule]).results[0]
