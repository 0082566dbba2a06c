"""The one pump: a reader's partitions, read on worker threads into one bounded queue of conformed batches.

The queue is bounded twice: at most ``depth`` batches and at most ``max_bytes`` of
Arrow data (``RecordBatch.nbytes``), whichever is reached first; one batch is always
admitted, however large, so a reader yielding a batch bigger than the budget still
moves (the budget then holds that batch alone).

What the running partitions hold before the queue is bounded too, by ``read_bytes``
(``engine.read_mb``) whatever the parallelism: each running partition holds about
:data:`IN_FLIGHT_BATCHES` batches (the one its reader is filling, one handed over inside
the reader, the one its worker waits to queue), so the pump asks each partition for
batches of at most ``read_bytes / (running * IN_FLIGHT_BATCHES)`` bytes (rows estimated
from the schema, then from the batches seen; never more rows than ``batch_size``), and
when that would go below :data:`MIN_BATCH_BYTES` it runs fewer partitions at once
instead (see :func:`read_budget`). Memory held by the pump and its readers is therefore
about ``min(depth * batch, max_bytes) + read_bytes``. A pump started before its consumer is
ready (the pipeline's early read) may be given ``startup_bytes`` more (and proportionally
more batches of depth) until the first batch is taken; from then on the bounds above hold
(workers wait until the queue has drained below them).

A single stream is one partition (:data:`WHOLE_STREAM`, read with ``read_batch``);
a :class:`~dativo.sdk.PartitionedReader` plans several (read with
``read_partition``, up to ``workers`` at once, in one snapshot). Whatever the
reader yields goes through :func:`~dativo.core.batches.as_record_batches` and
:func:`~dativo.core.batches.conform`; its own exceptions are wrapped by
:func:`~dativo.core.calls.plugin_error`, which keeps ``transient``. The first
failure in any partition stops the others and is raised to whoever iterates.

The engine's run (every runtime: in process, process, Flight), change runs, and
``dativo serve`` (the plugin side of the process and Flight protocols) all read
through :class:`Pump`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa

from dativo._faults import crash_point
from dativo.core.batches import as_record_batches, conform
from dativo.core.calls import call, plugin_error
from dativo.errors import DativoError, SourceError
from dativo.sdk import DataReader, PartitionedReader, ReadPartition

__all__ = [
    "DEFAULT_QUEUE_BYTES",
    "DEFAULT_READ_BYTES",
    "IN_FLIGHT_BATCHES",
    "MIN_BATCH_BYTES",
    "SINGLE_STREAM",
    "WHOLE_STREAM",
    "Pump",
    "ReadBudget",
    "ReadPlan",
    "estimate_row_bytes",
    "plan_read",
    "read_budget",
]

# The run's log: the pump's lines belong with the pipeline's (same logger).
log = logging.getLogger("dativo.engine")

#: The partition that is the reader's whole stream (``read_batch``).
WHOLE_STREAM = ReadPartition(index=0, label="whole stream")


@dataclass(frozen=True)
class ReadPlan:
    """What the pump reads: the partitions, and how many worker threads (connections) read them."""

    partitions: Sequence[ReadPartition]
    workers: int = 1


#: Read the reader's one stream on one thread.
SINGLE_STREAM = ReadPlan((WHOLE_STREAM,), 1)


def plan_read(reader: DataReader, name: str, parallelism: int | None) -> ReadPlan:
    """Ask a partition-capable reader for its partitions; :data:`SINGLE_STREAM` when it has none to offer.

    ``parallelism`` 1 (or a reader that is no PartitionedReader, or a plan of fewer than
    two partitions) means one stream. ``None`` lets the reader choose, on at most one
    worker per CPU. Planning failures propagate (wrapped like any plugin call).
    """
    if parallelism == 1 or not isinstance(reader, PartitionedReader):
        return SINGLE_STREAM
    partitions = list(call(reader.plan_partitions, name, "plan_partitions", parallelism, role="reader"))
    if len(partitions) < 2:
        return SINGLE_STREAM
    workers = min(len(partitions), parallelism or os.cpu_count() or 1)
    log.info("reading in %d partitions on %d connections", len(partitions), workers, extra={"reader": name})
    return ReadPlan(tuple(partitions), workers)


_DONE = object()

#: Default bound of the pump's queue in bytes of Arrow data (``engine.queue_mb``).
DEFAULT_QUEUE_BYTES = 16 * 1024 * 1024

#: Default bound of the Arrow data the running partitions hold together before the queue (``engine.read_mb``).
DEFAULT_READ_BYTES = 64 * 1024 * 1024

#: Batches one running partition holds at once: the one its reader is filling, one handed over
#: inside the reader (a decoder's channel, a driver's stream), the one its worker waits to queue.
IN_FLIGHT_BATCHES = 3

#: The smallest batch the pump asks for to fit ``read_bytes``; below it, fewer partitions run at once.
MIN_BATCH_BYTES = 2 * 1024 * 1024

_VARIABLE_WIDTH_GUESS = 32  # bytes of data per string/binary value before any batch was seen


def estimate_row_bytes(schema: pa.Schema) -> int:
    """Bytes of Arrow data per row of ``schema``: exact for fixed widths, a guess for strings and lists."""

    def width(t: pa.DataType) -> float:
        if isinstance(t, pa.ExtensionType):
            return width(t.storage_type)
        if pa.types.is_boolean(t) or pa.types.is_null(t):
            return 0.25  # a bit of value, a bit of validity, rounded up
        if pa.types.is_dictionary(t):
            return width(t.index_type)
        if pa.types.is_struct(t):
            return 0.125 + sum(width(t.field(i).type) for i in range(t.num_fields))
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            return 8.125 + 4 * width(t.value_type)
        if pa.types.is_map(t):
            return 8.125 + 4 * (width(t.key_type) + width(t.item_type))
        if pa.types.is_string(t) or pa.types.is_binary(t):
            return 4.125 + _VARIABLE_WIDTH_GUESS
        if pa.types.is_large_string(t) or pa.types.is_large_binary(t) or pa.types.is_string_view(t):
            return 8.125 + _VARIABLE_WIDTH_GUESS
        try:
            return 0.125 + int(t.bit_width) / 8
        except ValueError:
            return 16.125

    return max(1, math.ceil(sum(width(field.type) for field in schema)))


@dataclass(frozen=True)
class ReadBudget:
    """How a read fits ``read_bytes``: rows per batch asked of each partition, and partitions running at once."""

    batch_rows: int
    workers: int


def read_budget(row_bytes: int, batch_size: int, workers: int, read_bytes: int) -> ReadBudget:
    """Fit ``workers`` running partitions of ``IN_FLIGHT_BATCHES`` batches each into ``read_bytes``.

    Batches shrink first (never more rows than ``batch_size``, never below
    :data:`MIN_BATCH_BYTES` unless ``batch_size`` asks for less); when even that does not
    fit, fewer partitions run at once (at least one). Pure arithmetic; never raises.
    """
    row_bytes, batch_size, workers = max(1, row_bytes), max(1, batch_size), max(1, workers)
    per_batch = max(1, read_bytes) // (workers * IN_FLIGHT_BATCHES)
    rows = min(batch_size, max(1, per_batch // row_bytes))
    floor_rows = min(batch_size, max(1, MIN_BATCH_BYTES // row_bytes))
    if rows >= floor_rows:
        return ReadBudget(rows, workers)
    running = max(1, read_bytes // (IN_FLIGHT_BATCHES * floor_rows * row_bytes))
    return ReadBudget(floor_rows, min(workers, running))


class _ByteBudget:
    """Bytes of queued batches; ``reserve`` blocks while admitting a batch would exceed ``limit``.

    ``limit`` may be lowered later (:meth:`set_limit`): batches held beyond it stay, and
    ``reserve`` waits until enough of them were taken off.

    A batch is always admitted into an empty budget, whatever its size (else a batch
    larger than the budget would never move).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0
        self._cond = threading.Condition()

    def reserve(self, nbytes: int, cancelled: threading.Event) -> bool:
        """Wait until ``nbytes`` fit (or nothing is held); False when ``cancelled`` was set first."""
        with self._cond:
            while self.held and self.held + nbytes > self.limit:
                if cancelled.is_set():
                    return False
                self._cond.wait(0.2)
            self.held += nbytes
            self.peak = max(self.peak, self.held)
            return True

    def release(self, nbytes: int) -> None:
        """Return ``nbytes`` taken off the queue and wake a waiting worker."""
        with self._cond:
            self.held -= nbytes
            self._cond.notify_all()

    def set_limit(self, limit: int) -> None:
        """Change the bound (waiting workers re-check it)."""
        with self._cond:
            self.limit = limit
            self._cond.notify_all()


class Pump:
    """Reads the planned partitions on worker threads into one queue of at most ``depth`` batches and ``max_bytes``.

    ``start`` the threads, iterate for conformed batches (in order for one stream,
    in arrival order across partitions), ``cancel`` to stop the workers at their next
    batch, ``join`` to wait for them. Iterating raises the first failure of any
    partition (a reader's non-dativo exception as a SourceError, ``transient`` kept),
    or SourceError when the workers stopped without finishing.
    """

    def __init__(
        self,
        reader: DataReader,
        name: str,
        schema: pa.Schema,
        batch_size: int,
        depth: int,
        plan: ReadPlan = SINGLE_STREAM,
        *,
        max_bytes: int = DEFAULT_QUEUE_BYTES,
        read_bytes: int = DEFAULT_READ_BYTES,
        startup_bytes: int = 0,
    ) -> None:
        self._reader = reader
        self._name = name
        self._schema = schema
        self._batch_size = batch_size
        self._pending: queue.SimpleQueue[ReadPartition] = queue.SimpleQueue()
        for partition in plan.partitions:
            self._pending.put(partition)
        self._single = len(plan.partitions) == 1
        self._read_bytes = max(1, read_bytes)
        self._row_bytes = estimate_row_bytes(schema)  # then the widest batch seen (per row)
        asked = max(1, min(plan.workers, len(plan.partitions)))
        budget = read_budget(self._row_bytes, batch_size, asked, self._read_bytes)
        workers = budget.workers
        self._workers = workers
        if workers < asked:
            log.info(
                "engine.read_mb: %d partitions run at most %d at once (batches of %d rows)",
                len(plan.partitions),
                workers,
                read_budget(self._row_bytes, batch_size, workers, self._read_bytes).batch_rows,
                extra={"reader": name},
            )
        self._depth = max(depth, workers)
        self._max_bytes = max(1, max_bytes)
        startup_bytes = max(0, startup_bytes)
        # Until the first batch is taken (__iter__): startup_bytes more, in proportionally more batches.
        self._queue: queue.Queue[object] = queue.Queue(
            maxsize=self._depth + math.ceil(self._depth * startup_bytes / self._max_bytes)
        )
        self._budget = _ByteBudget(self._max_bytes + startup_bytes)
        self._cancelled = threading.Event()
        self._index_lock = threading.Lock()
        self._index = 0
        names = [f"dativo-reader-{name}"] if workers == 1 else [f"dativo-reader-{name}-{i}" for i in range(workers)]
        self._threads = [threading.Thread(target=self._work, name=n, daemon=True) for n in names]

    @property
    def workers(self) -> int:
        """How many partitions are read at once (the plan's workers, fewer where ``read_bytes`` says so)."""
        return self._workers

    def batch_rows(self) -> int:
        """Rows per batch the next partition is asked for: ``batch_size``, or fewer to fit ``read_bytes``."""
        return read_budget(self._row_bytes, self._batch_size, self._workers, self._read_bytes).batch_rows

    @property
    def queued_bytes(self) -> int:
        """The Arrow data (``nbytes``) the queue holds now."""
        return self._budget.held

    @property
    def peak_queued_bytes(self) -> int:
        """The most Arrow data (``nbytes``) the queue has held at once so far."""
        return self._budget.peak

    def start(self) -> None:
        """Start the worker threads."""
        for thread in self._threads:
            thread.start()

    def cancel(self) -> None:
        """Ask the workers to stop at their next batch; never blocks."""
        self._cancelled.set()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for each worker; logs a warning for one still running."""
        for thread in self._threads:
            if thread.ident is None:
                continue  # never started
            thread.join(timeout)
            if thread.is_alive():
                log.warning("reader '%s' did not stop within %.0f s of cancellation", self._name, timeout)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        self._end_startup()
        running = len(self._threads)
        while running:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                if not any(t.is_alive() for t in self._threads) and self._queue.empty():
                    what = "its stream" if self._single else "its partitions"
                    raise SourceError(f"reader '{self._name}' stopped without finishing {what}") from None
                continue
            if item is _DONE:
                running -= 1
                continue
            if isinstance(item, BaseException):
                self._cancelled.set()
                raise item
            assert isinstance(item, pa.RecordBatch)
            self._budget.release(item.nbytes)
            yield item

    def _end_startup(self) -> None:
        """The consumer is here: from now on the queue holds at most ``depth`` batches and ``max_bytes``."""
        with self._queue.mutex:
            self._queue.maxsize = self._depth
        self._budget.set_limit(self._max_bytes)

    def _work(self) -> None:
        try:
            while not self._cancelled.is_set():
                try:
                    partition = self._pending.get_nowait()
                except queue.Empty:
                    break
                if not self._read(partition):
                    return
            self._put(_DONE)
        except DativoError as exc:
            self._cancelled.set()
            self._put(exc, force=True)

    def _open(self, partition: ReadPartition) -> Iterable[object]:
        rows = self.batch_rows()
        if partition is WHOLE_STREAM:
            return self._reader.read_batch(rows)
        assert isinstance(self._reader, PartitionedReader)
        return self._reader.read_partition(partition, rows)

    def _read(self, partition: ReadPartition) -> bool:
        """Read one partition into the queue; False when cancelled. Raises its failure as a DativoError."""
        count = 0
        stream: Iterator[object] | None = None
        try:
            stream = iter(self._open(partition))
            for item in stream:
                for raw in as_record_batches(item, self._name):
                    if raw.num_rows == 0:
                        continue
                    with self._index_lock:
                        index, self._index = self._index, self._index + 1
                    batch = conform(raw, self._schema, self._name, index)
                    del raw  # the worker holds one batch while it waits for room, not two
                    per_row = -(-batch.nbytes // batch.num_rows)
                    if per_row > self._row_bytes:  # the next partitions are asked for batches this wide
                        self._row_bytes = per_row
                    if not self._budget.reserve(batch.nbytes, self._cancelled):
                        return False
                    if not self._put(batch):
                        self._budget.release(batch.nbytes)
                        return False
                    del batch
                    count += 1
                    crash_point("read")
                if self._cancelled.is_set():
                    return False
            return True
        except DativoError:
            raise
        except Exception as exc:
            where = "" if partition is WHOLE_STREAM else f" in partition {partition.label}"
            raise plugin_error(exc, "reader", self._name, f"failed{where} after {count} batches") from exc
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.debug("closing a stream of reader '%s' raised", self._name, exc_info=True)

    def _put(self, item: object, *, force: bool = False) -> bool:
        # An error is delivered even after cancellation, so the first failure is the one reported.
        while force or not self._cancelled.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                if force and self._cancelled.is_set() and self._queue.full():
                    with contextlib.suppress(queue.Empty):  # make room: the consumer stops at the first error
                        self._queue.get_nowait()
                continue
        return False
