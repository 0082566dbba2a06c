"""The two built-in PostgreSQL readers against a real server.

Both readers (``postgres-adbc`` and ``postgres-psycopg``) must produce the same
canonical schema and the same values for every supported type; unsupported
types, values that do not fit and connection problems must fail with clear
dativo errors.
"""

from __future__ import annotations

import math
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as dtime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from dativo_postgres_rs import RustPostgresReader  # plugins/postgres-rs, built by scripts/test.sh

from dativo.connectors.postgres.adbc import AdbcPostgresReader
from dativo.connectors.postgres.psycopg import PsycopgPostgresReader
from dativo.connectors.postgres.types import SourceSpec, split_qualified_name
from dativo.errors import ConfigError, PluginError, SchemaError, SourceError, TypeMappingError

from support.process_plugins import FlightAdbcReader, GoPostgresReader, ServedAdbcReader

# The Go reader and the ADBC reader served out of process pass the same tests (issue #5).
READERS = [
    AdbcPostgresReader,
    PsycopgPostgresReader,
    RustPostgresReader,
    GoPostgresReader,
    ServedAdbcReader,
    FlightAdbcReader,
]
READER_IDS = ["adbc", "psycopg", "rust", "go-process", "adbc-process", "adbc-flight"]


@pytest.fixture(params=READERS, ids=READER_IDS)
def reader_cls(request):
    return request.param


def read(cls, connection, batch_size=1000, **source) -> tuple[pa.Schema, list[pa.RecordBatch], pa.Table]:
    """Run a reader the way the engine does; return its schema, batches and their concatenation."""
    reader = cls()
    try:
        reader.initialize(
            {"connector": "postgres", "connection": connection, "options": {}, "job": {"name": "t", "dir": "."}}
            | source
        )
        schema = reader.get_schema()
        batches = []
        for batch in reader.read_batch(batch_size):
            assert isinstance(batch, pa.RecordBatch)
            assert batch.schema == schema
            batches.append(batch)
    finally:
        reader.close()
    return schema, batches, pa.Table.from_batches(batches, schema=schema)


def initialize_error(cls, connection, **source) -> BaseException:
    """The exception a reader raises in initialize (it must raise there)."""
    reader = cls()
    try:
        with pytest.raises(Exception) as info:
            reader.initialize({"connector": "postgres", "connection": connection} | source)
    finally:
        reader.close()
    return info.value


def norm(value: Any) -> Any:
    """Make NaN comparable (NaN != NaN) and lists recursive."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, list):
        return [norm(v) for v in value]
    if isinstance(value, dict):
        return {k: norm(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------------
# The fidelity table: every supported type, NULL in each, edge values, and an array of each.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Col:
    name: str
    pg_type: str
    arrow: pa.DataType
    literals: tuple[str, str, str, str, str]  # SQL expressions for the 5 rows; row 3 is always NULL
    expected: tuple[Any, Any, Any, Any, Any]


INF = float("inf")
NAN = float("nan")

SCALARS = [
    Col("i2", "smallint", pa.int16(), ("-32768", "32767", "0", "NULL", "7"), (-32768, 32767, 0, None, 7)),
    Col(
        "i4",
        "integer",
        pa.int32(),
        ("-2147483648", "2147483647", "0", "NULL", "-1"),
        (-2147483648, 2147483647, 0, None, -1),
    ),
    Col(
        "i8",
        "bigint",
        pa.int64(),
        ("-9223372036854775808", "9223372036854775807", "0", "NULL", "1"),
        (-(2**63), 2**63 - 1, 0, None, 1),
    ),
    Col(
        "f4",
        "real",
        pa.float32(),
        ("'NaN'", "'Infinity'", "'-Infinity'", "NULL", "0.25"),
        (NAN, INF, -INF, None, 0.25),
    ),
    Col(
        "f8",
        "double precision",
        pa.float64(),
        ("'NaN'", "'Infinity'", "'-Infinity'", "NULL", "0.1"),
        (NAN, INF, -INF, None, 0.1),
    ),
    Col(
        "n38",
        "numeric(38,10)",
        pa.decimal128(38, 10),
        (
            "9999999999999999999999999999.9999999999",
            "-9999999999999999999999999999.9999999999",
            "0",
            "NULL",
            "1.5",
        ),
        (
            Decimal("9999999999999999999999999999.9999999999"),
            Decimal("-9999999999999999999999999999.9999999999"),
            Decimal(0),
            None,
            Decimal("1.5"),
        ),
    ),
    Col(
        "n0",
        "numeric(12,0)",
        pa.decimal128(12, 0),
        ("123456789012", "-1", "0", "NULL", "42"),
        (Decimal(123456789012), Decimal(-1), Decimal(0), None, Decimal(42)),
    ),
    Col(
        "n52",
        "numeric(5,2)",
        pa.decimal128(5, 2),
        ("123.45", "-0.01", "0.10", "NULL", "-999.99"),
        (Decimal("123.45"), Decimal("-0.01"), Decimal("0.1"), None, Decimal("-999.99")),
    ),
    Col(
        "nu",
        "numeric",
        pa.decimal128(38, 9),
        ("12345678901234567890123456789.123456789", "-0.000000001", "0", "NULL", "-42.5"),
        (Decimal("12345678901234567890123456789.123456789"), Decimal("-1E-9"), Decimal(0), None, Decimal("-42.5")),
    ),
    Col(
        "nneg",
        "numeric(3,-2)",  # negative scale (PostgreSQL 15+): whole hundreds, so decimal(5,0)
        pa.decimal128(5, 0),
        ("12300", "-99900", "0", "NULL", "100"),
        (Decimal(12300), Decimal(-99900), Decimal(0), None, Decimal(100)),
    ),
    Col(
        "txt",
        "text",
        pa.string(),
        ("'héllo wörld ✓ 日本語 🎉'", "''", "E'line1\\nline2\\ttab'", "NULL", "'it''s'"),
        ("héllo wörld ✓ 日本語 🎉", "", "line1\nline2\ttab", None, "it's"),
    ),
    Col("vc", "varchar(10)", pa.string(), ("'abc'", "''", "'ünï'", "NULL", "'x'"), ("abc", "", "ünï", None, "x")),
    Col(
        "bp",
        "char(5)",
        pa.string(),
        ("'ab'", "''", "'abcde'", "NULL", "'é'"),
        ("ab   ", "     ", "abcde", None, "é    "),
    ),
    Col("nm", "name", pa.string(), ("'pg_name'", "''", "'Ñame'", "NULL", "'x'"), ("pg_name", "", "Ñame", None, "x")),
    Col("b", "boolean", pa.bool_(), ("true", "false", "true", "NULL", "false"), (True, False, True, None, False)),
    Col(
        "d",
        "date",
        pa.date32(),
        ("'2024-02-29'", "'1970-01-01'", "'0001-01-01'", "NULL", "'9999-12-31'"),
        (date(2024, 2, 29), date(1970, 1, 1), date(1, 1, 1), None, date(9999, 12, 31)),
    ),
    Col(
        "tm",
        "time",
        pa.time64("us"),
        ("'23:59:59.999999'", "'00:00:00'", "'12:34:56.5'", "NULL", "'00:00:00.000001'"),
        (dtime(23, 59, 59, 999999), dtime(0), dtime(12, 34, 56, 500000), None, dtime(0, 0, 0, 1)),
    ),
    Col(
        "ts",
        "timestamp",
        pa.timestamp("us"),
        (
            "'2024-01-02 03:04:05.123456'",
            "'1900-01-01 00:00:00'",
            "'0001-01-01 00:00:00'",
            "NULL",
            "'9999-12-31 23:59:59.999999'",
        ),
        (
            datetime(2024, 1, 2, 3, 4, 5, 123456),
            datetime(1900, 1, 1),
            datetime(1, 1, 1),
            None,
            datetime(9999, 12, 31, 23, 59, 59, 999999),
        ),
    ),
    Col(
        # Inserted with TimeZone=Asia/Kolkata (+05:30), read with America/Los_Angeles: values are UTC instants.
        "tstz",
        "timestamptz",
        pa.timestamp("us", tz="UTC"),
        (
            "'2024-01-02 03:04:05.123456'",
            "'2024-06-01 12:00:00+02'",
            "'1970-01-01 00:00:00+00'",
            "NULL",
            "'2000-01-01 05:30:00'",
        ),
        (
            datetime(2024, 1, 1, 21, 34, 5, 123456, tzinfo=UTC),
            datetime(2024, 6, 1, 10, 0, tzinfo=UTC),
            datetime(1970, 1, 1, tzinfo=UTC),
            None,
            datetime(2000, 1, 1, tzinfo=UTC),
        ),
    ),
    Col(
        "u",
        "uuid",
        pa.uuid(),
        (
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
            "'00000000-0000-0000-0000-000000000000'",
            "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
            "NULL",
            "'123e4567-e89b-12d3-a456-426614174000'",
        ),
        (
            uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            uuid.UUID(int=0),
            uuid.UUID(int=2**128 - 1),
            None,
            uuid.UUID("123e4567-e89b-12d3-a456-426614174000"),
        ),
    ),
    Col(
        "by",
        "bytea",
        pa.binary(),
        ("'\\x000102ff00'", "''", "'\\x00'", "NULL", "'abc'"),
        (b"\x00\x01\x02\xff\x00", b"", b"\x00", None, b"abc"),
    ),
    Col(
        "j",
        "json",
        pa.string(),
        ('\'{"b": 1,  "a": [1, 2]}\'', "'[]'", "'\"ünï\"'", "NULL", "'null'"),
        ('{"b": 1,  "a": [1, 2]}', "[]", '"ünï"', None, "null"),
    ),
    Col(
        "jb",
        "jsonb",
        pa.string(),
        ('\'{"b": 1,  "a": [1, 2]}\'', "'[]'", "'\"ünï\"'", "NULL", "'null'"),
        ('{"a": [1, 2], "b": 1}', "[]", '"ünï"', None, "null"),
    ),
    Col(
        "e", "mood", pa.string(), ("'happy'", "'sad'", "'ok'", "NULL", "'happy'"), ("happy", "sad", "ok", None, "happy")
    ),
]


def array_of(col: Col) -> Col:
    """An array column over ``col``'s type: [v0, NULL, v2], [], [v4], NULL, [NULL]."""
    t = f"{col.pg_type}[]"
    lit, exp = col.literals, col.expected
    return Col(
        f"a_{col.name}",
        t,
        pa.list_(col.arrow),
        (f"ARRAY[{lit[0]}, NULL, {lit[2]}]::{t}", f"'{{}}'::{t}", f"ARRAY[{lit[4]}]::{t}", "NULL", f"ARRAY[NULL]::{t}"),
        ([exp[0], None, exp[2]], [], [exp[4]], None, [None]),
    )


FIDELITY = SCALARS + [array_of(c) for c in SCALARS]
EXPECTED_SCHEMA = pa.schema([pa.field(c.name, c.arrow, nullable=True) for c in FIDELITY])


def create_fidelity_table(db) -> None:
    rows = [", ".join(c.literals[r] for c in FIDELITY) for r in range(5)]
    db.psql(
        "SET TimeZone = 'Asia/Kolkata';\n"
        "CREATE TYPE mood AS ENUM ('happy', 'sad', 'ok');\n"
        f"CREATE TABLE fidelity (rowno int, {', '.join(f'{c.name} {c.pg_type}' for c in FIDELITY)});\n"
        + "".join(f"INSERT INTO fidelity VALUES ({r}, {row});\n" for r, row in enumerate(rows))
    )


@pytest.fixture
def fidelity_db(pg_db):
    create_fidelity_table(pg_db)
    return pg_db


def read_fidelity(cls, db, batch_size=2):
    connection = dict(db.connection, options="-c TimeZone=America/Los_Angeles")
    names = ", ".join(c.name for c in FIDELITY)
    return read(cls, connection, batch_size, query=f"SELECT {names} FROM fidelity ORDER BY rowno")


def test_fidelity_schema_and_values(reader_cls, fidelity_db):
    schema, batches, table = read_fidelity(reader_cls, fidelity_db)
    assert schema == EXPECTED_SCHEMA
    assert all(f.nullable for f in schema)
    assert len(batches) >= 3, "5 rows at batch_size=2 must arrive in several batches"
    assert table.num_rows == 5
    for col in FIDELITY:
        got = table.column(col.name).to_pylist()
        assert norm(got) == norm(list(col.expected)), col.name
        if col.arrow == pa.float32():
            assert got[4] == 0.25  # exact, not widened through a decimal string


def test_both_readers_return_identical_data(fidelity_db):
    _, _, a = read_fidelity(AdbcPostgresReader, fidelity_db, batch_size=3)
    _, _, b = read_fidelity(PsycopgPostgresReader, fidelity_db, batch_size=1)
    _, _, c = read_fidelity(RustPostgresReader, fidelity_db, batch_size=2)
    assert a.schema == b.schema == c.schema == EXPECTED_SCHEMA
    for col in FIDELITY:
        x, y, z = (t.column(col.name).combine_chunks() for t in (a, b, c))
        assert norm(x.to_pylist()) == norm(y.to_pylist()) == norm(z.to_pylist()), col.name
        if col.name not in ("f4", "f8", "a_f4", "a_f8"):  # NaN != NaN in Array.equals
            assert x.equals(y) and x.equals(z), col.name


def test_table_source_matches_query_source(reader_cls, fidelity_db):
    connection = dict(fidelity_db.connection, options="-c TimeZone=America/Los_Angeles")
    _, _, by_table = read(reader_cls, connection, 100, table="public.fidelity")
    _, _, by_query = read_fidelity(reader_cls, fidelity_db)
    assert by_table.schema.names == ["rowno", *EXPECTED_SCHEMA.names]
    by_table = by_table.sort_by("rowno").drop_columns(["rowno"])
    assert norm(by_table.to_pylist()) == norm(by_query.to_pylist())


def test_values_beyond_python_datetime_range(reader_cls, pg_db):
    """BC and far-future dates/timestamps and time 24:00 are exact; compared as raw Arrow integers."""
    pg_db.execute(
        "CREATE TABLE t AS SELECT "
        "ARRAY['4714-11-24 BC', '0044-03-15 BC', '5874897-12-31']::date[] AS d, "
        "'4714-11-24 00:00:00 BC'::timestamp AS ts_min, '200000-01-01 00:00:00'::timestamp AS ts_far, "
        "'24:00:00'::time AS t24"
    )
    ((days, far),) = pg_db.execute(
        "SELECT ARRAY(SELECT x - date '1970-01-01' FROM unnest(d) x), "
        "(extract(epoch FROM ts_far) * 1000000)::int8 FROM t"
    )
    assert days[0] == -2440588  # julian day 0, PostgreSQL's smallest date
    _, _, table = read(reader_cls, pg_db.connection, table="t")
    assert table.column("d").combine_chunks().values.view(pa.int32()).to_pylist() == days
    assert table.column("ts_min").combine_chunks().view(pa.int64()).to_pylist() == [-2440588 * 86_400_000_000]
    assert table.column("ts_far").combine_chunks().view(pa.int64()).to_pylist() == [far]
    assert table.column("t24").combine_chunks().view(pa.int64()).to_pylist() == [86_400_000_000]


# ---------------------------------------------------------------------------------------------
# Values and types that cannot be represented: clear errors naming the column.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("1.0000000001", "1.0000000001"),  # 10 fractional digits
        ("123456789012345678901234567890", "123456789012345678901234567890"),  # 30 integer digits
        ("'NaN'", "NaN"),
        ("'Infinity'", "Infinity"),
    ],
)
def test_unconstrained_numeric_that_does_not_fit_fails(reader_cls, pg_db, value, shown):
    pg_db.execute(
        "CREATE TABLE t (id int, amount numeric); "
        f"INSERT INTO t SELECT g, g FROM generate_series(1, 50) g; INSERT INTO t VALUES (51, {value})"
    )
    with pytest.raises(SchemaError) as info:
        read(reader_cls, pg_db.connection, 10, query="SELECT * FROM t ORDER BY id")
    msg = str(info.value)
    assert "'amount'" in msg
    assert shown in msg
    assert "cast_to_text" in msg and "numeric(p,s)" in msg


def test_unconstrained_numeric_cast_in_query_or_to_text_works(reader_cls, pg_db):
    pg_db.execute("CREATE TABLE t AS SELECT 1.0000000001::numeric AS amount")
    schema, _, table = read(reader_cls, pg_db.connection, query="SELECT amount::numeric(20,10) AS amount FROM t")
    assert schema.field("amount").type == pa.decimal128(20, 10)
    assert table.column("amount").to_pylist() == [Decimal("1.0000000001")]
    schema, _, table = read(reader_cls, pg_db.connection, table="t", cast_to_text=["amount"])
    assert schema.field("amount").type == pa.string()
    assert table.column("amount").to_pylist() == ["1.0000000001"]


def test_declared_numeric_nan_fails(reader_cls, pg_db):
    pg_db.execute("CREATE TABLE t (price numeric(10,2)); INSERT INTO t VALUES (1.5), ('NaN')")
    with pytest.raises(SchemaError, match=r"'price' \(numeric\(10,2\)\) holds NaN"):
        read(reader_cls, pg_db.connection, table="t")


NUMERIC_EDGES = [  # unscaled values around 2**63, where a reader's 64-bit fast path must hand over to 128 bits
    (
        "numeric(38,2)",
        ["92233720368547758.07", "92233720368547758.08", "-92233720368547758.08", "92233720368547758.99"],
    ),
    ("numeric(20,0)", ["9223372036854775807", "9223372036854775808", "-9223372036854775809", "99999999999999999999"]),
    (
        "numeric(38,10)",
        ["922337203.6854775808", "-922337203.6854775809", "0.0000000001", "9999999999999999999999999999.9999999999"],
    ),
]


@pytest.mark.parametrize(("sql_type", "values"), NUMERIC_EDGES, ids=[t for t, _ in NUMERIC_EDGES])
def test_numeric_values_around_64_bits_are_exact(reader_cls, pg_db, sql_type, values):
    rows = ", ".join(f"({i}, {v})" for i, v in enumerate(values))
    pg_db.execute(f"CREATE TABLE t (id int, amount {sql_type}); INSERT INTO t VALUES {rows}")
    _, _, table = read(reader_cls, pg_db.connection, query="SELECT * FROM t ORDER BY id")
    assert table.column("amount").to_pylist() == [Decimal(v) for v in values]


def test_numeric_wider_than_38_digits(reader_cls, pg_db):
    pg_db.execute(
        "CREATE TABLE t (big numeric(50,2)); INSERT INTO t VALUES (123456789012345678901234567890123456789012.25)"
    )
    err = initialize_error(reader_cls, pg_db.connection, table="t")
    assert isinstance(err, TypeMappingError)
    assert "'big'" in str(err) and "numeric(50,2)" in str(err) and "cast_to_text" in str(err)
    _, _, table = read(reader_cls, pg_db.connection, table="t", cast_to_text=["big"])
    assert table.column("big").to_pylist() == ["123456789012345678901234567890123456789012.25"]


@pytest.mark.parametrize(
    ("pg_type", "literal", "shown", "as_text"),
    [
        ("interval", "'1 day 2 hours'", "interval", "1 day 02:00:00"),
        ("money", "12.5", "money", "$12.50"),
        ("inet", "'10.0.0.1/8'", "inet", "10.0.0.1/8"),
        ("timetz", "'12:00:00+02'", "time with time zone", "12:00:00+02"),
        ("int4range", "'[1,5)'", "int4range", "[1,5)"),
        ("xml", "'<a/>'", "xml", "<a/>"),
        ("bit(3)", "B'101'", "bit(3)", "101"),
        ("interval[]", "ARRAY['1 day'::interval]", "interval[]", '{"1 day"}'),
    ],
)
def test_unmappable_type_names_column_and_type(reader_cls, pg_db, pg_type, literal, shown, as_text):
    pg_db.execute(f"CREATE TABLE t (id int, odd {pg_type}); INSERT INTO t VALUES (1, {literal})")
    err = initialize_error(reader_cls, pg_db.connection, table="t")
    assert isinstance(err, TypeMappingError)
    msg = str(err)
    assert f"'odd' ({shown})" in msg
    assert "cast_to_text: [odd]" in msg
    schema, _, table = read(reader_cls, pg_db.connection, table="t", cast_to_text=["odd"])
    assert schema.field("odd").type == pa.string()
    assert table.to_pylist() == [{"id": 1, "odd": as_text}]


@pytest.mark.parametrize("value", ["'infinity'", "'-infinity'"])
@pytest.mark.parametrize("pg_type", ["date", "timestamp", "timestamptz", "date[]"])
def test_infinite_dates_fail_naming_column(reader_cls, pg_db, pg_type, value):
    literal = f"ARRAY[{value}::date]" if pg_type == "date[]" else value
    pg_db.execute(f"CREATE TABLE t (id int, happened {pg_type}); INSERT INTO t VALUES (1, NULL), (2, {literal})")
    with pytest.raises(SchemaError) as info:
        read(reader_cls, pg_db.connection, table="t")
    assert "'happened'" in str(info.value) and "infinity" in str(info.value)


def test_multidimensional_array_fails_naming_column(reader_cls, pg_db):
    pg_db.execute("CREATE TABLE t (id int, grid int[]); INSERT INTO t VALUES (1, '{1,2}'), (2, '{{1,2},{3,4}}')")
    with pytest.raises(SchemaError, match=r"'grid' \(integer\[\]\) holds a 2-dimensional array"):
        read(reader_cls, pg_db.connection, table="t")


def test_domains_map_to_their_base_type(reader_cls, pg_db):
    pg_db.psql(
        "CREATE DOMAIN positive AS int CHECK (VALUE > 0);\n"
        "CREATE DOMAIN money2 AS numeric(8,2);\n"
        "CREATE TABLE t (p positive, ps positive[], m money2, ms money2[]);\n"
        "INSERT INTO t VALUES (1, '{1,2}', 3.5, '{4.25,NULL}');\n"
    )
    schema, _, table = read(reader_cls, pg_db.connection, table="t")
    assert schema == pa.schema(
        [
            ("p", pa.int32()),
            ("ps", pa.list_(pa.int32())),
            ("m", pa.decimal128(8, 2)),
            ("ms", pa.list_(pa.decimal128(8, 2))),
        ]
    )
    assert table.to_pylist() == [{"p": 1, "ps": [1, 2], "m": Decimal("3.5"), "ms": [Decimal("4.25"), None]}]


# ---------------------------------------------------------------------------------------------
# Sources: table names, queries, cast_to_text, configuration errors.
# ---------------------------------------------------------------------------------------------


def test_quoted_and_mixed_case_identifiers(reader_cls, pg_db):
    pg_db.psql(
        'CREATE SCHEMA "Sales Data";\n'
        'CREATE TABLE "Sales Data"."Order Items" ("Id" int, "Amount ""EUR""" numeric(6,2), lower_col text);\n'
        'INSERT INTO "Sales Data"."Order Items" VALUES (1, 2.50, \'x\');\n'
        "CREATE TABLE Folded (v int); INSERT INTO Folded VALUES (7);\n"
    )
    expected = [{"Id": 1, 'Amount "EUR"': Decimal("2.5"), "lower_col": "x"}]
    for name in ("Sales Data.Order Items", '"Sales Data"."Order Items"'):
        schema, _, table = read(reader_cls, pg_db.connection, table=name)
        assert schema.names == ["Id", 'Amount "EUR"', "lower_col"]
        assert table.to_pylist() == expected
    # An unquoted mixed-case name also finds a table created without quotes (stored lower case).
    _, _, table = read(reader_cls, pg_db.connection, table="public.Folded")
    assert table.to_pylist() == [{"v": 7}]
    _, _, table = read(reader_cls, pg_db.connection, table="Sales Data.Order Items", cast_to_text=['Amount "EUR"'])
    assert table.column('Amount "EUR"').to_pylist() == ["2.50"]


def test_query_with_comment_semicolon_and_percent(reader_cls, pg_db):
    pg_db.execute("CREATE TABLE t (s text); INSERT INTO t VALUES ('100%'), ('none')")
    query = "SELECT s, length(s) AS n FROM t WHERE s LIKE '%\\%' -- only percentages\n;"
    schema, _, table = read(reader_cls, pg_db.connection, query=query)
    assert schema == pa.schema([("s", pa.string()), ("n", pa.int32())])
    assert table.to_pylist() == [{"s": "100%", "n": 4}]


def test_empty_result_keeps_schema(reader_cls, pg_db):
    pg_db.execute("CREATE TABLE t (a bigint, b text[], c numeric(4,1))")
    schema, _, table = read(reader_cls, pg_db.connection, table="t")
    assert schema == pa.schema([("a", pa.int64()), ("b", pa.list_(pa.string())), ("c", pa.decimal128(4, 1))])
    assert table.num_rows == 0


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ({}, "exactly one of 'table' or 'query'"),
        ({"table": "t", "query": "SELECT 1"}, "both are set"),
        ({"table": "t", "cast_to_text": ["nope"]}, "cast_to_text names column"),
        ({"table": "t", "cast_to_text": "a"}, "must be a list"),
        ({"query": "SELECT 1 AS a, 2 AS a"}, "more than one column named 'a'"),
        ({"table": "a.b.c.d"}, "cannot parse table name"),
        ({"query": "SELECT FROM t"}, "returns no columns"),
    ],
)
def test_configuration_errors(reader_cls, pg_db, source, match):
    pg_db.execute("CREATE TABLE t (a int)")
    err = initialize_error(reader_cls, pg_db.connection, **source)
    assert isinstance(err, ConfigError)
    assert match in str(err)


def test_connection_errors_are_config_errors(reader_cls):
    err = initialize_error(reader_cls, {"host": "127.0.0.1", "bogus_option": "1"}, table="t")
    assert isinstance(err, ConfigError) and "bogus_option" in str(err)
    err = initialize_error(reader_cls, None, table="t")
    assert isinstance(err, ConfigError) and "connection" in str(err)


def test_split_qualified_name():
    assert split_qualified_name("public.orders") == [("public", False), ("orders", False)]
    assert split_qualified_name(' "A.b" . "c""d" ') == [("A.b", True), ('c"d', True)]
    assert split_qualified_name("Orders") == [("Orders", False)]
    for bad in ("", "a.", ".a", 'a."b', "a..b"):
        with pytest.raises(ConfigError):
            split_qualified_name(bad)
    assert SourceSpec.from_config({"query": "SELECT 1", "table": None}).query == "SELECT 1"


# ---------------------------------------------------------------------------------------------
# Connection failures.
# ---------------------------------------------------------------------------------------------


def test_wrong_password(reader_cls, pg_db):
    wrong = "Wr0ng-Secret-pw"
    err = initialize_error(reader_cls, dict(pg_db.connection, password=wrong), table="t")
    assert isinstance(err, SourceError) and not err.transient
    msg = str(err)
    assert "authentication failed" in msg and "'dativo'" in msg and "127.0.0.1" in msg
    assert wrong not in msg and pg_db.server.password not in msg
    dsn = pg_db.dsn.replace(pg_db.server.password, wrong)
    err = initialize_error(reader_cls, {"dsn": dsn}, table="t")
    assert isinstance(err, SourceError) and "authentication failed" in str(err) and wrong not in str(err)


def test_unreachable_server_is_transient(reader_cls):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = initialize_error(
        reader_cls, {"host": "127.0.0.1", "port": port, "user": "u", "password": "secret-pw", "dbname": "d"}, table="t"
    )
    assert isinstance(err, SourceError) and err.transient
    assert f"127.0.0.1:{port}" in str(err)
    assert "secret-pw" not in str(err)


def test_missing_table_and_database(reader_cls, pg_db):
    err = initialize_error(reader_cls, pg_db.connection, table="public.no_such_table")
    assert isinstance(err, SourceError) and not err.transient
    assert "'public.no_such_table' does not exist" in str(err)
    err = initialize_error(reader_cls, pg_db.connection, query="SELECT * FROM no_such_table")
    assert isinstance(err, SourceError) and "no_such_table" in str(err)
    err = initialize_error(reader_cls, dict(pg_db.connection, dbname="no_such_db"), table="t")
    assert isinstance(err, SourceError) and "database 'no_such_db' does not exist" in str(err)


def test_permission_denied(reader_cls, pg_db):
    role = f"low_{pg_db.name}"
    pg_db.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'low-priv-pw'; CREATE TABLE t (a int)")
    try:
        err = initialize_error(reader_cls, dict(pg_db.connection, user=role, password="low-priv-pw"), table="t")
    finally:
        pg_db.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
    assert isinstance(err, SourceError) and not err.transient
    assert "permission denied" in str(err) and f"grant SELECT on the source to user '{role}'" in str(err)


def test_query_error_reports_postgres_message(reader_cls, pg_db):
    err = initialize_error(reader_cls, pg_db.connection, query="SELEC 1")
    assert isinstance(err, SourceError) and "syntax error" in str(err)


def test_error_mid_stream_raises(reader_cls, pg_db):
    reader = reader_cls()
    reader.initialize(
        {"connection": pg_db.connection, "query": "SELECT g, 1 / (g - 30000) AS x FROM generate_series(1, 40000) g"}
    )
    received = 0
    try:
        with pytest.raises(SourceError, match="division by zero") as info:
            for batch in reader.read_batch(500):
                received += batch.num_rows
    finally:
        reader.close()
    assert not info.value.transient
    assert received < 30000
    if reader_cls is PsycopgPostgresReader:
        assert received >= 500  # the failure really came mid-stream


# ---------------------------------------------------------------------------------------------
# Streaming, batching and life cycle.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def big_table(pg_db):
    pg_db.execute(
        "CREATE TABLE big AS SELECT g::bigint AS id, md5(g::text) AS h, ((g % 1000) / 7.0)::numeric(10,4) AS n, "
        "timestamptz '2020-01-01' + g * interval '1 second' AS at FROM generate_series(1, 100000) g"
    )
    return pg_db


def test_large_table_streams_in_batches(reader_cls, big_table):
    reader = reader_cls()
    reader.initialize({"connection": big_table.connection, "table": "big"})
    try:
        sizes, total = [], 0
        for batch in reader.read_batch(10_000):
            sizes.append(batch.num_rows)
            total += pa.compute.sum(batch.column("id")).as_py()
    finally:
        reader.close()
    assert sum(sizes) == 100_000
    assert total == 100_000 * 100_001 // 2
    assert len(sizes) >= 5
    assert max(sizes) <= 12_500  # "about batch_size"
    if reader_cls is PsycopgPostgresReader:
        assert sizes == [10_000] * 10


def test_adbc_batches_are_capped_in_bytes(big_table):
    """However many rows are asked for, the ADBC driver's batches stay near its 4 MiB cap (memory in flight)."""
    from dativo.connectors.postgres.adbc import _MAX_HINT_BYTES

    reader = AdbcPostgresReader()
    reader.initialize({"connection": big_table.connection, "table": "big"})
    try:
        batches = list(reader.read_batch(1_000_000))
    finally:
        reader.close()
    table = pa.Table.from_batches(batches)
    assert table.num_rows == 100_000
    assert pa.compute.sum(table.column("id")).as_py() == 100_000 * 100_001 // 2
    assert table.nbytes > 1.5 * _MAX_HINT_BYTES  # the whole read would be one batch without the cap
    assert len(batches) >= 2
    assert max(b.nbytes for b in batches) <= 1.25 * _MAX_HINT_BYTES


def sessions(db) -> int:
    return db.server.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (db.name,)
    )[0][0]


def test_stop_early_and_close_release_everything(reader_cls, big_table):
    reader = reader_cls()
    reader.initialize({"connection": big_table.connection, "table": "big"})
    stream = reader.read_batch(1_000)
    first = next(stream)
    assert first.num_rows >= 500
    started = time.monotonic()
    stream.close()
    reader.close()
    reader.close()
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5
    while sessions(big_table) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sessions(big_table) == 0
    assert not [t for t in threading.enumerate() if t.name == "dativo-postgres-fetch"]


def test_close_from_another_thread_cancels_a_blocked_read(reader_cls, pg_db):
    reader = reader_cls()
    reader.initialize({"connection": pg_db.connection, "query": "SELECT 1 AS x FROM pg_sleep(60)"})
    outcome: list[BaseException | None] = []

    def consume():
        try:
            list(reader.read_batch(100))
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=consume)
    worker.start()
    deadline = time.monotonic() + 30
    while not pg_db.server.execute(
        # pg_sleep's wait event, not the query text: a server-side cursor shows as FETCH.
        "SELECT 1 FROM pg_stat_activity WHERE datname = %s AND state = 'active' AND wait_event = 'PgSleep' "
        "AND pid <> pg_backend_pid()",
        (pg_db.name,),
    ):
        assert time.monotonic() < deadline, "the read never reached pg_sleep on the server"
        time.sleep(0.05)
    started = time.monotonic()
    reader.close()
    worker.join(timeout=20)
    assert not worker.is_alive()
    assert time.monotonic() - started < 15
    assert len(outcome) == 1 and isinstance(outcome[0], SourceError)
    deadline = time.monotonic() + 5
    while sessions(pg_db) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sessions(pg_db) == 0


def test_close_is_idempotent_and_safe_without_initialize(reader_cls, pg_db):
    reader_cls().close()
    reader = reader_cls()
    with pytest.raises(SourceError):
        reader.initialize({"connection": pg_db.connection, "table": "missing"})
    reader.close()
    reader.close()
    with pytest.raises(SourceError, match="not initialized"):
        reader.get_schema()


def test_missing_extra_is_a_plugin_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(PluginError, match=r"dativo\[postgres\]"):
        PsycopgPostgresReader().initialize({"connection": {"host": "x"}, "table": "t"})
    monkeypatch.delitem(sys.modules, "psycopg")
    monkeypatch.setitem(sys.modules, "adbc_driver_postgresql.dbapi", None)
    with pytest.raises(PluginError, match=r"dativo\[postgres\]"):
        AdbcPostgresReader().initialize({"connection": {"host": "x"}, "table": "t"})
