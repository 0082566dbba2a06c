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

__all__ = ["check_changes", "run_changes"]

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
    summary = summary or new_summary(plan)
    started = time.perf_counter()
    reader: DataReader | None = None
    writer: DataWriter | None = None
    published = False
    pump: Pump | None = None
    names = plan.reader.ref.name, plan.writer.ref.name
    try:
        if plan.job.config.target.mode == "overwrite":
            raise ConfigError("target.mode: a source.cdc job merges changes into the table; 'overwrite' does not apply")
        reader = host_reader(plan.reader)
        change_reader = _change_reader(reader, names[0])
        schema = _declared_schema(reader, names[0])
        keys = _keys(plan, change_reader, names[0])
        writer = _stateful(host_writer(plan.writer), names[1])
        state = _call(writer.load_state, names[1], "load_state")  # type: ignore[attr-defined]
        committed = (state or {}).get("cdc")
        start = _call(change_reader.begin_changes, names[0], "begin_changes", committed, keys, role="reader")
        position = dict(start["position"])
        replace = bool(start.get("replace"))
        soft = _deletes(plan) == "soft"
        _close(writer, names[1])
        writer = None
        # The writer again, now in the mode this run needs; loading the state again arms its check that
        # no other run of the job commits in between (a conflict with one fails this run, never merges twice).
        writer = _stateful(host_writer(_writer_plan(plan, keys, soft, replace)), names[1])
        if _call(writer.load_state, names[1], "load_state") != state:  # type: ignore[attr-defined]
            raise TargetError(
                f"another run of job '{summary.job}' committed while this run started; run the job again",
                transient=True,
            )
        row_schema = pa.schema([f for f in schema if f.name not in CHANGE_COLUMNS])
        data_schema = _data_schema(row_schema, soft, replace)
        _call(writer.prepare, names[1], "prepare", data_schema)
        buffered: list[pa.RecordBatch] = []
        pump = _pump(plan, reader, schema, bool(start.get("snapshot")))
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
            for batch in _latest_per_key(buffered, keys, soft).to_batches():
                _call(writer.write_batch, names[1], "write_batch", _shape(batch, row_schema, soft, True))
        writer.stage_state(  # type: ignore[attr-defined]
            {"job": summary.job, "run_id": plan.run_id, "dativo_version": __version__, "rows": summary.rows}
            | {"cdc": {**position, "committed_at": datetime.now(UTC).isoformat()}}
        )
        crash_point("cdc_before_commit")
        metadata = _call(writer.finalize, names[1], "finalize")
        published = True
        crash_point("cdc_after_commit")
        summary.target = dict(metadata) if isinstance(metadata, dict) else {"result": metadata}
        summary.target["cdc"] = {
            "position": position,
            "replaced": replace,
            "changes": summary.rows,
            "more": bool(start.get("more")),
        }
        summary.target["cdc"].update(_confirm(change_reader, names[0], position))
        summary.status = "succeeded"
        return summary
    except BaseException as exc:
        if pump is not None:
            pump.cancel()
        summary.status = "failed"
        summary.error = str(exc) if isinstance(exc, DativoError) else f"{type(exc).__name__}: {exc}"
        if writer is not None and not published:
            try:
                writer.abort()
            except Exception:
                log.exception("writer '%s' failed to abort; staged files may remain", names[1])
        raise
    finally:
        summary.duration_s = time.perf_counter() - started
        if pump is not None:
            pump.join(timeout=30)
        for plugin, name in ((reader, names[0]), (writer, names[1])):
            if plugin is not None:
                _close(plugin, name)


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
        log.warning("reader '%s' could not confirm position %s (the next run will): %s", name, position, exc)
        return {"confirmed": False}
    if "warning" in facts:
        log.warning("%s", facts["warning"])
    return {"confirmed": True, **facts}


def _change_reader(reader: DataReader, name: str) -> Any:
    if not isinstance(reader, ChangeReader) or not hasattr(reader, "check_changes"):
        raise ConfigError(
            f"source.cdc: reader '{name}' cannot read changes (it does not implement dativo.ChangeReader)"
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
    pump = Pump(reader, name, schema, plan.batch_size, plan.queue_size, read)
    pump.start()
    return pump
