"""The one pump (dativo.core.pump): one stream or many partitions, the same conversion and the same errors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from pyiceberg.catalog import load_catalog

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
