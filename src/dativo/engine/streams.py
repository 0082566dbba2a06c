"""The streams of a job: wildcards resolved against the source, a selection, and a bounded-concurrency run.

Each stream is an ordinary single-table job and commits on its own (its own
snapshot and state), so one failed stream leaves the others committed, and a
rerun with the same run id skips the streams already applied.
"""

from __future__ import annotations

import difflib
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from dativo.config.loader import LoadedJob, LoadedStreams
from dativo.config.streams import StreamEntry, fill_template, split_name
from dativo.core.shared import in_context, run_scope
from dativo.engine.plan import build_plan
from dativo.errors import ConfigError, DativoError, SourceError, is_transient
from dativo.sdk import ListsTables

if TYPE_CHECKING:
    from concurrent.futures import Future

    from dativo.engine import pipeline  # loaded by the runs themselves: validate --offline stays light

__all__ = ["Stream", "StreamOutcome", "plan_streams", "run_streams", "select_streams", "stream_name", "windowed"]

log = logging.getLogger("dativo.engine")


@dataclass(frozen=True)
class Stream:
    """One table (or query) of a job, as the single-table job that moves it."""

    name: str
    job: LoadedJob


@dataclass
class StreamOutcome:
    """How one stream's run ended: its last attempt's summary (None if it never started) and its error."""

    stream: Stream
    summary: pipeline.RunSummary | None
    error: BaseException | None = None
    attempts: int = 0


def stream_name(job: LoadedJob) -> str:
    """A single-table job's stream name: its stream key, else its source table, path, or the job's name."""
    source = job.config.source
    return job.stream or source.table or source.path or job.name


def plan_streams(loaded: LoadedJob | LoadedStreams, select: Sequence[str] | None = None) -> list[Stream]:
    """The job's streams in file order, wildcards resolved against the source, narrowed to ``select``.

    ``select`` holds stream names or patterns (``public.order_*``). Raises ConfigError
    for a selection that names no stream, a wildcard matching no table, a reader that
    cannot list tables, or two streams writing the same target; SourceError when the
    source cannot be listed.
    """
    if isinstance(loaded, LoadedJob):
        streams = [Stream(stream_name(loaded), loaded)]
        return select_streams(streams, select, loaded.path.name)
    explicit = {entry.key for entry in loaded.entries if not entry.wildcard}
    # A selection of explicit streams only needs no connection to the source.
    needs_listing = select is None or any(name not in explicit for name in select)
    out: dict[str, Stream] = {}
    listings: dict[str, list[str]] = {}
    for entry in loaded.entries:
        if not entry.wildcard:
            out[entry.key] = Stream(entry.key, entry.job)
        elif needs_listing:
            for table in _matches(loaded, entry, listings, explicit):
                out.setdefault(table, Stream(table, _instantiate(entry, table, loaded.name)))
    streams = list(out.values())
    _no_shared_targets(loaded, streams)
    chosen = select_streams(streams, select, loaded.path.name)
    from dativo.engine.cdc_group import check_whole_groups

    check_whole_groups(streams, chosen, loaded.path.name)  # the tables of one slot run together
    return chosen


def _matches(
    loaded: LoadedStreams, entry: StreamEntry, listings: dict[str, list[str]], explicit: set[str]
) -> list[str]:
    plan = build_plan(entry.job)
    key = json.dumps([plan.reader.ref.origin, entry.job.config.source.connection], sort_keys=True, default=str)
    if key not in listings:
        listings[key] = _list_tables(loaded, entry)
    tables = listings[key]
    found = [t for t in tables if _fits(t, entry.key) and not any(_fits(t, x) for x in entry.exclude)]
    if not found:
        seen = ", ".join(tables[:10]) + (", ..." if len(tables) > 10 else "") if tables else "none"
        raise ConfigError(
            f"{loaded.locate(f'streams.{entry.key}')}: streams.{entry.key}: matches no table of the source "
            f"(tables it holds: {seen})"
        )
    return [t for t in found if t not in explicit]


def _fits(table: str, pattern: str) -> bool:
    """``public.*`` matches ``schema.table``; a pattern without a dot matches the bare table name."""
    return fnmatchcase(table, pattern) if "." in pattern else fnmatchcase(split_name(table)[1], pattern)


def _list_tables(loaded: LoadedStreams, entry: StreamEntry) -> list[str]:
    plan = build_plan(entry.job)
    where = f"{loaded.locate(f'streams.{entry.key}')}: streams.{entry.key}"
    if plan.reader.runtime != "custom":
        raise ConfigError(f"{where}: a wildcard needs an in-process reader that lists tables; name the tables")
    reader = plan.reader.ref.cls()
    if not isinstance(reader, ListsTables):
        raise ConfigError(
            f"{where}: reader '{plan.reader.ref.name}' cannot list the source's tables "
            "(it does not implement dativo.ListsTables); name the tables one by one"
        )
    try:
        tables = reader.list_tables(plan.reader.config)
    except DativoError:
        raise
    except Exception as exc:
        raise SourceError(
            f"reader '{plan.reader.ref.name}' failed in list_tables(): {type(exc).__name__}: {exc}",
            transient=is_transient(exc),
        ) from exc
    return [str(table) for table in tables]


def _instantiate(entry: StreamEntry, table: str, job_name: str) -> LoadedJob:
    config = entry.job.config
    fills: dict[str, Any] = {name: fill_template(value, table, job_name) for name, value in entry.templates.items()}
    job = config.model_copy(
        update={
            "source": config.source.model_copy(update={"table": table}),
            "target": config.target.model_copy(update=fills),
        }
    )
    return LoadedJob(config=job, path=entry.job.path, dir=entry.job.dir, lines=entry.job.lines, stream=table)


def _no_shared_targets(loaded: LoadedStreams, streams: list[Stream]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for stream in streams:
        target = stream.job.config.target
        where = (target.connector, str(target.table or target.path or ""))
        if not where[1]:
            continue
        if where in seen:
            raise ConfigError(
                f"{loaded.locate('streams')}: streams: '{seen[where]}' and '{stream.name}' both write {where[1]}; "
                "give the target a name template such as raw.{schema}_{table}"
            )
        seen[where] = stream.name


def select_streams(streams: list[Stream], select: Sequence[str] | None, file: str) -> list[Stream]:
    """The streams ``select`` names or matches (all when it is empty); ConfigError for a name matching none."""
    if not select:
        return streams
    names = [s.name for s in streams]
    chosen: set[str] = set()
    for wanted in select:
        hits = [n for n in names if n == wanted or fnmatchcase(n, wanted)]
        if not hits:
            close = difflib.get_close_matches(wanted, names, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'? " if close else ""
            listed = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
            raise ConfigError(f"--stream {wanted}: {file} has no such stream ({hint}streams: {listed})")
        chosen.update(hits)
    return [s for s in streams if s.name in chosen]


_SQL_SOURCES = ("postgres", "sqlite")


def windowed(stream: Stream, start: Any, end: Any) -> Stream:
    """The stream reading only rows whose incremental cursor is in ``[start, end)`` (an orchestrator's partition).

    The table becomes ``SELECT * FROM table WHERE cursor >= start AND cursor < end`` and the
    committed high-water mark is neither used nor advanced. Raises ConfigError for a stream
    without ``source.incremental``, a query stream, or a source that is not SQL (postgres, sqlite).
    """
    source = stream.job.config.source
    if source.incremental is None or source.table is None or source.connector not in _SQL_SOURCES:
        raise ConfigError(
            f"stream {stream.name}: a time window needs a SQL table source (postgres, sqlite) with "
            "source.incremental.cursor, the column the window filters on"
        )
    cursor = '"' + source.incremental.cursor.replace('"', '""') + '"'

    def literal(value: Any) -> str:
        text = value.isoformat() if hasattr(value, "isoformat") else str(value)
        return "'" + text.replace("'", "''") + "'"

    query = f"SELECT * FROM {source.table} WHERE {cursor} >= {literal(start)} AND {cursor} < {literal(end)}"
    config = stream.job.config
    job = config.model_copy(
        update={"source": source.model_copy(update={"table": None, "query": query, "incremental": None})}
    )
    loaded = LoadedJob(
        config=job, path=stream.job.path, dir=stream.job.dir, lines=stream.job.lines, stream=stream.job.stream
    )
    return Stream(stream.name, loaded)


class _LockedProgress:
    """Serializes ``advance`` calls from concurrent streams."""

    def __init__(self, sink: pipeline.ProgressSink) -> None:
        self._sink = sink
        self._lock = threading.Lock()

    def advance(self, rows: int, nbytes: int) -> None:
        with self._lock:
            self._sink.advance(rows, nbytes)


RetryHook = Callable[[int, int, float, BaseException], None]


def run_streams(
    streams: Sequence[Stream],
    *,
    run_id: str | None = None,
    progress: pipeline.ProgressSink | None = None,
    on_retry: RetryHook | None = None,
    max_concurrent: int = 1,
    on_done: Callable[[StreamOutcome], None] | None = None,
) -> list[StreamOutcome]:
    """Run each stream (with retries) and commit it on its own; at most ``max_concurrent`` at once.

    A stream's failure is recorded in its outcome and does not stop the others.
    KeyboardInterrupt stops everything: running streams are aborted (they commit
    nothing), streams not started are not run, and KeyboardInterrupt propagates;
    streams that finished before stay committed. ``on_done`` sees each outcome as it ends.
    The ``source.cdc`` streams sharing a slot run first, together (dativo.engine.cdc_group).
    The streams share one run scope (``dativo.core.shared``): readers that opt in share
    connections through it (the PostgreSQL readers do), all closed when the streams end.
    """
    from dativo.engine.cdc_group import change_groups, run_change_group

    original = list(streams)
    groups, streams = change_groups(streams)
    if groups:  # source.cdc streams sharing a slot: read once, committed per table (docs/cdc.md)
        grouped = [o for g in groups for o in run_change_group(g, run_id=run_id, progress=progress, on_done=on_done)]
        rest = run_streams(
            streams, run_id=run_id, progress=progress, on_retry=on_retry, max_concurrent=max_concurrent, on_done=on_done
        )
        order = {id(s): i for i, s in enumerate(original)}
        return sorted([*grouped, *rest], key=lambda outcome: order[id(outcome.stream)])
    with run_scope(max_concurrent):
        return _run_all(streams, run_id, progress, on_retry, max_concurrent, on_done)


def _run_all(
    streams: Sequence[Stream],
    run_id: str | None,
    progress: pipeline.ProgressSink | None,
    on_retry: RetryHook | None,
    max_concurrent: int,
    on_done: Callable[[StreamOutcome], None] | None,
) -> list[StreamOutcome]:
    if max_concurrent <= 1 or len(streams) <= 1:
        return [_run_one(stream, run_id, progress, on_retry, None, on_done) for stream in streams]
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait  # streams at once only (issue 15)

    stop = threading.Event()
    sink = _LockedProgress(progress) if progress is not None else None
    lock = threading.Lock()

    def done(outcome: StreamOutcome) -> None:
        if on_done is not None:
            with lock:
                on_done(outcome)

    with ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="dativo-stream") as pool:
        # Each stream's thread runs in a copy of this context: it sees the run scope.
        futures = [pool.submit(in_context(_run_one), stream, run_id, sink, on_retry, stop, done) for stream in streams]
        pending: set[Future[StreamOutcome]] = set(futures)
        try:
            while pending:
                _, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
        except BaseException:
            stop.set()
            for future in pending:
                future.cancel()
            wait(pending)
            raise
        return [future.result() for future in futures]


def _run_one(
    stream: Stream,
    run_id: str | None,
    progress: pipeline.ProgressSink | None,
    on_retry: RetryHook | None,
    stop: threading.Event | None,
    on_done: Callable[[StreamOutcome], None] | None,
) -> StreamOutcome:
    if stop is not None and stop.is_set():
        raise KeyboardInterrupt
    from dativo.engine.retry import run_job

    attempts: list[pipeline.RunSummary] = []
    error: BaseException | None = None
    try:
        run_job(stream.job, run_id=run_id, progress=progress, attempts=attempts, on_retry=on_retry, stop=stop)
    except Exception as exc:
        error = exc
        if stream.job.stream is not None:  # a single-table job's error is the command's error, printed once
            log.info("stream %s failed: %s", stream.name, exc, extra={"job": stream.job.name, "stream": stream.name})
    except KeyboardInterrupt as exc:  # aborted: report it, then stop everything
        if on_done is not None:
            on_done(StreamOutcome(stream, attempts[-1] if attempts else None, exc, len(attempts)))
        raise
    outcome = StreamOutcome(stream, attempts[-1] if attempts else None, error, len(attempts))
    if on_done is not None:
        on_done(outcome)
    return outcome
