"""The public Python API: load, validate, discover and run jobs from Python (orchestrators, notebooks, tests).

    import dativo

    result = dativo.run("jobs/postgres_to_lake.yaml", run_id="2026-12-06")
    for stream in result.streams:
        print(stream.name, stream.status, stream.rows, stream.snapshot_id)
    result.raise_for_failures()

Everything here is covered by the versioning rules of docs/sdk-changelog.md. Errors
are :class:`dativo.DativoError` subclasses: ``ConfigError`` for the job file (its
message starts ``FILE:LINE: key.path:``), ``PluginError`` for a reader or writer that
cannot be loaded, ``SourceError``/``TargetError`` for the systems themselves. A job
problem raises; a stream's failure is recorded in its :class:`StreamResult` and does
not stop the other streams (``RunResult.raise_for_failures()`` turns it into an error).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from dativo.config.loader import LoadedJob, LoadedStreams, load_job_file
from dativo.engine.plan import build_plan
from dativo.engine.streams import Stream, StreamOutcome, plan_streams, run_streams, select_streams, windowed
from dativo.errors import DativoError

if TYPE_CHECKING:
    from dativo.engine.pipeline import ProgressSink

__all__ = [
    "DiscoveredStream",
    "Job",
    "JobLike",
    "ProgressSink",
    "RunResult",
    "StreamInfo",
    "StreamResult",
    "StreamsFailed",
    "ValidatedStream",
    "discover",
    "list_streams",
    "load_job",
    "run",
    "validate",
]


def __getattr__(name: str) -> Any:
    """``ProgressSink`` comes from the pipeline, which loads on first use (it imports pyarrow.compute)."""
    if name == "ProgressSink":
        from dativo.engine.pipeline import ProgressSink

        return ProgressSink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


RetryHook = Callable[[int, int, float, BaseException], None]


@dataclass(frozen=True)
class Job:
    """A loaded, validated job file: a single table or many ``streams:``. Build it with :func:`load_job`."""

    path: Path
    name: str
    loaded: LoadedJob | LoadedStreams = field(repr=False)

    @property
    def has_streams(self) -> bool:
        """True for a job file with ``streams:``."""
        return isinstance(self.loaded, LoadedStreams)

    @property
    def max_concurrent_streams(self) -> int:
        """``engine.max_concurrent_streams`` of the file."""
        return self.loaded.config.engine.max_concurrent_streams


JobLike = Job | str | os.PathLike[str]


def load_job(path: str | os.PathLike[str], *, env: dict[str, str] | None = None) -> Job:
    """Load and validate the job file at ``path`` (``${VAR}`` from ``env``, default the process environment).

    Raises ConfigError listing every problem as ``FILE:LINE: key.path: message``.
    Connects to nothing: wildcards are resolved when the job is run or listed.
    """
    loaded = load_job_file(path, env)
    return Job(path=Path(path), name=loaded.name, loaded=loaded)


def _job(job_or_path: JobLike) -> Job:
    return job_or_path if isinstance(job_or_path, Job) else load_job(job_or_path)


@dataclass(frozen=True)
class StreamInfo:
    """One stream as planned: source table (or query), target, and incremental cursor."""

    name: str
    source_connector: str
    source_table: str | None
    query: str | None
    target_connector: str
    target_table: str | None
    target_path: str | None
    cursor: str | None
    mode: str

    @property
    def source_schema(self) -> str | None:
        """The schema part of ``source_table`` (``public`` of ``public.orders``), if it has one."""
        return self.source_table.rpartition(".")[0] or None if self.source_table else None


def _info(stream: Stream) -> StreamInfo:
    source, target = stream.job.config.source, stream.job.config.target
    return StreamInfo(
        name=stream.name,
        source_connector=source.connector,
        source_table=source.table,
        query=source.query,
        target_connector=target.connector,
        target_table=target.table,
        target_path=target.path,
        cursor=source.incremental.cursor if source.incremental else None,
        mode=target.mode,
    )


def list_streams(job_or_path: JobLike, *, streams: Sequence[str] | None = None) -> list[StreamInfo]:
    """The job's streams, wildcards resolved against the source (which this connects to if it has any).

    ``streams`` narrows to those names or patterns. Raises ConfigError for an unknown
    stream or a wildcard matching nothing, SourceError when the source cannot be listed.
    """
    return [_info(s) for s in plan_streams(_job(job_or_path).loaded, streams)]


@dataclass(frozen=True)
class StreamResult:
    """What one stream's run did.

    ``status`` is ``succeeded``, ``already committed`` (a rerun with the same run id:
    nothing applied twice) or ``failed`` (``error`` says why; the stream committed nothing).
    """

    name: str
    status: str
    rows: int
    bytes: int
    files: int
    duration_s: float
    run_id: str | None
    attempts: int
    source: str | None
    target: str | None
    snapshot_id: int | None = None
    #: The state committed with the data (``cursor``, ``high_water``, ``run_id``...), if the writer keeps one.
    state: dict[str, Any] | None = None
    #: The source's Arrow schema, once the reader declared it.
    schema: pa.Schema | None = field(default=None, repr=False, compare=False)
    error: str | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)
    #: The full run summary (``--summary-json``), writer metadata under ``target``.
    summary: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """True unless the stream failed."""
        return self.status != "failed"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the run summary plus ``stream``, ``snapshot_id`` and ``state``."""
        return {
            **self.summary,
            "stream": self.name,
            "status": self.status,
            "snapshot_id": self.snapshot_id,
            "state": self.state,
            "error": self.error,
        }


@dataclass(frozen=True)
class RunResult:
    """What a run did, stream by stream (one stream for a single-table job)."""

    job: str
    streams: tuple[StreamResult, ...]
    duration_s: float

    @property
    def ok(self) -> bool:
        """True when no stream failed."""
        return all(s.ok for s in self.streams)

    @property
    def failed(self) -> list[str]:
        """Names of the streams that failed (and committed nothing)."""
        return [s.name for s in self.streams if not s.ok]

    @property
    def rows(self) -> int:
        """Rows written by all streams together."""
        return sum(s.rows for s in self.streams)

    def stream(self, name: str) -> StreamResult:
        """The result of stream ``name``; raises KeyError naming the streams there are."""
        for result in self.streams:
            if result.name == name:
                return result
        raise KeyError(f"no stream {name!r} in this run (streams: {', '.join(s.name for s in self.streams)})")

    def raise_for_failures(self) -> None:
        """Raise if a stream failed: a single-stream run re-raises its error, otherwise StreamsFailed."""
        failed = [s for s in self.streams if not s.ok]
        if len(self.streams) == 1 and failed and failed[0].exception is not None:
            raise failed[0].exception
        if failed:
            raise StreamsFailed(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: job, status, totals, and every stream's summary."""
        return {
            "job": self.job,
            "status": "succeeded" if self.ok else "failed",
            "rows": self.rows,
            "duration_s": round(self.duration_s, 3),
            "failed": self.failed,
            "streams": [s.to_dict() for s in self.streams],
        }


class StreamsFailed(DativoError):
    """One or more streams of a run failed; the others are committed. ``result`` holds every stream's outcome."""

    def __init__(self, result: RunResult) -> None:
        failed = [s for s in result.streams if not s.ok]
        first = failed[0]
        super().__init__(
            f"{len(failed)} of {len(result.streams)} streams of job '{result.job}' failed "
            f"({', '.join(s.name for s in failed)}); the others are committed. First: {first.name}: {first.error}",
            transient=all(getattr(s.exception, "transient", False) for s in failed),
        )
        self.result = result


def run(
    job_or_path: JobLike,
    *,
    streams: Sequence[str] | None = None,
    run_id: str | None = None,
    progress: ProgressSink | None = None,
    on_retry: RetryHook | None = None,
    max_concurrent_streams: int | None = None,
    on_stream_done: Callable[[StreamResult], None] | None = None,
    window: tuple[Any, Any] | None = None,
    executor: str | None = None,
    address: str | None = None,
) -> RunResult:
    """Run a job: every stream (or those ``streams`` names or matches) reads its source and commits once.

    ``run_id`` names the run (a scheduler's run id): a stream whose target already
    committed that run id is not applied again (status ``already committed``), so
    retrying a run with the same id is safe. ``progress.advance(rows, nbytes)`` is called
    after each batch (from several threads when streams run concurrently, serialized).
    Transient failures are retried per ``engine.retry``; ``on_retry(attempt, max, delay_s,
    error)`` is called before each wait. Streams run ``engine.max_concurrent_streams`` at
    a time (``max_concurrent_streams`` overrides it). ``on_stream_done(result)`` is called as
    each stream ends (serialized, from the stream's thread), also for a stream aborted by
    KeyboardInterrupt (status ``failed``), before the interrupt propagates.

    ``window=(start, end)`` reads only rows whose ``source.incremental.cursor`` is in
    ``[start, end)`` (a scheduler's time partition) instead of those past the committed
    mark, which is then neither used nor advanced; give the partition's run id so that a
    retried partition is applied once. It needs SQL table sources (postgres, sqlite).

    ``executor`` overrides the job's ``engine.executor`` (``"local"`` or ``"ray"``: the
    partitions run as Ray tasks and commit once, docs/ray.md) and ``address`` its
    ``engine.ray.address`` (``"auto"``, ``"ray://host:10001"``); a job the executor
    cannot run (Ray not installed, a writer that cannot stage) raises ConfigError.

    Raises ConfigError/PluginError for the job itself (nothing runs). A stream's failure
    does not raise: it is in the result (``result.ok``, ``result.failed``,
    ``result.raise_for_failures()``). KeyboardInterrupt aborts the running streams
    (they commit nothing) and propagates; streams finished before it stay committed.
    """
    job = with_executor(_job(job_or_path), executor, address)
    started = time.perf_counter()
    planned = plan_streams(job.loaded, streams)
    if window is not None:
        planned = [windowed(stream, *window) for stream in planned]
    if len(planned) == 1 and not job.has_streams:
        build_plan(planned[0].job)  # a plugin that cannot be loaded is the job's error, not the stream's
    outcomes = run_streams(
        planned,
        run_id=run_id,
        progress=progress,
        on_retry=on_retry,
        max_concurrent=max_concurrent_streams or job.max_concurrent_streams,
        on_done=(lambda outcome: on_stream_done(_result(outcome))) if on_stream_done is not None else None,
    )
    return RunResult(
        job=job.name, streams=tuple(_result(o) for o in outcomes), duration_s=time.perf_counter() - started
    )


def with_executor(job: Job, executor: str | None, address: str | None = None) -> Job:
    """``job`` with ``engine.executor`` (and ``engine.ray.address``) overridden; unchanged when both are None."""
    if executor is None and address is None:
        return job

    def engine(config: Any) -> Any:
        update: dict[str, Any] = {}
        if executor is not None:
            update["executor"] = executor
        if address is not None:
            update["ray"] = config.engine.ray.model_copy(update={"address": address})
        return config.model_copy(update={"engine": config.engine.model_copy(update=update)})

    def one(loaded: LoadedJob) -> LoadedJob:
        return replace(loaded, config=engine(loaded.config))

    loaded = job.loaded
    if isinstance(loaded, LoadedStreams):
        entries = tuple(replace(entry, job=one(entry.job)) for entry in loaded.entries)
        return replace(job, loaded=replace(loaded, config=engine(loaded.config), entries=entries))
    return replace(job, loaded=one(loaded))


def _result(outcome: StreamOutcome) -> StreamResult:
    summary = outcome.summary
    config = outcome.stream.job.config
    error = outcome.error
    data = summary.to_dict() if summary is not None else {}
    target = data.get("target") or {}
    snapshot = target.get("snapshot_id") if isinstance(target, dict) else None
    return StreamResult(
        name=outcome.stream.name,
        status="failed" if error is not None else (summary.status if summary is not None else "failed"),
        rows=summary.rows if summary is not None else 0,
        bytes=summary.bytes if summary is not None else 0,
        files=summary.files if summary is not None else 0,
        duration_s=summary.duration_s if summary is not None else 0.0,
        run_id=summary.run_id if summary is not None else None,
        attempts=outcome.attempts,
        source=config.source.table or config.source.path or ("query" if config.source.query else None),
        target=config.target.table or config.target.path,
        snapshot_id=int(snapshot) if snapshot is not None else None,
        state=summary.state if summary is not None and error is None else None,
        schema=summary.schema if summary is not None else None,
        error=_message(error) if error is not None else None,
        exception=error,
        summary=data,
    )


def _message(error: BaseException) -> str:
    return str(error) if isinstance(error, DativoError) else f"{type(error).__name__}: {error}"


@dataclass(frozen=True)
class ValidatedStream:
    """One stream's validation: the reader and writer it would use, and its problem (None when valid)."""

    name: str
    reader: str | None
    writer: str | None
    error: str | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """True when the stream is valid."""
        return self.error is None


def validate(
    job_or_path: JobLike,
    *,
    streams: Sequence[str] | None = None,
    offline: bool = False,
    executor: str | None = None,
    address: str | None = None,
) -> list[ValidatedStream]:
    """Check each stream's plugins and, unless ``offline``, its source columns, write mode and cursor.

    Raises ConfigError for the job file itself (and, unless ``offline``, when wildcards
    cannot be resolved). A stream's problem does not raise: it is in its
    :class:`ValidatedStream`. ``offline`` skips wildcard streams' tables (it lists no source).
    ``executor``/``address`` override ``engine.executor``/``engine.ray.address`` as for :func:`run`;
    whether the executor can run the job is checked offline too.
    """
    job = with_executor(_job(job_or_path), executor, address)
    if offline and isinstance(job.loaded, LoadedStreams):
        entries = [Stream(e.key, e.job) for e in job.loaded.entries]
        planned = select_streams(entries, streams, job.path.name)
    else:
        planned = plan_streams(job.loaded, streams)
    out: list[ValidatedStream] = []
    for stream in planned:
        reader = writer = None
        try:
            plan = build_plan(stream.job, contact_source=not offline)  # offline: no source planner either
            reader, writer = plan.reader.ref.name, plan.writer.ref.name
            if offline:  # the executor's check is light: neither the pipeline nor Ray is imported
                from dativo.engine.executor import find_executor

                find_executor(plan.job.config.engine.executor).check(plan)
            else:
                from dativo.engine import pipeline

                pipeline.validate(plan)
            out.append(ValidatedStream(stream.name, reader, writer))
        except Exception as exc:
            out.append(ValidatedStream(stream.name, reader, writer, _message(exc), exc))
    return out


@dataclass(frozen=True)
class DiscoveredStream:
    """One stream's source schema and, if the writer can say, each column's target type."""

    name: str
    schema: pa.Schema
    target_types: dict[str, str] | None
    #: The reader and writer the stream would run with (e.g. ``postgres-rs`` where installed).
    reader: str | None = None
    writer: str | None = None


def discover(job_or_path: JobLike, *, streams: Sequence[str] | None = None) -> list[DiscoveredStream]:
    """Connect to each stream's source and report its Arrow schema and target types.

    Raises the first stream's error (SourceError for an unreachable source or missing
    table, TypeMappingError for a column the target cannot hold).
    """
    from dativo.engine import pipeline

    out = []
    for stream in plan_streams(_job(job_or_path).loaded, streams):
        plan = build_plan(stream.job)
        schema, types = pipeline.discover(plan)
        target_types = dict(types) if types is not None else None
        out.append(DiscoveredStream(stream.name, schema, target_types, plan.reader.ref.name, plan.writer.ref.name))
    return out
