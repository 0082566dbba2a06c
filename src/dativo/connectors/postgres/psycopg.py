"""``postgres-psycopg``: the pure-Python PostgreSQL reader (psycopg 3, server-side cursor).

Rows arrive through a named (server-side) cursor in PostgreSQL's binary format
and are turned into Arrow column by column: psycopg's C loaders produce Python
values, which :func:`pyarrow.array` converts in bulk. Dates, times, timestamps
and UUIDs are loaded as their raw bytes and decoded vectorised, which is both
faster than building ``datetime`` objects and exact over PostgreSQL's whole
range (BC dates, years past 9999). ``numeric`` is selected as text and cast
to decimal by Arrow exactly like the ADBC reader does (building ``Decimal``
objects would cost more than everything else together). JSON, enums and
``cast_to_text`` columns arrive as the server's text.

Speed: the next ``FETCH`` runs on a helper thread while the current batch is
converted, so the server's work overlaps the client's; and Python's cyclic
garbage collector is paused while psycopg builds a batch's row tuples (they are
all alive anyway, so collecting would only rescan them again and again).
"""

from __future__ import annotations

import array
import contextlib
import gc
import queue
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from dativo.connectors.postgres.base import PlannedPostgresReader
from dativo.connectors.postgres.connection import import_psycopg
from dativo.connectors.postgres.pool import Lease, lease_psycopg
from dativo.connectors.postgres.types import (
    OID_BPCHAR,
    OID_DATE,
    OID_NAME,
    OID_TEXT,
    OID_TIME,
    OID_TIMESTAMP,
    OID_TIMESTAMPTZ,
    OID_UUID,
    OID_VARCHAR,
    ColumnPlan,
    check_array_dims,
    check_temporal_range,
    decimal_from_strings,
    rebuild_list,
)
from dativo.errors import DativoError, SourceError
from dativo.sdk import PluginConfig

if TYPE_CHECKING:
    import psycopg

__all__ = ["PsycopgPostgresReader"]

_CURSOR_NAME = "dativo_reader"
# PostgreSQL's epoch (2000-01-01) relative to Arrow's (1970-01-01).
_EPOCH_DAYS = 10_957
_EPOCH_MICROS = _EPOCH_DAYS * 86_400_000_000
_STOP_TIMEOUT_S = 5.0
# Values (rows x columns) per FETCH: bounds the Python objects alive at once
# (about 50 bytes each) while keeping round trips few.
_VALUES_PER_FETCH = 200_000

Converter = Callable[[Sequence[Any]], pa.Array]
Finisher = Callable[[pa.Array], pa.Array]


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC (process-wide) for the block, unless someone else already did."""
    was_enabled = gc.isenabled()
    if was_enabled:
        gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _fixed_width(values: Sequence[Any], width: int) -> pa.Array:
    """A fixed_size_binary(width) array from bytes objects or None."""
    try:
        data = b"".join(values)  # fast path: no NULLs (join raises TypeError on None)
    except TypeError:
        return pa.array(values, type=pa.binary(width))
    return pa.Array.from_buffers(pa.binary(width), len(values), [None, pa.py_buffer(data)], null_count=0)


def _be_ints(storage: pa.Array, width: int) -> pa.Array:
    """Reinterpret a fixed_size_binary(4|8) array of big-endian integers as int32/int64 (nulls kept)."""
    validity, data = storage.buffers()[0], storage.buffers()[1]
    ints = array.array("i" if width == 4 else "q")
    assert ints.itemsize == width
    ints.frombytes(memoryview(data)[: (storage.offset + len(storage)) * width])
    if sys.byteorder == "little":
        ints.byteswap()
    int_type = pa.int32() if width == 4 else pa.int64()
    return pa.Array.from_buffers(
        int_type, len(storage), [validity, pa.py_buffer(ints)], null_count=storage.null_count, offset=storage.offset
    )


def _finisher(column: ColumnPlan) -> tuple[int | None, Finisher | None]:
    """How psycopg's values of a column (or its elements) become the canonical type.

    Returns the byte width of raw fixed-width values (None for values
    pyarrow converts directly) and the step from the intermediate array to
    the canonical one (None when there is none).
    """
    kind, target = column.kind, column.value_type
    if kind == "numeric":
        return None, lambda a: decimal_from_strings(a, column)
    if kind == "date":

        def finish_date(a: pa.Array) -> pa.Array:
            days = pc.add(_be_ints(a, 4), pa.scalar(_EPOCH_DAYS, pa.int32())).view(pa.date32())
            check_temporal_range(days, column)
            return days

        return 4, finish_date
    if kind in ("timestamp", "timestamptz"):

        def finish_timestamp(a: pa.Array) -> pa.Array:
            # Wraps like the ADBC driver does, so the shared range check sees the same numbers.
            micros = pc.add(_be_ints(a, 8), pa.scalar(_EPOCH_MICROS, pa.int64())).view(target)
            check_temporal_range(micros, column)
            return micros

        return 8, finish_timestamp
    if kind == "time":
        return 8, lambda a: _be_ints(a, 8).view(target)
    if kind == "uuid":
        return 16, lambda a: pa.ExtensionArray.from_storage(target, a)
    return None, None


def _converter(column: ColumnPlan) -> Converter:
    """A function turning one column's Python values into an array of the canonical type."""
    width, finish = _finisher(column)
    inter = pa.string() if column.kind == "numeric" else pa.binary(width) if width else column.value_type
    if finish is None:
        target = column.arrow_type
        return lambda values: pa.array(values, type=target)
    if not column.is_array:
        if width:
            return lambda values: finish(_fixed_width(values, width))
        return lambda values: finish(pa.array(values, type=inter))
    list_type = column.arrow_type

    def convert_list(values: Sequence[Any]) -> pa.Array:
        lists = pa.array(values, type=pa.list_(inter))
        return rebuild_list(list_type, lists, finish(lists.values))

    return convert_list


class _Prefetcher:
    """Runs ``fetchmany`` on a helper thread, one chunk ahead of the consumer.

    Chunks hold at most ``chunk_rows`` rows and are cut so that every
    ``batch_rows`` rows end a chunk: the consumer can assemble batches of exactly
    ``batch_rows`` rows. An empty chunk marks the end.
    """

    def __init__(
        self, cursor: psycopg.ServerCursor[Any], conn: psycopg.Connection[Any], chunk_rows: int, batch_rows: int
    ) -> None:
        self._cursor = cursor
        self._conn = conn
        self._chunk_rows = chunk_rows
        self._batch_rows = batch_rows
        self._queue: queue.Queue[list[tuple[Any, ...]] | BaseException] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dativo-postgres-fetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            left_in_batch = self._batch_rows
            while not self._stop.is_set():
                size = min(self._chunk_rows, left_in_batch)
                with _gc_paused():
                    rows = self._cursor.fetchmany(size)
                if rows:
                    self._put(rows)
                if len(rows) < size:
                    self._put([])
                    return
                left_in_batch = left_in_batch - size or self._batch_rows
        except BaseException as exc:
            self._put(exc)

    def _put(self, item: list[tuple[Any, ...]] | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self) -> list[tuple[Any, ...]]:
        """The next chunk of rows (empty at the end); re-raises the helper thread's exception.

        Raises :class:`SourceError` if :meth:`stop` is called (from another thread) meanwhile.
        """
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    raise SourceError("the PostgreSQL reader was closed while reading") from None
                continue
            if isinstance(item, BaseException):
                raise item
            return item

    def stop(self) -> None:
        """Stop the helper thread; cancels a running FETCH if it does not finish promptly."""
        if self._stop.is_set():
            return
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        self._thread.join(timeout=0.5)
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._conn.cancel_safe(timeout=_STOP_TIMEOUT_S)
            self._thread.join(timeout=_STOP_TIMEOUT_S)


def _combine(chunks: list[list[pa.Array]], schema: pa.Schema) -> pa.RecordBatch:
    """One batch from converted chunks, freeing each column's chunks as soon as it is concatenated."""
    if len(chunks) == 1:
        return pa.RecordBatch.from_arrays(chunks[0], schema=schema)
    columns: list[pa.Array] = []
    for i in range(len(schema)):
        parts = [chunk[i] for chunk in chunks]
        for chunk in chunks:
            chunk[i] = None
        columns.append(pa.concat_arrays(parts))
        del parts
    return pa.RecordBatch.from_arrays(columns, schema=schema)


class PsycopgPostgresReader(PlannedPostgresReader):
    """Read a PostgreSQL table or query with psycopg 3 through a server-side cursor.

    ``initialize`` connects and decides the schema (see
    :func:`dativo.connectors.postgres.types.describe_source`); a wrong
    password, an unreachable server, a missing table or an unmappable type fail
    there with :class:`dativo.SourceError` / :class:`dativo.TypeMappingError` /
    :class:`dativo.ConfigError`. ``read_batch`` fetches chunks of rows on a
    helper thread and yields batches of exactly ``batch_size`` rows; a value
    that cannot be represented exactly (numeric NaN, an infinite date, a
    multi-dimensional array) raises :class:`dativo.SchemaError`
    naming the column, and a failure mid-stream raises :class:`dativo.SourceError`.
    """

    def __init__(self) -> None:
        self._conn: psycopg.Connection[Any] | None = None
        self._lease: Lease | None = None
        self._clean = True  # no read left half-way: the connection may go back to the run's pool
        self._cursor: psycopg.ServerCursor[Any] | None = None
        self._prefetcher: _Prefetcher | None = None
        self._converters: list[Converter] = []

    def initialize(self, config: PluginConfig) -> None:
        """Connect, describe the source and prepare converters; see the class docstring for failures.

        The connection is leased from the run's shared connections where streams share them
        (the one the source was described on, usually) and goes back there at ``close()``
        only when no read was left half-way.
        """
        if not self.shares_connection:
            self._conn = self.setup_source(config, numeric_as_text=True, keep=True)
        else:
            self.setup_source(config, numeric_as_text=True)
            self._lease = lease_psycopg(self.source()[2])
            self._conn = self._lease.conn
        self._converters = [_converter(c) for c in self.plan().columns]

    @property
    def shares_connection(self) -> bool:
        """Whether the connection comes from the run's shared connections: not for a subclass that keeps
        session state on it (a change reader's temporary tables and snapshots); that one gets its own."""
        return not hasattr(self, "begin_changes")

    def prepare_connection(self, conn: psycopg.Connection[Any]) -> None:
        """A connection of the reader's own (``shares_connection`` false) loads as the reader's cursors do."""
        self._register_loaders(conn)

    @staticmethod
    def _register_loaders(target: psycopg.Connection[Any] | psycopg.ServerCursor[Any]) -> None:
        """Load text as str and date/time/uuid values as raw bytes (decoded vectorised by the converters).

        ``read_batch`` registers them on its cursor's own adapters, so a shared connection is left as found.
        """
        from psycopg.types.string import ByteaBinaryLoader, TextBinaryLoader

        adapters = target.adapters
        for oid in (OID_TEXT, OID_VARCHAR, OID_BPCHAR, OID_NAME):
            adapters.register_loader(oid, TextBinaryLoader)
        # Raw big-endian bytes, decoded vectorised by _finisher (psycopg uses its C version of this loader).
        for oid in (OID_DATE, OID_TIME, OID_TIMESTAMP, OID_TIMESTAMPTZ, OID_UUID):
            adapters.register_loader(oid, ByteaBinaryLoader)

    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        """Yield record batches of ``batch_size`` rows (the last may be shorter); raises on any failure.

        Rows are fetched in chunks of at most about 200,000 values (and at most
        ``batch_size`` rows) to bound memory, converted per chunk and combined.
        """
        plan = self.plan()
        conn = self._conn
        if conn is None:
            raise SourceError("the PostgreSQL reader is closed")
        psycopg = import_psycopg()
        batch_size = max(1, int(batch_size))
        self._clean = False
        try:
            cursor = conn.cursor(name=_CURSOR_NAME, binary=True)
            self._register_loaders(cursor)
            self._cursor = cursor
            cursor.execute(plan.sql.encode())
            width = len(plan.columns) + len(plan.array_columns)
            chunk_rows = max(1, min(batch_size, _VALUES_PER_FETCH // max(1, width)))
            self._prefetcher = prefetcher = _Prefetcher(cursor, conn, chunk_rows, batch_size)
            chunks: list[list[pa.Array]] = []
            count = 0
            while rows := prefetcher.get():
                chunks.append(self._to_arrays(rows))
                count += len(rows)
                del rows
                if count >= batch_size:
                    batch = _combine(chunks, plan.schema)
                    chunks, count = [], 0  # let the chunks go before the consumer gets the batch
                    yield batch
            if chunks:
                yield _combine(chunks, plan.schema)
            self._stop_reading()
            conn.rollback()
            self._clean = True
        except DativoError:
            raise
        except psycopg.Error as exc:
            raise self.translate(exc) from exc
        finally:
            self._stop_reading()

    def _to_arrays(self, rows: list[tuple[Any, ...]]) -> list[pa.Array]:
        """Convert fetched rows into one canonical array per column (checking array dimensions first)."""
        plan = self.plan()
        n_data = len(plan.columns)
        columns = list(zip(*rows, strict=True))
        for pos, idx in enumerate(plan.array_columns):
            check_array_dims(pa.array(columns[n_data + pos], type=pa.int32()), plan.columns[idx])
        return [convert(values) for convert, values in zip(self._converters, columns[:n_data], strict=True)]

    def _stop_reading(self) -> None:
        prefetcher, self._prefetcher = self._prefetcher, None
        if prefetcher is not None:
            prefetcher.stop()
        cursor, self._cursor = self._cursor, None
        if cursor is not None:
            with contextlib.suppress(Exception):
                cursor.close()

    def close(self) -> None:
        """Stop fetching, close the cursor; give the connection back (clean) or close it; idempotent, never raises."""
        self._stop_reading()
        conn, self._conn = self._conn, None
        leased, self._lease = self._lease, None
        if leased is not None:
            leased.release(reusable=self._clean)
        elif conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
