"""Incremental sync, write modes, schema evolution and their bad inputs, against real PostgreSQL and Iceberg."""

from __future__ import annotations

import json
import tempfile
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyiceberg.catalog import load_catalog

from dativo.config.loader import load_job
from dativo.engine.retry import run_job
from dativo.errors import ConfigError, SchemaError, TargetError

from support.cli import assert_one_line_error, dativo


def catalog(job_dir: Path):
    warehouse = job_dir / "warehouse"
    warehouse.mkdir(exist_ok=True)
    return load_catalog("dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri())


def table_rows(job_dir: Path, table: str = "raw.items") -> list[dict]:
    data = catalog(job_dir).load_table(table).scan().to_arrow().sort_by("id")
    return data.to_pylist()


def source(db, columns: str = "id, name, amount") -> list[dict]:
    with db.connect() as conn:
        cursor = conn.execute(f"SELECT {columns} FROM items WHERE NOT coalesce(deleted, false) ORDER BY id")
        names = [d.name for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def job_file(job_dir: Path, db, *, name: str = "items", source_extra: str = "", target_extra: str = "") -> Path:
    path = job_dir / f"{name}.yaml"
    path.write_text(
        f"name: {name}\n"
        "source:\n  connector: postgres\n"
        f"  connection: {json.dumps(db.connection)}\n"
        "  table: public.items\n" + source_extra + "target:\n  connector: iceberg\n  table: raw.items\n" + target_extra
    )
    return path


def run(path: Path):
    return run_job(load_job(path))


@pytest.fixture
def items(pg_db):
    pg_db.psql(
        "CREATE TABLE items (id int PRIMARY KEY, name text, amount numeric(10,2), "
        "updated_at timestamptz NOT NULL DEFAULT '2024-01-01', deleted boolean NOT NULL DEFAULT false);"
        "INSERT INTO items (id, name, amount, updated_at) "
        "SELECT g, 'item ' || g, g, '2024-01-01'::timestamptz + g * interval '1 minute' FROM generate_series(1, 500) g;"
    )
    return pg_db


def test_incremental_append_over_several_runs(tmp_path, items):
    path = job_file(tmp_path, items, source_extra="  incremental: {cursor: id}\n")
    assert run(path).rows == 500
    items.psql("INSERT INTO items (id, name, amount) SELECT g, 'new ' || g, g FROM generate_series(501, 650) g")
    second = run(path)
    assert second.rows == 150
    assert [r["id"] for r in table_rows(tmp_path)] == list(range(1, 651))
    quiet = run(path)
    assert quiet.rows == 0 and quiet.target["snapshot_id"] is None  # nothing new: no commit
    table = catalog(tmp_path).load_table("raw.items")
    assert len(table.snapshots()) == 2
    state = json.loads(table.current_snapshot().summary["dativo.state"])
    assert (state["cursor_column"], state["cursor"], state["job"]) == ("id", 650, "items")


def test_incremental_merge_with_updates_and_lookback(tmp_path, items):
    path = job_file(
        tmp_path,
        items,
        source_extra="  incremental: {cursor: updated_at, initial: '2023-12-31', lookback: 5m}\n",
        target_extra="  mode: merge\n  merge: {keys: [id]}\n",
    )
    run(path)
    for step in range(3):
        items.psql(
            f"UPDATE items SET name = 'v{step}', amount = amount + 1, updated_at = '2024-06-0{step + 1}' "
            f"WHERE id % {7 + step} = 0;"
            f"INSERT INTO items (id, name, amount, updated_at) "
            f"SELECT g, 'added', 0, '2024-06-0{step + 1}' "
            f"FROM generate_series({1000 + step * 10}, {1005 + step * 10}) g;"
        )
        summary = run(path)
        assert summary.rows > 0
        got = [{k: r[k] for k in ("id", "name", "amount")} for r in table_rows(tmp_path)]
        assert got == source(items)
    state = json.loads(catalog(tmp_path).load_table("raw.items").current_snapshot().summary["dativo.state"])
    assert state["cursor"] == "2024-06-03T00:00:00+00:00"


def test_merge_deletes_rows_the_source_marks_deleted(tmp_path, items):
    path = job_file(
        tmp_path,
        items,
        source_extra="  incremental: {cursor: updated_at}\n",
        target_extra="  mode: merge\n  merge: {keys: [id], delete_column: deleted}\n",
    )
    run(path)
    items.psql("UPDATE items SET deleted = true, updated_at = '2025-01-01' WHERE id <= 20")
    run(path)
    rows = table_rows(tmp_path)
    assert [r["id"] for r in rows] == list(range(21, 501))
    assert "deleted" not in rows[0]  # the marker column is not stored


def test_overwrite_replaces_the_whole_table_in_one_snapshot(tmp_path, items):
    path = job_file(tmp_path, items, target_extra="  mode: overwrite\n")
    run(path)
    items.psql("DELETE FROM items WHERE id > 100")
    summary = run(path)
    assert summary.target["files_removed"] >= 1
    assert [r["id"] for r in table_rows(tmp_path)] == list(range(1, 101))
    table = catalog(tmp_path).load_table("raw.items")
    assert len(table.snapshots()) == 2
    assert table.current_snapshot().summary.operation.value == "overwrite"


def test_duplicate_keys_fail_naming_the_key_or_keep_the_last(tmp_path, items):
    items.psql(
        "CREATE VIEW dup AS SELECT * FROM items "
        "UNION ALL SELECT id, 'second', amount, updated_at, deleted FROM items WHERE id = 42"
    )
    path = job_file(tmp_path, items, target_extra="  mode: merge\n  merge: {keys: [id]}\n")
    path.write_text(path.read_text().replace("public.items", "public.dup"))
    with pytest.raises(SchemaError, match=r"merge key \(id=42\) appears 2 times"):
        run(path)
    assert not catalog(tmp_path).table_exists("raw.items")
    path.write_text(path.read_text().replace("keys: [id]}", "keys: [id], duplicates: last_wins}"))
    run(path)
    rows = table_rows(tmp_path)
    assert len(rows) == 500 and rows[41]["name"] == "second"  # the later of the two rows won
    assert len({r["id"] for r in rows}) == 500


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(
        st.lists(
            st.tuples(st.sampled_from(["insert", "update", "delete"]), st.integers(1, 40), st.integers(0, 999)),
            max_size=12,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_merge_property_target_equals_source(pg_server, steps):
    """Any sequence of inserts/updates/soft-deletes with runs in between leaves target == source."""
    db = pg_server.new_database("prop")
    try:
        db.psql(
            "CREATE TABLE items (id int PRIMARY KEY, name text, amount numeric(10,2), "
            "updated_at timestamptz NOT NULL DEFAULT clock_timestamp(), deleted boolean NOT NULL DEFAULT false)"
        )
        with tempfile.TemporaryDirectory() as directory:
            job_dir = Path(directory)
            path = job_file(
                job_dir,
                db,
                source_extra="  incremental: {cursor: updated_at, lookback: 1h}\n",
                target_extra="  mode: merge\n  merge: {keys: [id], delete_column: deleted}\n",
            )
            for operations in steps:
                statements = []
                for op, key, value in operations:
                    if op == "insert":
                        statements.append(
                            f"INSERT INTO items (id, name, amount) VALUES ({key}, 'n{value}', {value}) "
                            f"ON CONFLICT (id) DO UPDATE SET name = 'n{value}', amount = {value}, deleted = false, "
                            "updated_at = clock_timestamp();"
                        )
                    elif op == "update":
                        statements.append(
                            f"UPDATE items SET amount = {value}, updated_at = clock_timestamp() WHERE id = {key};"
                        )
                    else:
                        statements.append(
                            f"UPDATE items SET deleted = true, updated_at = clock_timestamp() WHERE id = {key};"
                        )
                if statements:
                    db.psql("".join(statements))
                run(path)
                if catalog(job_dir).table_exists("raw.items"):
                    got = [{k: r[k] for k in ("id", "name", "amount")} for r in table_rows(job_dir)]
                else:
                    got = []
                assert got == source(db)
    finally:
        db.drop()


# -- schema evolution ----------------------------------------------------------------------------------


def test_new_source_column_is_added_and_old_rows_are_null(tmp_path, items):
    path = job_file(tmp_path, items, source_extra="  incremental: {cursor: id}\n")
    run(path)
    items.psql(
        "ALTER TABLE items ADD COLUMN colour text; INSERT INTO items (id, name, colour) VALUES (501, 'x', 'red')"
    )
    run(path)
    table = catalog(tmp_path).load_table("raw.items")
    assert "colour" in table.schema().column_names
    rows = table_rows(tmp_path)
    assert rows[0]["colour"] is None and rows[-1]["colour"] == "red"
    assert len(table.snapshots()) == 2  # schema change and data in one commit


def test_widened_type_is_promoted(tmp_path, items):
    items.psql("ALTER TABLE items ADD COLUMN qty integer DEFAULT 1")
    path = job_file(tmp_path, items, source_extra="  incremental: {cursor: id}\n")
    run(path)
    items.psql("ALTER TABLE items ALTER COLUMN qty TYPE bigint; INSERT INTO items (id, qty) VALUES (501, 5000000000)")
    run(path)
    table = catalog(tmp_path).load_table("raw.items")
    assert str(table.schema().find_field("qty").field_type) == "long"
    assert table_rows(tmp_path)[-1]["qty"] == 5_000_000_000


def test_dropped_source_column_is_written_as_null(tmp_path, items):
    path = job_file(tmp_path, items, source_extra="  incremental: {cursor: id}\n")
    run(path)
    items.psql("ALTER TABLE items DROP COLUMN amount; INSERT INTO items (id, name) VALUES (501, 'no amount')")
    run(path)
    rows = table_rows(tmp_path)
    assert rows[-1]["amount"] is None and rows[0]["amount"] == Decimal("1.00")


def test_incompatible_change_stops_the_run_naming_column_and_types(tmp_path, items):
    path = job_file(tmp_path, items, source_extra="  incremental: {cursor: id}\n")
    run(path)
    items.psql("ALTER TABLE items ALTER COLUMN name TYPE integer USING 0; INSERT INTO items (id, name) VALUES (501, 7)")
    result = dativo("run", path)
    assert_one_line_error(result, "column 'name' is string in the table but int at the source", code=1)
    assert len(catalog(tmp_path).load_table("raw.items").snapshots()) == 1


def test_freeze_ignores_new_columns_and_fail_refuses_them(tmp_path, items):
    path = job_file(
        tmp_path,
        items,
        source_extra="  incremental: {cursor: id}\n",
        target_extra="  schema_evolution: {mode: freeze}\n",
    )
    run(path)
    items.psql("ALTER TABLE items ADD COLUMN colour text; INSERT INTO items (id, colour) VALUES (501, 'red')")
    run(path)
    table = catalog(tmp_path).load_table("raw.items")
    assert "colour" not in table.schema().column_names
    assert table_rows(tmp_path)[-1]["id"] == 501
    path.write_text(path.read_text().replace("mode: freeze", "mode: fail"))
    items.psql("INSERT INTO items (id, colour) VALUES (502, 'blue')")
    with pytest.raises(SchemaError, match=r"new column\(s\) colour.*mode is 'fail'"):
        run(path)


# -- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source_extra", "target_extra", "message"),
    [
        ("  incremental: {cursor: nope}\n", "", "column 'nope' is not in the source"),
        (
            "  incremental: {cursor: name}\n",
            "",
            "column 'name' is string; a cursor must be an integer, date or timestamp",
        ),
        ("", "  mode: merge\n", "mode 'merge' needs the primary key"),
        ("", "  mode: merge\n  merge: {keys: [missing]}\n", "column 'missing' is not in the source"),
        ("  incremental: {cursor: id, lookback: 5}\n", "", "lookback re-reads rows"),
        ("  incremental: {cursor: updated_at, initial: yesterday}\n", "", "'yesterday' is not a valid timestamptz"),
    ],
)
def test_bad_incremental_and_merge_settings_fail_before_data_moves(
    tmp_path, items, source_extra, target_extra, message
):
    path = job_file(tmp_path, items, source_extra=source_extra, target_extra=target_extra)
    result = dativo("run", path)
    assert_one_line_error(result, message)
    assert not catalog(tmp_path).table_exists("raw.items")


def test_reader_without_incremental_support_is_refused(tmp_path):
    import sqlite3

    db = tmp_path / "src.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (id INTEGER)")
    path = tmp_path / "job.yaml"
    path.write_text(
        "source: {connector: sqlite, connection: {path: src.db}, table: t, incremental: {cursor: id}}\n"
        "target: {connector: iceberg, table: raw.t}\n"
    )
    assert_one_line_error(dativo("run", path), "reader 'sqlite' cannot read incrementally", code=2)


def test_parquet_target_refuses_merge(tmp_path, items):
    path = tmp_path / "job.yaml"
    path.write_text(
        f"source: {{connector: postgres, connection: {json.dumps(items.connection)}, table: public.items}}\n"
        "target: {connector: parquet, path: out, mode: merge, merge: {keys: [id]}}\n"
    )
    assert_one_line_error(dativo("run", path), "does not support mode 'merge'", code=2)


def test_state_show_and_reset(tmp_path, items):
    path = job_file(tmp_path, items, source_extra="  incremental: {cursor: id}\n")
    run(path)
    shown = dativo("state", "show", path)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["cursor"] == 500
    refused = dativo("state", "reset", path)  # no --yes and no terminal: the confirmation is declined
    assert refused.returncode != 0
    assert json.loads(dativo("state", "show", path).stdout)["cursor"] == 500
    reset = dativo("state", "reset", path, "--yes")
    assert reset.returncode == 0, reset.stderr
    assert dativo("state", "show", path).stdout.strip() == "null"
    assert run(path).rows == 500  # re-reads from the beginning after the reset


def test_state_reset_refused_when_other_jobs_write_the_table(tmp_path, items):
    first = job_file(tmp_path, items, name="first", source_extra="  incremental: {cursor: id}\n")
    second = job_file(tmp_path, items, name="second", source_extra="  incremental: {cursor: id}\n")
    run(first)
    run(second)
    result = dativo("state", "reset", first, "--yes")
    assert_one_line_error(result, "also written by job 'second'", "--force", code=1)
    with pytest.raises(TargetError):
        from dativo.engine import pipeline
        from dativo.engine.plan import build_plan

        pipeline.reset_state(build_plan(load_job(first)), force=False)
    forced = dativo("state", "reset", first, "--yes", "--force")
    assert forced.returncode == 0, forced.stderr


def test_config_error_type_is_raised_in_process(tmp_path, items):
    path = job_file(tmp_path, items, source_extra="  incremental: {cursor: nope}\n")
    with pytest.raises(ConfigError):
        run(path)


def test_validate_reports_mode_and_cursor_problems_without_running(tmp_path, items):
    bad_cursor = job_file(tmp_path, items, name="bad", source_extra="  incremental: {cursor: name}\n")
    assert_one_line_error(dativo("validate", bad_cursor), "column 'name' is string", code=2)
    good = job_file(tmp_path, items, name="good", source_extra="  incremental: {cursor: updated_at}\n")
    assert dativo("validate", good).returncode == 0
    assert not catalog(tmp_path).table_exists("raw.items")


def test_last_wins_holds_across_many_files(tmp_path, items):
    items.psql(
        "CREATE VIEW twice AS SELECT * FROM items UNION ALL SELECT id, 'second', amount, updated_at, deleted FROM items"
    )
    path = job_file(
        tmp_path,
        items,
        target_extra="  mode: merge\n  merge: {keys: [id], duplicates: last_wins}\n"
        "  options: {row_group_size_mb: 0.002, target_file_size_mb: 0.004}\n",
    )
    path.write_text(path.read_text().replace("public.items", "public.twice") + "engine: {batch_size: 64}\n")
    summary = run(path)
    assert summary.rows == 1000
    rows = table_rows(tmp_path)
    assert len(rows) == 500 and {r["name"] for r in rows} == {"second"}
    assert len(catalog(tmp_path).load_table("raw.items").inspect.files()) > 1


@pytest.mark.parametrize("reader", ["postgres-adbc", "postgres-psycopg", "postgres-rs"])
def test_every_postgres_reader_reads_incrementally(tmp_path, items, reader):
    path = job_file(
        tmp_path,
        items,
        source_extra=f"  incremental: {{cursor: updated_at}}\n  reader: {{implementation: {reader}}}\n",
    )
    assert run(path).rows == 500
    items.psql("INSERT INTO items (id, name, updated_at) VALUES (501, 'new', '2030-01-01')")
    assert run(path).rows == 1
    assert [r["id"] for r in table_rows(tmp_path)][-2:] == [500, 501]
