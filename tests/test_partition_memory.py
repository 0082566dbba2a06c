"""Memory of partitioned reads bounded by bytes (engine.read_mb) whatever source.parallelism asks."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pytest

from dativo import DataReader, ReadPartition
from dativo.config.loader import load_job
from dativo.core.pump import (
    IN_FLIGHT_BATCHES,
    MIN_BATCH_BYTES,
    Pump,
    ReadBudget,
    ReadPlan,
    estimate_row_bytes,
    read_budget,
)
from dativo.engine import pipeline
from dativo.engine.plan import build_plan
from dativo.engine.retry import run_job
from dativo.errors import SchemaError, SourceError
from test_parallel_reads import iceberg_table, wait_no_sessions
from test_pump import SUPPORT
from test_pump import iceberg_table as custom_iceberg_table

MIB = 1024 * 1024


def test_estimate_row_bytes_is_exact_for_fixed_widths_and_guesses_strings():
    fixed = pa.schema([("a", pa.int64()), ("b", pa.float64()), ("c", pa.bool_()), ("d", pa.decimal128(14, 2))])
    assert estimate_row_bytes(fixed) == 33  # 8 + 8 + 16, a validity bit each, a bit per boolean: 32.625
    assert estimate_row_bytes(pa.schema([("s", pa.string())])) == 37  # 4 of offset + a 32-byte guess
    assert estimate_row_bytes(pa.schema([])) == 1


def test_read_budget_keeps_batch_size_when_it_fits_then_shrinks_batches_then_caps_partitions():
    budget = 32 * MIB
    assert read_budget(500, 16_384, 1, budget) == ReadBudget(16_384, 1)  # 3 x 8 MB fit: nothing changes
    assert read_budget(500, 16_384, 4, budget) == ReadBudget(budget // (4 * IN_FLIGHT_BATCHES) // 500, 4)
    floor_rows = MIN_BATCH_BYTES // 500
    capped = read_budget(500, 16_384, 32, budget)
    assert capped.batch_rows == floor_rows
    assert capped.workers == budget // (IN_FLIGHT_BATCHES * floor_rows * 500) == 5
    assert read_budget(500, 100, 32, budget) == ReadBudget(100, 32)  # small batches asked: all 32 fit
    assert read_budget(500, 16_384, 32, 1) == ReadBudget(floor_rows, 1)  # at least one partition runs
    # What the running partitions hold (3 batches each) stays within the budget once batches may shrink.
    for workers in (1, 2, 4, 8, 16, 32, 64):
        got = read_budget(500, 16_384, workers, budget)
        assert got.workers * IN_FLIGHT_BATCHES * got.batch_rows * 500 <= budget


class ManyPartitions(DataReader):
    """``partitions`` id ranges of ``rows`` int64 rows each; every batch freshly allocated from Arrow's pool."""

    SCHEMA = pa.schema([("id", pa.int64())])

    def __init__(self, partitions: int, rows: int) -> None:
        self.partitions, self.rows = partitions, rows
        self.asked: list[int] = []  # the batch_size each partition was asked for

    def get_schema(self) -> pa.Schema:
        return self.SCHEMA

    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        raise AssertionError("read in partitions")

    def plan_partitions(self, parallelism: int | None) -> Sequence[ReadPartition]:
        return [ReadPartition(index=i, label=f"p{i}", spec={"lo": i * self.rows}) for i in range(self.partitions)]

    def read_partition(self, partition: ReadPartition, batch_size: int) -> Iterator[pa.RecordBatch]:
        self.asked.append(batch_size)
        lo = int(partition.spec["lo"])
        for start in range(lo, lo + self.rows, batch_size):
            n = min(batch_size, lo + self.rows - start)
            buffer = pa.allocate_buffer(n * 8)  # real memory, counted by pa.total_allocated_bytes()
            buffer_view = memoryview(buffer).cast("q")
            for i in (0, n - 1):
                buffer_view[i] = start + i
            yield pa.record_batch([pa.Array.from_buffers(pa.int64(), n, [None, buffer])], schema=self.SCHEMA)


def _drain(pump: Pump, before: int) -> tuple[int, list[int], int]:
    """Take every batch slowly (the readers run ahead); returns (rows, first and last id of each batch, peak)."""
    rows, ends, peak = 0, [], 0
    for batch in pump:
        time.sleep(0.005)
        peak = max(peak, pa.total_allocated_bytes() - before)
        ids = batch.column(0)
        rows += batch.num_rows
        ends += [ids[0].as_py(), ids[-1].as_py()]
        del batch, ids
    return rows, ends, peak


def _pump_32(read_bytes: int) -> tuple[ManyPartitions, Pump, int, list[int], int]:
    reader = ManyPartitions(partitions=32, rows=4 * 262_144)  # 8 MiB per partition
    before = pa.total_allocated_bytes()
    plan = ReadPlan(tuple(reader.plan_partitions(32)), workers=32)
    pump = Pump(reader, "many", reader.SCHEMA, 262_144, 64, plan, max_bytes=4 * MIB, read_bytes=read_bytes)
    pump.start()
    try:
        rows, ends, peak = _drain(pump, before)
    finally:
        pump.cancel()
        pump.join(10)
    return reader, pump, rows, ends, peak


def test_32_partitions_hold_about_read_bytes_not_32_batches():
    """32 partitions asked for 2 MiB batches: within read_mb 8 the pump holds ~8 MiB + the queue, not 32 x 2 MiB."""
    reader, pump, rows, ends, peak = _pump_32(read_bytes=8 * MIB)
    assert rows == 32 * 4 * 262_144
    starts = sorted(ends[0::2])
    assert starts[0] == 0 and len(set(starts)) == len(starts)  # every batch once
    assert pump.workers == 1  # 8 MiB / (3 batches x at least 2 MiB): one partition at a time
    assert set(reader.asked) == {262_144} and len(reader.asked) == 32  # 2.25 MiB (9 bytes a row estimated)
    # The queue's 4 MiB, what the running partitions hold (read_mb), the batch the consumer holds.
    assert peak <= (4 + 8 + 2.5) * MIB, peak / MIB


def test_without_the_read_budget_32_partitions_hold_far_more():
    """The control: the same read with a budget that never bites holds a batch per partition, 3x the bound above."""
    reader, pump, rows, _, peak = _pump_32(read_bytes=1024 * MIB)
    assert rows == 32 * 4 * 262_144
    assert pump.workers == 32 and set(reader.asked) == {262_144}
    assert peak > 3 * (4 + 8 + 2.5) * MIB, peak / MIB


def test_later_partitions_are_asked_for_batches_as_wide_as_seen():
    """A schema that estimates 37 bytes a row but carries ~1 KiB strings: later partitions get fewer rows."""

    class Wide(ManyPartitions):
        SCHEMA = pa.schema([("s", pa.string())])

        def read_partition(self, partition: ReadPartition, batch_size: int) -> Iterator[pa.RecordBatch]:
            self.asked.append(batch_size)
            for start in range(0, self.rows, batch_size):
                n = min(batch_size, self.rows - start)
                yield pa.record_batch([pa.array(["x" * 1020] * n)], schema=self.SCHEMA)

    reader = Wide(partitions=4, rows=4000)
    plan = ReadPlan(tuple(reader.plan_partitions(4)), workers=4)
    pump = Pump(reader, "wide", reader.SCHEMA, 100_000, 4, plan, read_bytes=3 * MIB)
    pump.start()
    assert sum(b.num_rows for b in pump) == 16_000
    pump.join(5)
    assert pump.workers == 1  # 3 MiB / (3 x 2 MiB batches of the 37-byte estimate)
    first, *later = reader.asked
    assert first == MIN_BATCH_BYTES // 37
    assert len(later) == 3  # 2 MiB of rows of 1020 bytes + a 4-byte offset, as seen
    assert all(MIN_BATCH_BYTES // 1030 <= rows <= MIN_BATCH_BYTES // 1024 for rows in later), later


# --- the engine, end to end -------------------------------------------------------------------------------


def write_pg_job(tmp_path, table: str, reader: str, parallelism: int, connection: dict, read_mb: float) -> object:
    path = tmp_path / "job.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: par
            source:
              connector: postgres
              connection: {json.dumps(connection)}
              table: {table}
              parallelism: {parallelism}
              reader: {{implementation: {reader}}}
            target: {{connector: iceberg, table: raw.par}}
            engine: {{batch_size: 5000, read_mb: {read_mb}}}
            """
        )
    )
    return path


@pytest.mark.parametrize("reader", ["postgres-adbc", "postgres-rs"])
def test_parallelism_32_reads_exactly_the_source_within_read_mb(tmp_path, pg_db, reader, caplog):
    pg_db.execute(
        "CREATE TABLE big AS SELECT g::bigint AS id, md5(g::text) AS h, (g % 1000)::numeric(10,2) AS n "
        "FROM generate_series(1, 60000) g"
    )
    expected = pg_db.execute("SELECT count(*), sum(id), sum(length(h)), sum(n) FROM big")[0]
    with caplog.at_level("INFO", logger="dativo.engine"):
        summary = pipeline.run(build_plan(load_job(write_pg_job(tmp_path, "big", reader, 32, pg_db.connection, 4))))
    messages = [r.getMessage() for r in caplog.records]
    assert "reading in 32 partitions on 32 connections" in messages
    # 61 bytes a row estimated, 5,000-row batches: 4 MiB holds 4 partitions of 3 batches.
    assert "engine.read_mb: 32 partitions run at most 4 at once (batches of 5000 rows)" in messages
    assert summary.status == "succeeded" and summary.rows == 60000
    table = iceberg_table(tmp_path)
    assert len(table.snapshots()) == 1
    data = table.scan().to_arrow()
    ids = data.column("id")
    assert data.num_rows == expected[0] == 60000
    assert pa.compute.count_distinct(ids).as_py() == 60000  # none twice, none missing
    assert pa.compute.sum(ids).as_py() == int(expected[1])
    assert pa.compute.sum(pa.compute.utf8_length(data.column("h"))).as_py() == int(expected[2])
    assert pa.compute.sum(data.column("n")).as_py() == expected[3]
    assert wait_no_sessions(pg_db) == 0


@pytest.mark.parametrize("reader", ["postgres-adbc", "postgres-rs"])
def test_failing_partition_among_32_still_fails_the_run_and_commits_nothing(tmp_path, pg_db, reader):
    pg_db.execute(
        "CREATE TABLE bad AS SELECT g::bigint AS id, md5(g::text) AS h, g::numeric AS n "
        "FROM generate_series(1, 60000) g;"
        "UPDATE bad SET n = 'NaN' WHERE id = 30000"
    )
    with pytest.raises(SchemaError, match="'n'"):
        pipeline.run(build_plan(load_job(write_pg_job(tmp_path, "bad", reader, 32, pg_db.connection, 4))))
    assert iceberg_table(tmp_path) is None
    assert not list((tmp_path / "warehouse").rglob("*.parquet"))
    assert wait_no_sessions(pg_db) == 0


def test_a_failing_partition_among_32_run_3_at_a_time_fails_the_run(tmp_path):
    """32 partitions, 3 at a time (read_mb 0.4): the failure of one still fails the run and commits nothing."""
    options = {"rows": 32_000, "partitions": 32, "marker": str(tmp_path / "m"), "error": "RuntimeError"}
    job = tmp_path / "job.yaml"
    job.write_text(
        textwrap.dedent(
            f"""\
            name: flaky-partitions
            source:
              connector: custom
              parallelism: 32
              reader: {{implementation: "{SUPPORT}:FlakyPartitionedReader", options: {json.dumps(options)}}}
            target: {{connector: iceberg, table: raw.items}}
            engine: {{batch_size: 1000, read_mb: 0.4}}
            """
        )
    )
    attempts: list = []
    with pytest.raises(SourceError, match="in partition ids 31000-31999 after 1 batches: RuntimeError"):
        run_job(load_job(job), attempts=attempts)
    assert len(attempts) == 1
    assert custom_iceberg_table(tmp_path) is None
