"""``postgres-cdc``: change data capture from a PostgreSQL table through a logical replication slot.

A :class:`dativo.ChangeReader` (see docs/cdc.md). One reader reads one table; the readers of
several tables sharing a slot start together (``begin_changes_together``, the slot read once:
cdc/group.py, which also holds the decision of each run's start).

* **First run** (nothing committed): the slot is created over a replication
  connection with its snapshot exported, and the table is read inside that
  snapshot (a slot that exists already: a fresh snapshot, positioned at the slot's
  confirmed LSN, the overlap replayed idempotently by the next run). The target
  is replaced by those rows, committed with the slot's consistent LSN: every
  transaction committed before it is in the snapshot, every later one comes from the slot.
* **Change runs**: the server's WAL is flushed past a point ``upto`` taken at
  the start; the slot's changes up to it are read with
  ``pg_logical_slot_peek_binary_changes`` (``pgoutput``, decoded in Python),
  transactions the committed LSN already covers are skipped, and the rest are
  converted and spilled to a local Arrow file. The values arrive as PostgreSQL
  text; they are typed by PostgreSQL itself (copied into a temporary table shaped
  like the source and selected back through the same plan as the table read),
  so change rows and snapshot rows map every type identically.
* ``confirm`` advances the slot only after the target committed the position.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from dativo.connectors.postgres.cdc.group import begin_together
from dativo.connectors.postgres.cdc.pgoutput import UNCHANGED, Change, Relation, format_lsn
from dativo.connectors.postgres.cdc.pgoutput import parse_lsn as _parse_lsn
from dativo.connectors.postgres.cdc.slot import (
    CdcSettings,
    ExportedSlot,
    HeldSnapshot,
    primary_key,
    problems,
    slot_info,
)
from dativo.connectors.postgres.connection import connect_psycopg, import_psycopg, translate_error
from dativo.connectors.postgres.partitions import ctid_partitions
from dativo.connectors.postgres.psycopg import PsycopgPostgresReader
from dativo.connectors.postgres.types import _resolve_table, quote_ident
from dativo.errors import ConfigError, DativoError, SourceError
from dativo.sdk import PluginConfig, ReadPartition

__all__ = ["CHANGE_FIELDS", "PostgresChangeReader"]

log = logging.getLogger(__name__)

#: The columns appended to every row (see dativo.ChangeReader).
CHANGE_FIELDS = (
    pa.field("_cdc_op", pa.string()),
    pa.field("_cdc_lsn", pa.int64()),
    pa.field("_cdc_ts", pa.timestamp("us", tz="UTC")),
)
_STAGE = "pg_temp.dativo_cdc_stage"
_POS = "__dativo_pos"
_CHUNK_ROWS = 5000


class PostgresChangeReader(PsycopgPostgresReader):
    """Reads one table's initial snapshot, then its changes, through a ``pgoutput`` slot.

    Failures: missing prerequisites raise SourceError listing each with its fix; a
    dropped or invalidated slot raises SourceError telling how to re-snapshot; a
    slot busy with another run raises a transient SourceError; a column change at the
    source raises SourceError (schema changes are not followed yet).
    """

    def initialize(self, config: PluginConfig) -> None:
        """Connect and describe the table (as postgres-psycopg does), and open a side connection for the slot."""
        super().initialize(config)
        self._settings = CdcSettings.from_config(config)
        assert self._conn is not None and self._info is not None and self._spec is not None
        psycopg = import_psycopg()
        self._side = connect_psycopg(self._info, autocommit=True)
        try:
            assert self._spec.table is not None
            self._relation = _resolve_table(self._side, self._spec.table)
            self._keys = primary_key(self._side, self._relation)
        except psycopg.Error as exc:
            raise translate_error(exc, self._info, table=self._spec.table) from exc
        # Its changes arrive under its own oid, or a partition's (pgoutput publishes the leaf partitions).
        # (pg_partition_tree is empty for a table that is not partitioned.)
        tree = self._side.execute(
            "SELECT %s::regclass::oid UNION SELECT relid::oid FROM pg_partition_tree(%s::regclass)",
            (self._relation, self._relation),
        )
        self._oids = {int(row[0]) for row in tree.fetchall()}
        self._exported: ExportedSlot | HeldSnapshot | None = None
        self._held: list[ExportedSlot | HeldSnapshot] = []
        self._workdir: Path | None = None
        self._spill: Path | None = None
        self._snapshot_lsn = 0
        self._layouts: dict[int, tuple[Relation, list[int | None], list[int]]] = {}
        self._change_keys: list[str] = list(self._keys)

    # -- dativo.ChangeReader ----------------------------------------------------------------------------

    def get_schema(self) -> pa.Schema:
        """The table's columns followed by ``_cdc_op``, ``_cdc_lsn``, ``_cdc_ts``."""
        schema = super().get_schema()
        for field in CHANGE_FIELDS:
            schema = schema.append(field)
        return schema

    def change_keys(self) -> Sequence[str]:
        """The table's primary-key columns (empty when it has none)."""
        return list(self._keys)

    def check_changes(self, keys: Sequence[str]) -> list[str]:
        """What stops change capture of this table (with the fix for each); empty when ready."""
        found: list[str] = self._guard(lambda: problems(self._side, self._relation, self._settings, list(keys)))
        return found

    def begin_changes(self, committed: Mapping[str, Any] | None, keys: Sequence[str]) -> Mapping[str, Any]:
        """Create the slot and plan the snapshot (first run), or spill the changes after ``committed``."""
        return begin_together([(self, committed, keys)])[0]

    def begin_changes_together(
        self,
        members: Sequence[tuple[Any, Mapping[str, Any] | None, Sequence[str]]],
        held: Sequence[Mapping[str, Any]] = (),
    ) -> list[Mapping[str, Any]]:
        """Start a change run of several tables of one slot, read once; ``members[0]`` must be this reader.

        ``members`` are ``(reader, committed position, keys)``, every reader a postgres-cdc reader of
        the same slot and publication; ``held`` the committed positions of the slot's tables that do
        not run now (the slot is never moved past them). Returns one start per member (see
        ``begin_changes``); ``confirm`` on this reader then advances the slot (to ``least_position``).
        """
        if not members or members[0][0] is not self:
            raise ValueError("begin_changes_together: the first member must be the reader it is called on")
        for reader, _, _ in members:
            if not isinstance(reader, PostgresChangeReader):
                raise ConfigError(f"tables read from one slot must all use the postgres-cdc reader, not {reader!r}")
        return list(begin_together(members, held))

    def least_position(self, positions: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
        """The earliest of ``positions`` (what every table of a slot has committed); raises on an empty list."""
        return min(positions, key=lambda position: _parse_lsn(str(position["lsn"])))

    def confirm(self, position: Mapping[str, Any]) -> Mapping[str, Any]:
        """Advance the slot to ``position`` (never backwards); returns the slot's lag and retained WAL."""
        self._release()
        lsn = _parse_lsn(str(position["lsn"]))
        slot = self._settings.slot

        def advance() -> dict[str, Any]:
            info = slot_info(self._side, slot)
            if info is None:
                raise SourceError(f"replication slot '{slot}' disappeared before it could be advanced")
            if info.confirmed_lsn is None or lsn > _parse_lsn(info.confirmed_lsn):
                self._side.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (slot, format_lsn(lsn)))
                info = slot_info(self._side, slot)
                assert info is not None
            facts: dict[str, Any] = {
                "slot": slot,
                "confirmed_lsn": info.confirmed_lsn,
                "lag_bytes": info.lag_bytes,
                "retained_wal_bytes": info.retained_bytes,
            }
            if (info.retained_bytes or 0) > self._settings.retained_wal_warning_mb * 1024 * 1024:
                facts["warning"] = (
                    f"slot '{slot}' retains {info.retained_bytes} bytes of WAL (more than "
                    f"{self._settings.retained_wal_warning_mb} MiB); run the job more often or check the slot"
                )
            return facts

        confirmed: Mapping[str, Any] = self._guard(advance)
        return confirmed

    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        """Yield the snapshot's rows (first run) or the spilled changes, with the change columns."""
        if self._exported is not None:
            yield from self._read_snapshot(batch_size)
            return
        if self._spill is None:
            raise SourceError("the postgres-cdc reader was not started (begin_changes was not called)")
        with pa.memory_map(str(self._spill)) as source:
            reader = pa.ipc.open_file(source)
            for index in range(reader.num_record_batches):
                batch = reader.get_batch(index)
                if batch.num_rows:
                    yield batch

    def close(self) -> None:
        """Close the connections (the slot stays) and delete the spilled changes; idempotent."""
        super().close()
        if hasattr(self, "_held"):
            self._release()
        side = getattr(self, "_side", None)
        if side is not None:
            with contextlib.suppress(Exception):
                side.close()
        workdir = getattr(self, "_workdir", None)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
            self._workdir = None

    # -- first run ------------------------------------------------------------------------------------

    def _release(self) -> None:
        """Let go of the snapshots this reader holds for a group (the slot stays)."""
        for held in self._held:
            held.close()
        self._held.clear()
        self._exported = None

    def _start_snapshot(self, snapshot: ExportedSlot | HeldSnapshot, lsn: str) -> dict[str, Any]:
        """Plan the initial load of this table in ``snapshot``, positioned at ``lsn``."""
        self._exported = snapshot
        self._snapshot_lsn = _parse_lsn(lsn)
        position = {"slot": self._settings.slot, "lsn": lsn}
        log.info("initial load of %s in snapshot %s, position %s", self._relation, snapshot.snapshot, lsn)
        return {"position": position, "replace": True, "snapshot": True}

    def _read_snapshot(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        conn, exported = self._conn, self._exported
        assert conn is not None and exported is not None
        psycopg = import_psycopg()
        try:
            conn.rollback()
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute(f"SET TRANSACTION SNAPSHOT '{exported.snapshot}'")  # the server's own snapshot id
        except psycopg.Error as exc:
            assert self._info is not None
            raise translate_error(exc, self._info) from exc
        for batch in super().read_batch(batch_size):
            yield _with_change_columns(batch, "snapshot", self._snapshot_lsn, None)

    def plan_partitions(self, parallelism: int | None) -> Sequence[ReadPartition]:
        """During the initial load: ctid page ranges of the table, all read in the slot's exported snapshot.

        Returns no partitions (read on one connection) outside the initial load, for a
        table too small to split, or with ``parallelism`` 1.
        """
        exported, plan = self._exported, self._require_plan()
        suffix = f" FROM {self._relation}"
        if exported is None or not plan.sql.endswith(suffix):
            return []

        def measure() -> tuple[int, int]:
            row = self._side.execute(
                "SELECT pg_relation_size(%s::regclass), current_setting('block_size')::int8", (self._relation,)
            ).fetchone()
            assert row is not None
            return int(row[0]), int(row[1])

        size, block = self._guard(measure)
        return ctid_partitions(plan.sql, size, block, parallelism, host=self._info.host if self._info else None)

    def read_partition(self, partition: ReadPartition, batch_size: int) -> Iterator[pa.RecordBatch]:
        """Read one partition of the initial load on a connection of its own, in the slot's snapshot."""
        exported, info = self._exported, self._info
        if exported is None or info is None:
            raise SourceError("the postgres-cdc reader has no initial load in progress")
        psycopg = import_psycopg()
        conn = connect_psycopg(info)
        try:
            self._register_loaders(conn)
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute(f"SET TRANSACTION SNAPSHOT '{exported.snapshot}'")
            plan = self._require_plan()
            width = len(plan.columns) + len(plan.array_columns)
            chunk = max(1, min(int(batch_size), 200_000 // max(1, width)))
            with conn.cursor(name="dativo_cdc_partition", binary=True) as cursor:
                cursor.execute(str(partition.spec["sql"]).encode())
                while rows := cursor.fetchmany(chunk):
                    batch = pa.RecordBatch.from_arrays(self._to_arrays(rows), schema=plan.schema)
                    yield _with_change_columns(batch, "snapshot", self._snapshot_lsn, None)
        except psycopg.Error as exc:
            raise translate_error(exc, info, table=self._spec.table if self._spec else None) from exc
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    # -- change runs ----------------------------------------------------------------------------------

    def _prepare_stage(self) -> None:
        """The temporary table change values are typed through (see ``_convert``)."""
        conn = self._conn
        assert conn is not None
        conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS dativo_cdc_stage AS SELECT * FROM {self._relation} WITH NO DATA")
        conn.execute(f"ALTER TABLE {_STAGE} ADD COLUMN IF NOT EXISTS {_POS} int8")

    def _layout(self, relation: Relation) -> tuple[list[int | None], list[int]]:
        """For a relation message: where each plan column is among its columns, and the key's plan positions."""
        cached = self._layouts.get(relation.oid)
        if cached is not None and cached[0] is relation:
            return cached[1], cached[2]
        names = [column.name for column in self._require_plan().columns]
        # Columns are matched by name: a change made before a column was added has NULL for it, and a
        # column dropped since (absent from the plan taken at the start of the run) is left out.
        if any(key not in relation.columns or key not in names for key in self._change_keys):
            raise SourceError(
                f"a change of {self._relation} has no key column ({', '.join(self._change_keys)}) among its "
                f"columns ({', '.join(relation.columns)}); run 'dativo state reset' and run the job again"
            )
        order = [relation.columns.index(name) if name in relation.columns else None for name in names]
        keys = [names.index(key) for key in self._change_keys]
        self._layouts[relation.oid] = (relation, order, keys)
        return order, keys

    def _rows_of(self, change: Change) -> list[tuple[str, list[Any]]]:
        order, key_index = self._layout(change.relation)
        old = _pick(change.old, order) if change.old is not None else None
        if change.op == "delete":
            assert old is not None
            return [("delete", old)]
        assert change.new is not None
        new = _pick(change.new, order)
        rows: list[tuple[str, list[Any]]] = []
        if change.op == "update" and old is not None:
            if any(old[i] is not None and old[i] != new[i] for i in key_index):
                rows.append(("delete", old))  # the key changed: the old row goes away
            if not change.old_is_key:
                new = [o if v is UNCHANGED else v for v, o in zip(new, old, strict=True)]
        if any(v is UNCHANGED for v in new):
            names = [column.name for column in self._require_plan().columns]
            missing = [n for n, v in zip(names, new, strict=True) if v is UNCHANGED]
            raise SourceError(
                f"an update of {self._relation} did not carry the unchanged TOASTed value of {', '.join(missing)}; "
                f"ALTER TABLE {self._relation} REPLICA IDENTITY FULL makes PostgreSQL send it"
            )
        rows.append((change.op, new))
        return rows

    def _stage_sql(self) -> str:
        plan = self._require_plan()
        suffix = f" FROM {self._relation}"
        if not plan.sql.endswith(suffix):
            raise SourceError(f"cannot derive the staging query from the plan of {self._relation}")
        return f"{plan.sql[: -len(suffix)]} FROM {_STAGE} ORDER BY {_POS}"

    def _convert(self, values: list[list[Any]]) -> list[pa.Array]:
        """Type text values exactly as the table read does: through a staging table and the same plan."""
        conn = self._conn
        assert conn is not None
        plan = self._require_plan()
        columns = ", ".join([*(quote_ident(c.name) for c in plan.columns), _POS])
        conn.execute(f"TRUNCATE {_STAGE}")
        with conn.cursor() as cur, cur.copy(f"COPY {_STAGE} ({columns}) FROM STDIN") as copy:
            for pos, row in enumerate(values):
                copy.write_row([*row, pos])
        with conn.cursor(binary=True) as cur:
            rows = cur.execute(self._stage_sql().encode()).fetchall()
        return self._to_arrays(rows)

    def _guard(self, action: Any) -> Any:
        psycopg = import_psycopg()
        try:
            return action()
        except DativoError:
            raise
        except psycopg.Error as exc:
            assert self._info is not None
            raise translate_error(exc, self._info, table=self._spec.table if self._spec else None) from exc


def _pick(values: tuple[Any, ...], order: list[int | None]) -> list[Any]:
    return [None if index is None else values[index] for index in order]


def _with_change_columns(batch: pa.RecordBatch, op: str, lsn: int, stamp: datetime | None) -> pa.RecordBatch:
    n = batch.num_rows
    arrays = [
        *batch.columns,
        pa.array([op] * n, pa.string()),
        pa.array([lsn] * n, pa.int64()),
        pa.nulls(n, pa.timestamp("us", tz="UTC")) if stamp is None else pa.array([stamp] * n, CHANGE_FIELDS[2].type),
    ]
    return pa.RecordBatch.from_arrays(
        arrays, schema=batch.schema.append(CHANGE_FIELDS[0]).append(CHANGE_FIELDS[1]).append(CHANGE_FIELDS[2])
    )
