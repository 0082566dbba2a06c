"""The files reader (:class:`FileReader`): format options, schema, and reading files as Arrow batches.

The rules it follows are documented in :mod:`dativo.connectors.files`.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.dataset as ds
import pyarrow.json as pj

from dativo.connectors.files.errors import is_transient, one_line
from dativo.connectors.files.formats import FORMAT_ALIASES, FORMAT_OPTIONS, parse_arrow_type
from dativo.connectors.files.listing import FileLocation
from dativo.errors import ConfigError, PluginError, SchemaError, SourceError
from dativo.sdk import DataReader, PluginConfig, ReadPartition

__all__ = ["FileReader"]

_CSV_COLUMN = re.compile(r"In CSV column #(\d+)")
# pyarrow's wrapping around the real cause; the reader names the file itself.
_ARROW_PREFIXES = re.compile(
    r"Error creating dataset\. Could not read schema from '[^']*'\. Is this a '\w+' file\?: "
    r"|Could not open \w+ input source '[^']*': (?:Invalid: )?"
)
_ERRORS: tuple[type[BaseException], ...] = (pa.ArrowException, OSError, ValueError)
#: CSV and JSON lines are parsed in blocks; a row must fit in one. The first block is pyarrow's default
#: (1 MiB); a row that straddles two blocks makes the reader read that file again with blocks 8 times
#: larger (the rows already read skipped), up to _MAX_BLOCK (pyarrow's limit is below 2 GiB).
_FIRST_BLOCK = 1 << 20
_MAX_BLOCK = 1 << 30


def _straddles(exc: BaseException) -> bool:
    """Whether pyarrow failed because one row (a CSV record, a JSON line) is larger than its read block."""
    return isinstance(exc, pa.ArrowInvalid) and "straddl" in str(exc)


class FileReader(DataReader):
    """Read CSV, Parquet or JSON-lines files from a local path or ``s3://`` as Arrow batches.

    See the module documentation for the configuration keys and rules.

    Failure behaviour: :meth:`initialize` raises :class:`~dativo.errors.ConfigError`
    for a missing or invalid ``path``, ``format``, option or connection key,
    and :class:`~dativo.errors.SourceError` when the path does not exist,
    matches no file, or the first file cannot be read (its name in the message;
    S3 errors with secrets masked, network failures marked transient).
    :meth:`read_batch` raises ``SourceError`` naming the file for a garbled file
    and :class:`~dativo.errors.SchemaError` naming the file and column for a file
    whose columns or values do not fit the schema; it never ends early.
    """

    def __init__(self) -> None:
        self._location = FileLocation()
        self._files: list[str] = []
        self._format = ""
        self._schema: pa.Schema | None = None
        self._declared = False
        self._text_columns: frozenset[str] = frozenset()
        self._csv_read: dict[str, Any] = {}  # pcsv.ReadOptions arguments but block_size
        self._block = _FIRST_BLOCK
        self._csv_parse = pcsv.ParseOptions()
        self._csv_nulls: list[str] = [""]
        self._inspected: dict[str, pa.Schema] = {}
        self._closed = False

    # -- SDK -------------------------------------------------------------------

    def initialize(self, config: PluginConfig) -> None:
        """Resolve the path, list the files, settle the format and the schema.

        Raises ``ConfigError`` for bad configuration and ``SourceError`` for a
        path that does not exist, matches no file or whose first file cannot be
        read.
        """
        self.config = config
        path = config.get("path")
        if not isinstance(path, str) or not path.strip():
            raise ConfigError(
                "files reader: source.path is missing",
                hint="set path to a file, directory, glob or s3://bucket/prefix",
            )
        options = config.get("options") or {}
        if not isinstance(options, Mapping):
            raise ConfigError("files reader: source.options must be a mapping")
        connection = config.get("connection")
        declared_format = self._normalise_format(config.get("format"))
        text_columns = config.get("cast_to_text") or []
        if not isinstance(text_columns, list | tuple) or not all(isinstance(c, str) for c in text_columns):
            raise ConfigError("files reader: cast_to_text must be a list of column names")
        self._text_columns = frozenset(text_columns)

        location = self._location.open(path.strip(), connection, config.get("job") or {})
        self._files, self._format = self._location.list_files(location, declared_format)
        self._configure_format(options)

        declared = options.get("schema")
        if declared is not None:
            self._declared = True
            self._schema = self._declared_schema(declared)
        else:
            self._schema = self._inferred_schema(self._files[0])

    def get_schema(self) -> pa.Schema:
        """Return the schema settled by :meth:`initialize` (every field nullable).

        Raises :class:`~dativo.errors.PluginError` when called before ``initialize``.
        """
        if self._schema is None:
            raise PluginError("files reader: get_schema() called before initialize()")
        return self._schema

    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        """Stream every file in order as batches of at most ``batch_size`` rows with exactly the schema.

        Batches never span files. Raises ``SourceError`` naming the file when a
        file cannot be read or parsed, and ``SchemaError`` naming the file and
        the column when a file's columns or values do not fit the schema.
        """
        schema = self.get_schema()
        if self._closed:
            raise PluginError("files reader: read_batch() called after close()")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"files reader: batch_size must be a positive integer, got {batch_size!r}")
        for path in self._files:
            yield from self._read_file(path, schema, batch_size)

    def plan_partitions(self, parallelism: int | None) -> Sequence[ReadPartition]:
        """One partition per file (dativo.PartitionedReader) when ``source.parallelism`` is set above 1.

        Unset (None) or a single file: no partitions (one stream, files in order). Each
        partition's spec is ``{"path": ...}``, enough for another instance initialized
        with the same config (a Ray worker) to read it. Never raises.
        """
        if parallelism is None or parallelism < 2 or len(self._files) < 2:
            return []
        return [ReadPartition(index=i, label=f"file {path}", spec={"path": path}) for i, path in enumerate(self._files)]

    def read_partition(self, partition: ReadPartition, batch_size: int) -> Iterator[pa.RecordBatch]:
        """Read one planned file as :meth:`read_batch` reads it (same schema, same errors naming the file)."""
        schema = self.get_schema()
        if self._closed:
            raise PluginError("files reader: read_partition() called after close()")
        path = partition.spec.get("path")
        if not isinstance(path, str):
            raise PluginError(f"files reader: partition {partition.label} names no file")
        yield from self._read_file(path, schema, max(1, int(batch_size)))

    def close(self) -> None:
        """Forget the file system and the file list. Idempotent; never raises."""
        self._closed = True
        self._location.close()
        self._inspected.clear()

    # -- configuration -----------------------------------------------------------

    @staticmethod
    def _normalise_format(value: Any) -> str | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str) or value.lower() not in FORMAT_ALIASES:
            raise ConfigError(
                f"files reader: unknown format {value!r}",
                hint="use csv, parquet or jsonl (json and ndjson mean JSON lines)",
            )
        return FORMAT_ALIASES[value.lower()]

    def _configure_format(self, options: Mapping[str, Any]) -> None:
        allowed = FORMAT_OPTIONS[self._format]
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ConfigError(
                f"files reader: unknown {self._format} option(s) {', '.join(unknown)}",
                hint=f"{self._format} options: {', '.join(sorted(allowed))}",
            )
        if self._format != "csv":
            return
        parse: dict[str, Any] = {"newlines_in_values": True}
        for key in ("delimiter", "quote_char", "escape_char"):
            if key in options:
                value = options[key]
                if key == "delimiter" and value == "\\t":
                    value = "\t"
                valid = (isinstance(value, str) and len(value) == 1) or (key != "delimiter" and value is False)
                if not valid:
                    raise ConfigError(
                        f"files reader: options.{key} must be a single character"
                        + (" or false" if key != "delimiter" else "")
                        + f", got {value!r}"
                    )
                parse[key] = value
        self._csv_parse = pcsv.ParseOptions(**parse)
        header = options.get("header", True)
        if not isinstance(header, bool):
            raise ConfigError(f"files reader: options.header must be true or false, got {header!r}")
        read: dict[str, Any] = {"autogenerate_column_names": not header}
        encoding = options.get("encoding")
        if encoding is not None:
            try:
                codecs.lookup(str(encoding))
            except LookupError:
                raise ConfigError(f"files reader: unknown options.encoding {encoding!r}") from None
            read["encoding"] = str(encoding)
        if not header and isinstance(options.get("schema"), Mapping):
            read = {"column_names": [str(name) for name in options["schema"]], **read}
            read.pop("autogenerate_column_names")
        self._csv_read = read
        nulls = options.get("null_values", [""])
        if isinstance(nulls, str) or not isinstance(nulls, Sequence) or not all(isinstance(v, str) for v in nulls):
            raise ConfigError("files reader: options.null_values must be a list of strings")
        self._csv_nulls = list(nulls)

    def _file_format(self, column_types: Mapping[str, pa.DataType] | None = None) -> ds.FileFormat:
        if self._format == "csv":
            convert = pcsv.ConvertOptions(
                column_types=dict(column_types or {}),
                null_values=self._csv_nulls,
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            )
            read = pcsv.ReadOptions(**self._csv_read, block_size=self._block)
            return ds.CsvFileFormat(parse_options=self._csv_parse, read_options=read, convert_options=convert)
        if self._format == "parquet":
            return ds.ParquetFileFormat()
        return ds.JsonFileFormat(read_options=pj.ReadOptions(block_size=self._block))

    def _grow_block(self, exc: BaseException) -> bool:
        """After ``exc``: True when it is a row larger than the read block and a larger one may be tried."""
        if not _straddles(exc) or self._block >= _MAX_BLOCK:
            return False
        self._block = min(self._block * 8, _MAX_BLOCK)  # kept for the next files (a file of long rows)
        return True

    # -- schema ------------------------------------------------------------------

    def _declared_schema(self, declared: Any) -> pa.Schema:
        if not isinstance(declared, Mapping) or not declared:
            raise ConfigError(
                "files reader: options.schema must be a non-empty mapping of column name to Arrow type",
                hint='e.g. schema: {id: int64, amount: "decimal128(14,2)"}',
            )
        fields = []
        for name, type_text in declared.items():
            if isinstance(type_text, pa.DataType):
                arrow_type = type_text
            else:
                try:
                    arrow_type = parse_arrow_type(str(type_text))
                except ValueError as exc:
                    raise ConfigError(f"files reader: options.schema column {name!r}: {exc}") from None
            if name in self._text_columns and arrow_type != pa.string():
                raise ConfigError(
                    f"files reader: column {name!r} is in cast_to_text but declared {arrow_type} in options.schema",
                    hint="declare it as string instead",
                )
            fields.append(pa.field(str(name), arrow_type, nullable=True))
        missing = sorted(self._text_columns - {f.name for f in fields})
        if missing:
            raise ConfigError(f"files reader: cast_to_text names column(s) not in options.schema: {', '.join(missing)}")
        return pa.schema(fields)

    def _inspect(self, path: str) -> pa.Schema:
        """The schema pyarrow infers for one file (for CSV/JSON from its first block).

        Only names are used for CSV files after the first: types are not imposed
        here, so a value that does not convert is reported by the scan, which
        knows the column names.
        """
        cached = self._inspected.pop(path, None)
        if cached is not None:
            return cached
        while True:
            try:
                dataset = ds.dataset(path, format=self._file_format(), filesystem=self._location.fs())
                return dataset.schema
            except _ERRORS as exc:
                if not self._grow_block(exc):
                    raise self._read_error(path, exc) from None

    def _inferred_schema(self, first: str) -> pa.Schema:
        physical = self._inspect(first)
        fields: list[pa.Field] = []
        seen: set[str] = set()
        for field in physical:
            if not field.name:
                raise SchemaError(
                    f"files reader: {self._location.display(first)} has a column without a name",
                    hint="name every column in the header, or set options.header: false with options.schema",
                )
            if field.name in seen:
                raise SchemaError(
                    f"files reader: {self._location.display(first)} has two columns named {field.name!r}",
                    hint="rename one in the file, or declare the columns in options.schema",
                )
            seen.add(field.name)
            arrow_type = field.type
            if pa.types.is_dictionary(arrow_type):
                arrow_type = arrow_type.value_type
            if pa.types.is_null(arrow_type) or field.name in self._text_columns:
                arrow_type = pa.string()
            if self._format == "csv" and pa.types.is_binary(arrow_type):
                raise SourceError(
                    f"files reader: column {field.name!r} of {self._location.display(first)} is not valid UTF-8",
                    hint="set options.encoding (e.g. latin-1) or declare the column binary in options.schema",
                )
            fields.append(pa.field(field.name, arrow_type, nullable=True))
        missing = sorted(self._text_columns - seen)
        if missing:
            raise ConfigError(
                f"files reader: cast_to_text names column(s) not in {self._location.display(first)}: "
                + ", ".join(missing),
                hint=f"columns: {', '.join(physical.names)}",
            )
        self._inspected[first] = physical
        return pa.schema(fields)

    # -- reading -------------------------------------------------------------------

    def _read_error(self, path: str, exc: BaseException, names: Sequence[str] = ()) -> SourceError:
        message = _ARROW_PREFIXES.sub("", one_line(exc))
        match = _CSV_COLUMN.search(message)
        if match and int(match[1]) < len(names):
            message = message.replace(match[0], f"In CSV column #{match[1]} ({names[int(match[1])]!r})")
        if isinstance(exc, OSError) and not isinstance(exc, pa.ArrowException) and self._location.scheme:
            return self._location.access_error(path, exc)
        if "conversion error" in message or "Failed to convert" in message:
            hint = "declare the column's type in options.schema, or fix the file"
        elif "changed from" in message:
            hint = "a JSON key holds values of different kinds (e.g. numbers and strings); fix the file"
        else:
            hint = f"check that it is a valid {self._format} file, or set source.format"
        return SourceError(
            f"files reader: cannot read {self._location.display(path)} as {self._format}: {message}",
            hint=hint,
            transient=is_transient(exc),
        )

    def _read_file(self, path: str, schema: pa.Schema, batch_size: int) -> Iterator[pa.RecordBatch]:
        if self._format != "jsonl" or not self._declared or self._text_columns:
            physical = self._inspect(path)
        else:
            physical = schema  # JSON with a declared schema: absent keys are null, others ignored.
        self._check_columns(path, physical, schema)
        read = 0  # rows of this file yielded so far: skipped when it is read again with a larger block
        while True:
            skip = read
            try:
                for batch in self._scan(path, physical, schema, batch_size):
                    if skip >= batch.num_rows:
                        skip -= batch.num_rows
                        continue
                    rows = batch.slice(skip) if skip else batch
                    skip = 0
                    if rows.num_rows:
                        read += rows.num_rows
                        yield self._conform(path, rows, schema)
                return
            except _ERRORS as exc:
                if not self._grow_block(exc):
                    raise self._read_error(path, exc, physical.names) from None

    def _scan(self, path: str, physical: pa.Schema, schema: pa.Schema, batch_size: int) -> Iterator[pa.RecordBatch]:
        """The file's batches, in order, with the columns of ``schema`` it has (pyarrow's errors pass through)."""
        fs = self._location.fs()
        present = [f.name for f in schema if f.name in physical.names]
        if self._format == "csv":
            target_types = {f.name: f.type for f in schema}
            dataset = ds.dataset(path, format=self._file_format(target_types), filesystem=fs)
        elif self._format == "jsonl":
            # pyarrow's JSON parser converts straight into the dataset schema's types; keys absent
            # from a line are null. cast_to_text columns are parsed as found, then cast to string.
            scan_fields = [
                pa.field(
                    f.name,
                    physical.field(f.name).type
                    if f.name in self._text_columns and f.name in physical.names
                    else f.type,
                )
                for f in schema
            ]
            present = schema.names
            dataset = ds.dataset(path, format=self._file_format(), filesystem=fs, schema=pa.schema(scan_fields))
        else:
            dataset = ds.dataset(path, format=self._file_format(), filesystem=fs)
        yield from dataset.to_batches(columns=present, batch_size=batch_size)

    def _check_columns(self, path: str, physical: pa.Schema, schema: pa.Schema) -> None:
        names = set(physical.names)
        if self._format != "jsonl":
            for field in schema:
                if field.name not in names:
                    origin = (
                        "options.schema"
                        if self._declared
                        else f"the first file, {self._location.display(self._files[0])}"
                    )
                    raise SchemaError(
                        f"files reader: {self._location.display(path)} has no column {field.name!r} "
                        f"(expected from {origin})",
                        hint=f"its columns: {', '.join(physical.names)}; fix it or declare options.schema",
                    )
        if not self._declared:
            expected = set(schema.names)
            for name in physical.names:
                if name not in expected:
                    raise SchemaError(
                        f"files reader: {self._location.display(path)} has column {name!r}, which the first file, "
                        f"{self._location.display(self._files[0])}, does not have",
                        hint="declare the columns to read in options.schema, or read the files separately",
                    )

    def _conform(self, path: str, batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
        """Reorder, null-fill (JSON) and cast ``batch`` to exactly ``schema``."""
        arrays: list[pa.Array] = []
        for field in schema:
            index = batch.schema.get_field_index(field.name)
            if index < 0:
                arrays.append(pa.nulls(batch.num_rows, field.type))
                continue
            array = batch.column(index)
            if not array.type.equals(field.type):
                try:
                    array = pc.cast(array, field.type, safe=True)
                except _ERRORS as exc:
                    raise SchemaError(
                        f"files reader: column {field.name!r} of {self._location.display(path)} holds {array.type} "
                        f"values that cannot be converted to {field.type}: {one_line(exc)}",
                        hint="declare the column's type in options.schema (e.g. string or float64)",
                    ) from None
            arrays.append(array)
        return pa.RecordBatch.from_arrays(arrays, schema=schema)
