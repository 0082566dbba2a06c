"""The Ray task: one partition read by a fresh reader and staged by a fresh writer, on a worker.

Everything the task needs travels in :class:`PartitionTask` (picklable, small, no secret
in plain text where the job file has a reference: see ``_sealed.py``). The task hosts the
job's reader and writer classes in its own process with the same configs as the driver's
(``job.run_id`` included), reads its partition (``read_partition``, or ``read_batch`` for a
reader read in one piece), checks each batch against the driver's declared schema exactly
as the local pump does, and hands the batches to the writer's ``stage_partition`` under the
key ``<run_id>-p<index>-a<attempt>`` (the attempt differs on every retry Ray makes).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from dativo._faults import crash_point
from dativo.config.connectors import connector
from dativo.core.batches import as_record_batches, conform
from dativo.core.calls import call, close_quietly, plugin_error
from dativo.core.hosting import host_reader, host_writer
from dativo.core.registry import PluginPlan, resolve_plugin
from dativo.engine.incremental import CursorTracker, IncrementalPlan
from dativo.engine.plan import wants_source_plan, with_source_plan
from dativo.errors import DativoError
from dativo.executors._sealed import unseal
from dativo.sdk import FAULT_HOOK_KEY, PartitionedReader, ReadPartition, StagingWriter

__all__ = ["PartitionTask", "run_partition"]


@dataclass(frozen=True)
class PartitionTask:
    """What one Ray task is given: the plugins (by implementation name, sealed configs), the partition, the plan."""

    job_file: Path
    job_dir: Path
    source_connector: str
    reader: PluginPlan  # config sealed, no fault hook, no source plan (made again on the worker)
    writer: PluginPlan
    schema: pa.Schema
    staging_plan: dict[str, Any]
    #: The partition (None: the reader's whole stream, ``read_batch``).
    partition: ReadPartition | None
    index: int
    batch_size: int
    incremental: IncrementalPlan | None
    run_id: str

    @property
    def label(self) -> str:
        """The partition's label in messages."""
        return self.partition.label if self.partition is not None else "whole stream"


def _attempt() -> int:
    """Ray's attempt number of the running task (0 first); a random large number outside Ray."""
    try:
        import ray

        worker: Any = ray._private.worker.global_worker
        return int(worker.core_worker.get_current_task_attempt_number())
    except Exception:  # not in a Ray task, or an internal API that moved: still unique per attempt
        return 1000 + uuid.uuid4().int % 1_000_000


def _node() -> str:
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())[:12]
    except Exception:
        return os.uname().nodename


def _worker_plan(task: PartitionTask, plan: PluginPlan) -> PluginPlan:
    ref = resolve_plugin(plan.ref.kind, plan.ref.name, task.job_dir)
    config = unseal(plan.config, task.job_file, task.job_dir)
    if plan.runtime == "custom":
        config[FAULT_HOOK_KEY] = crash_point
    worker = replace(plan, ref=ref, config=config)
    if plan.ref.kind == "reader" and wants_source_plan(worker):
        worker = replace(
            worker, config=dict(with_source_plan(config, connector(task.source_connector, "source"), ref.name))
        )
    return worker


def run_partition(task: PartitionTask) -> dict[str, Any]:
    """Read and stage one partition; return the writer's description plus read statistics.

    Raises the reader's or writer's failure as a DativoError (``transient`` kept); the
    files a failed attempt staged are removed by the driver's ``abort`` or ``commit_staged``.
    """
    attempt = _attempt()
    key = f"{task.run_id}-p{task.index:04d}-a{attempt}"
    started = time.perf_counter()
    reader_plan, writer_plan = _worker_plan(task, task.reader), _worker_plan(task, task.writer)
    name = reader_plan.ref.name
    reader = host_reader(reader_plan)
    try:
        writer = host_writer(writer_plan)
    except BaseException:
        close_quietly(reader, name)
        raise
    stats: dict[str, Any] = {"rows": 0, "bytes": 0, "batches": 0}
    tracker = CursorTracker(task.incremental, task.schema) if task.incremental is not None else None
    try:
        if task.incremental is not None:
            inc = task.incremental
            call(reader.set_incremental, name, "set_incremental", inc.column, inc.after, role="reader")  # type: ignore[attr-defined]
        assert isinstance(writer, StagingWriter)

        def batches() -> Iterator[pa.RecordBatch]:
            count = 0
            try:
                if task.partition is None:
                    stream = reader.read_batch(task.batch_size)
                else:
                    assert isinstance(reader, PartitionedReader)
                    stream = reader.read_partition(task.partition, task.batch_size)
                for item in stream:
                    for raw in as_record_batches(item, name):
                        if raw.num_rows == 0:
                            continue
                        batch = conform(raw, task.schema, name, count)
                        count += 1
                        stats["rows"] += batch.num_rows
                        stats["bytes"] += batch.nbytes
                        stats["batches"] += 1
                        if tracker is not None:
                            tracker.update(batch)
                        crash_point("ray_batch")
                        yield batch
            except DativoError:
                raise
            except Exception as exc:
                where = f" in partition {task.label}"
                raise plugin_error(exc, "reader", name, f"failed{where} after {count} batches") from exc

        staged = call(
            writer.stage_partition, writer_plan.ref.name, "stage_partition", task.staging_plan, key, batches()
        )
    finally:
        close_quietly(reader, name)
        close_quietly(writer, writer_plan.ref.name)
    return {
        "index": task.index,
        "key": key,
        "attempt": attempt,
        "staged": dict(staged),
        "node": _node(),
        "pid": os.getpid(),
        "seconds": time.perf_counter() - started,
        "high_water": tracker.high_water if tracker is not None else None,
        **stats,
    }
