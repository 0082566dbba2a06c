"""Change data capture from PostgreSQL into Iceberg (issue 17), against the real server and catalog."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from pyiceberg.catalog import load_catalog

from dativo.config.loader import load_job
from dativo.engine.retry import run_job
from dativo.errors import SchemaError

from support.cli import assert_one_line_error, dativo


def catalog(job_dir: Path):
    warehouse = job_dir / "warehouse"
    warehouse.mkdir(exist_ok=True)
    return load_catalog("dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri())


def target_rows(job_dir: Path, columns=("id", "name", "amount"), table: str = "raw.items") -> list[tuple]:
    if not catalog(job_dir).table_exists(table):
        return []
    data = catalog(job_dir).load_table(table).scan().to_arrow().sort_by("id")
    return [tuple(row[c] for c in columns) for row in data.to_pylist()]


def source_rows(db, columns=("id", "name", "amount")) -> list[tuple]:
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(f"SELECT {', '.join(columns)} FROM items ORDER BY id").fetchall()]


def job_file(job_dir: Path, db, *, name: str = "items", cdc: str = "{}", target_extra: str = "") -> Path:
    path = job_dir / f"{name}.yaml"
    path.write_text(
        f"name: {name}\n"
        "source:\n  connector: postgres\n"
        f"  connection: {json.dumps(db.connection)}\n"
        f"  table: public.items\n  cdc: {cdc}\n"
        "target:\n  connector: iceberg\n  table: raw.items\n" + target_extra + "engine: {retry: {max_attempts: 1}}\n"
    )
    return path


def items(db, rows: int = 100) -> None:
    db.psql(
        "CREATE TABLE items (id int PRIMARY KEY, name text, amount numeric(10,2));"
        "ALTER TABLE items REPLICA IDENTITY FULL;"
        f"INSERT INTO items SELECT g, 'item ' || g, g * 1.5 FROM generate_series(1, {rows}) g;"
    )


def test_initial_load_then_changes(tmp_path, pg_db):
    items(pg_db)
    path = job_file(tmp_path, pg_db)
    first = run_job(load_job(path))
    assert first.status == "succeeded", first.error
    assert target_rows(tmp_path) == source_rows(pg_db)
    pg_db.psql(
        "INSERT INTO items VALUES (101, 'new', 1); UPDATE items SET name = 'changed' WHERE id <= 10;"
        "DELETE FROM items WHERE id BETWEEN 50 AND 59; UPDATE items SET id = 1000 WHERE id = 60;"
    )
    second = run_job(load_job(path))
    assert second.status == "succeeded", second.error
    assert target_rows(tmp_path) == source_rows(pg_db)
    third = run_job(load_job(path))
    assert third.rows == 0
    assert target_rows(tmp_path) == source_rows(pg_db)


def test_truncate_empties_the_target_in_the_same_commit(tmp_path, pg_db):
    items(pg_db, 20)
    path = job_file(tmp_path, pg_db)
    run_job(load_job(path))
    pg_db.psql(
        "UPDATE items SET name = 'before' WHERE id = 1; TRUNCATE items;"
        "INSERT INTO items VALUES (7, 'after', 1), (8, 'x', 2); UPDATE items SET name = 'y' WHERE id = 8;"
        "DELETE FROM items WHERE id = 7; INSERT INTO items VALUES (9, 'z', 3);"
    )
    table = catalog(tmp_path).load_table("raw.items")
    before = table.current_snapshot().snapshot_id
    summary = run_job(load_job(path))
    assert summary.target["cdc"]["replaced"] is True
    assert target_rows(tmp_path) == source_rows(pg_db) == [(8, "y", Decimal("2.00")), (9, "z", Decimal("3.00"))]
    table = catalog(tmp_path).load_table("raw.items")
    assert table.current_snapshot().parent_snapshot_id == before  # one commit


def test_soft_deletes_keep_the_row_with_change_columns(tmp_path, pg_db):
    items(pg_db, 5)
    path = job_file(tmp_path, pg_db, cdc="{deletes: soft}")
    run_job(load_job(path))
    pg_db.psql("DELETE FROM items WHERE id = 2; UPDATE items SET name = 'u' WHERE id = 3;")
    run_job(load_job(path))
    rows = {r[0]: r for r in target_rows(tmp_path, ("id", "name", "_deleted", "_cdc_op", "_cdc_lsn", "_cdc_ts"))}
    assert rows[2][2] is True and rows[2][3] == "delete" and rows[2][5] is not None
    assert rows[3][1:4] == ("u", False, "update")
    assert rows[1][2:4] == (False, "snapshot") and rows[1][5] is None
    assert rows[3][4] > rows[1][4]  # change LSNs come after the snapshot's consistent point


def test_status_drop_and_a_lost_slot(tmp_path, pg_db):
    items(pg_db, 10)
    path = job_file(tmp_path, pg_db)
    run_job(load_job(path))
    pg_db.psql("UPDATE items SET name = 'x';")
    status = dativo("cdc", "status", path, "--json")
    assert status.returncode == 0, status.stderr
    facts = json.loads(status.stdout)
    assert facts["exists"] and facts["committed_lsn"] == facts["confirmed_lsn"]
    assert facts["lag_bytes"] > 0 and facts["retained_wal_bytes"] >= facts["lag_bytes"]
    assert facts["seconds_since_last_commit"] >= 0
    dropped = dativo("cdc", "drop", path, "--yes", "--publication")
    assert dropped.returncode == 0, dropped.stderr
    assert pg_db.execute("SELECT count(*) FROM pg_replication_slots") == [(0,)]
    lost = dativo("run", path)
    assert_one_line_error(lost, "replication slot 'dativo_items' does not exist", "changes after LSN", "state reset")
    assert dativo("state", "reset", path, "--yes").returncode == 0
    assert dativo("run", path, "--quiet").returncode == 0
    assert target_rows(tmp_path) == source_rows(pg_db)


def test_parallel_initial_load_reads_partitions_of_the_slot_snapshot(tmp_path, pg_db, caplog):
    items(pg_db, 5000)
    path = job_file(tmp_path, pg_db)
    path.write_text(path.read_text().replace("  cdc: {}\n", "  cdc: {}\n  parallelism: 4\n"))
    with caplog.at_level("INFO", logger="dativo.engine"):
        summary = run_job(load_job(path))
    assert summary.rows == 5000
    assert any("reading in 4 partitions" in record.getMessage() for record in caplog.records)
    assert target_rows(tmp_path) == source_rows(pg_db)
    pg_db.psql("UPDATE items SET name = 'p' WHERE id % 3 = 0; DELETE FROM items WHERE id % 10 = 0;")
    assert run_job(load_job(path)).rows == 1666 + 500  # the changes only, not a re-read
    assert target_rows(tmp_path) == source_rows(pg_db)


def test_columns_added_and_dropped_at_the_source_follow_schema_evolution(tmp_path, pg_db):
    items(pg_db, 6)
    path = job_file(tmp_path, pg_db)
    run_job(load_job(path))
    pg_db.psql(
        "UPDATE items SET name = 'before' WHERE id = 1;"
        "ALTER TABLE items ADD COLUMN note text; UPDATE items SET note = 'n' || id WHERE id IN (2, 3);"
        "INSERT INTO items VALUES (7, 'seven', 7, 'x');"
    )
    run_job(load_job(path))
    columns = ("id", "name", "amount", "note")
    assert target_rows(tmp_path, columns) == source_rows(pg_db, columns)
    pg_db.psql("ALTER TABLE items DROP COLUMN amount; UPDATE items SET name = 'after' WHERE id = 4;")
    run_job(load_job(path))
    got = target_rows(tmp_path, ("id", "name", "note"))
    assert got == source_rows(pg_db, ("id", "name", "note"))  # the dropped column stays in the table (evolve)
    frozen = job_file(tmp_path, pg_db, target_extra="  schema_evolution: {mode: fail}\n")
    pg_db.psql("ALTER TABLE items ADD COLUMN extra int; UPDATE items SET extra = 1 WHERE id = 5;")
    with pytest.raises(SchemaError, match="extra"):
        run_job(load_job(frozen))


def test_max_rows_bounds_each_run_and_later_runs_catch_up(tmp_path, pg_db):
    items(pg_db, 10)
    path = job_file(tmp_path, pg_db, cdc="{max_rows: 12}")
    run_job(load_job(path))
    pg_db.psql("".join(f"UPDATE items SET name = 'r{i}' WHERE id = {i % 10 + 1};" for i in range(30)))
    runs = []
    while True:
        summary = run_job(load_job(path))
        runs.append(summary.rows)
        if not summary.target["cdc"]["more"]:
            break
        assert len(runs) < 20
    assert len(runs) >= 3 and max(runs) <= 12 and sum(runs) == 30, runs
    assert target_rows(tmp_path) == source_rows(pg_db)


def test_unchanged_toasted_values_are_kept(tmp_path, pg_db):
    items(pg_db, 3)
    pg_db.psql(
        "ALTER TABLE items ALTER COLUMN name SET STORAGE EXTERNAL;"  # out of line, uncompressed: surely TOASTed
        "UPDATE items SET name = repeat('x', 100000) || id WHERE id = 2;"
    )
    path = job_file(tmp_path, pg_db)
    run_job(load_job(path))
    pg_db.psql("UPDATE items SET amount = 99 WHERE id = 2; INSERT INTO items VALUES (4, repeat('y', 50000), 4);")
    assert run_job(load_job(path)).rows == 2
    rows = target_rows(tmp_path)
    assert rows == source_rows(pg_db)
    assert rows[1][1] == "x" * 100000 + "2" and rows[1][2] == Decimal("99.00")


def test_a_table_without_primary_key_needs_merge_keys(tmp_path, pg_db):
    pg_db.psql(
        "CREATE TABLE items (id int NOT NULL, name text, amount numeric(10,2));"
        "ALTER TABLE items REPLICA IDENTITY FULL; INSERT INTO items VALUES (1, 'a', 1), (2, 'b', 2);"
    )
    refused = dativo("run", job_file(tmp_path, pg_db))
    assert_one_line_error(refused, "has no primary key", "target.merge.keys")
    path = job_file(tmp_path, pg_db, name="keyed", target_extra="  mode: merge\n  merge: {keys: [id]}\n")
    assert run_job(load_job(path)).status == "succeeded"
    pg_db.psql(
        "UPDATE items SET name = 'c' WHERE id = 1; DELETE FROM items WHERE id = 2;INSERT INTO items VALUES (3, 'd', 3);"
    )
    assert run_job(load_job(path)).rows == 3
    assert target_rows(tmp_path) == source_rows(pg_db)


def test_default_replica_identity_with_fixed_width_columns(tmp_path, pg_db):
    pg_db.psql(
        "CREATE TABLE items (id int PRIMARY KEY, name int, amount double precision);"
        "INSERT INTO items SELECT g, g, g / 2.0 FROM generate_series(1, 10) g;"
    )
    path = job_file(tmp_path, pg_db)
    run_job(load_job(path))
    pg_db.psql(
        "UPDATE items SET name = -1 WHERE id = 1; UPDATE items SET id = 100 WHERE id = 2;"
        "DELETE FROM items WHERE id = 3; INSERT INTO items VALUES (11, 11, 0.25);"
    )
    assert run_job(load_job(path)).rows == 5  # the key change is a delete and a write
    assert target_rows(tmp_path) == source_rows(pg_db)


def test_a_partitioned_table_gets_the_changes_of_its_partitions(tmp_path, pg_db):
    # pgoutput sends the changes of a partitioned table under each leaf partition's oid.
    pg_db.psql(
        "CREATE TABLE items (id int PRIMARY KEY, name text, amount numeric(10,2)) PARTITION BY RANGE (id);"
        "CREATE TABLE items_a PARTITION OF items FOR VALUES FROM (0) TO (50);"
        "CREATE TABLE items_b PARTITION OF items FOR VALUES FROM (50) TO (100000);"
        "ALTER TABLE items REPLICA IDENTITY FULL; ALTER TABLE items_a REPLICA IDENTITY FULL;"
        "ALTER TABLE items_b REPLICA IDENTITY FULL;"
        "INSERT INTO items SELECT g, 'n' || g, g FROM generate_series(1, 100) g;"
    )
    path = job_file(tmp_path, pg_db)
    assert run_job(load_job(path)).status == "succeeded"
    assert target_rows(tmp_path) == source_rows(pg_db)
    pg_db.psql(
        "UPDATE items SET name = 'x' WHERE id % 10 = 0; DELETE FROM items WHERE id = 7;"
        "INSERT INTO items VALUES (500, 'y', 1);"
    )
    summary = run_job(load_job(path))
    assert summary.rows == 12
    assert target_rows(tmp_path) == source_rows(pg_db)
