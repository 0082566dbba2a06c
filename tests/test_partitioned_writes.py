"""Partitioned Iceberg writes: one byte budget across partitions, batches split once, few files per partition."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.io.pyarrow import pyarrow_to_schema
from pyiceberg.transforms import BucketTransform
from pyiceberg.types import LongType

from dativo.config.loader import load_job
from dativo.engine.retry import run_job
from dativo.targets._parquet import ParquetSettings
from dativo.targets.iceberg import partitioning
from dativo.targets.iceberg.partitioning import PartitionedFiles, build_spec

from support.iceberg_fixtures import embedded_catalog

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False).with_metadata({b"PARQUET:field_id": b"1"}),
        pa.field("s", pa.string()).with_metadata({b"PARQUET:field_id": b"2"}),
        pa.field("f", pa.float64()).with_metadata({b"PARQUET:field_id": b"3"}),
    ]
)
ICEBERG = pyarrow_to_schema(SCHEMA)


def batch(start: int, n: int) -> pa.RecordBatch:
    ids = list(range(start, start + n))
    return pa.record_batch(
        [pa.array(ids, pa.int64()), pa.array([f"row-{i:08d}" for i in ids]), pa.array([i / 7 for i in ids])],
        schema=SCHEMA,
    )


def partitioned(tmp_path: Path, buckets: int, row_group_bytes: int) -> PartitionedFiles:
    opened = iter(range(10**6))  # a partition opened again after eviction restarts its writer's index

    def open_file(index: int, key: Any) -> tuple[str, Any]:
        path = tmp_path / f"b{key.partition[0]}-{next(opened)}.parquet"
        return str(path), pa.OSFile(str(path), "wb")

    settings = ParquetSettings(row_group_bytes=row_group_bytes)
    return PartitionedFiles(SCHEMA, build_spec([f"bucket({buckets}, id)"], ICEBERG), ICEBERG, open_file, settings)


def bucket_of(buckets: int, ids: pa.Array) -> list[int]:
    return BucketTransform(buckets).pyarrow_transform(LongType())(ids).to_pylist()


def check_files(files: PartitionedFiles, written: list[Any], buckets: int, rows: int) -> Counter[int]:
    """Every row once, in its partition's files, in arrival order; returns the files per partition."""
    seen: list[int] = []
    per_partition: Counter[int] = Counter()
    for file in written:
        ids = pq.read_table(file.path).column("id").combine_chunks()
        partition = files.partition_of[file.path][0]
        assert set(bucket_of(buckets, ids)) == {partition}, file.path
        assert ids.to_pylist() == sorted(ids.to_pylist())  # arrival order kept within a partition
        per_partition[partition] += 1
        seen.extend(ids.to_pylist())
    assert sorted(seen) == list(range(rows))  # exactly once
    return per_partition


def test_buffered_bytes_stay_within_one_budget_whatever_the_partition_count(tmp_path):
    """64 partitions at 64 KiB row groups used to buffer up to 64 x 64 KiB; the budget is 4 x 64 KiB."""
    files = partitioned(tmp_path, 64, 64 * 1024)
    assert files.budget_bytes == 4 * 64 * 1024
    baseline = pa.total_allocated_bytes()
    peak_buffered = peak_allocated = 0
    for start in range(0, 49 * 4096, 4096):
        piece = batch(start, 4096)
        files.write(piece)
        peak_buffered = max(peak_buffered, files.buffered_bytes)
        # What Arrow holds between writes: the budget, this batch and its split copy, and each
        # open file's encoder state (~8.5 KB for these 3 columns), not a row group per partition.
        peak_allocated = max(peak_allocated, pa.total_allocated_bytes() - baseline - piece.nbytes)
        del piece
    assert 0 < peak_buffered <= files.budget_bytes
    assert peak_allocated <= files.budget_bytes + 2 * batch(0, 4096).nbytes + 64 * 16 * 1024
    written = files.close()
    per_partition = check_files(files, written, 64, 49 * 4096)
    assert len(per_partition) == 64 and set(per_partition.values()) == {1}  # one file per partition
    groups = [pq.ParquetFile(file.path).metadata.num_row_groups for file in written]
    # Row groups stay as large as the budget allows: about 2 x budget / partitions each, not one per batch.
    assert sum(groups) < 49 * 64 / 4


def test_a_batch_spanning_more_partitions_than_the_open_limit(tmp_path, monkeypatch):
    """Past the open-file limit a partition's file is finished and a later row starts a new one: rows land once."""
    monkeypatch.setattr(partitioning, "MAX_OPEN_PARTITIONS", 5)
    files = partitioned(tmp_path, 16, 1024 * 1024)
    for start in range(0, 30_000, 3000):
        files.write(batch(start, 3000))
    per_partition = check_files(files, files.close(), 16, 30_000)
    assert len(per_partition) == 16
    assert max(per_partition.values()) <= 10  # at most one file per batch per partition


def test_the_default_open_limit_keeps_one_file_per_partition_of_bucket_64(tmp_path):
    files = partitioned(tmp_path, 64, 16 * 1024 * 1024)
    for start in range(0, 50_000, 5000):
        files.write(batch(start, 5000))
    per_partition = check_files(files, files.close(), 64, 50_000)
    assert len(per_partition) == 64 and set(per_partition.values()) == {1}


@pytest.fixture
def events(pg_db: Any) -> Any:
    pg_db.psql(
        "CREATE TABLE events (id bigint PRIMARY KEY, kind text, body text);"
        "INSERT INTO events SELECT g, (ARRAY['a', 'b', NULL])[1 + g % 3], repeat(md5(g::text), 4) "
        "FROM generate_series(1, 20000) g;"
    )
    return pg_db


def test_a_bucketed_run_reads_back_every_row_once_in_few_files(tmp_path, events):
    """A real run into bucket(32, id) x identity(kind) (96 partitions), budget far below a row group each."""
    target = {
        "connector": "iceberg",
        "table": "raw.events",
        "partition_by": ["bucket(32, id)", "identity(kind)"],
        "options": {"row_group_size_mb": 0.05},
    }
    path = tmp_path / "events.yaml"
    path.write_text(
        "name: events\nsource:\n  connector: postgres\n"
        f"  connection: {json.dumps(events.connection)}\n  table: public.events\n"
        f"target: {json.dumps(target)}\n"
    )
    run_job(load_job(path))
    table = embedded_catalog(tmp_path).load_table("raw.events")
    data = table.scan().to_arrow()
    assert sorted(data.column("id").to_pylist()) == list(range(1, 20001))
    spec, schema = table.spec(), table.schema()
    per_partition: Counter[tuple[Any, ...]] = Counter()
    row_groups = 0
    for task in table.scan().plan_files():
        with table.io.new_input(task.file.file_path).open() as stream:
            rows = pq.read_table(stream)
        with table.io.new_input(task.file.file_path).open() as stream:
            row_groups += pq.ParquetFile(stream).metadata.num_row_groups
        partition = tuple(task.file.partition[i] for i in range(len(spec.fields)))
        for position, field in enumerate(spec.fields):
            source = schema.find_field(field.source_id)
            kernel = field.transform.pyarrow_transform(source.field_type)
            assert set(kernel(rows.column(source.name).combine_chunks()).to_pylist()) == {partition[position]}
        per_partition[partition] += 1
    assert len(per_partition) == 32 * 3  # every bucket x (a, b, null)
    assert set(per_partition.values()) == {1}
    assert row_groups > len(per_partition)  # the budget wrote row groups into open files
