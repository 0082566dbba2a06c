"""Consistent parallel partitioned reads (ADBC and Rust readers) against a real PostgreSQL server."""

from __future__ import annotations

import json
import textwrap
import threading
import time

import pyarrow as pa
import pytest
from dativo_postgres_rs import RustPostgresReader
from pyiceberg.catalog import load_catalog

from dativo.config.loader import load_job
from dativo.connectors.postgres.adbc import AdbcPostgresReader
from dativo.engine import pipeline
from dativo.engine.plan import build_plan
from dativo.errors import SchemaError, SourceError
from dativo.sdk import PartitionedReader
from test_postgres_readers import EXPECTED_SCHEMA, FIDELITY, create_fidelity_table, norm

PARTITIONED = [AdbcPostgresReader, RustPostgresReader]
IDS = ["adbc", "rust"]


@pytest.fixture(params=PARTITIONED, ids=IDS)
def reader_cls(request):
    return request.param


def open_reader(cls, connection, **source):
    reader = cls()
    reader.initialize({"connector": "postgres", "connection": connection, "options": {}} | source)
    assert isinstance(reader, PartitionedReader)
    return reader


def sessions(db) -> int:
    return db.server.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (db.name,)
    )[0][0]


def wait_no_sessions(db) -> int:
    deadline = time.monotonic() + 5
    while sessions(db) and time.monotonic() < deadline:
        time.sleep(0.05)
    return sessions(db)


@pytest.fixture
def big(pg_db):
    pg_db.execute(
        "CREATE TABLE big AS SELECT g::bigint AS id, md5(g::text) AS h, (g % 1000)::numeric(10,2) AS n "
        "FROM generate_series(1, 60000) g"
    )
    return pg_db


def test_partitioned_fidelity_matches_single_stream(reader_cls, pg_db):
    create_fidelity_table(pg_db)
    names = ", ".join(c.name for c in FIDELITY)
    pg_db.execute(f"CREATE TABLE fid AS SELECT g AS copy, rowno, {names} FROM fidelity, generate_series(1, 300) g")
    connection = dict(pg_db.connection, options="-c TimeZone=America/Los_Angeles")
    reader = open_reader(reader_cls, connection, table="fid")
    try:
        whole = pa.Table.from_batches(list(reader.read_batch(500)), schema=reader.get_schema())
        partitions = reader.plan_partitions(3)
        assert len(partitions) == 3
        assert all("snapshot" in p.spec for p in partitions)
        parts = [b for p in partitions for b in reader.read_partition(p, 500)]
    finally:
        reader.close()
    assert wait_no_sessions(pg_db) == 0
    split = pa.Table.from_batches(parts, schema=whole.schema)
    assert split.schema.remove(0).remove(0) == EXPECTED_SCHEMA
    assert split.num_rows == whole.num_rows == 1500
    keys = [("copy", "ascending"), ("rowno", "ascending")]
    assert norm(split.sort_by(keys).to_pylist()) == norm(whole.sort_by(keys).to_pylist())


def test_parallel_read_sees_one_snapshot_despite_concurrent_writes(reader_cls, big):
    expected = big.execute("SELECT sum(id), count(*), sum(length(h)) FROM big")[0]
    reader = open_reader(reader_cls, big.connection, table="big")
    try:
        partitions = reader.plan_partitions(2)
        assert len(partitions) == 2
        first = reader.read_partition(partitions[0], 1000)
        got = [next(first)]
        # Another connection changes every page while the read runs; none of it may show.
        big.execute(
            "UPDATE big SET id = -id, h = 'changed' WHERE id % 3 = 0; DELETE FROM big WHERE id % 3 = 1; "
            "INSERT INTO big SELECT g, 'new', 1 FROM generate_series(1000001, 1020000) g"
        )
        got += list(first)
        got += list(reader.read_partition(partitions[1], 1000))
    finally:
        reader.close()
    table = pa.Table.from_batches(got)
    actual = (
        pa.compute.sum(table.column("id")).as_py(),
        table.num_rows,
        pa.compute.sum(pa.compute.utf8_length(table.column("h"))).as_py(),
    )
    assert actual == (int(expected[0]), expected[1], int(expected[2]))
    assert big.execute("SELECT count(*) FROM big WHERE h = 'new'")[0][0] == 20000  # the writes did happen
    assert wait_no_sessions(big) == 0


def test_connection_dropped_mid_partition_fails_cleanly(reader_cls, big):
    # Much more than the socket buffers hold, so the server is still sending when it is killed.
    big.execute("INSERT INTO big SELECT g, md5(g::text) || md5(g::text), 1 FROM generate_series(60001, 400000) g")
    reader = open_reader(reader_cls, big.connection, table="big")
    try:
        partitions = reader.plan_partitions(2)
        stream = reader.read_partition(partitions[0], 100)
        next(stream)
        killed = big.server.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND query LIKE 'COPY%%'",
            (big.name,),
        )
        assert killed == [(True,)]
        with pytest.raises(SourceError) as info:
            for _ in stream:
                pass
        assert info.value.transient
        assert "terminat" in str(info.value) or "lost the connection" in str(info.value)
    finally:
        reader.close()
    assert wait_no_sessions(big) == 0


def write_job(tmp_path, table: str, reader: str, parallelism: int | None, connection: dict) -> object:
    path = tmp_path / "job.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: par
            source:
              connector: postgres
              connection: {json.dumps(connection)}
              table: {table}
              {"" if parallelism is None else f"parallelism: {parallelism}"}
              reader: {{implementation: {reader}}}
            target:
              connector: iceberg
              table: raw.par
            engine: {{batch_size: 5000}}
            """
        )
    )
    return path


def iceberg_table(job_dir):
    warehouse = job_dir / "warehouse"
    catalog = load_catalog(
        "dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )
    return catalog.load_table("raw.par") if catalog.table_exists("raw.par") else None


@pytest.mark.parametrize("reader", ["postgres-adbc", "postgres-rs"])
def test_engine_parallel_read_into_iceberg_in_one_snapshot(tmp_path, big, reader):
    summary = pipeline.run(build_plan(load_job(write_job(tmp_path, "big", reader, 3, big.connection))))
    assert summary.status == "succeeded" and summary.rows == 60000
    table = iceberg_table(tmp_path)
    assert len(table.snapshots()) == 1
    data = table.scan().to_arrow()
    assert data.num_rows == 60000
    assert pa.compute.sum(data.column("id")).as_py() == 60000 * 60001 // 2
    assert wait_no_sessions(big) == 0


@pytest.mark.parametrize("reader", ["postgres-adbc", "postgres-rs"])
def test_failing_partition_fails_run_commits_nothing_and_closes_connections(tmp_path, pg_db, reader):
    # A value no reader may accept, in the last pages only: one partition fails, the others are cancelled.
    pg_db.execute(
        "CREATE TABLE bad AS SELECT g::bigint AS id, md5(g::text) AS h, g::numeric AS n "
        "FROM generate_series(1, 60000) g;"
        "UPDATE bad SET n = 'NaN' WHERE id = 59990"
    )
    with pytest.raises(SchemaError, match="'n'"):
        pipeline.run(build_plan(load_job(write_job(tmp_path, "bad", reader, 3, pg_db.connection))))
    assert iceberg_table(tmp_path) is None
    assert not list((tmp_path / "warehouse").rglob("*.parquet"))
    assert wait_no_sessions(pg_db) == 0


@pytest.mark.parametrize("kill", ["pg_cancel_backend", "pg_terminate_backend"])
@pytest.mark.parametrize("reader", ["postgres-adbc", "postgres-rs"])
def test_server_error_in_one_partition_fails_run_cleanly(tmp_path, big, reader, kill):
    """A query cancelled (or a connection killed) in one running partition: the run fails, nothing is committed."""
    big.execute("INSERT INTO big SELECT g, md5(g::text) || md5(g::text), 1 FROM generate_series(60001, 400000) g")
    job = write_job(tmp_path, "big", reader, 2, big.connection)
    job.write_text(job.read_text().replace("batch_size: 5000", "batch_size: 1000, queue_size: 1"))
    plan = build_plan(load_job(job))
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            pipeline.run(plan)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    hit: list[tuple[bool]] = []
    deadline = time.monotonic() + 30
    while not hit and worker.is_alive() and time.monotonic() < deadline:
        hit = big.server.execute(
            f"SELECT {kill}(pid) FROM pg_stat_activity WHERE datname = %s AND query LIKE 'COPY%%ctid%%' LIMIT 1",
            (big.name,),
        )
        time.sleep(0.01)
    worker.join(60)
    assert hit == [(True,)], "no partition COPY was seen running"
    assert len(outcome) == 1 and isinstance(outcome[0], SourceError), outcome
    message = str(outcome[0])
    assert "canceling statement" in message or "terminat" in message or "lost the connection" in message
    assert iceberg_table(tmp_path) is None
    assert not list((tmp_path / "warehouse").rglob("*.parquet"))
    assert wait_no_sessions(big) == 0
