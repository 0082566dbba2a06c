"""``postgres-rs``: dativo's native PostgreSQL reader (Rust, in process through PyO3).

The schema and the SQL come from dativo's public PostgreSQL helper SDK
(:mod:`dativo.postgres_sdk`: set-up, type mapping, error translation,
partitions), exactly as for the built-in readers; the source is described through
the extension's own connection (no psycopg: a run reading with one connection never
imports it; only partitioned planning, the snapshot export, uses psycopg), and the
extension runs ``COPY (sql) TO STDOUT (FORMAT binary)`` on a thread of its own
(without the GIL), decodes the tuples straight into Arrow buffers and hands each batch over through the Arrow C data
interface, so no value becomes a Python object and no batch is copied.

Value rules are the shared ones: a numeric that does not fit its decimal
exactly, an infinite date/timestamp or a multi-dimensional array fails the run
with the same :class:`dativo.SchemaError` the built-in readers raise.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, cast

import pyarrow as pa

from dativo.errors import ConfigError, DativoError, SchemaError, SourceError
from dativo.postgres_sdk import (
    ColumnPlan,
    PgConnectionInfo,
    PostgresDriverError,
    SnapshotPartitionedReader,
    SourcePlan,
    SourceSpec,
    build_connection,
    check_array_dims,
    check_temporal_range,
    ctid_partitions,
    decimal_from_strings,
    describe_source,
    snapshot_setup_sql,
)
from dativo.sdk import PluginConfig, ReadPartition

from ._conninfo import make_conninfo, parse_conninfo
from ._describe import DescribeConnection
from ._describe import literal as _literal
from ._native import BatchStream, Connection, DecodeError, ServerError

__all__ = ["RustPostgresReader"]

log = logging.getLogger(__name__)

# What describe_source puts after FROM for a table source: one to three quoted identifiers.
_QUOTED_RELATION = re.compile(r'"(?:[^"]|"")*"(?:\."(?:[^"]|"")*"){0,2}')

# libpq keywords rust-postgres understands (client_encoding is always UTF8 there).
_SUPPORTED_KEYS = (
    "host",
    "hostaddr",
    "port",
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "target_session_attrs",
    "channel_binding",
    "sslmode",  # TLS with rustls in the extension: disable, allow/prefer, require, verify-ca, verify-full
    "sslrootcert",
)
_IGNORED_KEYS = frozenset({"client_encoding"})


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def native_conninfo(info: PgConnectionInfo) -> str:
    """The ``key=value`` string for the Rust client; ConfigError for settings it cannot honour (client certificates)."""
    params = parse_conninfo(info.conninfo)
    unsupported = sorted(k for k in params if k not in _SUPPORTED_KEYS and k not in _IGNORED_KEYS)
    if unsupported:
        raise ConfigError(
            f"the postgres-rs reader does not support the connection setting(s) {', '.join(unsupported)}",
            hint="remove them or name the ADBC reader (source.reader.implementation: postgres-adbc)",
        )
    params.setdefault("host", info.host)
    params.setdefault("port", info.port)
    params.setdefault("user", info.user)
    params.setdefault("dbname", info.dbname)
    return " ".join(f"{k}={_quote(params[k])}" for k in _SUPPORTED_KEYS if k in params)


def _column_specs(plan: SourcePlan) -> list[tuple[str, str, bool, int, int]]:
    specs: list[tuple[str, str, bool, int, int]] = []
    for c in plan.columns:
        t = c.value_type
        precision, scale = (t.precision, t.scale) if pa.types.is_decimal(t) else (0, 0)
        specs.append((c.name, c.kind, c.is_array, precision, scale))
    return specs


def _decode_error(exc: BaseException, plan: SourcePlan) -> DativoError:
    """Turn the extension's DecodeError into the SchemaError the shared checks raise for the same value."""
    kind, index, detail = exc.args
    column: ColumnPlan | None = plan.columns[index] if 0 <= index < len(plan.columns) else None
    try:
        if column is not None and kind == "numeric":
            decimal_from_strings(pa.array([detail], pa.string()), column)
        elif column is not None and kind == "temporal":
            low = pa.array([-(2**31)], pa.int32()) if column.kind == "date" else pa.array([-(2**63)], pa.int64())
            check_temporal_range(low.view(column.value_type), column)
        elif column is not None and kind == "ndims":
            check_array_dims(pa.array([int(detail)], pa.int32()), column)
    except SchemaError as error:
        return error
    where = f" in column {column.name!r}" if column is not None else ""
    return SourceError(f"the postgres-rs reader could not decode the COPY stream{where}: {detail}")


class RustPostgresReader(SnapshotPartitionedReader):
    """Read a PostgreSQL table or query with the native (Rust) binary-COPY decoder.

    ``initialize`` opens the native connection and describes the source on it
    with the shared type mapping: a wrong password, an unreachable server, a
    missing table or an unmappable type fail there (:class:`dativo.SourceError`,
    :class:`dativo.TypeMappingError`, :class:`dativo.ConfigError`).
    ``read_batch`` raises :class:`dativo.SchemaError` for a value that cannot
    be represented exactly and :class:`dativo.SourceError` carrying
    PostgreSQL's message for a failure mid-stream; it never ends early.
    Partitioned reads (``source.parallelism``) are supported for ``table``
    sources: every partition runs on its own connection inside the snapshot
    exported by a coordinating transaction (planned with psycopg, the only
    use of it here; without psycopg installed an unset ``source.parallelism``
    reads on one connection).
    """

    #: Nothing beyond the extension: psycopg is needed only to plan partitions (see ``plan_partitions``).
    requires: ClassVar[Mapping[str, str]] = {}

    #: libpq settings this reader honours (``client_encoding`` is accepted and ignored: always UTF8);
    #: dativo's default-reader choice reads it, so the list lives in one place.
    connection_settings: ClassVar[frozenset[str]] = frozenset(_SUPPORTED_KEYS) | _IGNORED_KEYS

    def __init__(self) -> None:
        super().__init__(cancel=lambda conn: conn.close())
        self._conninfo = ""
        self._conn: Any = None

    def initialize(self, config: PluginConfig) -> None:
        """Connect and describe the source on that connection; see the class docstring for the errors raised."""
        self.config = config
        self._spec = spec = SourceSpec.from_config(config)
        self._info = info = build_connection(config.get("connection"), parse=parse_conninfo, make=make_conninfo)
        self._conninfo = native_conninfo(info)
        conn = self._connect()
        try:
            # DescribeConnection answers the psycopg calls describe_source makes (see _describe.py).
            self._plan = describe_source(cast(Any, DescribeConnection(conn)), spec)
        except ServerError as exc:
            self._close_failed(conn)
            raise self.translate(_driver_error(exc)) from None
        except DecodeError as exc:
            self._close_failed(conn)
            detail = exc.args[2]
            raise SourceError(f"the postgres-rs reader could not describe the {spec.describe()}: {detail}") from None
        except BaseException:
            self._close_failed(conn)
            raise
        self._conn = conn

    def _close_failed(self, conn: Any) -> None:
        self.running.discard(conn)
        conn.close()

    def plan_partitions(self, parallelism: int | None) -> Sequence[ReadPartition]:
        """Plan ctid partitions with psycopg (see the base class), only when there will be some.

        With ``source.parallelism`` unset, the table's size is asked on the native connection first:
        a table too small to split (or a source that is no plain table read) is read on one connection
        without psycopg. Without psycopg installed, unset parallelism reads whole; one above 1
        raises PluginError naming the extra (for a table source).
        """
        plan, spec, _ = self.source()
        if parallelism is None and spec.table is not None and not self._worth_splitting(plan):
            return []
        if parallelism is None and importlib.util.find_spec("psycopg") is None:
            log.info("psycopg is not installed: reading on one connection (pip install 'dativo[postgres]')")
            return []
        return super().plan_partitions(parallelism)

    def _worth_splitting(self, plan: SourcePlan) -> bool:
        """False when ``ctid_partitions`` would not split this plain table read (asked without psycopg).

        A SQL that does not end in ``FROM <table>`` (e.g. an incremental read) is not split by the
        partitioner either. True (let the partitioner decide) when there is no connection or the
        server cannot answer.
        """
        relation = plan.sql.rpartition(" FROM ")[2]
        if _QUOTED_RELATION.fullmatch(relation) is None:
            return False
        if self._conn is None:
            return True
        try:
            _, rows = self._conn.query(
                "SELECT pg_relation_size(c.oid), current_setting('block_size')::int8 FROM pg_class c "
                f"WHERE c.oid = to_regclass({_literal(relation)})"
            )
        except (ServerError, DecodeError):
            return True
        if len(rows) != 1:
            return True
        size, block = int(rows[0][0]), int(rows[0][1])
        return bool(ctid_partitions(plan.sql, size, block, None, host=self._info.host if self._info else None))

    def _connect(self) -> Any:
        try:
            conn = Connection.connect(self._conninfo)
        except ServerError as exc:
            raise self.translate(_driver_error(exc), connecting=True) from exc
        self.running.add(conn)
        return conn

    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        """Yield record batches of at most ``batch_size`` rows; raises on any failure (never ends early)."""
        plan = self.plan()
        if self._conn is None:
            raise SourceError("the PostgreSQL reader is closed")
        yield from self._stream(self._conn, plan.sql, batch_size, None, None)

    def read_partition(self, partition: ReadPartition, batch_size: int) -> Iterator[pa.RecordBatch]:
        """Read one partition on a connection of its own, inside the exported snapshot."""
        sql, snapshot = str(partition.spec["sql"]), str(partition.spec["snapshot"])
        conn = self._connect()
        try:
            setup = snapshot_setup_sql(snapshot)
            yield from self._stream(conn, sql, batch_size, setup, "COMMIT")
        finally:
            self.running.discard(conn)
            conn.close()

    def _stream(
        self, conn: Any, sql: str, batch_size: int, setup: str | None, teardown: str | None
    ) -> Iterator[pa.RecordBatch]:
        plan = self.plan()
        stream: BatchStream = conn.copy(
            sql, _column_specs(plan), len(plan.array_columns), max(1, int(batch_size)), setup, teardown
        )
        try:
            for native in stream:
                batch = pa.record_batch(native)  # zero-copy import through the C data interface
                yield batch
        except DecodeError as exc:
            raise _decode_error(exc, plan) from None
        except ServerError as exc:
            if self.running.closed:
                raise SourceError("the postgres-rs reader was closed while reading") from None
            raise self.translate(_driver_error(exc)) from None
        finally:
            stream.close()

    def close(self) -> None:
        """Cancel running copies, close every connection and the snapshot transaction; idempotent."""
        super().close()
        self._conn = None


def _driver_error(exc: BaseException) -> PostgresDriverError:
    """The extension's ServerError (args: SQLSTATE or None, message) for the shared error translation.

    No SQLSTATE means the client failed on its own (socket closed, I/O error): the connection is lost.
    """
    sqlstate, message = exc.args
    return PostgresDriverError(sqlstate, str(message), connection_lost=sqlstate is None)
