"""The streams of one run share PostgreSQL connections (docs/many-tables.md, "Connections").

Against the suite's real PostgreSQL server, counted by the server itself
(``pg_stat_database.sessions`` of the source database, ``pg_stat_activity``).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from pyiceberg.catalog import load_catalog

import dativo
from dativo.core.shared import run_scope
from dativo.postgres_sdk import build_connection, lease_psycopg, shared_connections

TABLES = 20
ROWS = 300
BAD = "public.t_bad"  # a view whose query fails mid-read (division by zero at row 150)


def make_tables(db, start: int = 1, rows: int = ROWS, tables: int = TABLES) -> None:
    sql = []
    for index in range(tables):
        if start == 1:
            sql.append(f"CREATE TABLE t{index:02d} (id bigint PRIMARY KEY, label text, updated_at timestamptz);")
        sql.append(
            f"INSERT INTO t{index:02d} SELECT g, 'row ' || g, timestamptz '2024-01-01 00:00+00' + g * interval '1 s' "
            f"FROM generate_series({start}, {start + rows - 1}) g;"
        )
    db.psql("\n".join(sql))


def write_job(tmp_path: Path, connection: dict, reader: str) -> Path:
    path = tmp_path / "lake.yaml"
    path.write_text(
        "name: pooled\n"
        "defaults:\n"
        "  source:\n"
        "    connector: postgres\n"
        f"    connection: {json.dumps(connection)}\n"
        f"    reader: {{implementation: {reader}}}\n"
        "    incremental: {cursor: updated_at}\n"
        "  target:\n"
        "    connector: iceberg\n"
        '    table: "raw.{table}"\n'
        "streams:\n"
        "  public.*: {}\n"
        "engine:\n"
        "  max_concurrent_streams: 4\n"
        "  batch_size: 100\n"
        "  retry: {max_attempts: 1}\n"
    )
    return path


def sessions(db) -> int:
    """Sessions the server has seen on the database (counted when each ends; asked from database postgres)."""
    time.sleep(0.3)
    return int(db.server.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", (db.name,))[0][0])


def open_sessions(db) -> int:
    deadline = time.monotonic() + 5
    while True:
        count = int(db.server.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (db.name,))[0][0])
        if count == 0 or time.monotonic() > deadline:
            return count
        time.sleep(0.1)


def ids_in(job_dir: Path, table: str) -> list[int]:
    warehouse = job_dir / "warehouse"
    uri = f"sqlite:///{warehouse / 'catalog.db'}"
    catalog = load_catalog("dativo", type="sql", uri=uri, warehouse=warehouse.as_uri())
    return sorted(catalog.load_table(table).scan(selected_fields=("id",)).to_arrow().column("id").to_pylist())


def assert_tables_equal_source(db, job_dir: Path, tables: int = TABLES) -> None:
    for index in range(tables):
        source = [row[0] for row in db.execute(f"SELECT id FROM t{index:02d} ORDER BY id")]
        assert ids_in(job_dir, f"raw.t{index:02d}") == source, f"t{index:02d}"


# Sessions this job's first run opened before connections were shared (measured on the code before the
# change, 21 streams with t_bad, 4 at a time): postgres-adbc 85 (per stream: a describe connection, a
# planning connection, and ADBC's read connection, which opens two sessions), postgres-rs 64 (describe,
# planning, its native connection), postgres-psycopg 22 (one per stream); each plus one listing the tables.
# Shared (measured after): postgres-adbc 13, postgres-psycopg 5, postgres-rs 26 (postgres-rs keeps one
# native read connection per stream; the psycopg and ADBC ones are about one per running stream).
BEFORE = {"postgres-adbc": 85, "postgres-rs": 64, "postgres-psycopg": 22}
BOUND = {"postgres-adbc": 24, "postgres-rs": TABLES + 10, "postgres-psycopg": 8}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("reader", ["postgres-adbc", "postgres-psycopg", "postgres-rs"])
def test_streams_share_connections_and_a_failing_stream_fails_alone(tmp_path, pg_db, reader):
    make_tables(pg_db)
    pg_db.execute(
        "CREATE VIEW t_bad AS SELECT g::bigint AS id, 1 / (150 - g) AS x, "
        "timestamptz '2024-01-01 00:00+00' + g * interval '1 s' AS updated_at FROM generate_series(1, 300) g"
    )
    job = write_job(tmp_path, pg_db.connection, reader)

    before = sessions(pg_db)
    first = dativo.run(job, run_id="day-1")
    opened = sessions(pg_db) - before
    assert first.failed == [BAD], [(s.name, s.error) for s in first.streams if not s.ok]
    assert "division by zero" in (first.stream(BAD).error or "")
    assert sum(1 for s in first.streams if s.ok and s.rows == ROWS) == TABLES
    assert opened <= BOUND[reader] < BEFORE[reader], opened
    assert open_sessions(pg_db) == 0  # the run closed every connection, shared or not
    assert_tables_equal_source(pg_db, tmp_path)

    # Day two: new rows everywhere, and the failing view fixed: every stream succeeds, incrementally.
    make_tables(pg_db, start=ROWS + 1, rows=25)
    pg_db.execute(
        "CREATE OR REPLACE VIEW t_bad AS SELECT g::bigint AS id, 1 / (1000 - g) AS x, "
        "timestamptz '2024-01-01 00:00+00' + g * interval '1 s' AS updated_at FROM generate_series(1, 300) g"
    )
    before = sessions(pg_db)
    second = dativo.run(job, run_id="day-2")
    opened = sessions(pg_db) - before
    assert second.failed == [], [(s.name, s.error) for s in second.streams if not s.ok]
    assert {s.name: s.rows for s in second.streams} == {
        **{f"public.t{index:02d}": 25 for index in range(TABLES)},
        BAD: 300,
    }
    assert opened <= BOUND[reader], opened
    assert open_sessions(pg_db) == 0
    assert_tables_equal_source(pg_db, tmp_path)


def _terminate_the_sleeper(db, stop: threading.Event, killed: list[int]) -> None:
    """Terminate the backend reading t_slow (the only one in pg_sleep) once it has read for a moment."""
    while not stop.is_set():
        rows = db.server.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event = 'PgSleep' "
            "AND now() - query_start > interval '0.3 s'",
            (db.name,),
        )
        if rows:
            db.server.execute("SELECT pg_terminate_backend(%s)", (rows[0][0],))
            killed.append(rows[0][0])
            return
        time.sleep(0.02)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("reader", ["postgres-adbc", "postgres-psycopg", "postgres-rs"])
def test_a_stream_whose_backend_is_terminated_mid_read_fails_alone(tmp_path, pg_db, reader):
    make_tables(pg_db, tables=8)
    pg_db.execute(
        "CREATE VIEW t_slow AS SELECT g::bigint AS id, "
        "timestamptz '2024-01-01 00:00+00' + g * interval '1 s' AS updated_at "
        "FROM generate_series(1, 100) g WHERE length(pg_sleep(0.02)::text) = 0"
    )
    job = write_job(tmp_path, pg_db.connection, reader)  # engine.retry: one attempt, so the stream fails
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_terminate_the_sleeper, args=(pg_db, stop, killed), daemon=True)
    killer.start()
    try:
        first = dativo.run(job, run_id="day-1")
    finally:
        stop.set()
        killer.join(timeout=10)
    assert killed, "t_slow's query was never seen running"
    assert first.failed == ["public.t_slow"], [(s.name, s.error) for s in first.streams if not s.ok]
    assert sum(1 for s in first.streams if s.ok and s.rows == ROWS) == 8
    assert open_sessions(pg_db) == 0
    assert_tables_equal_source(pg_db, tmp_path, tables=8)

    second = dativo.run(job, run_id="day-2")  # nothing kills it now: the failed stream catches up
    assert second.failed == [], [(s.name, s.error) for s in second.streams if not s.ok]
    assert {s.name: s.rows for s in second.streams} == {
        **{f"public.t{i:02d}": 0 for i in range(8)},
        "public.t_slow": 100,
    }
    assert open_sessions(pg_db) == 0


def test_a_shared_connection_ended_by_the_server_is_replaced_not_reused(pg_db):
    info = build_connection(pg_db.connection)
    with run_scope(2) as scope:
        leased = lease_psycopg(info)
        first_pid = leased.conn.info.backend_pid
        leased.release(reusable=True)
        # The server ends the idle pooled session (an administrator, idle_session_timeout, a restart).
        pg_db.server.execute("SELECT pg_terminate_backend(%s)", (first_pid,))
        again = lease_psycopg(info)
        assert again.conn.info.backend_pid != first_pid
        assert again.conn.execute("SELECT 41 + 1").fetchone() == (42,)
        # A connection left mid-transaction, or released after an error, is closed rather than shared.
        again.conn.execute("SELECT 1")
        again.release(reusable=False)
        assert again.conn.closed
        pool = shared_connections()
        assert pool is not None and pool.opened == 2 and pool.reused == 0
        third = lease_psycopg(info)
        third.release(reusable=True)
    assert scope.closed and third.conn.closed  # the run's end closes the idle connections
    assert shared_connections() is None  # outside a run every lease is a connection of its own
    own = lease_psycopg(info)
    own.release(reusable=True)
    assert own.conn.closed
    assert open_sessions(pg_db) == 0


def test_an_idle_shared_adbc_connection_ended_by_the_server_is_replaced(pg_db):
    import adbc_driver_postgresql.dbapi as dbapi

    from dativo.connectors.postgres.adbc import _adbc_alive
    from dativo.postgres_sdk import lease

    conninfo = build_connection(pg_db.connection).conninfo

    def adbc_lease():
        return lease(
            "adbc",
            conninfo,
            lambda: dbapi.connect(conninfo, autocommit=True),
            close=lambda c: c.close(),
            alive=_adbc_alive,
        )

    def pid(conn) -> int:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            return int(cur.fetchone()[0])

    with run_scope(2):
        first = adbc_lease()
        first_pid = pid(first.conn)
        first.release(reusable=True)
        reused = adbc_lease()
        assert pid(reused.conn) == first_pid  # a clean connection is shared
        reused.release(reusable=True)
        pg_db.server.execute("SELECT pg_terminate_backend(%s)", (first_pid,))
        replaced = adbc_lease()
        assert pid(replaced.conn) != first_pid
        replaced.release(reusable=True)
    assert open_sessions(pg_db) == 0
