"""50 PostgreSQL tables of mixed types in one job (``public.*``): one process, 50 commits, incremental reruns,
one failing table that does not undo the others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyiceberg.catalog import load_catalog

import dativo

from support.cli import dativo as cli

TABLES = 50
ROWS = 120
BROKEN = "public.t17"  # has no updated_at column: its incremental read cannot start
# Column sets the tables rotate through, so the 50 tables hold every common kind of type.
COLUMNS = [
    ("amount numeric(12,2), label text", "round((g * 1.25)::numeric, 2), 'label ' || g"),
    ("flag boolean, day date", "g % 2 = 0, date '2024-01-01' + g"),
    ("doc jsonb, uid uuid", "jsonb_build_object('g', g), md5(g::text)::uuid"),
    ("ratio double precision, tags int[]", "g / 7.0, ARRAY[g, g + 1]"),
    ("blob bytea, small smallint", "decode(md5(g::text), 'hex'), (g % 100)::smallint"),
]


def make_tables(db, start: int = 1, rows: int = ROWS, tables: range = range(TABLES)) -> None:
    sql = []
    for index in tables:
        columns, values = COLUMNS[index % len(COLUMNS)]
        name = f"t{index:02d}"
        cursor = "" if f"public.{name}" == BROKEN else ", updated_at timestamptz"
        cursor_value = (
            "" if f"public.{name}" == BROKEN else ", timestamptz '2024-01-01 00:00+00' + g * interval '1 minute'"
        )
        if start == 1:
            sql.append(f"CREATE TABLE {name} (id bigint PRIMARY KEY, {columns}{cursor});")
        sql.append(
            f"INSERT INTO {name} SELECT g, {values}{cursor_value} FROM generate_series({start}, {start + rows - 1}) g;"
        )
    if start == 1:
        sql.append("CREATE TABLE skip_me (id int); CREATE VIEW not_a_stream AS SELECT 1 AS one;")
    db.psql("\n".join(sql))


def write_job(tmp_path: Path, connection: dict) -> Path:
    path = tmp_path / "lake.yaml"
    path.write_text(
        "name: pg_lake\n"
        "defaults:\n"
        "  source:\n"
        "    connector: postgres\n"
        f"    connection: {json.dumps(connection)}\n"
        "    incremental: {cursor: updated_at}\n"
        "  target:\n"
        "    connector: iceberg\n"
        '    table: "raw.{schema}_{table}"\n'
        "streams:\n"
        "  public.*:\n"
        "    exclude: [public.skip_*, not_a_stream]\n"
        "engine:\n"
        "  max_concurrent_streams: 4\n"
    )
    return path


def rows_in(job_dir: Path, table: str) -> int:
    warehouse = job_dir / "warehouse"
    uri = f"sqlite:///{warehouse / 'catalog.db'}"
    catalog = load_catalog("dativo", type="sql", uri=uri, warehouse=warehouse.as_uri())
    return catalog.load_table(table).scan().to_arrow().num_rows


@pytest.mark.timeout(900)
def test_fifty_tables_one_process_incremental_and_one_failure(tmp_path, pg_db):
    make_tables(pg_db)
    job = write_job(tmp_path, pg_db.connection)

    first = dativo.run(job, run_id="run-1")
    assert len(first.streams) == TABLES
    assert first.failed == [BROKEN]
    assert "updated_at" in (first.stream(BROKEN).error or "")
    committed = [s for s in first.streams if s.ok]
    assert len(committed) == TABLES - 1 and all(s.rows == ROWS and s.snapshot_id for s in committed)
    assert all(s.state and s.state["cursor_column"] == "updated_at" and s.state["cursor"] for s in committed)
    for name in ("raw.public_t00", "raw.public_t01", "raw.public_t02", "raw.public_t03", "raw.public_t49"):
        assert rows_in(tmp_path, name) == ROWS

    make_tables(pg_db, start=ROWS + 1, rows=10, tables=range(4))  # new rows in t00..t03 only
    second = dativo.run(job, run_id="run-2")
    moved = {s.name: s.rows for s in second.streams if s.rows}
    assert moved == {"public.t00": 10, "public.t01": 10, "public.t02": 10, "public.t03": 10}
    assert second.failed == [BROKEN], [(s.name, s.error) for s in second.streams if not s.ok][:3]
    assert rows_in(tmp_path, "raw.public_t01") == ROWS + 10 and rows_in(tmp_path, "raw.public_t04") == ROWS
    assert rows_in(tmp_path, "raw.public_t03") == ROWS + 10  # an int[] column appends to its list<int> column

    # The CLI: the same run id again applies nothing, the exit code and one error line name the failed stream.
    again = cli("run", job, "--run-id", "run-2", "--quiet", "--stream", "public.t1*")
    assert again.returncode == 1
    errors = [line for line in again.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: stream {BROKEN}: "), again.stderr
    assert rows_in(tmp_path, "raw.public_t10") == ROWS
