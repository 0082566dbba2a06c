"""PostgreSQL -> Iceberg through the real CLI: every type, both readers, and every bad input of the issue."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from pyiceberg.catalog import load_catalog

from test_postgres_readers import FIDELITY, create_fidelity_table, norm

from support.cli import assert_one_line_error, dativo

READERS = ["postgres-adbc", "postgres-psycopg"]


def job(tmp_path: Path, connection: dict | str, reader: str | None = None, **source) -> Path:
    source_yaml = "\n".join(f"  {key}: {json.dumps(value)}" for key, value in source.items())
    conn = connection if isinstance(connection, str) else json.dumps(connection)
    reader_yaml = f"  reader: {{implementation: {reader}}}\n" if reader else ""
    path = tmp_path / "job.yaml"
    path.write_text(
        "source:\n  connector: postgres\n"
        f"  connection: {conn}\n{source_yaml}\n{reader_yaml}"
        "target:\n  connector: iceberg\n  table: raw.fidelity\n"
    )
    return path


def catalog(job_dir: Path):
    warehouse = job_dir / "warehouse"
    warehouse.mkdir(exist_ok=True)
    return load_catalog("dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri())


@pytest.mark.parametrize("reader", READERS)
def test_every_type_lands_in_iceberg_unchanged(tmp_path, pg_db, reader):
    create_fidelity_table(pg_db)
    connection = dict(pg_db.connection, options="-c TimeZone=America/Los_Angeles")
    names = ", ".join(c.name for c in FIDELITY)
    path = job(tmp_path, connection, reader, query=f"SELECT rowno, {names} FROM fidelity ORDER BY rowno")
    result = dativo("run", path, "--quiet")
    assert result.returncode == 0, result.stderr
    table = catalog(tmp_path).load_table("raw.fidelity")
    data = table.scan().to_arrow().sort_by("rowno")
    assert data.num_rows == 5
    iceberg_types = {field.name: str(field.field_type) for field in table.schema().fields}
    assert (iceberg_types["i2"], iceberg_types["n38"], iceberg_types["nu"]) == (
        "int",
        "decimal(38, 10)",
        "decimal(38, 9)",
    )
    assert (iceberg_types["tstz"], iceberg_types["u"], iceberg_types["jb"]) == ("timestamptz", "uuid", "string")
    assert iceberg_types["a_i2"] == "list<int>"
    for col in FIDELITY:
        assert norm(data.column(col.name).to_pylist()) == norm(list(col.expected)), col.name


def test_discover_shows_arrow_and_iceberg_types(tmp_path, pg_db):
    pg_db.psql(
        "CREATE TABLE orders (id bigint, amount numeric(14,2), placed timestamptz, tags text[], ref uuid, flag boolean)"
    )
    result = dativo("discover", job(tmp_path, pg_db.connection, table="public.orders"), "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["column"]: (row["arrow"], row["target"]) for row in json.loads(result.stdout)}
    assert rows["id"] == ("int64", "long")
    assert rows["amount"] == ("decimal128(14, 2)", "decimal(14, 2)")
    assert rows["placed"] == ("timestamp[us, tz=UTC]", "timestamptz")
    assert rows["tags"][0] == "list<item: string>" and rows["tags"][1].startswith("list<string>")
    assert rows["ref"] == ("extension<arrow.uuid>", "uuid")
    assert rows["flag"] == ("bool", "boolean")


def test_check_reaches_source_and_target(tmp_path, pg_db):
    pg_db.psql("CREATE TABLE t (id int)")
    result = dativo("check", job(tmp_path, pg_db.connection, table="public.t"))
    assert result.returncode == 0, result.stderr
    assert "ok source: reachable; 1 columns" in result.stdout


def test_validate_fails_on_unmappable_type(tmp_path, pg_db):
    pg_db.psql("CREATE TABLE t (id int, span interval)")
    result = dativo("validate", job(tmp_path, pg_db.connection, table="public.t"))
    assert_one_line_error(result, "span", "interval", "cast_to_text")
    ok = dativo("validate", job(tmp_path, pg_db.connection, table="public.t", cast_to_text=["span"]))
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("reader", READERS)
def test_wrong_password_is_one_line_without_the_password(tmp_path, pg_db, reader):
    pg_db.psql("CREATE TABLE t (id int)")
    connection = dict(pg_db.connection, password="not-the-Right-pw-4711")
    result = dativo("run", job(tmp_path, connection, reader, table="public.t"))
    line = assert_one_line_error(result, "authentication failed", code=1)
    assert "not-the-Right-pw-4711" not in result.stdout + result.stderr
    assert pg_db.connection["password"] not in line
    assert not catalog(tmp_path).table_exists("raw.fidelity")


def test_password_in_dsn_from_environment_never_printed(tmp_path, pg_db):
    pg_db.psql("CREATE TABLE t (id int)")
    dsn = pg_db.dsn.replace(f":{pg_db.connection['password']}@", ":wr0ng-Secret-99@")
    result = dativo(
        "--log-level", "debug", "run", job(tmp_path, '{dsn: "${PG_DSN}"}', table="public.t"),
        "--summary-json", tmp_path / "s.json",
        env={"PG_DSN": dsn},
    )  # fmt: skip
    assert result.returncode == 1
    everything = result.stdout + result.stderr + (tmp_path / "s.json").read_text()
    assert "wr0ng-Secret-99" not in everything
    assert "authentication failed" in everything


def test_unreachable_database(tmp_path):
    connection = {"host": "127.0.0.1", "port": 1, "user": "x", "password": "y", "dbname": "z"}
    result = dativo("run", job(tmp_path, connection, table="public.t"))
    assert_one_line_error(result, "127.0.0.1:1", code=1)
    assert not catalog(tmp_path).table_exists("raw.fidelity")


@pytest.mark.parametrize("reader", READERS)
def test_missing_table(tmp_path, pg_db, reader):
    result = dativo("run", job(tmp_path, pg_db.connection, reader, table="public.no_such_table"))
    assert_one_line_error(result, "no_such_table", code=1)
    assert not catalog(tmp_path).table_exists("raw.fidelity")


def test_missing_environment_variable(tmp_path):
    result = dativo("run", job(tmp_path, '{dsn: "${DATIVO_TEST_UNSET_DSN}"}', table="public.t"))
    assert_one_line_error(
        result, "job.yaml:3: source.connection.dsn: environment variable DATIVO_TEST_UNSET_DSN", code=2
    )


def test_malformed_yaml_and_unknown_connector(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("source:\n  connector: postgres\n   table: x\n")
    assert_one_line_error(dativo("run", bad), "bad.yaml:", "invalid YAML", code=2)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(
        textwrap.dedent(
            """\
            source: {connector: mongo, table: x}
            target: {connector: iceberg, table: raw.x}
            """
        )
    )
    assert_one_line_error(dativo("validate", unknown), "unknown source connector 'mongo'", code=2)


@pytest.mark.parametrize("reader", READERS)
def test_error_mid_stream_commits_nothing(tmp_path, pg_db, reader):
    # The division by zero happens on row 30000, after several batches have reached the writer.
    pg_db.psql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 40000) g")
    path = job(tmp_path, pg_db.connection, reader, query="SELECT id, 1 / (30000 - id) AS boom FROM t ORDER BY id")
    path.write_text(path.read_text() + "engine: {batch_size: 1000}\n")
    result = dativo("run", path)
    assert_one_line_error(result, "division by zero", code=1)
    assert not catalog(tmp_path).table_exists("raw.fidelity")
    assert list((tmp_path / "warehouse").rglob("*.parquet")) == []
