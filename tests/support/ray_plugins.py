"""Plugins for the Ray executor tests, loaded by file path (on the driver and on the Ray workers).

* :class:`RangeReader`: a custom PartitionedReader (no database): ids 0..rows-1 in ``partitions`` ranges.
* :class:`ChaosPostgresReader`: the built-in ADBC PostgreSQL reader whose partition ``chaos.partition``
  misbehaves, per ``chaos.mode``: ``kill`` (its first attempt SIGKILLs its own worker process after one
  batch), ``hold`` (its first attempt records its node and waits for ``<dir>/release``), ``fail`` (raises a
  terminal error after one batch while the other partitions keep reading slowly until cancelled).
  Every attempt records ``<dir>/p<index>-<pid>`` holding its node's IP.
* :class:`SnapshotWatchingParquetWriter`: the Parquet writer that, at ``commit_staged`` and ``abort`` on the
  driver, counts the sessions holding an exported snapshot open (``idle in transaction``) and writes the
  count to ``<options.report>.<commit|abort>``.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from dativo import DataReader, DataWriter, ReadPartition, SourceError
from dativo.connectors.postgres.adbc import AdbcPostgresReader
from dativo.targets.parquet import ParquetDatasetWriter

SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string())])


class RangeReader(DataReader):
    """Options: rows, partitions. One stream or ``partitions`` id ranges (spec: lo, hi)."""

    def get_schema(self) -> pa.Schema:
        return SCHEMA

    def _rows(self, lo: int, hi: int, batch_size: int) -> Iterator[pa.RecordBatch]:
        for start in range(lo, hi, batch_size):
            ids = range(start, min(start + batch_size, hi))
            yield pa.record_batch([pa.array(ids, pa.int64()), pa.array([f"row-{i}" for i in ids])], schema=SCHEMA)

    def plan_partitions(self, parallelism: int | None) -> Sequence[ReadPartition]:
        total, count = int(self.config["options"]["rows"]), int(self.config["options"]["partitions"])
        step = -(-total // count)
        return [
            ReadPartition(index=i, label=f"ids {lo}+", spec={"lo": lo, "hi": min(lo + step, total)})
            for i, lo in enumerate(range(0, total, step))
        ]

    def read_partition(self, partition: ReadPartition, batch_size: int) -> Iterator[pa.RecordBatch]:
        yield from self._rows(int(partition.spec["lo"]), int(partition.spec["hi"]), batch_size)

    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        yield from self._rows(0, int(self.config["options"]["rows"]), batch_size)


def _node_ip() -> str:
    try:
        import ray

        return str(ray.util.get_node_ip_address())
    except Exception:
        return socket.gethostname()


class ChaosPostgresReader(AdbcPostgresReader):
    """The ADBC reader with one misbehaving partition (see the module docstring)."""

    def read_partition(self, partition: ReadPartition, batch_size: int) -> Iterator[pa.RecordBatch]:
        chaos: dict[str, Any] = dict(self.config["options"]["chaos"])
        folder = Path(chaos["dir"])
        (folder / f"p{partition.index}-{os.getpid()}").write_text(_node_ip())
        target = partition.index == int(chaos["partition"])
        first = target and not (folder / f"marker-{partition.index}").exists()
        if first:
            (folder / f"marker-{partition.index}").write_text(_node_ip())
        mode = chaos["mode"]
        if first and mode == "hold":
            deadline = time.monotonic() + 120
            while not (folder / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        if mode == "fail" and not target:
            time.sleep(60)  # still running when the failure arrives: only a cancellation ends it early
        for batch in super().read_partition(partition, batch_size):
            yield batch
            if first and mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if target and mode == "fail":
                raise SourceError(f"partition {partition.index} hit a terminal test error", transient=False)


class SnapshotWatchingParquetWriter(ParquetDatasetWriter):
    """The Parquet writer reporting, on the driver, the exported-snapshot sessions open at commit and abort."""

    def parquet_settings(self, options: dict[str, Any]) -> Any:
        return super().parquet_settings({k: v for k, v in options.items() if k not in ("watch_dsn", "report")})

    def _watch(self, when: str) -> None:
        import psycopg

        options = self.config["options"]
        with psycopg.connect(options["watch_dsn"], autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state = 'idle in transaction' AND pid <> pg_backend_pid()"
            ).fetchone()
        Path(f"{options['report']}.{when}").write_text(str(row[0] if row else -1))

    def commit_staged(self, staged: Sequence[Any]) -> dict[str, Any]:
        self._watch("commit")
        return super().commit_staged(staged)

    def abort(self) -> None:
        self._watch("abort")
        super().abort()


class PlainWriter(DataWriter):
    """A writer that cannot stage (no dativo.StagingWriter): the Ray executor must refuse it."""

    def write_batch(self, batch: pa.RecordBatch) -> None:
        pass

    def finalize(self) -> dict[str, Any]:
        return {}
