"""The one pump (dativo.core.pump): one stream or many partitions, the same conversion and the same errors."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.catalog import load_catalog

from dativo import DataReader
from dativo.config.loader import load_job
from dativo.core.pump import SINGLE_STREAM, Pump, plan_read
from dativo.engine.retry import run_job
from dativo.errors import SourceError

from support.partitioned_plugins import SCHEMA, FlakyPartitionedReader

SUPPORT = Path(__file__).parent / "support" / "partitioned_plugins.py"


def write_job(tmp_path: Path, options: dict, parallelism: int) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: flaky-partitions
            source:
              connector: custom
              parallelism: {parallelism}
              reader: {{implementation: "{SUPPORT}:FlakyPartitionedReader", options: {json.dumps(options)}}}
            target: {{connector: iceberg, table: raw.items}}
            engine: {{batch_size: 1000, retry: {{max_attempts: 3, initial_delay_s: 0.05}}}}
            """
        )
    )
    return path


def iceberg_table(job_dir: Path):
    warehouse = job_dir / "warehouse"
    catalog = load_catalog(
        "dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )
    return catalog.load_table("raw.items") if catalog.table_exists("raw.items") else None


def test_transient_partition_failure_is_retried_under_parallelism_2(tmp_path, caplog):
    options = {"rows": 5000, "partitions": 2, "marker": str(tmp_path / "failed-once")}
    attempts: list = []
    with caplog.at_level("INFO", logger="dativo.engine"):
        summary = run_job(load_job(write_job(tmp_path, options, parallelism=2)), attempts=attempts)
    assert any("reading in 2 partitions on 2 connections" in r.getMessage() for r in caplog.records)
    first, last = attempts
    assert first.status == "failed"
    assert "in partition ids 2500-4999 after 1 batches: ConnectionResetError" in str(first.error)
    assert (last.status, last.attempt, summary.rows) == ("succeeded", 2, 5000)
    table = iceberg_table(tmp_path)
    assert len(table.snapshots()) == 1  # the failed attempt committed nothing
    ids = table.scan().to_arrow().column("id").to_pylist()
    assert sorted(ids) == list(range(5000))  # exactly the source rows: none twice, none missing


def test_terminal_partition_failure_is_not_retried_and_commits_nothing(tmp_path):
    options = {"rows": 5000, "partitions": 2, "marker": str(tmp_path / "failed-once"), "error": "RuntimeError"}
    attempts: list = []
    with pytest.raises(SourceError, match="in partition ids 2500-4999 after 1 batches: RuntimeError") as info:
        run_job(load_job(write_job(tmp_path, options, parallelism=2)), attempts=attempts)
    assert not info.value.transient
    assert len(attempts) == 1
    assert iceberg_table(tmp_path) is None


@pytest.mark.parametrize("partitioned", [False, True], ids=["single-stream", "partitions"])
def test_one_stream_and_partitions_fail_alike(tmp_path, partitioned):
    """The same dropped connection: a transient SourceError naming the reader, whichever way it is read."""
    reader = FlakyPartitionedReader()
    reader.initialize({"options": {"rows": 3000, "partitions": 3, "marker": str(tmp_path / "m")}})
    plan = plan_read(reader, "flaky", 2) if partitioned else SINGLE_STREAM
    assert len(plan.partitions) == (3 if partitioned else 1)
    pump = Pump(reader, "flaky", SCHEMA, 500, 2, plan)
    pump.start()
    try:
        with pytest.raises(SourceError) as info:
            for _ in pump:
                pass
    finally:
        pump.cancel()
        pump.join(5)
    where = " in partition ids 2000-2999" if partitioned else ""
    assert str(info.value) == (
        f"reader 'flaky' failed{where} after 1 batches: ConnectionResetError: server closed the connection"
    )
    assert info.value.transient
    assert isinstance(info.value.__cause__, ConnectionResetError)


def test_one_stream_keeps_order_and_counts_every_row(tmp_path):
    (tmp_path / "m").touch()  # no failure
    reader = FlakyPartitionedReader()
    reader.initialize({"options": {"rows": 2500, "partitions": 2, "marker": str(tmp_path / "m")}})
    pump = Pump(reader, "flaky", SCHEMA, 1000, 1)
    pump.start()
    ids = [i for batch in pump for i in batch.column("id").to_pylist()]
    pump.join(5)
    assert ids == list(range(2500))


class BigBatchReader(DataReader):
    """Yields ``count`` batches of ``mb`` MiB each, every one freshly allocated from Arrow's default pool."""

    SCHEMA = pa.schema([("v", pa.int64())])

    def get_schema(self) -> pa.Schema:
        return self.SCHEMA

    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        options = self.config["options"]
        length = int(options["mb"]) * 1024 * 1024 // 8
        for _ in range(int(options["count"])):
            buffer = pa.allocate_buffer(length * 8)  # real memory, counted by pa.total_allocated_bytes()
            yield pa.record_batch([pa.Array.from_buffers(pa.int64(), length, [None, buffer])], schema=self.SCHEMA)


MIB = 1024 * 1024


def _big_pump(count: int, depth: int, **bounds: int) -> Pump:
    """A started pump over ``count`` 4 MiB batches, queue ``depth`` batches deep, with the given byte bounds."""
    reader = BigBatchReader()
    reader.initialize({"options": {"mb": 4, "count": count}})
    pump = Pump(reader, "big", BigBatchReader.SCHEMA, 1, depth, **bounds)
    pump.start()
    return pump


def _drain_slowly(pump: Pump) -> tuple[int, int]:
    """Take every batch, pausing so the reader can run ahead; returns (batches, peak Arrow bytes allocated)."""
    batches, peak = 0, 0
    for batch in pump:
        time.sleep(0.02)
        peak = max(peak, pa.total_allocated_bytes())
        batches += 1
        del batch
    return batches, peak


def test_queue_is_bounded_by_bytes_not_only_batches():
    """64 batches of queue depth would hold 256 MiB of 4 MiB batches; 12 MiB of bytes bound holds 3 of them."""
    before = pa.total_allocated_bytes()
    pump = _big_pump(30, 64, max_bytes=12 * MIB)
    batches, peak = _drain_slowly(pump)
    pump.join(5)
    assert batches == 30
    assert pump.peak_queued_bytes <= 12 * MIB
    # Allocated at most: the queue's 12 MiB, the batch the consumer holds, the one the reader waits to queue.
    assert peak - before <= (12 + 4 + 4) * MIB


def test_queue_of_batches_alone_runs_further_ahead():
    """The same reader and consumer with a byte bound that never bites: the queue really does fill to its depth."""
    pump = _big_pump(30, 64, max_bytes=1024 * MIB)
    batches, _ = _drain_slowly(pump)
    pump.join(5)
    assert batches == 30
    assert pump.peak_queued_bytes >= 40 * MIB


def test_a_batch_larger_than_the_byte_bound_still_moves():
    pump = _big_pump(5, 4, max_bytes=1024)
    batches, _ = _drain_slowly(pump)
    pump.join(5)
    assert batches == 5
    assert pump.peak_queued_bytes == 4 * 1024 * 1024  # one batch at a time


def _wait_until_still(pump: Pump, seconds: float = 10.0) -> int:
    """Wait until the queue stops growing (the workers wait for room); returns the bytes it holds."""
    deadline, last, still = time.monotonic() + seconds, -1, 0
    while time.monotonic() < deadline and still < 5:
        held = pump.peak_queued_bytes
        still = still + 1 if held == last else 0
        last = held
        time.sleep(0.05)
    return last


def test_a_startup_allowance_lets_the_queue_run_ahead_until_the_first_batch_is_taken():
    """Before anyone iterates, 4 MiB batches fill 12 MiB + the 8 MiB allowance; once iterating, 12 MiB again."""
    pump = _big_pump(30, 3, max_bytes=12 * MIB, startup_bytes=8 * MIB)
    assert _wait_until_still(pump) == 20 * MIB  # 5 batches: the depth of 3 grew with the allowance too
    held: list[int] = []
    batches = 0
    for batch in pump:
        time.sleep(0.02)
        held.append(pump.queued_bytes)
        batches += 1
        del batch
    pump.join(5)
    assert batches == 30
    # The queue drained below 12 MiB before admitting more, and never held more than that again.
    settled = held[held.index(next(h for h in held if h <= 12 * MIB)) :]
    assert settled and max(settled) <= 12 * MIB
    assert pump.peak_queued_bytes == 20 * MIB


def test_without_a_startup_allowance_the_queue_waits_at_its_bound():
    pump = _big_pump(10, 64, max_bytes=12 * MIB)
    assert _wait_until_still(pump) == 12 * MIB
    assert sum(batch.num_rows for batch in pump) == 10 * 4 * MIB // 8
    pump.join(5)
