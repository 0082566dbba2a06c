"""The built-in SQLite reader against real database files made in tmp_path."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from dativo.connectors.sqlite import SAMPLE_ROWS, SqliteReader, arrow_type_for_declared
from dativo.errors import ConfigError, PluginError, SchemaError, SourceError


def make_db(path: Path, ddl: str, rows: Sequence[tuple[Any, ...]] = (), table: str = "t") -> Path:
    conn = sqlite3.connect(path)
    conn.execute(ddl)
    if rows:
        marks = ",".join("?" * len(rows[0]))
        conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
    conn.commit()
    conn.close()
    return path


def config(tmp_path: Path, **source: Any) -> dict[str, Any]:
    source.setdefault("connection", {"path": "data.db"})
    return {"connector": "sqlite", "job": {"name": "test", "dir": str(tmp_path)}, **source}


def read_all(cfg: dict[str, Any], batch_size: int = 1000) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    reader = SqliteReader()
    try:
        reader.initialize(cfg)
        schema = reader.get_schema()
        batches = list(reader.read_batch(batch_size))
    finally:
        reader.close()
    for batch in batches:
        assert batch.schema.equals(schema), (batch.schema, schema)
    return schema, batches


def rows_of(batches: list[pa.RecordBatch]) -> list[dict[str, Any]]:
    return [row for batch in batches for row in batch.to_pylist()]


AFFINITY_DDL = """
CREATE TABLE t (
    i INTEGER, big UNSIGNED BIG INT, txt TEXT, vc VARCHAR(20), nc NCHAR(5), cl CLOB,
    bl BLOB, untyped, r REAL, fl FLOAT, dbl DOUBLE PRECISION,
    dec DECIMAL(10,2), num NUMERIC(5), plain NUMERIC, flag BOOLEAN, day DATE,
    at DATETIME, ts TIMESTAMP, tstz TIMESTAMP WITH TIME ZONE, money MONEY
)
"""

AFFINITY_TYPES = {
    "i": pa.int64(),
    "big": pa.int64(),
    "txt": pa.string(),
    "vc": pa.string(),
    "nc": pa.string(),
    "cl": pa.string(),
    "bl": pa.binary(),
    "untyped": pa.binary(),
    "r": pa.float64(),
    "fl": pa.float64(),
    "dbl": pa.float64(),
    "dec": pa.decimal128(10, 2),
    "num": pa.decimal128(5, 0),
    "plain": pa.float64(),
    "flag": pa.bool_(),
    "day": pa.date32(),
    "at": pa.timestamp("us"),
    "ts": pa.timestamp("us"),
    "tstz": pa.timestamp("us", tz="UTC"),
    "money": pa.int64(),  # no specific rule: inferred from the values (integers here)
}


def test_table_maps_every_affinity_and_nulls(tmp_path: Path) -> None:
    full = (
        7,
        2**62,
        "héllo",
        "v",
        "n",
        "c",
        b"\x00\xff",
        b"raw",
        1.5,
        -2.25,
        1e300,
        "12.34",
        "123",
        42,
        1,
        "2024-02-29",
        "2024-01-02 03:04:05.123456",
        "2024-01-02T03:04:05+02:00",
        "2024-01-02 03:04:05",
        100,
    )
    make_db(tmp_path / "data.db", AFFINITY_DDL, [full, (None,) * len(full)])

    schema, batches = read_all(config(tmp_path, table="t"))

    assert {f.name: f.type for f in schema} == AFFINITY_TYPES
    assert schema.names == list(AFFINITY_TYPES)  # declared order
    assert all(f.nullable for f in schema)
    first, second = rows_of(batches)
    assert first == {
        "i": 7,
        "big": 2**62,
        "txt": "héllo",
        "vc": "v",
        "nc": "n",
        "cl": "c",
        "bl": b"\x00\xff",
        "untyped": b"raw",
        "r": 1.5,
        "fl": -2.25,
        "dbl": 1e300,
        "dec": Decimal("12.34"),
        "num": Decimal("123"),
        "plain": 42.0,
        "flag": True,
        "day": dt.date(2024, 2, 29),
        "at": dt.datetime(2024, 1, 2, 3, 4, 5, 123456),
        "ts": dt.datetime(2024, 1, 2, 1, 4, 5),  # +02:00 converted to UTC
        "tstz": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),  # naive values are UTC
        "money": 100,
    }
    assert second == dict.fromkeys(AFFINITY_TYPES)


@pytest.mark.parametrize(
    ("declared", "expected"),
    [
        ("INTEGER", pa.int64()),
        ("tinyint", pa.int64()),
        ("MEDIUMINT", pa.int64()),
        ("INT8", pa.int64()),
        ("CHARACTER(20)", pa.string()),
        ("NATIVE CHARACTER(70)", pa.string()),
        ("varchar(255)", pa.string()),
        ("TEXT", pa.string()),
        ("CLOB", pa.string()),
        ("BLOB", pa.binary()),
        ("", pa.binary()),
        ("REAL", pa.float64()),
        ("DOUBLE", pa.float64()),
        ("FLOAT", pa.float64()),
        ("BOOLEAN", pa.bool_()),
        ("BOOL", pa.bool_()),
        ("DATE", pa.date32()),
        ("DATETIME", pa.timestamp("us")),
        ("TIMESTAMP", pa.timestamp("us")),
        ("TIMESTAMP WITHOUT TIME ZONE", pa.timestamp("us")),
        ("TIMESTAMPTZ", pa.timestamp("us", tz="UTC")),
        ("DECIMAL(14,2)", pa.decimal128(14, 2)),
        ("decimal( 14 , 2 )", pa.decimal128(14, 2)),
        ("NUMERIC(9)", pa.decimal128(9, 0)),
        ("DECIMAL(50,10)", pa.decimal256(50, 10)),
        ("DECIMAL", pa.float64()),
        ("NUMERIC", pa.float64()),
        ("MONEY", None),
        ("JSON", None),
        ("DECIMAL(0,0)", None),
    ],
)
def test_declared_type_mapping(declared: str, expected: pa.DataType | None) -> None:
    assert arrow_type_for_declared(declared) == expected


def test_affinity_rule_order_follows_sqlite() -> None:
    # "POINT" contains INT and "FLOATING POINT" too: SQLite gives both INTEGER affinity.
    assert arrow_type_for_declared("FLOATING POINT") == pa.int64()
    # "CHARINT" matches INT first.
    assert arrow_type_for_declared("CHARINT") == pa.int64()
    # An untyped column is binary unless the caller (query mode) asks for inference.
    assert arrow_type_for_declared("", untyped=None) is None


def test_query_types_declared_and_expression_columns(tmp_path: Path) -> None:
    make_db(
        tmp_path / "data.db",
        "CREATE TABLE t (id INTEGER, name TEXT, price REAL, created DATETIME)",
        [(1, "a", 1.5, "2024-01-01 00:00:00"), (2, "b", 2.5, "2024-01-02 00:00:00")],
    )
    query = """
        SELECT id, name, created,
               id * 10 AS tens, price / 2 AS half, count(*) OVER () AS n,
               name || '!' AS shout, NULL AS empty, CAST(id AS TEXT) AS id_text
        FROM t ORDER BY id;
    """
    schema, batches = read_all(config(tmp_path, query=query))

    assert {f.name: f.type for f in schema} == {
        "id": pa.int64(),
        "name": pa.string(),
        "created": pa.timestamp("us"),
        "tens": pa.int64(),
        "half": pa.float64(),
        "n": pa.int64(),
        "shout": pa.string(),
        "empty": pa.string(),
        "id_text": pa.string(),
    }
    assert rows_of(batches)[1] == {
        "id": 2,
        "name": "b",
        "created": dt.datetime(2024, 1, 2),
        "tens": 20,
        "half": 1.25,
        "n": 2,
        "shout": "b!",
        "empty": None,
        "id_text": "2",
    }


def test_streams_in_batches_of_batch_size(tmp_path: Path) -> None:
    make_db(tmp_path / "data.db", "CREATE TABLE t (id INTEGER, v TEXT)", [(i, f"v{i}") for i in range(10)])

    _, batches = read_all(config(tmp_path, table="t"), batch_size=3)

    assert [b.num_rows for b in batches] == [3, 3, 3, 1]
    assert [r["id"] for r in rows_of(batches)] == list(range(10))


def test_inferred_columns_keep_the_sampled_rows(tmp_path: Path) -> None:
    # A MONEY column is typed from the first rows, which are read ahead and must not be lost.
    rows = [(i, i * 100) for i in range(SAMPLE_ROWS + 5)]
    make_db(tmp_path / "data.db", "CREATE TABLE t (id INTEGER, amount MONEY)", rows)

    schema, batches = read_all(config(tmp_path, table="t"), batch_size=400)

    assert schema.field("amount").type == pa.int64()
    assert [r["amount"] for r in rows_of(batches)] == [i * 100 for i in range(SAMPLE_ROWS + 5)]
    assert [b.num_rows for b in batches] == [400, 400, 205]


@pytest.mark.parametrize(
    ("declared", "bad", "stored_as"),
    [
        ("INTEGER", "abc", "TEXT"),
        ("INTEGER", 1.5, "REAL"),
        ("TEXT", b"\x01", "BLOB"),
        ("BLOB", "text", "TEXT"),
        ("REAL", "x", "TEXT"),
        ("BOOLEAN", 2, "INTEGER"),
        ("DATE", "2024-13-01", "TEXT"),
        ("DATE", "2024-01-01 10:00:00", "TEXT"),
        ("DATETIME", "yesterday", "TEXT"),
        ("DATETIME", 1700000000, "INTEGER"),
        ("DECIMAL(5,2)", "1.234", "REAL"),  # NUMERIC affinity stored the text as a real
        ("DECIMAL(5,2)", "abc", "TEXT"),
        ("DECIMAL(5,2)", 12345, "INTEGER"),
        ("NUMERIC", 2**60 + 1, "INTEGER"),  # float64 cannot hold it exactly
    ],
)
def test_value_that_does_not_fit_names_column_and_row(tmp_path: Path, declared: str, bad: Any, stored_as: str) -> None:
    good = {
        "INTEGER": 1,
        "TEXT": "ok",
        "BLOB": b"ok",
        "REAL": 1.0,
        "BOOLEAN": 0,
        "DATE": "2024-01-01",
        "DATETIME": "2024-01-01 00:00:00",
        "DECIMAL(5,2)": "1.5",
        "NUMERIC": 3,
    }[declared]
    rows = [(1, good), (2, None), (3, good), (4, bad), (5, good)]
    make_db(tmp_path / "data.db", f"CREATE TABLE t (id INTEGER, val {declared})", rows)

    with pytest.raises(SchemaError) as info:
        read_all(config(tmp_path, table="t"), batch_size=2)  # the bad row is in the second batch

    message = str(info.value)
    assert "column 'val', row 4" in message
    assert stored_as in message
    assert declared in message


def test_value_beyond_the_sample_that_does_not_fit_the_inferred_type(tmp_path: Path) -> None:
    rows: list[tuple[Any, ...]] = [(i, i) for i in range(SAMPLE_ROWS + 10)]
    rows.append((SAMPLE_ROWS + 10, "oops"))
    make_db(tmp_path / "data.db", "CREATE TABLE t (id INTEGER, v MONEY)", rows)

    with pytest.raises(SchemaError) as info:
        read_all(config(tmp_path, table="t"))

    assert f"column 'v', row {SAMPLE_ROWS + 11}" in str(info.value)
    assert "inferred" in str(info.value)
    assert "cast_to_text" in str(info.value)


def test_sample_mixing_text_and_numbers_asks_for_cast_to_text(tmp_path: Path) -> None:
    make_db(tmp_path / "data.db", "CREATE TABLE t (v JSON)", [(1,), ("x",)])

    with pytest.raises(SchemaError, match=r"column 'v' mixes text.*cast_to_text"):
        read_all(config(tmp_path, table="t"))


def test_cast_to_text_reads_any_storage_class_as_text(tmp_path: Path) -> None:
    make_db(
        tmp_path / "data.db",
        "CREATE TABLE t (id INTEGER, anything)",
        [(1, 5), (2, 2.5), (3, "x"), (4, b"bytes"), (5, None)],
    )

    schema, batches = read_all(config(tmp_path, table="t", cast_to_text=["anything"]))

    assert schema.field("anything").type == pa.string()
    assert [r["anything"] for r in rows_of(batches)] == ["5", "2.5", "x", "bytes", None]


def test_cast_to_text_rejects_non_utf8_blob_and_unknown_column(tmp_path: Path) -> None:
    make_db(tmp_path / "data.db", "CREATE TABLE t (v BLOB)", [(b"\xff\xfe",)])

    with pytest.raises(SchemaError, match=r"column 'v', row 1.*cast_to_text"):
        read_all(config(tmp_path, table="t", cast_to_text=["v"]))
    with pytest.raises(ConfigError, match="nope"):
        read_all(config(tmp_path, table="t", cast_to_text=["nope"]))


def test_untyped_table_column_is_binary_and_other_values_fail(tmp_path: Path) -> None:
    make_db(tmp_path / "data.db", "CREATE TABLE t (v)", [(b"x",), (3,)])

    with pytest.raises(SchemaError) as info:
        read_all(config(tmp_path, table="t"))

    assert "column 'v', row 2: INTEGER value 3 does not fit binary" in str(info.value)


def test_missing_database_file_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        read_all(config(tmp_path, table="t", connection={"path": "missing.db"}))

    assert str(tmp_path / "missing.db") in str(info.value)
    assert not (tmp_path / "missing.db").exists()


def test_file_that_is_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "data.db").write_bytes(b"this is not sqlite" * 300)

    with pytest.raises(SourceError, match=r"cannot open .*data\.db.*not a database"):
        read_all(config(tmp_path, table="t"))


@pytest.mark.parametrize(
    "source",
    [{"table": "t", "query": "SELECT 1"}, {}, {"table": "", "query": None}],
)
def test_exactly_one_of_table_and_query(tmp_path: Path, source: dict[str, Any]) -> None:
    make_db(tmp_path / "data.db", "CREATE TABLE t (id INTEGER)")

    with pytest.raises(ConfigError, match=r"exactly one of source\.table and source\.query"):
        read_all(config(tmp_path, **source))


def test_missing_connection_path_and_unknown_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"connection\.path is missing"):
        read_all(config(tmp_path, table="t", connection={}))
    with pytest.raises(ConfigError, match="unknown connection key"):
        read_all(config(tmp_path, table="t", connection={"path": "data.db", "dsn": "x"}))


def test_missing_table_lists_what_exists(tmp_path: Path) -> None:
    make_db(tmp_path / "data.db", "CREATE TABLE orders (id INTEGER)")

    with pytest.raises(SourceError) as info:
        read_all(config(tmp_path, table="customers"))

    assert "no table or view 'customers'" in str(info.value)
    assert "orders" in str(info.value)


def test_table_name_is_quoted_and_case_insensitive(tmp_path: Path) -> None:
    make_db(tmp_path / "data.db", 'CREATE TABLE "Order Items" (id INTEGER)', [(1,)], table='"Order Items"')

    _, batches = read_all(config(tmp_path, table="order items"))
    _, qualified = read_all(config(tmp_path, table="main.Order Items"))

    assert rows_of(batches) == [{"id": 1}]
    assert rows_of(qualified) == [{"id": 1}]


def test_bad_query_and_duplicate_columns(tmp_path: Path) -> None:
    make_db(tmp_path / "data.db", "CREATE TABLE t (id INTEGER)", [(1,)])

    with pytest.raises(SourceError, match=r"query failed.*syntax error"):
        read_all(config(tmp_path, query="SELEC id FROM t"))
    with pytest.raises(SchemaError, match="two columns named 'id'"):
        read_all(config(tmp_path, query="SELECT id, id FROM t"))


def test_database_is_opened_read_only(tmp_path: Path) -> None:
    make_db(tmp_path / "data.db", "CREATE TABLE t (id INTEGER)", [(1,), (2,)])

    with pytest.raises(SourceError, match="readonly"):
        read_all(config(tmp_path, query="DELETE FROM t RETURNING id"))

    conn = sqlite3.connect(tmp_path / "data.db")
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (2,)
    conn.close()


def test_zero_rows_gives_schema_and_no_batches(tmp_path: Path) -> None:
    make_db(tmp_path / "data.db", "CREATE TABLE t (id INTEGER, d DECIMAL(8,3))")

    schema, batches = read_all(config(tmp_path, table="t"))

    assert schema == pa.schema([("id", pa.int64()), ("d", pa.decimal128(8, 3))])
    assert batches == []


def test_absolute_path_and_reading_on_another_thread(tmp_path: Path) -> None:
    db = make_db(tmp_path / "elsewhere.db", "CREATE TABLE t (id INTEGER)", [(1,), (2,), (3,)])
    reader = SqliteReader()
    reader.initialize(config(tmp_path / "unused", table="t", connection={"path": str(db)}))
    collected: list[int] = []
    errors: list[BaseException] = []

    def consume() -> None:  # the engine iterates read_batch on a thread of its own
        try:
            for batch in reader.read_batch(2):
                collected.extend(batch.column("id").to_pylist())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=consume)
    thread.start()
    thread.join(30)
    reader.close()

    assert errors == []
    assert collected == [1, 2, 3]


def test_close_is_idempotent_and_lifecycle_errors(tmp_path: Path) -> None:
    reader = SqliteReader()
    reader.close()  # never initialized
    with pytest.raises(PluginError):
        reader.get_schema()

    make_db(tmp_path / "data.db", "CREATE TABLE t (id INTEGER)", [(1,)])
    reader.initialize(config(tmp_path, table="t"))
    reader.close()
    reader.close()
    with pytest.raises(PluginError):
        list(reader.read_batch(10))
