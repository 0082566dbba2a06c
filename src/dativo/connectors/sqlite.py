"""Built-in ``sqlite`` reader: a table or a query of a SQLite database file, read-only.

Job configuration (the ``source`` section)::

    source:
      connector: sqlite
      connection: {path: data/app.db}     # relative to the job file's directory; never created
      table: orders                       # or: query: "SELECT id, total FROM orders WHERE ..."
      cast_to_text: [legacy_code]         # read these columns as text

The database is opened with ``mode=ro``: a missing file is an error and nothing
is ever written to it.

**Types.** SQLite is dynamically typed, so the Arrow type of each column comes
from its *declared* type (the ``CREATE TABLE`` type, which views and plain
column references in queries carry through), following SQLite's affinity rules
in their order:

=======================================  =============================================
declared type (case-insensitive)         Arrow type
=======================================  =============================================
contains ``INT``                         ``int64``
contains ``CHAR``, ``CLOB`` or ``TEXT``  ``string``
contains ``BLOB``; no type in a table    ``binary``
contains ``REAL``, ``FLOA`` or ``DOUB``  ``float64``
*NUMERIC affinity (everything else):*
contains ``BOOL``                        ``bool`` (stored 0 / 1)
contains ``DATETIME`` or ``TIMESTAMP``   ``timestamp[us]`` (ISO-8601 text; values with
                                         an offset are converted to UTC);
                                         ``timestamp[us, tz=UTC]`` when the type also
                                         says ``TZ`` or ``WITH TIME ZONE``
contains ``DATE``                        ``date32`` (``YYYY-MM-DD`` text)
``DECIMAL(p,s)`` / ``NUMERIC(p,s)``      ``decimal128(p,s)`` (``decimal256`` if p > 38);
                                         ``(p)`` means scale 0
``DECIMAL`` / ``NUMERIC``                ``float64`` (integers must convert exactly)
anything else (``MONEY``, ``JSON``...)   inferred from the values, see below
=======================================  =============================================

A query column with no declared type (an expression, ``CAST``, an aggregate)
and a column whose declared type falls in the last row are typed from the
values in the first :data:`SAMPLE_ROWS` rows: only integers → ``int64``, reals
(or integers and reals) → ``float64``, text → ``string``, blobs → ``binary``,
only NULLs (or no rows) → ``string``; text mixed with numbers or blobs is an
error asking for ``cast_to_text``. Columns in ``cast_to_text`` are ``string``:
integers and reals are written as text, blobs must be UTF-8.

**Strictness.** A value that does not fit its column's type (text in an
``INTEGER`` column, a real in an ``INTEGER`` column, ``2`` in a ``BOOLEAN``
column, a malformed date, a decimal with more digits than declared) fails the
run with a :class:`~dativo.errors.SchemaError` naming the column and the row
number (1-based, in result order). Nothing is rounded, truncated or guessed.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from dativo.connectors.sqlite_types import (
    PLAIN_TYPES,
    Column,
    Misfit,
    arrow_type_for_declared,
    converter,
    infer_type,
    quote_identifier,
    storage_class,
)
from dativo.errors import ConfigError, PluginError, SchemaError, SourceError
from dativo.sdk import DataReader, PluginConfig

__all__ = ["SAMPLE_ROWS", "SqliteReader", "arrow_type_for_declared"]

#: Rows read ahead (before the first batch) to type columns that have no usable declared type.
SAMPLE_ROWS = 1000

_CONNECTION_KEYS = frozenset({"path"})
_TRANSIENT = ("locked", "busy")


class SqliteReader(DataReader):
    """Read a table or the result of a query from a SQLite database file as Arrow batches.

    See the module documentation for the configuration and the type mapping.

    Failure behaviour: :meth:`initialize` raises :class:`~dativo.errors.ConfigError`
    when ``connection.path`` is missing or not exactly one of ``table`` and
    ``query`` is given, and :class:`~dativo.errors.SourceError` when the file
    does not exist, is not a SQLite database, the table does not exist or the
    query fails. :meth:`read_batch` raises :class:`~dativo.errors.SchemaError`
    naming the column and the row for a value that does not fit its column's type,
    and ``SourceError`` when SQLite fails mid-read (``database is locked`` is
    transient).
    """

    def __init__(self) -> None:
        self._connection: sqlite3.Connection | None = None
        self._cursor: sqlite3.Cursor | None = None
        self._path = ""
        self._columns: list[Column] = []
        self._schema: pa.Schema | None = None
        self._pending: list[tuple[Any, ...]] = []
        self._rows_read = 0

    # -- SDK -------------------------------------------------------------------

    def initialize(self, config: PluginConfig) -> None:
        """Open the database read-only, run the table scan or query and settle the schema.

        Raises ``ConfigError`` for invalid configuration and ``SourceError`` for
        a missing or unreadable database, a missing table or a failing query.
        """
        self.config = config
        connection = config.get("connection") or {}
        if not isinstance(connection, Mapping):
            raise ConfigError("sqlite reader: source.connection must be a mapping with a path")
        unknown = sorted(k for k, v in connection.items() if v is not None and k not in _CONNECTION_KEYS)
        if unknown:
            raise ConfigError(
                f"sqlite reader: unknown connection key(s) {', '.join(unknown)}",
                hint="the only key is path",
            )
        raw_path = connection.get("path")
        if not isinstance(raw_path, str) or not raw_path.strip():
            raise ConfigError(
                "sqlite reader: source.connection.path is missing",
                hint="set it to the database file, e.g. connection: {path: data/app.db}",
            )
        table, query = config.get("table"), config.get("query")
        if bool(table) == bool(query):
            raise ConfigError(
                "sqlite reader: give exactly one of source.table and source.query" + (", not both" if table else ""),
                hint="table reads a whole table or view; query runs one SELECT",
            )
        if not isinstance(table or query, str):
            raise ConfigError("sqlite reader: source.table / source.query must be a string")
        text_columns = config.get("cast_to_text") or []
        if not isinstance(text_columns, list | tuple) or not all(isinstance(c, str) for c in text_columns):
            raise ConfigError("sqlite reader: cast_to_text must be a list of column names")

        path = Path(raw_path).expanduser()
        if not path.is_absolute():
            path = Path(str((config.get("job") or {}).get("dir") or ".")) / path
        self._path = str(path)
        if not path.is_file():
            raise SourceError(
                f"sqlite reader: database file {self._path} does not exist",
                hint="check connection.path (relative paths are resolved against the job file's directory)",
            )
        try:
            self._connection = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, check_same_thread=False)
            self._connection.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise self._error(f"cannot open {self._path}", exc, "is it a SQLite database?") from None

        if table:
            sql, untyped = self._table_sql(str(table)), pa.binary()
        else:
            sql, untyped = str(query).strip().rstrip(";").strip(), None
        declared = self._declared_types(sql)
        try:
            self._cursor = self._connection.execute(sql)
        except (sqlite3.Error, sqlite3.Warning) as exc:
            raise self._error("query failed", exc, "check source.query") from None
        if self._cursor.description is None:
            raise ConfigError("sqlite reader: source.query returns no columns", hint="use a SELECT statement")
        names = [str(d[0]) for d in self._cursor.description]
        if len(declared) != len(names):
            declared = [""] * len(names)
            untyped = None
        self._settle_columns(names, declared, untyped, set(text_columns))

    def list_tables(self, config: PluginConfig) -> list[str]:
        """The database's tables and views (dativo.ListsTables); SQLite names have no schema part.

        Raises SourceError when the file is missing or is not a SQLite database.
        """
        connection = config.get("connection") or {}
        raw_path = connection.get("path") if isinstance(connection, Mapping) else None
        if not isinstance(raw_path, str) or not raw_path.strip():
            raise ConfigError("sqlite reader: source.connection.path is missing")
        path = Path(raw_path).expanduser()
        if not path.is_absolute():
            path = Path(str((config.get("job") or {}).get("dir") or ".")) / path
        if not path.is_file():
            raise SourceError(f"sqlite reader: database file {path} does not exist")
        try:
            with contextlib.closing(sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)) as db:
                rows = db.execute(
                    "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                    "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
                ).fetchall()
        except sqlite3.Error as exc:
            raise SourceError(f"sqlite reader: cannot list the tables of {path}: {exc}") from None
        return [str(row[0]) for row in rows]

    def get_schema(self) -> pa.Schema:
        """Return the schema settled by :meth:`initialize` (every field nullable).

        Raises :class:`~dativo.errors.PluginError` when called before ``initialize``.
        """
        if self._schema is None:
            raise PluginError("sqlite reader: get_schema() called before initialize()")
        return self._schema

    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        """Fetch rows with ``fetchmany(batch_size)`` and yield them as batches with exactly the schema.

        Raises ``SchemaError`` naming the column and row for a value that does
        not fit, ``SourceError`` when SQLite fails mid-read.
        """
        self.get_schema()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"sqlite reader: batch_size must be a positive integer, got {batch_size!r}")
        buffer, self._pending = self._pending, []
        while True:
            while len(buffer) < batch_size:
                more = self._fetch(batch_size - len(buffer))
                if not more:
                    break
                buffer.extend(more)
            if not buffer:
                return
            chunk, buffer = buffer[:batch_size], buffer[batch_size:]
            yield self._to_batch(chunk)

    def close(self) -> None:
        """Close the cursor and the connection. Idempotent; never raises."""
        cursor, self._cursor = self._cursor, None
        connection, self._connection = self._connection, None
        self._pending = []
        for resource in (cursor, connection):
            if resource is not None:
                with contextlib.suppress(sqlite3.Error):
                    resource.close()

    # -- schema ------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._connection is None:
            raise PluginError("sqlite reader: used before initialize() or after close()")
        return self._connection

    def _find_table(self, name: str) -> str | None:
        row = (
            self._conn()
            .execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name = ? COLLATE NOCASE",
                (name,),
            )
            .fetchone()
        )
        return None if row is None else str(row[0])

    def _table_sql(self, table: str) -> str:
        """``SELECT *`` of ``table`` (a name, or ``main.name``; case-insensitive like SQLite)."""
        found = self._find_table(table)
        if found is None and "." in table:
            schema, _, name = table.partition(".")
            if schema.strip('"').lower() == "main":
                found = self._find_table(name.strip('"'))
        if found is None:
            names = [
                r[0]
                for r in self._conn().execute(
                    "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                    "AND name NOT LIKE 'sqlite_%' ORDER BY name LIMIT 21"
                )
            ]
            listing = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "") or "none"
            raise SourceError(
                f"sqlite reader: no table or view {table!r} in {self._path}",
                hint=f"tables and views: {listing}",
            )
        return f"SELECT * FROM {quote_identifier(found)}"

    def _declared_types(self, sql: str) -> list[str]:
        """Declared types of the result columns, via a temporary view (empty list if SQLite refuses)."""
        view = f"_dativo_{uuid.uuid4().hex}"
        conn = self._conn()
        try:
            conn.execute(f"CREATE TEMP VIEW {quote_identifier(view)} AS {sql}")
        except (sqlite3.Error, sqlite3.Warning):
            return []  # e.g. a PRAGMA; the query itself reports real errors next.
        try:
            info = conn.execute(f"PRAGMA temp.table_info({quote_identifier(view)})").fetchall()
            return [str(row[2] or "") for row in info]
        finally:
            conn.execute(f"DROP VIEW temp.{quote_identifier(view)}")

    def _settle_columns(
        self, names: list[str], declared: list[str], untyped: pa.DataType | None, text_columns: set[str]
    ) -> None:
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise SchemaError(
                    f"sqlite reader: the result has two columns named {name!r}",
                    hint="give each column a distinct alias in source.query",
                )
            seen.add(name)
        missing = sorted(text_columns - seen)
        if missing:
            raise ConfigError(
                f"sqlite reader: cast_to_text names unknown column(s): {', '.join(missing)}",
                hint=f"columns: {', '.join(names)}",
            )
        columns: list[Column] = []
        to_infer: list[int] = []
        for index, (name, decl) in enumerate(zip(names, declared, strict=True)):
            if name in text_columns:
                columns.append(Column(name, decl, pa.string(), as_text=True))
                continue
            arrow_type = arrow_type_for_declared(decl, untyped=untyped)
            if arrow_type is None:
                to_infer.append(index)
                arrow_type = pa.null()
            columns.append(Column(name, decl, arrow_type))
        if to_infer:
            self._pending = self._fetch(SAMPLE_ROWS)
            for index in to_infer:
                column = columns[index]
                inferred = infer_type([row[index] for row in self._pending])
                if inferred is None:
                    raise SchemaError(
                        f"sqlite reader: column {column.name!r} mixes text with numbers or blobs "
                        f"in its first {SAMPLE_ROWS} rows, so it has no single type",
                        hint="list it in cast_to_text, or CAST it in source.query",
                    )
                column.type, column.inferred = inferred, True
        self._columns = columns
        self._schema = pa.schema([pa.field(c.name, c.type, nullable=True) for c in columns])

    # -- reading -------------------------------------------------------------------

    def _fetch(self, size: int) -> list[tuple[Any, ...]]:
        if self._cursor is None:
            raise PluginError("sqlite reader: read after close()")
        try:
            return self._cursor.fetchmany(size)
        except (sqlite3.Error, sqlite3.Warning) as exc:
            raise self._error(f"reading {self._path} failed", exc, "check the database file") from None

    def _error(self, what: str, exc: BaseException, hint: str) -> SourceError:
        message = " ".join(str(exc).split())
        return SourceError(
            f"sqlite reader: {what}: {message}",
            hint=hint,
            transient=any(marker in message.lower() for marker in _TRANSIENT),
        )

    def _to_batch(self, rows: list[tuple[Any, ...]]) -> pa.RecordBatch:
        first_row = self._rows_read + 1
        self._rows_read += len(rows)
        by_column = list(zip(*rows, strict=True))
        arrays = [
            self._build(column, list(values), first_row)
            for column, values in zip(self._columns, by_column, strict=True)
        ]
        return pa.RecordBatch.from_arrays(arrays, schema=self.get_schema())

    def _build(self, column: Column, values: list[Any], first_row: int) -> pa.Array:
        plain = None if column.as_text else PLAIN_TYPES.get(str(column.type))
        if plain is not None and all(v is None or type(v) is plain for v in values):
            return pa.array(values, type=column.type)
        convert = converter(column)
        out: list[Any] = []
        for offset, value in enumerate(values):
            if value is None:
                out.append(None)
                continue
            try:
                out.append(convert(value))
            except Misfit:
                raise self._misfit(column, value, first_row + offset) from None
        return pa.array(out, type=column.type)

    def _misfit(self, column: Column, value: Any, row: int) -> SchemaError:
        preview = repr(value)
        if len(preview) > 60:
            preview = preview[:57] + "..."
        if column.as_text:
            origin = "cast_to_text"
            hint = "only UTF-8 blobs can be read as text; CAST the column in source.query"
        elif column.inferred:
            origin = f"inferred from the first {SAMPLE_ROWS} rows"
            hint = "list the column in cast_to_text, or CAST it in source.query"
        else:
            origin = f"declared {column.declared or 'without a type'}"
            hint = "fix the value, CAST the column in source.query, or list it in cast_to_text"
        return SchemaError(
            f"sqlite reader: column {column.name!r}, row {row}: {storage_class(value)} value {preview} "
            f"does not fit {column.type} ({origin})",
            hint=hint,
        )
