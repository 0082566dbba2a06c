"""Parallel partitioned reads: N partition producers feeding the engine's one bounded queue.

Used by :func:`dativo.engine.pipeline.run` when the reader implements
:class:`dativo.sdk.PartitionedReader` and ``source.parallelism`` is not 1.
Every batch goes through the same conversion and schema checks as the
single-stream path (:func:`dativo.core.batches.as_record_batches` and
:func:`~dativo.core.batches.conform`). The first failure in any partition
stops the others and is raised to the writer loop, which aborts the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Iterator, Sequence

import pyarrow as pa

from dativo.core.batches import as_record_batches, conform
from dativo.errors import DativoError, SourceError
from dativo.sdk import DataReader, PartitionedReader, ReadPartition

__all__ = ["PartitionPump", "plan_partitioned_read"]

log = logging.getLogger("dativo.engine")


def plan_partitioned_read(
    reader: DataReader, name: str, parallelism: int | None
) -> tuple[Sequence[ReadPartition], int] | None:
    """Ask a partition-capable reader for its plan; None means read with ``read_batch``.

    Returns the partitions and the number of workers to run them on.
    Planning failures propagate (as :class:`SourceError` when not a dativo error).
    """
    if parallelism == 1 or not isinstance(reader, PartitionedReader):
        return None
    try:
        partitions = list(reader.plan_partitions(parallelism))
    except DativoError:
        raise
    except Exception as exc:
        raise SourceError(f"reader '{name}' failed in plan_partitions(): {type(exc).__name__}: {exc}") from exc
    if len(partitions) < 2:
        return None
    workers = min(len(partitions), parallelism or os.cpu_count() or 1)
    log.info("reading in %d partitions on %d connections", len(partitions), workers, extra={"reader": name})
    return partitions, workers


_DONE = object()


class PartitionPump:
    """Runs ``read_partition`` for every partition on ``workers`` threads into one bounded queue.

    Same interface as the single-stream pump: ``start``, ``cancel``, ``join``,
    iterate for conformed batches (in arrival order across partitions).
    """

    def __init__(
        self,
        reader: DataReader,
        name: str,
        schema: pa.Schema,
        batch_size: int,
        depth: int,
        partitions: Sequence[ReadPartition],
        workers: int,
    ) -> None:
        assert isinstance(reader, PartitionedReader)
        self._reader = reader
        self._name = name
        self._schema = schema
        self._batch_size = batch_size
        self._pending: queue.SimpleQueue[ReadPartition] = queue.SimpleQueue()
        for partition in partitions:
            self._pending.put(partition)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(depth, workers))
        self._cancelled = threading.Event()
        self._index_lock = threading.Lock()
        self._index = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"dativo-reader-{name}-{i}", daemon=True) for i in range(workers)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def cancel(self) -> None:
        self._cancelled.set()

    def join(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("reader '%s' partition worker did not stop within %.0f s", self._name, timeout)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        running = len(self._threads)
        while running:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                if not any(t.is_alive() for t in self._threads) and self._queue.empty():
                    raise SourceError(f"reader '{self._name}' stopped without finishing its partitions") from None
                continue
            if item is _DONE:
                running -= 1
                continue
            if isinstance(item, BaseException):
                self._cancelled.set()
                raise item
            assert isinstance(item, pa.RecordBatch)
            yield item

    def _work(self) -> None:
        partition: ReadPartition | None = None
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
        except Exception as exc:
            self._cancelled.set()
            where = f" in partition {partition.label}" if partition is not None else ""
            error = SourceError(f"reader '{self._name}' failed{where}: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            self._put(error, force=True)

    def _read(self, partition: ReadPartition) -> bool:
        stream = iter(self._reader.read_partition(partition, self._batch_size))
        try:
            for item in stream:
                for raw in as_record_batches(item, self._name):
                    if raw.num_rows == 0:
                        continue
                    with self._index_lock:
                        index, self._index = self._index, self._index + 1
                    if not self._put(conform(raw, self._schema, self._name, index)):
                        return False
                if self._cancelled.is_set():
                    return False
            return True
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.debug("closing partition %s of reader '%s' raised", partition.label, self._name, exc_info=True)

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
