"""Change data capture from PostgreSQL into Iceberg (issue 17), against the real server and catalog."""

from __future__ import annotations

import json
from pathlib import Path

from pyiceberg.catalog import load_catalog

from dativo.config.loader import load_job
from dativo.engine.retry import run_job


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
        "target:\n  connector: iceberg\n  table: raw.items\n" + target_extra
        + "engine: {retry: {max_attempts: 1}}\n"
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
