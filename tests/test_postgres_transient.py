"""A PostgreSQL reader whose connection is killed mid-read (``pg_terminate_backend``) is retried.

The backend running the reader's query is terminated by an administrator while rows
flow (SQLSTATE 57P01, or a connection lost without a SQLSTATE): the error is transient,
the engine retries, and the target holds every source row exactly once. A terminal
error (a syntax error, SQLSTATE 42601) is not retried.
"""

from __future__ import annotations

import json
import textwrap
import threading
import time
from pathlib import Path

import pytest
from pyiceberg.catalog import load_catalog

from support.cli import dativo
from support.process_plugins import GO_READER

ROWS = 400
READERS = {
    "postgres-adbc": "{implementation: postgres-adbc}",
    "postgres-psycopg": "{implementation: postgres-psycopg}",
    "postgres-rs": "{implementation: postgres-rs}",
    # A process plugin: the transient flag of its error record (docs/process-protocol.md) decides.
    "go-process": f'{{type: process, command: ["{GO_READER}"], source_plan: true, sandbox: {{network: true}}}}',
}
# Every row waits a little, so the query is still running when it is terminated.
SLOW_QUERY = "SELECT id, name FROM items WHERE length(pg_sleep(0.005)::text) = 0"


def _job(tmp_path: Path, db, reader: str, query: str = SLOW_QUERY) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: terminated
            source:
              connector: postgres
              connection: {json.dumps(db.connection)}
              query: "{query}"
              reader: {READERS[reader]}
            target: {{connector: iceberg, table: raw.items}}
            engine: {{batch_size: 50, retry: {{max_attempts: 3, initial_delay_s: 0.05, max_delay_s: 0.2}}}}
            """
        )
    )
    return path


def _terminate_first_reader(db, stop: threading.Event, killed: list[int]) -> None:
    """Once the reader's transaction has been reading for half a second (about 100 rows), terminate it."""
    while not stop.is_set():
        rows = db.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND state IN ('active', 'idle in transaction') AND now() - xact_start > interval '0.5 s' "
            "AND (query LIKE 'FETCH%' OR query LIKE '%pg_sleep(0.005)%') AND query NOT LIKE '%pg_stat_activity%'"
        )
        if rows:
            assert db.execute("SELECT pg_terminate_backend(%s)", (rows[0][0],)) == [(True,)]
            killed.append(rows[0][0])
            return
        time.sleep(0.02)


def _target_ids(job_dir: Path) -> list[int]:
    warehouse = job_dir / "warehouse"
    catalog = load_catalog(
        "dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )
    return sorted(catalog.load_table("raw.items").scan().to_arrow().column("id").to_pylist())


@pytest.mark.parametrize("reader", list(READERS))
def test_a_backend_terminated_mid_read_is_retried_and_every_row_lands_once(tmp_path, pg_db, reader):
    pg_db.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
    pg_db.execute(f"INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, {ROWS}) g")
    job = _job(tmp_path, pg_db, reader)
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_terminate_first_reader, args=(pg_db, stop, killed), daemon=True)
    killer.start()
    try:
        result = dativo("run", job, "--summary-json", tmp_path / "summary.json")
    finally:
        stop.set()
        killer.join(timeout=10)
    assert killed, f"the reader's query was never seen running; the run said: {result.stderr[-800:]}"
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["attempt"] == 2 and summary["rows"] == ROWS
    assert _target_ids(tmp_path) == list(range(1, ROWS + 1))


def test_a_syntax_error_is_terminal_and_not_retried(tmp_path, pg_db):
    pg_db.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
    job = _job(tmp_path, pg_db, "postgres-adbc", query="SELEC id FROM items")
    result = dativo("run", job, "--summary-json", tmp_path / "summary.json")
    assert result.returncode == 1
    assert "SQLSTATE 42601" in result.stderr or "syntax error" in result.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["attempt"] == 1
