"""``postgres-adbc``: the default, Arrow-native PostgreSQL reader.

The ADBC PostgreSQL driver runs ``COPY (SELECT ...) TO STDOUT (FORMAT binary)``
and decodes the stream straight into Arrow in C++. This reader only adjusts
each batch to the canonical schema, without copying what is already right:

* ``numeric`` arrives as text (an ``arrow.opaque`` extension); it is cast to
  ``decimal128`` exactly, failing on any value that would need rounding;
* the driver shifts dates/timestamps to the Unix epoch without overflow
  checks, so ``infinity`` wraps around; the shared range check catches it;
* the driver flattens multi-dimensional arrays; the ``array_ndims`` helper
  column of the shared plan catches those;
* the driver's field metadata and extension wrappers are dropped.

Schema discovery uses psycopg (see :mod:`dativo.connectors.postgres.types`),
so this reader and ``postgres-psycopg`` produce identical schemas.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import pyarrow as pa

from dativo.connectors.postgres.base import SnapshotPartitionedReader
from dativo.connectors.postgres.connection import PG_EXTRA_HINT
from dativo.connectors.postgres.partitions import snapshot_setup_sql
from dativo.connectors.postgres.pool import Lease, lease
from dativo.connectors.postgres.types import (
    ColumnPlan,
    check_array_dims,
    check_temporal_range,
    decimal_from_strings,
    rebuild_list,
)
from dativo.errors import PluginError, SourceError
from dativo.sdk import PluginConfig, ReadPartition

__all__ = ["AdbcPostgresReader"]

log = logging.getLogger(__name__)

_BATCH_HINT_OPTION = "adbc.postgresql.batch_size_hint_bytes"
_CLOSE_WAIT_S = 10.0
_MIN_HINT_BYTES = 64 * 1024
#: The driver builds each batch in malloc'd buffers that grow by doubling (about 1.4x the batch's
#: Arrow size in the reading thread's heap), and every batch in flight between it and the writer
#: is one of those: batches of at most ~4 MiB held the wide table's run on 2 connections at 217 MB
#: instead of 244 at the same CPU (docs/performance.md, "postgres-adbc memory, session 6").
_MAX_HINT_BYTES = 4 * 1024 * 1024

ArrayConverter = Callable[[pa.Array], pa.Array]


def _import_adbc() -> Any:
    try:
        import adbc_driver_postgresql.dbapi as dbapi
    except ImportError as exc:
        raise PluginError(f"the postgres-adbc reader requires the PostgreSQL extra: {PG_EXTRA_HINT}") from exc
    return dbapi


def _result_stream(cursor: Any) -> Any:
    """The query's result stream, wrapped so that a failure mid-stream carries its SQLSTATE.

    ``fetch_record_batch()`` returns pyarrow's bare reader, whose errors are ``OSError`` with
    libpq's text only (apache/arrow-adbc#1523); the cursor's results hold ADBC's wrapper of
    the same stream, which raises the driver's error with ``sqlstate`` (57P01 for a terminated
    backend, say). Falls back to the bare reader where a driver version lacks the wrapper.
    """
    reader = getattr(getattr(cursor, "_results", None), "reader", None)
    return reader if reader is not None else cursor.fetch_record_batch()


def _adbc_alive(conn: Any) -> bool:
    """An idle ADBC connection still answers (a pooled one may have been ended by the server)."""
    cursor = conn.cursor()
    try:
        cursor.execute("SELECT 1")
        return bool(cursor.fetchone() == (1,))
    finally:
        cursor.close()


def _hint_bytes(schema: pa.Schema, batch_size: int) -> int:
    """The driver's batch size hint (bytes): about ``batch_size`` rows, at most ``_MAX_HINT_BYTES``."""
    return min(max(batch_size * _row_width(schema), _MIN_HINT_BYTES), _MAX_HINT_BYTES)


def _execute(cursor: Any, sql: str, hint_bytes: int) -> Any:
    """Run ``sql`` on ``cursor`` with the batch size hint; returns its result stream (see _result_stream)."""
    cursor.adbc_statement.set_options(**{_BATCH_HINT_OPTION: str(hint_bytes)})
    cursor.execute(sql)
    return _result_stream(cursor)


def _storage(arr: pa.Array) -> pa.Array:
    return arr.storage if isinstance(arr, pa.ExtensionArray) else arr


def _value_converter(column: ColumnPlan) -> ArrayConverter:
    """Adjust the driver's array (scalar column, or array elements) to the canonical value type."""
    target = column.value_type
    kind = column.kind
    if kind == "numeric":
        return lambda a: decimal_from_strings(_storage(a), column)
    if kind in ("date", "timestamp", "timestamptz"):

        def temporal(a: pa.Array) -> pa.Array:
            a = _storage(a)
            if a.type != target:
                a = a.view(target)  # same layout; only the time zone spelling may differ
            check_temporal_range(a, column)
            return a

        return temporal
    if kind == "uuid":

        def uuid(a: pa.Array) -> pa.Array:
            return a if a.type == target else pa.ExtensionArray.from_storage(target, _storage(a))

        return uuid

    def plain(a: pa.Array) -> pa.Array:
        if a.type == target:
            return a
        a = _storage(a)
        if a.type == target:
            return a
        try:
            return a.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SourceError(
                f"the ADBC driver returned {a.type} for column {column.name!r} ({column.pg_type}), "
                f"expected {target}: {exc}",
                hint="use the postgres-psycopg reader or list the column in cast_to_text",
            ) from exc

    return plain


def _column_converter(column: ColumnPlan) -> ArrayConverter:
    convert = _value_converter(column)
    if not column.is_array:
        return convert
    list_type = column.arrow_type

    def convert_list(a: pa.Array) -> pa.Array:
        return rebuild_list(list_type, a, convert(a.values))

    return convert_list


def _row_width(schema: pa.Schema) -> int:
    """Rough bytes per row in the driver's output, to turn batch_size (rows) into its byte hint."""
    width = 0
    for field in schema:
        t = field.type
        if pa.types.is_list(t):
            width += 64
        elif pa.types.is_decimal(t):
            width += 20  # arrives as text
        elif pa.types.is_string(t) or pa.types.is_binary(t):
            width += 36
        else:
            try:
                width += max(1, t.bit_width // 8)
            except ValueError:
                width += 16
    return max(width, 8)


class AdbcPostgresReader(SnapshotPartitionedReader):
    """Read a PostgreSQL table or query through the ADBC driver's binary COPY.

    ``initialize`` connects (psycopg, for schema discovery, then ADBC) and
    decides the schema; a wrong password, an unreachable server, a missing
    table or an unmappable type fail there with :class:`dativo.SourceError` /
    :class:`dativo.TypeMappingError` / :class:`dativo.ConfigError`.
    ``read_batch`` streams batches of at most ``batch_size`` rows (and ~4 MiB) without
    materialising the result; a value that cannot be represented exactly
    raises :class:`dativo.SchemaError` naming the column, and a failure
    mid-stream raises :class:`dativo.SourceError`.
    """

    requires: ClassVar[Mapping[str, str]] = {
        "psycopg": "pip install 'dativo[postgres]'",
        "adbc_driver_postgresql": "pip install 'dativo[postgres]'",
    }

    def __init__(self) -> None:
        super().__init__(cancel=lambda cursor: cursor.adbc_cancel())
        self._conn: Any = None
        self._lease: Lease | None = None
        self._clean = True  # no read left half-way: the connection may go back to the run's pool
        self._cursor: Any = None
        self._converters: list[ArrayConverter] = []
        # Held while the driver is inside read_next_batch: close() from another
        # thread cancels the query and waits, instead of freeing a stream in use.
        self._reading = threading.Lock()

    def initialize(self, config: PluginConfig) -> None:
        """Describe the source with psycopg, then lease the ADBC connection; see the class docstring.

        Both connections come from the run's shared connections where streams share them;
        the ADBC one goes back at ``close()`` only when no read was left half-way.
        """
        dbapi = _import_adbc()
        self.setup_source(config)
        plan = self.plan()
        self._converters = [_column_converter(c) for c in plan.columns]
        conninfo = self.source()[2].conninfo
        try:
            self._lease = lease(
                "adbc",
                conninfo,
                lambda: dbapi.connect(conninfo, autocommit=True),
                close=lambda conn: conn.close(),
                alive=_adbc_alive,
            )
        except Exception as exc:
            raise self.translate(exc, connecting=True) from exc
        self._conn = self._lease.conn

    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        """Yield record batches of at most about ``batch_size`` rows; raises on any failure (never ends early).

        Where rows are wide the batches hold fewer rows: the driver's are capped at about 4 MiB.
        """
        plan = self.plan()
        conn = self._conn
        if conn is None:
            raise SourceError("the PostgreSQL reader is closed")
        batch_size = max(1, int(batch_size))
        self._clean = False
        try:
            with self.translating():
                with self._reading:
                    cursor = conn.cursor()
                    self._cursor = cursor
                    stream = _execute(cursor, plan.sql, _hint_bytes(plan.schema, batch_size))
                while True:
                    with self._reading:
                        if self._cursor is None:
                            raise SourceError("the PostgreSQL reader was closed while reading")
                        try:
                            raw = stream.read_next_batch()
                        except StopIteration:
                            break
                    yield from self._sized(self._convert(raw), batch_size)
        finally:
            with self._reading:
                self._close_cursor()
        self._clean = True

    @staticmethod
    def _sized(batch: pa.RecordBatch, batch_size: int) -> Iterator[pa.RecordBatch]:
        n = batch.num_rows
        if n <= batch_size * 1.25:
            yield batch
            return
        # Zero-copy slices when the driver's byte-sized batch overshoots.
        pieces = math.ceil(n / batch_size)
        step = math.ceil(n / pieces)
        for start in range(0, n, step):
            yield batch.slice(start, step)

    def read_partition(self, partition: ReadPartition, batch_size: int) -> Iterator[pa.RecordBatch]:
        """Read one partition on an ADBC connection of its own, inside the exported snapshot."""
        plan, _, info = self.source()
        if self._conn is None:
            raise SourceError("the PostgreSQL reader is closed")
        dbapi = _import_adbc()
        batch_size = max(1, int(batch_size))
        conn: Any = None
        cursor: Any = None
        try:
            with self.translating():
                conn = dbapi.connect(info.conninfo, autocommit=True)
                cursor = conn.cursor()
                self.running.add(cursor)
                for statement in snapshot_setup_sql(str(partition.spec["snapshot"])).split("; "):
                    cursor.execute(statement)  # the driver prepares statements: one command each
                stream = _execute(cursor, str(partition.spec["sql"]), _hint_bytes(plan.schema, batch_size))
                for raw in stream:
                    yield from self._sized(self._convert(raw), batch_size)
        finally:
            self.running.discard(cursor)
            for closable in (cursor, conn):
                if closable is not None:
                    with contextlib.suppress(Exception):
                        closable.close()

    def _convert(self, raw: pa.RecordBatch) -> pa.RecordBatch:
        plan = self.plan()
        n_data = len(plan.columns)
        if raw.num_columns != n_data + len(plan.array_columns):
            raise SourceError(
                f"the ADBC driver returned {raw.num_columns} columns for the {plan.source}, "
                f"expected {n_data + len(plan.array_columns)}"
            )
        for pos, idx in enumerate(plan.array_columns):
            check_array_dims(raw.column(n_data + pos), plan.columns[idx])
        arrays = [convert(raw.column(i)) for i, convert in enumerate(self._converters)]
        return pa.RecordBatch.from_arrays(arrays, schema=plan.schema)

    def _close_cursor(self) -> None:
        cursor, self._cursor = self._cursor, None
        if cursor is not None:
            with contextlib.suppress(Exception):
                cursor.close()

    def close(self) -> None:
        """Close the cursor; give the connection back (clean) or close it; idempotent and safe after errors.

        Called while another thread is inside the driver, it cancels the query
        and waits for that thread to leave the driver (up to 10 s; after that the
        connection is left to the garbage collector rather than freed in use).
        """
        super().close()  # cancels the partitions' cursors, ends the snapshot transaction
        if not self._reading.acquire(blocking=False):
            self._clean = False  # cancelled mid-read: the connection is closed, never shared
            cursor = self._cursor
            if cursor is not None:
                with contextlib.suppress(Exception):
                    cursor.adbc_cancel()
            if not self._reading.acquire(timeout=_CLOSE_WAIT_S):
                log.warning("the ADBC PostgreSQL reader is still busy; not closing its connection")
                return
        try:
            self._close_cursor()
            self._conn = None
            leased, self._lease = self._lease, None
            if leased is not None:
                leased.release(reusable=self._clean)
        finally:
            self._reading.release()
