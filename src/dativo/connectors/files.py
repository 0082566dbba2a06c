"""Built-in ``files`` reader: CSV, Parquet and JSON lines from local paths or S3.

Job configuration (the ``source`` section)::

    source:
      connector: files
      path: data/orders/*.csv          # a file, a directory, a glob, or s3://bucket/key-or-prefix
      format: csv                      # csv | parquet | jsonl (alias json, ndjson); else from the extension
      connection:                      # only for s3:// paths; every key optional
        endpoint_url: http://127.0.0.1:9000
        region: eu-west-1
        access_key_id: ...
        secret_access_key: ...
        session_token: ...
        anonymous: false
      options:
        schema: {id: int64, amount: "decimal128(14,2)", at: "timestamp[us, tz=UTC]"}
        delimiter: ";"                 # CSV only; also quote_char, escape_char, header, null_values, encoding
      cast_to_text: [raw_payload]

Rules (the documented behaviour):

* **Which files.** A file path is read whatever its name. A directory is listed
  recursively and only files with an extension of the format are read. A glob
  (``*``, ``?``, ``[...]``; ``**`` spans directories) reads every file it
  matches. In directory and glob listings, names starting with ``.`` or ``_``
  (``_SUCCESS``, ``.crc``) are skipped. Files are read in sorted path order.
  Nothing matched is a :class:`~dativo.errors.SourceError`.
* **Format.** ``format`` wins; otherwise it comes from the extension:
  ``.csv``; ``.parquet``/``.pq``; ``.jsonl``/``.ndjson``/``.json`` (JSON
  *lines*: one object per line). CSV and JSON lines may be compressed:
  ``.gz``, ``.bz2``, ``.lz4``, ``.zstd``.
* **Schema.** With ``options.schema`` the declared columns, in declared order,
  are the schema: other columns of the files are ignored, and a declared column
  missing from a CSV or Parquet file is an error (a JSON object without the key
  gives null). Without it the schema is inferred from the *first* file alone
  (for CSV and JSON from its first block, about 1 MB), then normalised: a column
  with only nulls becomes ``string`` and dictionary-encoded columns are decoded.
  Every later file must have exactly those column names, in any order (JSON
  lines may lack keys, which gives nulls; extra keys are looked for in each
  file's first block); its values are converted to the schema's types (CSV and
  JSON are parsed straight into them, Parquet columns are cast), and a file with
  a missing or extra column or values that do not convert fails the run naming
  the file and the column.
  Columns listed in ``cast_to_text`` become ``string`` (CSV keeps the raw text).
* **CSV.** A header line is expected (``header: false`` names columns after
  ``options.schema``, else ``f0``, ``f1``...). An unquoted empty field is null, a
  quoted empty field (``""``) is an empty string (PostgreSQL's CSV convention);
  ``null_values`` replaces the list of null spellings. Quoted values may span
  lines. A file that is not valid UTF-8 needs ``encoding``.
* **Types** in ``options.schema`` are Arrow type strings: ``int64``, ``float64``,
  ``bool``, ``string``, ``binary``, ``date32``, ``timestamp[us]``,
  ``timestamp[us, tz=UTC]``, ``decimal128(14,2)``, ``time64[us]``... (see
  :func:`parse_arrow_type`). A tz-aware timestamp column needs values with a
  zone offset (``Z``, ``+02:00``); naive values need a naive ``timestamp[...]``.
"""

from __future__ import annotations

import codecs
import os.path
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from dativo.errors import ConfigError, PluginError, SchemaError, SourceError
from dativo.sdk import DataReader, PluginConfig, redact, register_secret

__all__ = ["FORMAT_EXTENSIONS", "FileReader", "parse_arrow_type"]

#: File extensions recognised for each format (matched case-insensitively,
#: optionally followed by one of :data:`COMPRESSION_SUFFIXES` for csv/jsonl).
FORMAT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "csv": (".csv",),
    "parquet": (".parquet", ".pq"),
    "jsonl": (".jsonl", ".ndjson", ".json"),
}
#: Compression suffixes pyarrow detects and decompresses transparently.
COMPRESSION_SUFFIXES: tuple[str, ...] = (".gz", ".bz2", ".lz4", ".zstd")

_FORMAT_ALIASES = {"csv": "csv", "parquet": "parquet", "jsonl": "jsonl", "json": "jsonl", "ndjson": "jsonl"}
_OPTIONS: dict[str, frozenset[str]] = {
    "csv": frozenset({"schema", "delimiter", "quote_char", "escape_char", "header", "null_values", "encoding"}),
    "parquet": frozenset({"schema"}),
    "jsonl": frozenset({"schema"}),
}
_CONNECTION_KEYS = frozenset(
    {"endpoint_url", "region", "access_key_id", "secret_access_key", "session_token", "anonymous"}
)
_GLOB_CHARS = frozenset("*?[")
_TRANSIENT_MARKERS = (
    "NETWORK_CONNECTION",
    "Could not connect",
    "SLOW_DOWN",
    "SERVICE_UNAVAILABLE",
    "INTERNAL_FAILURE",
    "REQUEST_TIMEOUT",
    "THROTTLING",
    "timed out",
    "Timeout",
)
_CSV_COLUMN = re.compile(r"In CSV column #(\d+)")
# pyarrow's wrapping around the real cause; the reader names the file itself.
_ARROW_PREFIXES = re.compile(
    r"Error creating dataset\. Could not read schema from '[^']*'\. Is this a '\w+' file\?: "
    r"|Could not open \w+ input source '[^']*': (?:Invalid: )?"
)
_ERRORS: tuple[type[BaseException], ...] = (pa.ArrowException, OSError, ValueError)

_DECIMAL_TYPE = re.compile(r"(decimal|decimal128|decimal256)\s*\(\s*(\d+)\s*(?:,\s*(-?\d+)\s*)?\)", re.I)
_TIMESTAMP_TYPE = re.compile(r"timestamp\s*\[\s*(s|ms|us|ns)\s*(?:,\s*tz\s*=\s*([^\]]*?)\s*)?\]", re.I)


def parse_arrow_type(text: str) -> pa.DataType:
    """Parse an Arrow type string such as ``int64``, ``timestamp[us, tz=UTC]`` or ``decimal128(14,2)``.

    Accepts every alias of :func:`pyarrow.type_for_alias` (``int8``..``uint64``,
    ``float32``/``float``, ``float64``/``double``, ``bool``, ``string``/``str``/
    ``utf8``, ``large_string``, ``binary``, ``large_binary``, ``date32``,
    ``date64``, ``time32[s|ms]``, ``time64[us|ns]``, ``duration[unit]``,
    ``timestamp[unit]``), ``timestamp[unit, tz=Zone]`` and
    ``decimal(p,s)``/``decimal128(p,s)``/``decimal256(p,s)`` (``decimal`` with
    a precision above 38 becomes ``decimal256``). Case does not matter except in
    the time zone. Nested types are not accepted.

    Raises :class:`ValueError` naming the text when it is not a known type.
    """
    raw = text.strip()
    match = _DECIMAL_TYPE.fullmatch(raw)
    if match:
        kind, precision, scale = match[1].lower(), int(match[2]), int(match[3] or 0)
        if kind == "decimal256" or (kind == "decimal" and precision > 38):
            if not 1 <= precision <= 76:
                raise ValueError(f"decimal precision must be between 1 and 76, got {precision} in {text!r}")
            return pa.decimal256(precision, scale)
        if not 1 <= precision <= 38:
            raise ValueError(f"decimal128 precision must be between 1 and 38, got {precision} in {text!r}")
        return pa.decimal128(precision, scale)
    match = _TIMESTAMP_TYPE.fullmatch(raw)
    if match:
        return pa.timestamp(match[1].lower(), tz=match[2] or None)
    try:
        return pa.type_for_alias(raw.lower())
    except (ValueError, KeyError):
        raise ValueError(
            f"unknown Arrow type {text!r}; use e.g. int64, float64, bool, string, date32, "
            "timestamp[us], timestamp[us, tz=UTC] or decimal128(14,2)"
        ) from None


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line, with secrets masked."""
    return redact(" ".join(str(exc).split()) or type(exc).__name__)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    text = str(exc)
    return isinstance(exc, OSError) and any(marker in text for marker in _TRANSIENT_MARKERS)


def _format_of(name: str) -> str | None:
    """The format implied by a file name's extension (after stripping a compression suffix), or None."""
    lower = name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if lower.endswith(suffix):
            lower = lower[: -len(suffix)]
            compressed = True
            break
    else:
        compressed = False
    for fmt, extensions in FORMAT_EXTENSIONS.items():
        if lower.endswith(extensions):
            return None if compressed and fmt == "parquet" else fmt
    return None


def _is_hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/") if part)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Translate a glob to a regex: ``*``, ``?`` and ``[...]`` stay in one path segment, ``**`` spans them."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (close := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : close]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = close + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


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
        self._fs: pafs.FileSystem | None = None
        self._scheme = ""
        self._files: list[str] = []
        self._format = ""
        self._schema: pa.Schema | None = None
        self._declared = False
        self._text_columns: frozenset[str] = frozenset()
        self._csv_read = pcsv.ReadOptions()
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
        connection = config.get("connection") or {}
        if not isinstance(connection, Mapping):
            raise ConfigError("files reader: source.connection must be a mapping")
        unknown = sorted(k for k, v in connection.items() if v is not None and k not in _CONNECTION_KEYS)
        if unknown:
            raise ConfigError(
                f"files reader: unknown connection key(s) {', '.join(unknown)}",
                hint=f"allowed keys: {', '.join(sorted(_CONNECTION_KEYS))}",
            )
        declared_format = self._normalise_format(config.get("format"))
        text_columns = config.get("cast_to_text") or []
        if not isinstance(text_columns, list | tuple) or not all(isinstance(c, str) for c in text_columns):
            raise ConfigError("files reader: cast_to_text must be a list of column names")
        self._text_columns = frozenset(text_columns)

        location = self._open_filesystem(path.strip(), connection, config.get("job") or {})
        self._files, self._format = self._list_files(location, declared_format)
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

    def close(self) -> None:
        """Forget the file system and the file list. Idempotent; never raises."""
        self._closed = True
        self._fs = None
        self._inspected.clear()

    # -- configuration -----------------------------------------------------------

    @staticmethod
    def _normalise_format(value: Any) -> str | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str) or value.lower() not in _FORMAT_ALIASES:
            raise ConfigError(
                f"files reader: unknown format {value!r}",
                hint="use csv, parquet or jsonl (json and ndjson mean JSON lines)",
            )
        return _FORMAT_ALIASES[value.lower()]

    def _open_filesystem(self, path: str, connection: Mapping[str, Any], job: Mapping[str, Any]) -> str:
        """Create the file system for ``path`` and return the path in that file system's terms."""
        if path.startswith("s3://"):
            location = path[len("s3://") :].strip("/")
            if not location:
                raise ConfigError(f"files reader: {path!r} names no bucket", hint="use s3://bucket/prefix")
            if _GLOB_CHARS & set(location.split("/")[0]):
                raise ConfigError(f"files reader: the bucket name in {path!r} cannot contain wildcards")
            self._fs = self._s3_filesystem(connection)
            self._scheme = "s3://"
            return location
        if "://" in path:
            raise ConfigError(
                f"files reader: unsupported URL scheme in {path!r}",
                hint="use a local path or s3://bucket/prefix",
            )
        local = Path(path).expanduser()
        if not local.is_absolute():
            local = Path(str(job.get("dir") or ".")) / local
        self._fs = pafs.LocalFileSystem()
        self._scheme = ""
        # abspath normalises "..", keeps glob characters and does not resolve symlinks.
        return Path(os.path.abspath(local)).as_posix()

    def _s3_filesystem(self, connection: Mapping[str, Any]) -> pafs.FileSystem:
        """An S3 file system from ``connection``; absent keys fall back to the AWS credential chain."""
        kwargs: dict[str, Any] = {}
        endpoint = connection.get("endpoint_url")
        if endpoint:
            parsed = urlparse(str(endpoint) if "://" in str(endpoint) else f"https://{endpoint}")
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ConfigError(
                    f"files reader: connection.endpoint_url {redact(str(endpoint))!r} is not an http(s) URL",
                    hint="e.g. http://127.0.0.1:9000",
                )
            kwargs["scheme"] = parsed.scheme
            kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
        if connection.get("region"):
            kwargs["region"] = str(connection["region"])
        key_id, secret = connection.get("access_key_id"), connection.get("secret_access_key")
        token = connection.get("session_token")
        for value in (key_id, secret, token):
            register_secret(str(value) if value else None)
        if bool(key_id) != bool(secret):
            raise ConfigError(
                "files reader: connection needs both access_key_id and secret_access_key, or neither",
                hint="leave both out to use the AWS environment variables, profile or instance role",
            )
        if key_id:
            kwargs["access_key"] = str(key_id)
            kwargs["secret_key"] = str(secret)
            if token:
                kwargs["session_token"] = str(token)
        anonymous = connection.get("anonymous", False)
        if not isinstance(anonymous, bool):
            raise ConfigError("files reader: connection.anonymous must be true or false")
        if anonymous:
            kwargs["anonymous"] = True
        try:
            return pafs.S3FileSystem(**kwargs)
        except _ERRORS as exc:
            raise ConfigError(f"files reader: cannot set up S3 access: {_one_line(exc)}") from None

    def _display(self, path: str) -> str:
        return self._scheme + path

    def _fs_or_fail(self) -> pafs.FileSystem:
        if self._fs is None:
            raise PluginError("files reader: used before initialize() or after close()")
        return self._fs

    def _file_info(self, path: str) -> Any:
        try:
            return self._fs_or_fail().get_file_info(path)
        except _ERRORS as exc:
            raise self._access_error(path, exc) from None

    def _access_error(self, path: str, exc: BaseException) -> SourceError:
        hint = (
            "check the bucket name, the credentials and connection.endpoint_url"
            if self._scheme
            else "check that the path exists and is readable"
        )
        return SourceError(
            f"files reader: cannot access {self._display(path)}: {_one_line(exc)}",
            hint=hint,
            transient=_is_transient(exc),
        )

    def _missing(self, path: str) -> SourceError:
        if self._scheme:
            bucket = path.split("/")[0]
            info = self._file_info(bucket)
            if info.type == pafs.FileType.NotFound:
                return SourceError(
                    f"files reader: bucket {bucket!r} of {self._display(path)} does not exist "
                    "or is not visible with these credentials",
                    hint="check the bucket name, connection.endpoint_url and the credentials",
                )
        return SourceError(
            f"files reader: {self._display(path)} does not exist",
            hint="check source.path (relative paths are resolved against the job file's directory)",
        )

    def _list_files(self, location: str, declared_format: str | None) -> tuple[list[str], str]:
        """Expand ``location`` (file, directory or glob) into sorted files and settle the format."""
        is_glob = bool(_GLOB_CHARS & set(location))
        if is_glob:
            parts = location.split("/")
            first_glob = next(i for i, part in enumerate(parts) if _GLOB_CHARS & set(part))
            base = "/".join(parts[:first_glob]) or "/"
            if self._file_info(base).type != pafs.FileType.Directory:
                raise self._missing(base)
            pattern = _glob_regex(location)
            entries = self._select(base)
            candidates = [
                e.path
                for e in entries
                if e.type == pafs.FileType.File and pattern.fullmatch(e.path) and not _is_hidden(e.path[len(base) :])
            ]
            kind = "glob"
        else:
            info = self._file_info(location)
            if info.type == pafs.FileType.File:
                candidates, kind = [location], "file"
            elif info.type == pafs.FileType.Directory:
                entries = self._select(location)
                candidates = [
                    e.path for e in entries if e.type == pafs.FileType.File and not _is_hidden(e.path[len(location) :])
                ]
                kind = "directory"
            else:
                raise self._missing(location)
        files = sorted(candidates)
        if kind == "directory":
            formats = {f: _format_of(f) for f in files}
            if declared_format is None:
                found = sorted({fmt for fmt in formats.values() if fmt})
                if len(found) > 1:
                    raise ConfigError(
                        f"files reader: {self._display(location)} holds {' and '.join(found)} files",
                        hint="set source.format to the one to read, or point path at a glob",
                    )
                declared_format = found[0] if found else None
            files = [f for f in files if declared_format and formats[f] == declared_format]
            if not files or declared_format is None:
                wanted = declared_format or "csv, parquet or jsonl"
                raise SourceError(
                    f"files reader: no {wanted} files under {self._display(location)}",
                    hint="recognised extensions: " + ", ".join(e for exts in FORMAT_EXTENSIONS.values() for e in exts),
                )
            return files, declared_format
        if not files:
            raise SourceError(
                f"files reader: no file matches {self._display(location)}",
                hint="check the glob; names starting with '.' or '_' are skipped",
            )
        if declared_format is not None:
            return files, declared_format
        formats = {f: _format_of(f) for f in files}
        unknown = [f for f, fmt in formats.items() if fmt is None]
        if unknown:
            raise ConfigError(
                f"files reader: cannot tell the format of {self._display(unknown[0])} from its extension",
                hint="set source.format to csv, parquet or jsonl",
            )
        found = sorted({fmt for fmt in formats.values() if fmt})
        if len(found) > 1:
            raise ConfigError(
                f"files reader: {self._display(location)} matches {' and '.join(found)} files",
                hint="set source.format or narrow the glob",
            )
        return files, found[0]

    def _select(self, base: str) -> list[Any]:
        try:
            return list(self._fs_or_fail().get_file_info(pafs.FileSelector(base, recursive=True)))
        except _ERRORS as exc:
            raise self._access_error(base, exc) from None

    def _configure_format(self, options: Mapping[str, Any]) -> None:
        allowed = _OPTIONS[self._format]
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
        self._csv_read = pcsv.ReadOptions(**read)
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
            return ds.CsvFileFormat(parse_options=self._csv_parse, read_options=self._csv_read, convert_options=convert)
        if self._format == "parquet":
            return ds.ParquetFileFormat()
        return ds.JsonFileFormat()

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
        try:
            dataset = ds.dataset(path, format=self._file_format(), filesystem=self._fs_or_fail())
            return dataset.schema
        except _ERRORS as exc:
            raise self._read_error(path, exc) from None

    def _inferred_schema(self, first: str) -> pa.Schema:
        physical = self._inspect(first)
        fields: list[pa.Field] = []
        seen: set[str] = set()
        for field in physical:
            if not field.name:
                raise SchemaError(
                    f"files reader: {self._display(first)} has a column without a name",
                    hint="name every column in the header, or set options.header: false with options.schema",
                )
            if field.name in seen:
                raise SchemaError(
                    f"files reader: {self._display(first)} has two columns named {field.name!r}",
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
                    f"files reader: column {field.name!r} of {self._display(first)} is not valid UTF-8",
                    hint="set options.encoding (e.g. latin-1) or declare the column binary in options.schema",
                )
            fields.append(pa.field(field.name, arrow_type, nullable=True))
        missing = sorted(self._text_columns - seen)
        if missing:
            raise ConfigError(
                f"files reader: cast_to_text names column(s) not in {self._display(first)}: " + ", ".join(missing),
                hint=f"columns: {', '.join(physical.names)}",
            )
        self._inspected[first] = physical
        return pa.schema(fields)

    # -- reading -------------------------------------------------------------------

    def _read_error(self, path: str, exc: BaseException, names: Sequence[str] = ()) -> SourceError:
        message = _ARROW_PREFIXES.sub("", _one_line(exc))
        match = _CSV_COLUMN.search(message)
        if match and int(match[1]) < len(names):
            message = message.replace(match[0], f"In CSV column #{match[1]} ({names[int(match[1])]!r})")
        if isinstance(exc, OSError) and not isinstance(exc, pa.ArrowException) and self._scheme:
            return self._access_error(path, exc)
        if "conversion error" in message or "Failed to convert" in message:
            hint = "declare the column's type in options.schema, or fix the file"
        elif "changed from" in message:
            hint = "a JSON key holds values of different kinds (e.g. numbers and strings); fix the file"
        else:
            hint = f"check that it is a valid {self._format} file, or set source.format"
        return SourceError(
            f"files reader: cannot read {self._display(path)} as {self._format}: {message}",
            hint=hint,
            transient=_is_transient(exc),
        )

    def _read_file(self, path: str, schema: pa.Schema, batch_size: int) -> Iterator[pa.RecordBatch]:
        fs = self._fs_or_fail()
        target_types = {f.name: f.type for f in schema}
        if self._format != "jsonl" or not self._declared or self._text_columns:
            physical = self._inspect(path)
        else:
            physical = schema  # JSON with a declared schema: absent keys are null, others ignored.
        self._check_columns(path, physical, schema)

        present = [f.name for f in schema if f.name in physical.names]
        try:
            if self._format == "csv":
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
            for batch in dataset.to_batches(columns=present, batch_size=batch_size):
                if batch.num_rows:
                    yield self._conform(path, batch, schema)
        except _ERRORS as exc:
            raise self._read_error(path, exc, physical.names) from None

    def _check_columns(self, path: str, physical: pa.Schema, schema: pa.Schema) -> None:
        names = set(physical.names)
        if self._format != "jsonl":
            for field in schema:
                if field.name not in names:
                    origin = "options.schema" if self._declared else f"the first file, {self._display(self._files[0])}"
                    raise SchemaError(
                        f"files reader: {self._display(path)} has no column {field.name!r} (expected from {origin})",
                        hint=f"its columns: {', '.join(physical.names)}; fix it or declare options.schema",
                    )
        if not self._declared:
            expected = set(schema.names)
            for name in physical.names:
                if name not in expected:
                    raise SchemaError(
                        f"files reader: {self._display(path)} has column {name!r}, which the first file, "
                        f"{self._display(self._files[0])}, does not have",
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
                        f"files reader: column {field.name!r} of {self._display(path)} holds {array.type} "
                        f"values that cannot be converted to {field.type}: {_one_line(exc)}",
                        hint="declare the column's type in options.schema (e.g. string or float64)",
                    ) from None
            arrays.append(array)
        return pa.RecordBatch.from_arrays(arrays, schema=schema)
