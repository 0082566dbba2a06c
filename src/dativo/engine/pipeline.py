"""job -> plan -> executor -> commit.

The reader and the writer are hosted here (the driver); the state is loaded and the
writer prepared; then the executor (``engine.executor``, see ``engine/executor.py``)
reads and writes every partition: ``local`` on the pump's threads
(:class:`dativo.core.pump.Pump`) into a bounded queue while this thread writes, ``ray``
as Ray tasks that stage files. The state is staged and the outcome committed once;
any failure (including Ctrl-C) aborts the writer.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from dativo import __version__, _gc
from dativo._faults import crash_point
from dativo.core.calls import abort_quietly, call, close_quietly, declared_schema
from dativo.core.hosting import host_reader, host_writer
from dativo.engine.executor import LOCAL, Execution, Executor, find_executor
from dativo.engine.incremental import IncrementalPlan, plan_incremental
from dativo.engine.plan import Plan
from dativo.errors import ConfigError, DativoError
from dativo.sdk import DataReader, DataWriter, DescribesTargetTypes, IncrementalReader, StatefulWriter

if TYPE_CHECKING:
    from dativo.core.pump import Pump

__all__ = [
    "ProgressSink",
    "RunSummary",
    "check",
    "discover",
    "load_state",
    "new_summary",
    "reset_state",
    "run",
    "validate",
]

log = logging.getLogger("dativo.engine")

#: An early read's queue may hold this many times ``engine.queue_mb`` more until the writer takes its first batch
#: (session 7: the source streams on while PyIceberg loads; 2 = 32 MB more by default, measured +0-10 MB peak RSS).
STARTUP_QUEUE_FACTOR = 2

#: How long a run that fails before its read was handed to the executor waits for the pump's workers to stop
#: before it closes the reader (which stops a read still waiting for its source's first rows).
_EARLY_STOP_S = 2.0


class ProgressSink(Protocol):
    """Receives progress while a job runs (the CLI draws a bar with it)."""

    def advance(self, rows: int, nbytes: int) -> None:
        """Called after each batch has been handed to the writer (distributed runs: each partition staged).

        A sink may also define ``partitions(done, running, retried)``, which distributed
        executors call as partitions finish.
        """


@dataclass
class RunSummary:
    """What a run did. ``to_dict`` gives the JSON written by ``--summary-json``."""

    job: str
    run_id: str
    reader: str
    writer: str
    started_at: datetime
    status: str = "running"
    rows: int = 0
    bytes: int = 0
    batches: int = 0
    duration_s: float = 0.0
    target: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    attempt: int = 1
    #: The state committed with the data (cursor, run id), once the run staged it; not in ``to_dict``.
    state: dict[str, Any] | None = None
    #: The source's Arrow schema, once the reader declared it; not in ``to_dict``.
    schema: pa.Schema | None = None
    #: What a distributed executor reports (partitions done / retried, per-worker throughput); local runs: None.
    executor: dict[str, Any] | None = None

    @property
    def files(self) -> int:
        """Number of files the writer reported publishing."""
        files = self.target.get("files", [])
        return len(files) if isinstance(files, list) else int(files)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the summary."""
        return {
            "job": self.job,
            "run_id": self.run_id,
            "status": self.status,
            "reader": self.reader,
            "writer": self.writer,
            "rows": self.rows,
            "bytes": self.bytes,
            "batches": self.batches,
            "files": self.files,
            "duration_s": round(self.duration_s, 3),
            "rows_per_s": round(self.rows / self.duration_s) if self.duration_s > 0 else None,
            "started_at": self.started_at.isoformat(),
            "dativo_version": __version__,
            "attempt": self.attempt,
            "target": self.target,
            "error": self.error,
            **({"executor": self.executor} if self.executor is not None else {}),
        }


def run(
    plan: Plan,
    progress: ProgressSink | None = None,
    summary: RunSummary | None = None,
    stop: threading.Event | None = None,
) -> RunSummary:
    """Run the plan once. The target changes only if this returns.

    On any failure — in the reader, the writer, the commit, or KeyboardInterrupt —
    the writer is aborted, both plugins are closed, ``summary.status`` is set to
    ``failed`` and the exception propagates. ``stop`` set by another thread aborts
    the run the same way (as KeyboardInterrupt) at the next batch or before the commit.
    """
    if plan.job.config.source.cdc is not None:  # change data capture: docs/cdc.md
        find_executor(plan.job.config.engine.executor).check(plan)  # ray: cdc is local only
        from dativo.engine.cdc import run_changes

        return run_changes(plan, progress, summary)
    summary = summary or new_summary(plan)
    started = time.perf_counter()
    reader: DataReader | None = None
    writer: DataWriter | None = None
    early: Pump | DativoError | None = None
    published = False
    executor = find_executor(plan.job.config.engine.executor)
    executor.check(plan)
    log.info("run started", extra={"job": summary.job, "run_id": plan.run_id, "reader": summary.reader})
    try:
        reader = host_reader(plan.reader)
        schema = summary.schema = declared_schema(reader, plan.reader.ref.name)
        early = _read_early(plan, executor, reader, schema)
        writer = host_writer(plan.writer)
        state = _prior_state(plan, writer)
        if plan.run_id_given and state is not None and state.get("run_id") == plan.run_id:
            summary.status = "already committed"
            published = True
            log.warning("run %s of job %s was already committed; nothing to do", plan.run_id, summary.job)
            return summary
        incremental = _start_incremental(plan, reader, writer, schema, state)
        executor.check(plan, writer)
        call(writer.prepare, plan.writer.ref.name, "prepare", schema)
        if isinstance(early, DativoError):
            raise early  # planning the read failed: raised where it was raised before it moved ahead
        execution = Execution(plan, reader, writer, schema, incremental, summary, progress, stop, early)
        _gc.startup_done()  # the `dativo` command's start-up GC setting ends where rows start to move
        outcome = executor.execute(execution)
        if isinstance(writer, StatefulWriter):
            summary.state = _new_state(plan, summary, incremental, outcome.high_water)
            writer.stage_state(summary.state)
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt
        crash_point("before_finalize")
        metadata = outcome.commit()
        published = True
        crash_point("after_finalize")
        summary.target = dict(metadata) if isinstance(metadata, dict) else {"result": metadata}
        summary.status = "succeeded"
        return summary
    except BaseException as exc:
        summary.status = "failed"
        summary.error = str(exc) if isinstance(exc, DativoError) else f"{type(exc).__name__}: {exc}"
        if writer is not None and not published:
            abort_quietly(writer, plan.writer.ref.name)
        raise
    finally:
        summary.duration_s = time.perf_counter() - started
        pump = early if early is not None and not isinstance(early, DativoError) else None
        if pump is not None:  # a run that ended before the executor took its read over (else: joined already)
            pump.cancel()  # workers waiting for room in the queue stop within 0.2 s
            pump.join(timeout=_EARLY_STOP_S)
        for plugin, name in ((reader, plan.reader.ref.name), (writer, plan.writer.ref.name)):
            if plugin is not None:
                close_quietly(plugin, name)  # the reader's close also stops a read still waiting for its source
        if pump is not None:
            pump.join(timeout=30)
        log.info(
            "run finished",
            extra={"job": summary.job, "run_id": plan.run_id, "status": summary.status, "rows": summary.rows},
        )


def _read_early(plan: Plan, executor: Executor, reader: DataReader, schema: pa.Schema) -> Pump | DativoError | None:
    """Start the read before the writer is hosted when it does not depend on the target (issue 15).

    Hosting the writer (importing its libraries, opening the catalog) and preparing it cost most
    of a run's set-up; the source's server would wait idle meanwhile. A local run that reads
    everything (no ``source.incremental``: its lower bound comes from the target's state) starts
    the pump now, so the source streams into the pump's bounded queue (``engine.queue_mb`` and
    ``read_mb``, as always; until the writer takes the first batch the queue may hold
    :data:`STARTUP_QUEUE_FACTOR` times ``queue_mb`` more) while the writer gets ready. Nothing
    is written before ``prepare`` succeeded, so a target still changes only when the run
    succeeds, and the writer's errors (hosting, state, mode, ``prepare``) come first as before;
    on any failure the pipeline cancels the pump, then closes the reader. A planning failure
    (``plan_partitions``) is returned, to be raised after ``prepare`` as before; None: the read
    starts in the executor.
    """
    if executor is not LOCAL or plan.job.config.source.incremental is not None:
        return None
    try:
        return LOCAL.start_read(plan, reader, schema, startup_bytes=STARTUP_QUEUE_FACTOR * plan.queue_bytes)
    except DativoError as exc:
        return exc


def _check_mode(plan: Plan, writer: DataWriter) -> None:
    mode = plan.job.config.target.mode
    if mode not in writer.supported_modes:
        raise ConfigError(
            f"target.mode: writer '{plan.writer.ref.name}' does not support mode '{mode}' "
            f"(it supports: {', '.join(sorted(writer.supported_modes))})"
        )


def _check_incremental(plan: Plan, reader: DataReader, writer: DataWriter) -> None:
    if not isinstance(reader, IncrementalReader):
        raise ConfigError(
            f"source.incremental: reader '{plan.reader.ref.name}' cannot read incrementally "
            "(it does not implement dativo.IncrementalReader)"
        )
    if not isinstance(writer, StatefulWriter):
        raise ConfigError(
            f"source.incremental: writer '{plan.writer.ref.name}' cannot keep the cursor with its data "
            "(it does not implement dativo.StatefulWriter)"
        )


def _prior_state(plan: Plan, writer: DataWriter) -> dict[str, Any] | None:
    """Check the write mode against the writer and load the job's committed state, if the writer keeps one."""
    _check_mode(plan, writer)
    if isinstance(writer, StatefulWriter):
        loaded = call(writer.load_state, plan.writer.ref.name, "load_state")
        return dict(loaded) if loaded else None
    return None


def _start_incremental(
    plan: Plan, reader: DataReader, writer: DataWriter, schema: pa.Schema, state: dict[str, Any] | None
) -> IncrementalPlan | None:
    """Tell the reader where to start; returns the incremental plan (None for a job that reads everything)."""
    spec = plan.job.config.source.incremental
    if spec is None:
        return None
    _check_incremental(plan, reader, writer)
    assert isinstance(reader, IncrementalReader)
    incremental = plan_incremental(spec, schema, state)
    name = plan.reader.ref.name
    call(reader.set_incremental, name, "set_incremental", incremental.column, incremental.after, role="reader")
    log.info("incremental read", extra={"cursor": incremental.column, "after": str(incremental.after)})
    return incremental


def _new_state(
    plan: Plan, summary: RunSummary, incremental: IncrementalPlan | None, high_water: Any | None
) -> dict[str, Any]:
    state: dict[str, Any] = {
        "job": summary.job,
        "run_id": plan.run_id,
        "dativo_version": __version__,
        "rows": summary.rows,
    }
    if incremental is not None:
        state.update(incremental.state(high_water))
    return state


def load_state(plan: Plan) -> dict[str, Any] | None:
    """The state the job's last successful run committed; raises ConfigError if the writer keeps none."""
    writer = _stateful_writer(plan)
    assert isinstance(writer, StatefulWriter)
    try:
        loaded = call(writer.load_state, plan.writer.ref.name, "load_state")
        return dict(loaded) if loaded else None
    finally:
        close_quietly(writer, plan.writer.ref.name)


def reset_state(plan: Plan, force: bool) -> str:
    """Forget the job's committed state (see StatefulWriter.reset_state); returns what was done."""
    writer = _stateful_writer(plan)
    assert isinstance(writer, StatefulWriter)
    try:
        return str(call(writer.reset_state, plan.writer.ref.name, "reset_state", force))
    finally:
        close_quietly(writer, plan.writer.ref.name)


def _stateful_writer(plan: Plan) -> DataWriter:
    writer = host_writer(plan.writer)
    if not isinstance(writer, StatefulWriter):
        close_quietly(writer, plan.writer.ref.name)
        raise ConfigError(f"writer '{plan.writer.ref.name}' keeps no state (it does not implement StatefulWriter)")
    return writer


def new_summary(plan: Plan) -> RunSummary:
    """An empty summary for ``plan``, to be filled by :func:`run`."""
    return RunSummary(
        job=plan.job.name,
        run_id=plan.run_id,
        reader=plan.reader.ref.name,
        writer=plan.writer.ref.name,
        started_at=datetime.now(UTC),
    )


def check(plan: Plan) -> list[tuple[str, str]]:
    """Connect to the source and the target with the job's credentials.

    Returns ``(side, what was verified)`` pairs; raises the first failure.
    """
    if plan.job.config.source.cdc is not None:
        from dativo.engine.cdc import check_changes

        return [*check_changes(plan), *_check_target(plan)]
    results: list[tuple[str, str]] = []
    reader = host_reader(plan.reader)
    try:
        schema = declared_schema(reader, plan.reader.ref.name)
        results.append(("source", f"reachable; {len(schema)} columns"))
    finally:
        close_quietly(reader, plan.reader.ref.name)
    return results + _check_target(plan)


def _check_target(plan: Plan) -> list[tuple[str, str]]:
    results: list[tuple[str, str]] = []
    writer = host_writer(plan.writer)
    try:
        call(writer.check, plan.writer.ref.name, "check")
        results.append(("target", "reachable"))
    finally:
        close_quietly(writer, plan.writer.ref.name)
    return results


def discover(plan: Plan) -> tuple[pa.Schema, list[tuple[str, str]] | None]:
    """Return the source's Arrow schema and, if the writer can say, the target type of each column."""
    reader = host_reader(plan.reader)
    try:
        schema = declared_schema(reader, plan.reader.ref.name)
    finally:
        close_quietly(reader, plan.reader.ref.name)
    writer = host_writer(plan.writer)
    try:
        if isinstance(writer, DescribesTargetTypes):
            return schema, call(writer.describe_types, plan.writer.ref.name, "describe_types", schema)
        return schema, None
    finally:
        close_quietly(writer, plan.writer.ref.name)


def validate(plan: Plan) -> None:
    """Connect to the source and check what a run would check before moving data.

    Every column must map to the target, the writer must support the write mode,
    an incremental job needs an incremental reader, a stateful writer and a
    cursor column of a supported type, and ``engine.executor`` must be able to run
    the job (ray: Ray installed, a StagingWriter). Raises the first problem found.
    """
    find_executor(plan.job.config.engine.executor).check(plan)
    schema, _ = discover(plan)
    reader = host_reader(plan.reader)
    writer: DataWriter | None = None
    try:
        writer = host_writer(plan.writer)
        _check_mode(plan, writer)
        find_executor(plan.job.config.engine.executor).check(plan, writer)
        spec = plan.job.config.source.incremental
        if spec is not None:
            _check_incremental(plan, reader, writer)
            plan_incremental(spec, schema, None)
    finally:
        close_quietly(reader, plan.reader.ref.name)
        if writer is not None:
            close_quietly(writer, plan.writer.ref.name)
