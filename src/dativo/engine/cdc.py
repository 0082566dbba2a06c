"""Change runs: a :class:`dativo.ChangeReader` into a stateful writer, exactly once (docs/cdc.md).

One run is: load the committed position from the target's state, ask the reader
for what follows it, write the batches as one merge (or, for an initial load or
a TRUNCATE, one replacement of the table), commit the new position in the same
snapshot as the data, and only then ``confirm`` it to the reader. A crash before
the commit leaves target and source untouched; a crash between commit and
confirm makes the next run skip what the committed position covers.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from dativo import __version__
from dativo._faults import crash_point
from dativo.core.calls import call as _call
from dativo.core.calls import close_quietly as _close
from dativo.core.calls import declared_schema as _declared_schema
from dativo.core.hosting import host_reader, host_writer
from dativo.core.pump import SINGLE_STREAM, Pump, plan_read
from dativo.engine.pipeline import ProgressSink, RunSummary, new_summary
from dativo.engine.plan import Plan
from dativo.errors import ConfigError, DativoError, SourceError, TargetError
from dativo.sdk import CHANGE_COLUMNS, ChangeReader, DataReader, DataWriter, StatefulWriter

__all__ = ["ChangeTable", "check_changes", "run_changes"]

log = logging.getLogger("dativo.engine.cdc")

_DELETE = "__dativo_cdc_delete"
_SOFT = pa.schema(
    [
        pa.field("_deleted", pa.bool_()),
        pa.field("_cdc_lsn", pa.int64()),
        pa.field("_cdc_op", pa.string()),
        pa.field("_cdc_ts", pa.timestamp("us", tz="UTC")),
    ]
)


def run_changes(plan: Plan, progress: ProgressSink | None = None, summary: RunSummary | None = None) -> RunSummary:
    """Run a ``source.cdc`` job once; the target and the reader's position change only if this returns.

    Raises ConfigError when the reader is not a ChangeReader, the writer keeps no state,
    or the table has no key; the reader's and writer's errors propagate. Failures
    before the commit abort the writer; a failure to confirm after the commit is only
    logged (the next run confirms again).
    """
    table = ChangeTable(plan, summary or new_summary(plan))
    try:
        table.open()
        start = _call(
            table.change_reader.begin_changes,
            table.names[0],
            "begin_changes",
            table.committed,
            table.keys,
            role="reader",
        )
        table.apply(start, progress)
        table.summary.target["cdc"].update(_confirm(table.change_reader, table.names[0], table.position))
        table.summary.status = "succeeded"
        return table.summary
    except BaseException as exc:
        table.fail(exc)
        raise
    finally:
        table.close()


class ChangeTable:
    """One table of a change run: its reader and writer, opened, applied and committed on their own.

    :func:`run_changes` drives one; ``dativo.engine.cdc_group`` drives several sharing a slot.
    """

    def __init__(self, plan: Plan, summary: RunSummary) -> None:
        self.plan = plan
        self.summary = summary
        self.names = plan.reader.ref.name, plan.writer.ref.name
        self.reader: DataReader | None = None
        self.writer: DataWriter | None = None
        self.change_reader: Any = None
        self.pump: Pump | None = None
        self.published = False
        self.state: Mapping[str, Any] | None = None
        self.committed: Mapping[str, Any] | None = None
        self.keys: list[str] = []
        self.position: dict[str, Any] = {}
        self.state_loaded = False
        self._started = time.perf_counter()

    def open(self) -> None:
        """Host the reader, check it reads changes, find the key, and load the committed state.

        Raises ConfigError for ``overwrite``, a reader that is no ChangeReader, a writer that keeps
        no state, or a table without a key.
        """
        plan, names = self.plan, self.names
        if plan.job.config.target.mode == "overwrite":
            raise ConfigError("target.mode: a source.cdc job merges changes into the table; 'overwrite' does not apply")
        writer = _stateful(host_writer(plan.writer), names[1])
        try:
            self.state = _call(writer.load_state, names[1], "load_state")  # type: ignore[attr-defined]
        finally:
            _close(writer, names[1])
        self.committed = (self.state or {}).get("cdc")
        self.state_loaded = True  # from here on, the committed position is known even if the reader fails
        self.reader = host_reader(plan.reader)
        self.change_reader = _change_reader(self.reader, names[0])
        self.schema = _declared_schema(self.reader, names[0])
        self.keys = _keys(plan, self.change_reader, names[0])

    def begin_with(self, tables: Sequence[ChangeTable], held: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """Start ``tables`` (this one first) of one slot together; one start each (``begin_changes_together``).

        ``held``: committed positions of the slot's tables that do not run now. Raises ConfigError
        when the reader cannot serve several tables from one slot; the reader's errors propagate.
        """
        begin = getattr(self.change_reader, "begin_changes_together", None)
        if begin is None:
            raise ConfigError(
                f"reader '{self.names[0]}' cannot read several tables from one slot; "
                "give each stream its own source.cdc.slot and publication"
            )
        members = [(t.change_reader, t.committed, t.keys) for t in tables]
        return list(_call(begin, self.names[0], "begin_changes_together", members, held, role="reader"))

    def apply(self, start: Mapping[str, Any], progress: ProgressSink | None) -> None:
        """Write what ``start`` announced as one commit with its position; raises (after aborting) on failure."""
        plan, names, summary = self.plan, self.names, self.summary
        position = dict(start["position"])
        replace = bool(start.get("replace"))
        soft = _deletes(plan) == "soft"
        # The writer in the mode this run needs; loading the state again arms its check that no
        # other run of the job commits in between (a conflict with one fails this run, never merges twice).
        self.writer = writer = _stateful(host_writer(_writer_plan(plan, self.keys, soft, replace)), names[1])
        if _call(writer.load_state, names[1], "load_state") != self.state:  # type: ignore[attr-defined]
            raise TargetError(
                f"another run of job '{summary.job}' committed while this run started; run the job again",
                transient=True,
            )
        row_schema = pa.schema([f for f in self.schema if f.name not in CHANGE_COLUMNS])
        data_schema = _data_schema(row_schema, soft, replace)
        _call(writer.prepare, names[1], "prepare", data_schema)
        buffered: list[pa.RecordBatch] = []
        assert self.reader is not None
        self.pump = pump = _pump(plan, self.reader, self.schema, bool(start.get("snapshot")))
        for batch in pump:
            summary.rows += batch.num_rows
            summary.bytes += batch.nbytes
            summary.batches += 1
            if replace and not start.get("snapshot"):
                buffered.append(batch)  # changes after a TRUNCATE: resolved to one row per key below
            else:
                _call(writer.write_batch, names[1], "write_batch", _shape(batch, row_schema, soft, replace))
            crash_point("cdc_batch")
            if progress is not None:
                progress.advance(batch.num_rows, batch.nbytes)
        if buffered:
            for batch in _latest_per_key(buffered, self.keys, soft).to_batches():
                _call(writer.write_batch, names[1], "write_batch", _shape(batch, row_schema, soft, True))
        writer.stage_state(  # type: ignore[attr-defined]
            {"job": summary.job, "run_id": plan.run_id, "dativo_version": __version__, "rows": summary.rows}
            | {"cdc": {**position, "committed_at": datetime.now(UTC).isoformat()}}
        )
        crash_point("cdc_before_commit")
        metadata = _call(writer.finalize, names[1], "finalize")
        self.published = True
        self.position = position
        crash_point("cdc_after_commit")
        summary.target = dict(metadata) if isinstance(metadata, dict) else {"result": metadata}
        summary.target["cdc"] = {
            "position": position,
            "replaced": replace,
            "changes": summary.rows,
            "more": bool(start.get("more")),
        }

    def fail(self, exc: BaseException) -> None:
        """Mark the summary failed with ``exc`` and abort the writer unless it committed."""
        if self.pump is not None:
            self.pump.cancel()
        self.summary.status = "failed"
        self.summary.error = str(exc) if isinstance(exc, DativoError) else f"{type(exc).__name__}: {exc}"
        if self.writer is not None and not self.published:
            try:
                self.writer.abort()
            except Exception:
                log.exception("writer '%s' failed to abort; staged files may remain", self.names[1])

    def close(self) -> None:
        """Close the reader and the writer; idempotent."""
        self.summary.duration_s = time.perf_counter() - self._started
        if self.pump is not None:
            self.pump.join(timeout=30)
            self.pump = None
        for plugin, name in ((self.reader, self.names[0]), (self.writer, self.names[1])):
            if plugin is not None:
                _close(plugin, name)
        self.reader = self.writer = None


def check_changes(plan: Plan) -> list[tuple[str, str]]:
    """``dativo check`` for a ``source.cdc`` job: raises SourceError listing every missing prerequisite."""
    reader = host_reader(plan.reader)
    try:
        change_reader = _change_reader(reader, plan.reader.ref.name)
        _declared_schema(reader, plan.reader.ref.name)
        keys = list(plan.job.config.target.merge.keys) if plan.job.config.target.merge else None
        keys = keys or list(change_reader.change_keys())
        found = list(_call(change_reader.check_changes, plan.reader.ref.name, "check_changes", keys, role="reader"))
    finally:
        _close(reader, plan.reader.ref.name)
    if found:
        raise SourceError("change capture cannot start: " + "; ".join(found))
    return [("source", f"ready for change capture; key ({', '.join(keys)})")]


def _confirm(reader: ChangeReader, name: str, position: Mapping[str, Any]) -> dict[str, Any]:
    try:
        facts = dict(reader.confirm(position) or {})
    except Exception as exc:
        # The data is committed: the run stands, and the next run confirms again.
        log.warning("reader '%s' could not confirm position %s (the next run will): %s", name, position, exc)
        return {"confirmed": False, "confirm_error": str(exc)}
    if "warning" in facts:
        log.warning("%s", facts["warning"])
    return {"confirmed": True, **facts}


def _change_reader(reader: DataReader, name: str) -> Any:
    if not isinstance(reader, ChangeReader):
        raise ConfigError(
            f"source.cdc: reader '{name}' cannot read changes (it does not implement dativo.ChangeReader)"
        )
    # A remote reader (process, Flight) has the methods; its plugin says whether it reads changes.
    if not getattr(reader, "reads_changes", True):
        raise ConfigError(
            f"source.cdc: reader '{name}' cannot read changes (its plugin does not announce the 'changes' "
            "capability; see docs/process-protocol.md)"
        )
    return reader


def _stateful(writer: DataWriter, name: str) -> DataWriter:
    if not isinstance(writer, StatefulWriter) or "merge" not in writer.supported_modes:
        _close(writer, name)
        raise ConfigError(f"source.cdc: writer '{name}' must keep state with its data and support mode 'merge'")
    return writer


def _keys(plan: Plan, reader: Any, name: str) -> list[str]:
    merge = plan.job.config.target.merge
    keys = (
        list(merge.keys) if merge is not None else list(_call(reader.change_keys, name, "change_keys", role="reader"))
    )
    if not keys:
        raise ConfigError(
            f"source.cdc: table {plan.job.config.source.table} has no primary key; add one or give target.merge.keys"
        )
    return keys


def _deletes(plan: Plan) -> str:
    cdc = plan.job.config.source.cdc
    return cdc.deletes if cdc is not None else "hard"


def _writer_plan(plan: Plan, keys: Sequence[str], soft: bool, replace: bool) -> Any:
    """The writer's config for this run: one merge on the key (last change wins), or one overwrite."""
    config = dict(plan.writer.config)
    if replace:
        config.update(mode="overwrite", merge=None)
    else:
        merge = {"keys": list(keys), "duplicates": "last_wins", "delete_column": None if soft else _DELETE}
        config.update(mode="merge", merge=merge)
    return dataclasses.replace(plan.writer, config=config)


def _data_schema(rows: pa.Schema, soft: bool, replace: bool) -> pa.Schema:
    if soft:
        return pa.schema([*rows, *_SOFT])
    return rows if replace else rows.append(pa.field(_DELETE, pa.bool_()))


def _shape(batch: pa.RecordBatch, rows: pa.Schema, soft: bool, replace: bool) -> pa.RecordBatch:
    """Change rows -> the rows the writer stores: a delete marker (hard) or the soft-delete columns."""
    columns = [batch.column(name) for name in rows.names]
    deleted = pc.equal(batch.column("_cdc_op"), "delete")
    if soft:
        columns += [deleted, batch.column("_cdc_lsn"), batch.column("_cdc_op"), batch.column("_cdc_ts")]
        return pa.RecordBatch.from_arrays(columns, schema=pa.schema([*rows, *_SOFT]))
    if replace:
        return pa.RecordBatch.from_arrays(columns, schema=rows)
    return pa.RecordBatch.from_arrays([*columns, deleted], schema=rows.append(pa.field(_DELETE, pa.bool_())))


def _latest_per_key(batches: list[pa.RecordBatch], keys: Sequence[str], soft: bool) -> pa.Table:
    """The last change of each key, in order; deleted keys are left out unless deletes are soft."""
    table = pa.Table.from_batches(batches)
    table = table.append_column("__pos", pa.array(range(table.num_rows), pa.int64()))
    last = table.group_by(list(keys)).aggregate([("__pos", "max")])["__pos_max"]
    table = table.filter(pc.is_in(table["__pos"], value_set=last.combine_chunks())).sort_by("__pos")
    if not soft:
        table = table.filter(pc.not_equal(table["_cdc_op"], "delete"))
    return table.drop_columns(["__pos"])


def _pump(plan: Plan, reader: DataReader, schema: pa.Schema, snapshot: bool) -> Pump:
    """The run's batches: an initial load in parallel partitions when the reader can, else its one stream."""
    name = plan.reader.ref.name
    read = plan_read(reader, name, plan.job.config.source.parallelism) if snapshot else SINGLE_STREAM
    pump = Pump(reader, name, schema, plan.batch_size, plan.queue_size, read, max_bytes=plan.queue_bytes)
    pump.start()
    return pump
