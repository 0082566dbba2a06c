"""What every PostgreSQL reader shares: set-up (spec, connection, plan), errors, partitions, cancellation.

A reader subclasses :class:`PlannedPostgresReader` (or :class:`SnapshotPartitionedReader` to
read in parallel) and calls :meth:`PlannedPostgresReader.setup_source` in ``initialize``: the
job's source becomes a :class:`SourceSpec`, its ``connection:`` a :class:`PgConnectionInfo`,
and the shared type mapping describes it into a :class:`SourcePlan` (the SQL and the Arrow
schema), so every reader built on these classes maps types identically, translates errors
identically and takes part in incremental reads.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import pyarrow as pa

from dativo.connectors.postgres.connection import (
    PgConnectionInfo,
    build_connection,
    connect_psycopg,
    import_psycopg,
    translate_error,
)
from dativo.connectors.postgres.partitions import SnapshotPartitioner
from dativo.connectors.postgres.pool import borrow_psycopg
from dativo.connectors.postgres.types import SourcePlan, SourceSpec, describe_source, with_lower_bound
from dativo.errors import DativoError, SourceError
from dativo.sdk import DataReader, PluginConfig, ReadPartition, redact

if TYPE_CHECKING:
    import psycopg

__all__ = ["CancelRegistry", "PlannedPostgresReader", "SnapshotPartitionedReader"]

T = TypeVar("T")


class CancelRegistry(Generic[T]):
    """The connections or cursors a reader has in use, so that ``close()`` from another thread can stop them.

    :meth:`add` refuses (SourceError) once :meth:`close` ran, so a partition starting while
    the run is being torn down does not open a connection nobody will close.
    """

    def __init__(self, cancel: Callable[[T], None]) -> None:
        self._cancel = cancel
        self._lock = threading.Lock()
        self._items: set[T] = set()
        self.closed = False

    def add(self, item: T) -> None:
        """Register ``item``; raises SourceError (after cancelling it) when the reader is closed already."""
        with self._lock:
            if not self.closed:
                self._items.add(item)
                return
        with contextlib.suppress(Exception):
            self._cancel(item)
        raise SourceError("the PostgreSQL reader was closed while reading")

    def discard(self, item: T) -> None:
        """Forget ``item`` (it finished); unknown items are ignored."""
        with self._lock:
            self._items.discard(item)

    def close(self) -> None:
        """Cancel every registered item (errors ignored) and refuse new ones; idempotent."""
        with self._lock:
            self.closed = True
            items, self._items = list(self._items), set()
        for item in items:
            with contextlib.suppress(Exception):
                self._cancel(item)


class PlannedPostgresReader(DataReader):
    """Base of the PostgreSQL readers: one set-up, one schema, one error translation.

    ``initialize`` calls :meth:`setup_source`; ``get_schema``, ``set_incremental`` and
    ``list_tables`` come from here. Subclasses read ``self.plan().sql``.
    """

    requires: ClassVar[Mapping[str, str]] = {"psycopg": "pip install 'dativo[postgres]'"}

    _plan: SourcePlan | None = None
    _spec: SourceSpec | None = None
    _info: PgConnectionInfo | None = None

    def setup_source(
        self, config: PluginConfig, *, numeric_as_text: bool = False, keep: bool = False
    ) -> psycopg.Connection[Any] | None:
        """Parse the source and connection settings and describe the source with psycopg.

        Sets ``self.config``, the spec, the connection info and the plan. The psycopg
        connection used goes back to the run's shared connections (or is closed), or with
        ``keep`` is returned (a connection of the reader's own, its transaction rolled back).
        Raises ConfigError (bad settings), SourceError (unreachable, authentication,
        missing table; transient where retrying may help) or TypeMappingError.
        """
        self.config = config
        self._spec = spec = SourceSpec.from_config(config)
        self._info = info = build_connection(config.get("connection"))
        psycopg = import_psycopg()
        if not keep:  # described on a connection of the run's pool where streams share one (docs/many-tables.md)
            try:
                with borrow_psycopg(info) as conn:
                    self._plan = describe_source(conn, spec, numeric_as_text=numeric_as_text)
            except psycopg.Error as exc:
                raise self.translate(exc) from exc
            return None
        conn = connect_psycopg(info)
        try:
            self.prepare_connection(conn)
            self._plan = describe_source(conn, spec, numeric_as_text=numeric_as_text)
            conn.rollback()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                conn.close()
            if isinstance(exc, psycopg.Error):
                raise self.translate(exc) from exc
            raise
        return conn

    def prepare_connection(self, conn: psycopg.Connection[Any]) -> None:
        """Adjust the kept psycopg connection before the source is described (``setup_source(keep=True)``)."""

    def translate(self, exc: BaseException, *, connecting: bool = False) -> DativoError:
        """This reader's failure as a dativo error (see ``translate_error``): transient by SQLSTATE or type."""
        if self._info is None:
            return exc if isinstance(exc, DativoError) else SourceError(redact(f"the PostgreSQL reader failed: {exc}"))
        return translate_error(exc, self._info, connecting=connecting, table=self._spec.table if self._spec else None)

    @contextlib.contextmanager
    def translating(self) -> Iterator[None]:
        """Inside the block, an exception that is not a DativoError is raised as :meth:`translate` makes it."""
        try:
            yield
        except DativoError:
            raise
        except Exception as exc:
            raise self.translate(exc) from exc

    def plan(self) -> SourcePlan:
        """The plan decided in ``initialize``; raises SourceError if the reader was not initialized."""
        if self._plan is None:
            raise SourceError("the PostgreSQL reader was not initialized")
        return self._plan

    def source(self) -> tuple[SourcePlan, SourceSpec, PgConnectionInfo]:
        """Plan, spec and connection info; raises SourceError if not initialized."""
        plan = self.plan()
        if self._spec is None or self._info is None:
            raise SourceError("the PostgreSQL reader was not initialized")
        return plan, self._spec, self._info

    def get_schema(self) -> pa.Schema:
        """The canonical schema decided in ``initialize``; raises SourceError if not initialized."""
        return self.plan().schema

    def set_incremental(self, cursor: str, after: Any | None) -> None:
        """Read only rows whose ``cursor`` column is greater than ``after`` (see dativo.IncrementalReader)."""
        self._plan = with_lower_bound(self.plan(), cursor, after)

    def list_tables(self, config: PluginConfig) -> list[str]:
        """Every table, view and materialized view the user may read, as ``schema.table`` (dativo.ListsTables).

        System schemas (``pg_catalog``, ``information_schema``, ``pg_toast``) are left out. A connection
        problem raises SourceError as ``initialize`` would.
        """
        info = build_connection(config.get("connection"))
        psycopg = import_psycopg()
        try:
            with borrow_psycopg(info) as pg:
                rows = pg.execute(
                    "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition "
                    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' "
                    "AND has_table_privilege(c.oid, 'SELECT') ORDER BY 1, 2"
                ).fetchall()
        except psycopg.Error as exc:
            raise translate_error(exc, info) from exc
        return [f"{schema}.{name}" for schema, name in rows]

    def _require_plan(self) -> SourcePlan:
        """The same as :meth:`plan` (the name the change-capture reader uses)."""
        return self.plan()


class SnapshotPartitionedReader(PlannedPostgresReader):
    """A PostgreSQL reader that reads a ``table`` source as ctid ranges in one exported snapshot.

    ``plan_partitions`` is shared; a subclass implements ``read_partition`` (joining
    ``partition.spec["snapshot"]`` with ``snapshot_setup_sql`` first) and registers what it
    opens in :attr:`running` so ``close()`` cancels it. Subclasses call ``super().close()``.
    """

    def __init__(self, cancel: Callable[[Any], None]) -> None:
        #: What the partitions have open, cancelled by ``close()`` with ``cancel``.
        self.running: CancelRegistry[Any] = CancelRegistry(cancel)
        self._partitioner: SnapshotPartitioner | None = None

    def plan_partitions(self, parallelism: int | None) -> Sequence[ReadPartition]:
        """Export a snapshot and split a ``table`` source into ctid page ranges (empty for a query source)."""
        plan, spec, info = self.source()
        self._partitioner = SnapshotPartitioner(info, spec, plan)
        return self._partitioner.plan(parallelism)

    def close(self) -> None:
        """Cancel what the partitions have open and end the snapshot transaction; idempotent."""
        self.running.close()
        partitioner, self._partitioner = self._partitioner, None
        if partitioner is not None:
            partitioner.close()
