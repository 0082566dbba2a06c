"""A partitioned test reader (loaded by file path) whose partitions can fail the way a dropped connection does."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import pyarrow as pa

from dativo import DataReader, ReadPartition

SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string())])


def rows(lo: int, hi: int) -> pa.RecordBatch:
    ids = range(lo, hi)
    return pa.record_batch([pa.array(ids, pa.int64()), pa.array([f"row-{i}" for i in ids])], schema=SCHEMA)


class FlakyPartitionedReader(DataReader):
    """Options: rows, partitions, marker, error. Ids 0..rows-1 in ``partitions`` id ranges.

    While ``marker`` does not exist, the last partition (or, read as one stream, the stream)
    creates it, yields one batch and then raises ``error``: ConnectionResetError (the default, as a
    dropped server connection would) or RuntimeError.
    """

    def get_schema(self) -> pa.Schema:
        return SCHEMA

    def _options(self) -> tuple[int, int, str]:
        options = self.config["options"]
        return int(options["rows"]), int(options["partitions"]), str(options["marker"])

    def plan_partitions(self, parallelism: int | None) -> Sequence[ReadPartition]:
        total, count, _ = self._options()
        step = -(-total // count)
        return [
            ReadPartition(
                index=i, label=f"ids {lo}-{min(lo + step, total) - 1}", spec={"lo": lo, "hi": min(lo + step, total)}
            )
            for i, lo in enumerate(range(0, total, step))
        ]

    def read_partition(self, partition: ReadPartition, batch_size: int) -> Iterator[pa.RecordBatch]:
        _, count, marker = self._options()
        lo, hi = int(partition.spec["lo"]), int(partition.spec["hi"])
        fail = partition.index == count - 1 and not os.path.exists(marker)
        if fail:
            open(marker, "w").close()
        for start in range(lo, hi, batch_size):
            yield rows(start, min(start + batch_size, hi))
            if fail:
                raise self._error()

    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        total, _, marker = self._options()
        fail = not os.path.exists(marker)
        if fail:
            open(marker, "w").close()
        for start in range(0, total, batch_size):
            yield rows(start, min(start + batch_size, total))
            if fail:
                raise self._error()

    def _error(self) -> Exception:
        error = {"ConnectionResetError": ConnectionResetError, "RuntimeError": RuntimeError}
        return error[self.config["options"].get("error", "ConnectionResetError")]("server closed the connection")
