"""``postgres-cdc``: change data capture from one PostgreSQL table through a logical replication slot.

A :class:`dativo.ChangeReader` (see docs/cdc.md):

* **First run** (nothing committed): the slot is created over a replication
  connection with its snapshot exported, and the table is read inside that
  snapshot. The target is replaced by those rows, committed with the slot's
  consistent LSN: every transaction committed before it is in the snapshot, every
  later one comes from the slot.
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
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from dativo.connectors.postgres.cdc.pgoutput import (
    UNCHANGED,
    Begin,
    Change,
    Commit,
    Decoder,
    Relation,
    Truncate,
    format_lsn,
)
from dativo.connectors.postgres.cdc.pgoutput import parse_lsn as _parse_lsn
from dativo.connectors.postgres.cdc.slot import (
    CdcSettings,
    ExportedSlot,
    drop_slot,
    ensure_publication,
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
        self._exported: ExportedSlot | None = None
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
        found = self.check_changes(keys)
        if found:
            raise SourceError(f"change capture of {self._relation} cannot start: " + "; ".join(found))
        self._change_keys = list(keys)
        settings = self._settings
        self._guard(lambda: ensure_publication(self._side, self._relation, settings))
        info = self._guard(lambda: slot_info(self._side, settings.slot))
        if committed is None:
            if info is not None:
                self._drop_stale_slot(bool(info.active))
            return self._begin_snapshot()
        if committed.get("slot") != settings.slot:
            raise ConfigError(
                f"the target's committed change position is for slot '{committed.get('slot')}', not "
                f"'{settings.slot}'; run 'dativo state reset' to load the table again through the new slot"
            )
        if info is None or info.wal_status == "lost":
            state = "was invalidated (its WAL was removed)" if info is not None else "does not exist"
            raise SourceError(
                f"replication slot '{settings.slot}' {state}: the changes after LSN {committed.get('lsn')} are "
                "lost; run 'dativo cdc drop' and 'dativo state reset', then run the job to load the table again"
            )
        committed_lsn = _parse_lsn(str(committed["lsn"]))
        if info.confirmed_lsn is None or _parse_lsn(info.confirmed_lsn) < committed_lsn:
            # An earlier run committed but did not confirm (killed in between): confirm its position now.
            self.confirm({"lsn": format_lsn(committed_lsn)})
        started: Mapping[str, Any] = self._begin_changes(committed_lsn)
        return started

    def confirm(self, position: Mapping[str, Any]) -> Mapping[str, Any]:
        """Advance the slot to ``position`` (never backwards); returns the slot's lag and retained WAL."""
        if self._exported is not None:
            self._exported.close()
            self._exported = None
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
        if getattr(self, "_exported", None) is not None:
            assert self._exported is not None
            self._exported.close()
            self._exported = None
        side = getattr(self, "_side", None)
        if side is not None:
            with contextlib.suppress(Exception):
                side.close()
        workdir = getattr(self, "_workdir", None)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
            self._workdir = None

    # -- first run ------------------------------------------------------------------------------------

    def _drop_stale_slot(self, active: bool) -> None:
        slot = self._settings.slot
        if not self._settings.create:
            raise ConfigError(
                f"replication slot '{slot}' exists but the target has no committed change position, and "
                "source.cdc.create is false: an initial load needs a slot dativo creates (its exported snapshot); "
                "drop the slot or set create: true"
            )
        if active:
            raise SourceError(f"replication slot '{slot}' is in use by another session", transient=True)
        log.warning("replication slot '%s' has no committed position (an earlier first run failed); recreating", slot)
        self._guard(lambda: drop_slot(self._side, slot))

    def _begin_snapshot(self) -> Mapping[str, Any]:
        assert self._info is not None
        self._exported = ExportedSlot(self._info, self._settings.slot)
        self._snapshot_lsn = _parse_lsn(self._exported.consistent_lsn)
        position = {"slot": self._settings.slot, "lsn": self._exported.consistent_lsn}
        log.info("initial load of %s in the snapshot of slot %s at %s", self._relation, *position.values())
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
        return ctid_partitions(plan.sql, size, block, parallelism)

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

    def _flush_point(self) -> int:
        """A WAL position such that every transaction committing before it is flushed and decodable.

        ``upto`` is the WAL insert position (async commits may not be written yet); a transactional
        logical message committed synchronously after it makes the server flush past it. The
        flush position is then checked, so a server that flushes otherwise still cannot lose a change.
        """

        def flush() -> int:
            with self._side.transaction():
                self._side.execute("SET LOCAL synchronous_commit = on")
                row = self._side.execute("SELECT (pg_current_wal_insert_lsn() - '0/0')::int8").fetchone()
                self._side.execute("SELECT pg_logical_emit_message(true, 'dativo', 'flush')")
            assert row is not None
            upto = int(row[0])
            deadline = time.monotonic() + 30
            while True:
                flushed = self._side.execute("SELECT (pg_current_wal_flush_lsn() - '0/0')::int8").fetchone()
                if flushed is not None and int(flushed[0]) >= upto:
                    return upto
                if time.monotonic() > deadline:
                    raise SourceError("PostgreSQL did not flush its WAL within 30 s", transient=True)
                time.sleep(0.01)

        return int(self._guard(flush))

    def _begin_changes(self, committed: int) -> Mapping[str, Any]:
        upto = self._flush_point()
        self._workdir = Path(tempfile.mkdtemp(prefix="dativo-cdc-"))
        spill = _Spill(self, self._workdir)
        psycopg = import_psycopg()
        conn = self._conn
        assert conn is not None
        try:
            end, replace, capped = self._decode_into(conn, spill, committed, upto)
            conn.commit()
        except psycopg.Error as exc:
            assert self._info is not None
            error = translate_error(exc, self._info)
            if getattr(exc, "sqlstate", None) == "55006":  # object in use: another run holds the slot
                error = SourceError(str(error), transient=True)
            raise error from exc
        finally:
            spill.close()
        self._spill = spill.path
        # Stopped early by max_rows: only the transactions read so far are covered.
        reached = max(end, committed) if capped else max(upto, end, committed)
        position = {"slot": self._settings.slot, "lsn": format_lsn(reached)}
        log.info("%d change(s) of %s up to %s", spill.rows, self._relation, position["lsn"])
        return {"position": position, "replace": replace, "snapshot": False, "changes": spill.rows, "more": capped}

    def _decode_into(self, conn: Any, spill: _Spill, committed: int, upto: int) -> tuple[int, bool, bool]:
        """Decode the slot's transactions before ``upto`` into ``spill``.

        Returns the end of the last transaction read, whether a TRUNCATE was among them, and
        whether ``max_rows`` stopped the read early (at a transaction boundary).
        """
        conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS dativo_cdc_stage AS SELECT * FROM {self._relation} WITH NO DATA")
        conn.execute(f"ALTER TABLE {_STAGE} ADD COLUMN IF NOT EXISTS {_POS} int8")
        decoder = Decoder()
        cursor = conn.cursor(name="dativo_cdc_changes")
        limit = self._settings.max_rows  # counted in pgoutput messages; decoding stops at the next commit
        cursor.execute(
            "SELECT (lsn - '0/0')::int8, data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, %s, "
            "'proto_version', '1', 'publication_names', %s)",
            (self._settings.slot, format_lsn(upto), limit, quote_ident(self._settings.publication)),
        )
        messages = 0
        skip, stamp, end, replace = False, None, 0, False
        while rows := cursor.fetchmany(2000):
            messages += len(rows)
            for lsn, data in rows:
                message = decoder.decode(bytes(data))
                if isinstance(message, Begin):
                    # Transactions whose commit precedes the committed position were applied by an earlier run.
                    skip, stamp = message.final_lsn < committed, message.commit_time
                elif isinstance(message, Commit):
                    end = max(end, message.end_lsn)
                elif skip or message is None:
                    continue
                elif isinstance(message, Truncate):
                    spill.reset()  # the table is emptied: only what follows matters
                    replace = True
                elif isinstance(message, Change):
                    for op, values in self._rows_of(message):
                        spill.add(op, values, int(lsn), stamp)
        cursor.close()
        spill.flush()
        return end, replace, limit is not None and messages >= limit

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


class _Spill:
    """Converted change rows in a local Arrow IPC file, in source commit order."""

    def __init__(self, reader: PostgresChangeReader, workdir: Path) -> None:
        self._reader = reader
        self._schema = reader.get_schema()
        self.path = workdir / "changes.arrow"
        self._pending: list[tuple[str, list[Any], int, datetime | None]] = []
        self.rows = 0
        self._writer = pa.ipc.new_file(str(self.path), self._schema)

    def add(self, op: str, values: list[Any], lsn: int, stamp: datetime | None) -> None:
        self._pending.append((op, values, lsn, stamp))
        if len(self._pending) >= _CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        arrays = self._reader._convert([values for _, values, _, _ in pending])
        arrays += [
            pa.array([p[0] for p in pending], pa.string()),
            pa.array([p[2] for p in pending], pa.int64()),
            pa.array([p[3] for p in pending], pa.timestamp("us", tz="UTC")),
        ]
        self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self._schema))
        self.rows += len(pending)

    def reset(self) -> None:
        """Forget everything so far (a TRUNCATE)."""
        self._writer.close()
        self._pending = []
        self.rows = 0
        self._writer = pa.ipc.new_file(str(self.path), self._schema)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()


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
