"""Every built-in reader and writer passes `dativo plugins certify`, in every runtime it supports (issue 13).

The built-ins are ordinary plugins: the conformance suite a third party must pass
(tests/test_plugin_kit.py) runs here against each of them, against real sources
(the suite's PostgreSQL server, SQLite and Parquet files) and real targets
(Parquet folders, the embedded Iceberg catalog, encrypted Parquet keyed by the
`local` KMS). Python plugins are certified in process, as process plugins (`dativo
serve process`, sandboxed like a job runs them) and over Arrow Flight (`dativo serve
flight`); postgres-rs is a PyO3 extension, certified in process and served the same way.
Every rule must pass: the scenarios below give the suite everything it asks for, so
nothing is skipped.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dativo.testing import (
    READER_RULES,
    WRITER_RULES,
    PluginUnderTest,
    Report,
    certify,
    sample_table,
    served_by_flight,
)
from test_postgres_readers import FIDELITY, create_fidelity_table

from support.cli import dativo
from support.kms_fixtures import encrypted_parquet_scenario
from support.pgserver import PostgresServer
from support.s3server import S3Server

RUNTIMES = ["custom", "process", "flight"]
ROWS = 200  # the standard scenario: enough rows for the batch-size rule (it reads with read_batch(ROWS // 8))
LARGE = 2 * 1024 * 1024  # the large_values scenario: one 2 MiB text and one 2 MiB binary value

READERS = ["postgres-adbc", "postgres-psycopg", "postgres-rs", "sqlite", "files"]
WRITERS = ["parquet", "iceberg", "encrypted-parquet"]


def _assert_certified(report: Report) -> None:
    rules = READER_RULES if report.kind == "reader" else WRITER_RULES
    failed = {r.rule: r.message for r in report.results if r.status != "pass"}
    assert not failed, f"{report.plugin}: {failed}"
    assert [r.rule for r in report.results] == list(rules)
    assert report.passed


# ---------------------------------------------------------------------------------------------
# Sources: one set per module, shared by every reader and runtime (they only read)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres_scenarios(pg_server: PostgresServer) -> Iterator[dict[str, Any]]:
    db = pg_server.new_database("certify")
    db.psql(
        "CREATE TABLE standard (id bigint PRIMARY KEY, name text, amount numeric(12, 2), seen timestamptz);\n"
        f"INSERT INTO standard SELECT n, 'name-' || n, n * 1.25, timestamptz '2024-01-01 00:00+00' + n * interval '1h'"
        f" FROM generate_series(1, {ROWS}) AS n;\n"
        "CREATE TABLE empty (id bigint, name text);\n"
        "CREATE TABLE large (id int, body text, blob bytea);\n"
        f"INSERT INTO large VALUES (1, repeat('x', {LARGE}), convert_to(repeat('y', {LARGE}), 'UTF8')), (2, '', '');\n"
    )
    create_fidelity_table(db)
    base = {"connector": "postgres", "connection": db.connection}
    names = ", ".join(column.name for column in FIDELITY)
    try:
        yield {
            "standard": {**base, "table": "public.standard"},
            "empty": {**base, "table": "public.empty"},
            "large_values": {**base, "table": "public.large"},
            # Fails on the server mid-stream: division by zero at row 5000 of 10000.
            "error": {**base, "query": "SELECT n, 1 / (n - 5000) AS q FROM generate_series(1, 10000) AS n"},
            "all_types": {**base, "query": f"SELECT {names} FROM fidelity ORDER BY rowno"},
        }
    finally:
        db.drop()


@pytest.fixture(scope="module")
def sqlite_scenarios(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("sqlite-source")
    path = folder / "source.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE standard (id INTEGER PRIMARY KEY, name TEXT, amount REAL, day DATE)")
        db.executemany(
            "INSERT INTO standard VALUES (?, ?, ?, ?)",
            [(n, f"name-{n}", n * 1.25, f"2024-01-{n % 28 + 1:02d}") for n in range(1, ROWS + 1)],
        )
        db.execute("CREATE TABLE empty (id INTEGER, name TEXT)")
        db.execute("CREATE TABLE large (id INTEGER, body TEXT, blob BLOB)")
        db.execute("INSERT INTO large VALUES (1, ?, ?)", ("x" * LARGE, b"y" * LARGE))
        db.execute(
            "CREATE TABLE typed (i16 SMALLINT, i32 INT, i64 BIGINT, f REAL, d DOUBLE, price DECIMAL(10, 2), "
            "t TEXT, b BOOLEAN, day DATE, ts TIMESTAMP, raw BLOB)"
        )
        db.execute(
            "INSERT INTO typed VALUES "
            "(1, 2, 3, 1.5, 2.5, '12.34', 'text', 1, '2024-02-29', '2024-06-01 12:00:00', x'00ff')"
        )
        db.execute("INSERT INTO typed VALUES (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)")
    base = {"connector": "sqlite", "connection": {"path": str(path)}}
    return {
        "standard": {**base, "table": "standard"},
        "empty": {**base, "table": "empty"},
        "large_values": {**base, "table": "large"},
        # abs() of the smallest integer overflows at row 500 of 1000: SQLite raises mid-stream.
        "error": {
            **base,
            "query": "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 1000) "
            "SELECT n, CASE WHEN n = 500 THEN abs(-9223372036854775807 - 1) ELSE n END AS v FROM c",
        },
        "all_types": {**base, "table": "typed"},
    }


@pytest.fixture(scope="module")
def files_scenarios(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("files-source")
    standard = pa.table(
        {
            "id": pa.array(range(1, ROWS + 1), pa.int64()),
            "name": [f"name-{n}" for n in range(1, ROWS + 1)],
        }
    )
    for name, table in {
        "standard": standard,
        "empty": standard.slice(0, 0),
        "large": pa.table({"id": [1], "body": ["x" * LARGE], "blob": pa.array([b"y" * LARGE], pa.binary())}),
        "types": sample_table(),
    }.items():
        (folder / name).mkdir()
        pq.write_table(table, folder / name / "part-0.parquet")
    # Two files: the first reads, the second is damaged, so the read fails mid-stream.
    (folder / "error").mkdir()
    pq.write_table(standard, folder / "error" / "part-0.parquet")
    (folder / "error" / "part-1.parquet").write_bytes(b"PAR1" + os.urandom(256) + b"PAR1")
    base = {"connector": "files", "format": "parquet"}
    return {
        "standard": {**base, "path": str(folder / "standard")},
        "empty": {**base, "path": str(folder / "empty")},
        "large_values": {**base, "path": str(folder / "large")},
        "error": {**base, "path": str(folder / "error")},
        "all_types": {**base, "path": str(folder / "types")},
        "_sandbox": {"read_paths": [str(folder)]},
    }


@pytest.fixture(scope="module")
def csv_on_s3_scenarios(s3_server: S3Server) -> dict[str, Any]:
    """CSV files on the moto S3 server: the files reader's other format and its object-store path."""
    bucket = s3_server.create_bucket()
    rows = "".join(f"{n},name-{n},{n * 1.25},{'true' if n % 2 else 'false'}\n" for n in range(1, ROWS + 1))
    objects = {
        "standard/part-0.csv": "id,name,amount,flag\n" + rows,
        "empty/part-0.csv": "id,name,amount,flag\n",
        "large/part-0.csv": f"id,body\n1,{'x' * LARGE}\n2,short\n",
        "error/part-0.csv": "id,name,amount,flag\n" + rows,
        "error/part-1.csv": 'id,name,amount,flag\n1,one,1.5,true\n2,two,"unterminated\n',
        "types/part-0.csv": "id,name,amount,flag\n" + rows,
    }
    for key, body in objects.items():
        s3_server.put_object(bucket, key, body.encode())
    base = {"connector": "files", "format": "csv", "connection": s3_server.connection()}
    return {
        "standard": {**base, "path": f"s3://{bucket}/standard/"},
        "empty": {**base, "path": f"s3://{bucket}/empty/"},
        "large_values": {**base, "path": f"s3://{bucket}/large/"},
        "error": {**base, "path": f"s3://{bucket}/error/"},
        "all_types": {**base, "path": f"s3://{bucket}/types/"},
    }


@pytest.fixture
def reader_scenarios(request: pytest.FixtureRequest, plugin: str) -> dict[str, Any]:
    fixture = {"sqlite": "sqlite_scenarios", "files": "files_scenarios", "files-csv-s3": "csv_on_s3_scenarios"}
    return dict(request.getfixturevalue(fixture.get(plugin, "postgres_scenarios")))


def _sandbox(kind: str, scenarios: dict[str, Any]) -> dict[str, Any]:
    """A process plugin sees only what its job grants: the source files, the network for a server, the key folder."""
    granted = scenarios.pop("_sandbox", None)
    if granted is not None:
        return {"sandbox": granted}
    if kind == "writer":
        return {}
    if scenarios["standard"]["connector"] == "sqlite":
        return {"sandbox": {"read_paths": [str(Path(scenarios["standard"]["connection"]["path"]).parent)]}}
    return {"sandbox": {"network": True}}


def _certify(kind: str, plugin: str, runtime: str, scenarios: dict[str, Any], workdir: Path) -> Report:
    spec = _sandbox(kind, scenarios)
    if runtime == "flight":
        with served_by_flight(plugin, kind) as endpoint:  # type: ignore[arg-type]
            return certify(PluginUnderTest(kind, "flight", endpoint=endpoint), scenarios, workdir)  # type: ignore[arg-type]
    if runtime == "custom":
        spec = {}
    target = PluginUnderTest(kind, runtime, implementation=plugin, spec=spec)  # type: ignore[arg-type]
    return certify(target, scenarios, workdir)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("plugin", READERS)
def test_builtin_reader_is_certified(plugin, runtime, reader_scenarios, tmp_path):
    report = _certify("reader", plugin, runtime, reader_scenarios, tmp_path)
    _assert_certified(report)
    assert report.runtime == runtime


@pytest.mark.parametrize("plugin", ["files-csv-s3"])
def test_builtin_files_reader_is_certified_on_csv_in_s3(plugin, reader_scenarios, tmp_path):
    """The same reader on its other format and on object storage (in process: the runtimes are covered above).

    Every rule passes, reader.large-values included: a value over pyarrow's 1 MiB read block is read
    by growing the block (connectors/files/reader.py; tests/test_files_large_values.py).
    """
    report = _certify("reader", "files", "custom", reader_scenarios, tmp_path)
    _assert_certified(report)
    assert "reader.large-values" in {r.rule for r in report.results if r.status == "pass"}


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def writer_scenarios(plugin: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if plugin == "parquet":
        return {"standard": {"connector": "parquet"}}
    if plugin == "iceberg":
        # Iceberg has no 16-bit integer: smallint lands as int, losslessly (docs/types.md).
        return {"standard": {"connector": "iceberg", "table": "certify.types"}, "widens": {"int16": "int32"}}
    keys = tmp_path_factory.mktemp("keys")
    return {
        **encrypted_parquet_scenario(keys),
        "_sandbox": {"writable_paths": [str(keys)]},  # as a process plugin: the key file, the audit log
    }


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("plugin", WRITERS)
def test_builtin_writer_is_certified(plugin, runtime, writer_scenarios, tmp_path):
    report = _certify("writer", plugin, runtime, writer_scenarios, tmp_path)
    _assert_certified(report)
    assert report.runtime == runtime


def test_certify_cli_certifies_a_builtin_by_its_installed_name(tmp_path):
    result = dativo("plugins", "certify", "parquet", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"passed": true' in result.stdout


@pytest.mark.parametrize("plugin", ["iceberg", "encrypted-parquet"])
def test_the_round_trip_fails_without_the_declared_widening_or_read_back(writer_scenarios, plugin, tmp_path):
    """What `widens` and `read_back` stand in for is real: without them the round trip fails, naming why."""
    scenarios = {"standard": writer_scenarios["standard"]}
    report = certify(PluginUnderTest("writer", implementation=plugin), scenarios, tmp_path, ["writer.types-roundtrip"])
    assert report.failed_rules == ["writer.types-roundtrip"]
    expected = {
        "iceberg": "'small' came back as int32, written as int16",
        "encrypted-parquet": "reading the written Parquet back failed",
    }[plugin]
    assert expected in report.results[0].message


def test_a_read_back_that_cannot_be_imported_fails_the_round_trip_naming_it(tmp_path):
    scenarios = {"standard": {"connector": "parquet"}, "read_back": "no_such_module:read"}
    report = certify(
        PluginUnderTest("writer", implementation="parquet"), scenarios, tmp_path, ["writer.types-roundtrip"]
    )
    assert report.failed_rules == ["writer.types-roundtrip"]
    assert "read_back 'no_such_module:read' cannot be imported" in report.results[0].message
