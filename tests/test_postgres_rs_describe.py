"""``postgres-rs`` describes its source through its own connection: no psycopg, the same plan (issue 15).

Partitions are planned with psycopg only when a table is big enough to split (tests/test_parallel_reads.py).

Against the suite's real PostgreSQL server: a real ``dativo run`` subprocess must not import psycopg
(``sys.modules`` recorded at exit, as tests/test_startup.py does), and the plan the extension's
connection yields must equal the one the shared mapping builds on a psycopg connection.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dativo_postgres_rs import RustPostgresReader
from dativo_postgres_rs._conninfo import make_conninfo, parse_conninfo
from dativo_postgres_rs._describe import render

from dativo.errors import SourceError
from dativo.postgres_sdk import SourceSpec, describe_source
from test_startup import imported_modules


def write_job(path: Path, connection: dict, source: str, reader: str | None) -> Path:
    block = f"  reader: {{implementation: {reader}}}\n" if reader else ""
    path.mkdir(parents=True, exist_ok=True)
    job = path / "job.yaml"
    job.write_text(
        "name: no-psycopg\n"
        "source:\n"
        "  connector: postgres\n"
        f"  connection: {json.dumps(connection)}\n"
        f"{block}"
        f"{source}"
        "target:\n  connector: iceberg\n  table: raw.items\n"
    )
    return job


def run_rows(job: Path) -> tuple[int, set[str]]:
    summary = job.parent / "summary.json"
    names, _ = imported_modules("-m", "dativo", "run", "--quiet", "--summary-json", str(summary), str(job))
    return int(json.loads(summary.read_text())["rows"]), names


def test_a_postgres_rs_run_imports_no_psycopg(tmp_path, pg_db):
    pg_db.execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, label text, price numeric(10,2), tags text[], "
        "updated_at timestamptz);"
        "INSERT INTO items SELECT g, 'item ' || g, g * 1.5, ARRAY['a', 'b'], "
        "timestamptz '2024-01-01 00:00+00' + g * interval '1 s' FROM generate_series(1, 40) g"
    )
    # The benchmark's 1-row job: a query source, the default reader (postgres-rs where installed).
    one = write_job(tmp_path / "one", pg_db.connection, "  query: SELECT * FROM public.items WHERE id = 1\n", None)
    rows, names = run_rows(one)
    assert rows == 1
    assert "dativo_postgres_rs._native" in names and "psycopg" not in names, sorted(n for n in names if "psyco" in n)

    # A table source, parallelism unset (too small to split: the size is asked on the native connection),
    # incremental: day one reads everything, day two only the new rows.
    source = "  table: public.items\n  incremental: {cursor: updated_at}\n"
    table = write_job(tmp_path / "table", {"dsn": pg_db.dsn}, source, "postgres-rs")
    rows, names = run_rows(table)
    assert rows == 40 and "psycopg" not in names and "dativo_postgres_rs._native" in names
    pg_db.execute(
        "INSERT INTO items SELECT g, 'item ' || g, g, NULL, timestamptz '2024-01-01 00:00+00' + g * interval '1 s' "
        "FROM generate_series(41, 45) g"
    )
    rows, names = run_rows(table)
    assert rows == 5 and "psycopg" not in names


def test_the_plan_equals_the_psycopg_description(pg_db):
    pg_db.execute(
        "CREATE TYPE mood AS ENUM ('happy', 'sad');\n"
        "CREATE DOMAIN money2 AS numeric(8,2);\n"
        "CREATE DOMAIN short_text AS varchar(5);\n"
        'CREATE TABLE "Mixed""Case" ("Id" int8, n numeric, n52 numeric(5,2), n_neg numeric(3,-2), c char(3), '
        "v varchar(9), j json, jb jsonb, m mood, ms mood[], d money2, ds money2[], st short_text, "
        "ts timestamp, tz timestamptz[], u uuid, b bytea, f4 float4[], t time, dt date, nm name, p point)"
    )
    sources = [
        {"table": 'public."Mixed""Case"', "cast_to_text": ["p"]},
        {"query": 'SELECT n52, ms, 1::int2 AS small, \'x\'::text AS x, now() AS at FROM "Mixed""Case" -- note'},
    ]
    for source in sources:
        reader = RustPostgresReader()
        reader.initialize({"connection": pg_db.connection, **source})
        try:
            with pg_db.connect(autocommit=False) as conn:
                expected = describe_source(conn, SourceSpec.from_config(source))
            assert reader.plan() == expected
            assert reader.get_schema() == expected.schema
        finally:
            reader.close()


def test_a_missing_table_is_named_with_suggestions_and_a_quoted_name_resolves(pg_db):
    pg_db.execute('CREATE TABLE "it\'s" (a int); INSERT INTO "it\'s" VALUES (7); CREATE TABLE orders (a int)')
    reader = RustPostgresReader()
    try:
        reader.initialize({"connection": pg_db.connection, "table": "public.it's"})
        assert [b.to_pylist() for b in reader.read_batch(10)] == [[{"a": 7}]]
    finally:
        reader.close()
    with pytest.raises(SourceError) as err:
        RustPostgresReader().initialize({"connection": pg_db.connection, "table": "public.ordres"})
    assert not err.value.transient
    assert "'public.ordres' does not exist" in str(err.value) and "did you mean 'public.orders'" in str(err.value)


def test_connection_strings_parse_without_psycopg():
    uri = "postgresql://us%40er:p%3Aw@[::1]:5433,h2/db%2Fx?sslmode=require&application_name=a%20b&ssl=true"
    assert parse_conninfo(uri) == {
        "user": "us@er",
        "password": "p:w",
        "host": "::1,h2",
        "port": "5433,",
        "dbname": "db/x",
        "sslmode": "require",
        "application_name": "a b",
    }
    params = parse_conninfo("host=h port = 1 password='a b\\'c\\\\' dbname='' user=x\\ y")
    assert params == {"host": "h", "port": "1", "password": "a b'c\\", "dbname": "", "user": "x y"}
    assert parse_conninfo(make_conninfo(params)) == params
    for bad in ("host", "host='x", "postgresql://h?x"):
        with pytest.raises(ValueError):
            parse_conninfo(bad)


def test_query_parameters_render_as_literals():
    assert render("SELECT to_regclass(%s), 1 %% 2", ["a'b\\c"]) == "SELECT to_regclass(E'a\\'b\\\\c'), 1 % 2"
    assert render("SELECT %s::oid[], %s", ([1, -2], 3)) == "SELECT '{1,-2}'::oid[], 3"
    for sql, params in (("SELECT %s", []), ("SELECT 1", [1]), ("SELECT %s", [None]), ("SELECT %s", [1.5])):
        with pytest.raises((ValueError, TypeError)):
            render(sql, params)
