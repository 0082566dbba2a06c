"""The built-in files reader: real CSV / Parquet / JSON-lines files in tmp_path and on a real S3 server."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dativo._secrets import redact
from dativo.connectors.files import FileReader, parse_arrow_type
from dativo.errors import ConfigError, PluginError, SchemaError, SourceError

from support.s3server import S3Server


def config(job_dir: Path, path: str, **source: Any) -> dict[str, Any]:
    return {"connector": "files", "path": path, "job": {"name": "test", "dir": str(job_dir)}, **source}


def read_all(cfg: dict[str, Any], batch_size: int = 1000) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    reader = FileReader()
    try:
        reader.initialize(cfg)
        schema = reader.get_schema()
        batches = list(reader.read_batch(batch_size))
    finally:
        reader.close()
    for batch in batches:
        assert batch.schema.equals(schema), (batch.schema, schema)
    assert all(field.nullable for field in schema)
    return schema, batches


def rows_of(batches: list[pa.RecordBatch]) -> list[dict[str, Any]]:
    return [row for batch in batches for row in batch.to_pylist()]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_parquet(path: Path, table: pa.Table) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    return write(path, "".join(json.dumps(row) + "\n" for row in rows))


# -- CSV ---------------------------------------------------------------------------


def test_csv_single_file_infers_types_and_nulls(tmp_path: Path) -> None:
    write(
        tmp_path / "orders.csv",
        'id,name,amount,placed_at,note\n1,ann,1.5,2024-01-02 03:04:05,""\n2,,2,2024-01-03 00:00:00,x\n',
    )

    schema, batches = read_all(config(tmp_path, "orders.csv"))

    assert schema == pa.schema(
        [
            ("id", pa.int64()),
            ("name", pa.string()),
            ("amount", pa.float64()),
            ("placed_at", pa.timestamp("s")),
            ("note", pa.string()),
        ]
    )
    # An unquoted empty field is null, a quoted empty field is an empty string.
    assert rows_of(batches) == [
        {"id": 1, "name": "ann", "amount": 1.5, "placed_at": dt.datetime(2024, 1, 2, 3, 4, 5), "note": ""},
        {"id": 2, "name": None, "amount": 2.0, "placed_at": dt.datetime(2024, 1, 3), "note": "x"},
    ]


def test_csv_directory_reads_data_files_in_order_as_several_batches(tmp_path: Path) -> None:
    data = tmp_path / "landing"
    write(data / "b.csv", "id,v\n3,c\n4,d\n5,e\n")
    write(data / "a.csv", "id,v\n1,a\n2,b\n")
    write(data / "sub" / "c.csv", "id,v\n6,f\n")
    with gzip.open(data / "d.csv.gz", "wt") as handle:
        handle.write("id,v\n7,g\n")
    write(data / "_SUCCESS", "")
    write(data / ".a.csv.crc", "garbage")
    write(data / "_tmp" / "x.csv", "id,v\nnot,read\n")
    write(data / "README.md", "not data")

    _, batches = read_all(config(tmp_path, "landing"), batch_size=2)

    assert [r["id"] for r in rows_of(batches)] == [1, 2, 3, 4, 5, 7, 6]  # sorted by path
    assert [b.num_rows for b in batches] == [2, 2, 1, 1, 1]  # batches never span files


def test_csv_glob_and_recursive_glob(tmp_path: Path) -> None:
    write(tmp_path / "in" / "2024-01.csv", "id\n1\n")
    write(tmp_path / "in" / "2024-02.csv", "id\n2\n")
    write(tmp_path / "in" / "2023-12.csv", "id\n0\n")
    write(tmp_path / "in" / "deep" / "2024-03.csv", "id\n3\n")

    _, flat = read_all(config(tmp_path, "in/2024-*.csv"))
    _, deep = read_all(config(tmp_path, "in/**/2024-*.csv"))
    _, chars = read_all(config(tmp_path, str(tmp_path / "in" / "202[3]-1?.csv")))

    assert [r["id"] for r in rows_of(flat)] == [1, 2]
    assert [r["id"] for r in rows_of(deep)] == [1, 2, 3]  # sorted by path
    assert [r["id"] for r in rows_of(chars)] == [0]


def test_csv_options_delimiter_header_encoding_null_values(tmp_path: Path) -> None:
    (tmp_path / "latin.csv").write_bytes("1;café;-\n2;NA;x\n".encode("latin-1"))

    schema, batches = read_all(
        config(
            tmp_path,
            "latin.csv",
            options={
                "delimiter": ";",
                "header": False,
                "encoding": "latin-1",
                "null_values": ["-", "NA"],
                "schema": {"id": "int32", "word": "string", "flag": "string"},
            },
        )
    )

    assert schema == pa.schema([("id", pa.int32()), ("word", pa.string()), ("flag", pa.string())])
    assert rows_of(batches) == [
        {"id": 1, "word": "café", "flag": None},
        {"id": 2, "word": None, "flag": "x"},
    ]


def test_csv_without_header_or_schema_gets_generated_names(tmp_path: Path) -> None:
    write(tmp_path / "raw.csv", "1,a\n2,b\n")

    schema, _ = read_all(config(tmp_path, "raw.csv", options={"header": False}))

    assert schema.names == ["f0", "f1"]


def test_csv_not_utf8_without_encoding_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "latin.csv").write_bytes("id,word\n1,caf\xe9\n".encode("latin-1"))

    with pytest.raises(SourceError, match=r"column 'word' of .*latin\.csv is not valid UTF-8.*encoding"):
        read_all(config(tmp_path, "latin.csv"))


def test_csv_explicit_schema_selects_orders_and_types_columns(tmp_path: Path) -> None:
    write(
        tmp_path / "pay.csv",
        "zip,amount,at,ignored,day\n"
        "00123,12.30,2024-01-02T03:04:05Z,zz,2024-05-06\n"
        "99999,,2024-01-02T03:04:05+02:00,zz,\n",
    )
    declared = {
        "amount": "decimal128(14,2)",
        "zip": "string",
        "at": "timestamp[us, tz=UTC]",
        "day": "date32",
    }

    schema, batches = read_all(config(tmp_path, "pay.csv", options={"schema": declared}))

    assert schema == pa.schema(
        [
            ("amount", pa.decimal128(14, 2)),
            ("zip", pa.string()),
            ("at", pa.timestamp("us", tz="UTC")),
            ("day", pa.date32()),
        ]
    )
    assert rows_of(batches) == [
        {
            "amount": Decimal("12.30"),
            "zip": "00123",  # not inferred as an integer: leading zeros kept
            "at": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
            "day": dt.date(2024, 5, 6),
        },
        {"amount": None, "zip": "99999", "at": dt.datetime(2024, 1, 2, 1, 4, 5, tzinfo=dt.UTC), "day": None},
    ]


def test_csv_declared_column_missing_from_a_file(tmp_path: Path) -> None:
    write(tmp_path / "d" / "a.csv", "id,v\n1,a\n")
    write(tmp_path / "d" / "b.csv", "id\n2\n")

    with pytest.raises(SchemaError) as info:
        read_all(config(tmp_path, "d", options={"schema": {"id": "int64", "v": "string"}}))

    assert "b.csv has no column 'v'" in str(info.value)
    assert "options.schema" in str(info.value)


def test_cast_to_text_keeps_raw_csv_text(tmp_path: Path) -> None:
    write(tmp_path / "a.csv", "id,code\n1,007\n2,1e5\n")

    schema, batches = read_all(config(tmp_path, "a.csv", cast_to_text=["code"]))

    assert schema.field("code").type == pa.string()
    assert schema.field("id").type == pa.int64()
    assert [r["code"] for r in rows_of(batches)] == ["007", "1e5"]


def test_compressed_csv_and_explicit_format_for_other_extensions(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "a.csv.gz", "wt") as handle:
        handle.write("id\n1\n2\n")
    write(tmp_path / "export.txt", "id\n3\n")

    _, gz = read_all(config(tmp_path, "a.csv.gz"))
    _, txt = read_all(config(tmp_path, "export.txt", format="csv"))

    assert [r["id"] for r in rows_of(gz)] == [1, 2]
    assert [r["id"] for r in rows_of(txt)] == [3]


# -- Parquet ---------------------------------------------------------------------------


def test_parquet_single_file_keeps_types_and_makes_fields_nullable(tmp_path: Path) -> None:
    table = pa.table(
        {
            "id": pa.array([1, 2], pa.int32()),
            "price": pa.array([Decimal("1.25"), None], pa.decimal128(9, 2)),
            "at": pa.array([dt.datetime(2024, 1, 1), None], pa.timestamp("us", tz="UTC")),
            "tag": pa.array(["x", "y"]).dictionary_encode(),
            "empty": pa.nulls(2),
        },
        schema=pa.schema(
            [
                pa.field("id", pa.int32(), nullable=False),
                ("price", pa.decimal128(9, 2)),
                ("at", pa.timestamp("us", tz="UTC")),
                ("tag", pa.dictionary(pa.int32(), pa.string())),
                ("empty", pa.null()),
            ]
        ),
    )
    write_parquet(tmp_path / "t.parquet", table)

    schema, batches = read_all(config(tmp_path, "t.parquet"))

    assert schema == pa.schema(
        [
            ("id", pa.int32()),
            ("price", pa.decimal128(9, 2)),
            ("at", pa.timestamp("us", tz="UTC")),
            ("tag", pa.string()),  # dictionary decoded
            ("empty", pa.string()),  # all-null column becomes string
        ]
    )
    assert rows_of(batches)[0] == {
        "id": 1,
        "price": Decimal("1.25"),
        "at": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        "tag": "x",
        "empty": None,
    }


def test_parquet_files_unified_by_casting(tmp_path: Path) -> None:
    write_parquet(tmp_path / "p" / "1.pq", pa.table({"id": pa.array([1], pa.int64()), "v": ["a"]}))
    write_parquet(tmp_path / "p" / "2.pq", pa.table({"v": ["b"], "id": pa.array([2], pa.int16())}))

    schema, batches = read_all(config(tmp_path, "p"))

    assert schema == pa.schema([("id", pa.int64()), ("v", pa.string())])
    assert rows_of(batches) == [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}]


def test_parquet_value_that_cannot_be_cast_names_file_and_column(tmp_path: Path) -> None:
    write_parquet(tmp_path / "p" / "1.parquet", pa.table({"n": pa.array([1], pa.int64())}))
    write_parquet(tmp_path / "p" / "2.parquet", pa.table({"n": pa.array([1.5], pa.float64())}))

    with pytest.raises(SchemaError) as info:
        read_all(config(tmp_path, "p"))

    message = str(info.value)
    assert "column 'n'" in message
    assert "2.parquet" in message
    assert "double" in message
    assert "int64" in message


def test_parquet_explicit_schema_casts(tmp_path: Path) -> None:
    write_parquet(tmp_path / "t.parquet", pa.table({"a": pa.array([1, 2], pa.int32()), "b": ["x", "y"]}))

    schema, batches = read_all(config(tmp_path, "t.parquet", options={"schema": {"a": "float64"}}))

    assert schema == pa.schema([("a", pa.float64())])
    assert rows_of(batches) == [{"a": 1.0}, {"a": 2.0}]


def test_parquet_in_batches(tmp_path: Path) -> None:
    write_parquet(tmp_path / "t.parquet", pa.table({"i": list(range(10))}))

    _, batches = read_all(config(tmp_path, "t.parquet"), batch_size=4)

    assert [b.num_rows for b in batches] == [4, 4, 2]
    assert [r["i"] for r in rows_of(batches)] == list(range(10))


# -- JSON lines --------------------------------------------------------------------------


def test_jsonl_single_file_and_missing_keys_are_null(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "e.jsonl", [{"id": 1, "kind": "a", "score": 0.5}, {"id": 2, "kind": "b"}])

    schema, batches = read_all(config(tmp_path, "e.jsonl"))

    assert schema == pa.schema([("id", pa.int64()), ("kind", pa.string()), ("score", pa.float64())])
    assert rows_of(batches) == [
        {"id": 1, "kind": "a", "score": 0.5},
        {"id": 2, "kind": "b", "score": None},
    ]


def test_jsonl_several_files_and_explicit_schema(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "j" / "1.ndjson", [{"id": 1, "amount": 1.5, "extra": True}])
    write_jsonl(tmp_path / "j" / "2.json", [{"id": 2}, {"id": 3, "amount": 2}])
    with gzip.open(tmp_path / "j" / "3.jsonl.gz", "wt") as handle:
        handle.write(json.dumps({"id": 4, "amount": 0.25}) + "\n")

    schema, batches = read_all(
        config(tmp_path, "j", format="jsonl", options={"schema": {"id": "int64", "amount": "decimal128(6,2)"}}),
        batch_size=1,
    )

    assert schema == pa.schema([("id", pa.int64()), ("amount", pa.decimal128(6, 2))])
    assert rows_of(batches) == [
        {"id": 1, "amount": Decimal("1.50")},
        {"id": 2, "amount": None},
        {"id": 3, "amount": Decimal("2.00")},
        {"id": 4, "amount": Decimal("0.25")},
    ]
    assert len(batches) == 4


def test_jsonl_later_file_with_unknown_key(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "j" / "1.jsonl", [{"id": 1}])
    write_jsonl(tmp_path / "j" / "2.jsonl", [{"id": 2, "surprise": "x"}])

    with pytest.raises(SchemaError, match=r"2\.jsonl has column 'surprise'"):
        read_all(config(tmp_path, "j"))


def test_jsonl_value_of_the_wrong_kind(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "j" / "1.jsonl", [{"id": 1}])
    write_jsonl(tmp_path / "j" / "2.jsonl", [{"id": "two"}])

    with pytest.raises(SourceError) as info:
        read_all(config(tmp_path, "j"))

    assert "2.jsonl" in str(info.value)
    assert "/id" in str(info.value)


# -- schema disagreement between CSV files --------------------------------------------------


def test_csv_files_unified_by_parsing_into_the_first_files_types(tmp_path: Path) -> None:
    write(tmp_path / "d" / "1.csv", "id,x\n1,1.5\n")
    write(tmp_path / "d" / "2.csv", "x,id\n2,2\n")  # x looks like an integer here; columns reordered

    schema, batches = read_all(config(tmp_path, "d"))

    assert schema == pa.schema([("id", pa.int64()), ("x", pa.float64())])
    assert rows_of(batches) == [{"id": 1, "x": 1.5}, {"id": 2, "x": 2.0}]


def test_csv_value_that_does_not_parse_names_file_column_and_row(tmp_path: Path) -> None:
    write(tmp_path / "d" / "1.csv", "id,x\n1,2\n")
    write(tmp_path / "d" / "2.csv", "id,x\n2,3\n3,4.5\n")

    with pytest.raises(SourceError) as info:
        read_all(config(tmp_path, "d"))

    message = str(info.value)
    assert "2.csv" in message
    assert "'x'" in message
    assert "Row #3" in message
    assert "options.schema" in message


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        ("id,x,y\n2,3,4\n", r"2\.csv has column 'y', which the first file"),
        ("id\n2\n", r"2\.csv has no column 'x'"),
    ],
)
def test_csv_files_with_different_columns(tmp_path: Path, second: str, expected: str) -> None:
    write(tmp_path / "d" / "1.csv", "id,x\n1,2\n")
    write(tmp_path / "d" / "2.csv", second)

    with pytest.raises(SchemaError, match=expected):
        read_all(config(tmp_path, "d"))


# -- errors -------------------------------------------------------------------------------


def test_missing_path_names_the_resolved_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        read_all(config(tmp_path, "nowhere/orders.csv"))

    assert str(tmp_path / "nowhere" / "orders.csv") in str(info.value)
    assert "does not exist" in str(info.value)


def test_glob_matching_nothing_and_empty_directory(tmp_path: Path) -> None:
    write(tmp_path / "d" / "a.csv", "id\n1\n")
    (tmp_path / "empty").mkdir()

    with pytest.raises(SourceError, match=r"no file matches .*\*\.parquet"):
        read_all(config(tmp_path, "d/*.parquet"))
    with pytest.raises(SourceError, match=r"no csv, parquet or jsonl files under .*empty"):
        read_all(config(tmp_path, "empty"))
    with pytest.raises(SourceError, match="no parquet files under"):
        read_all(config(tmp_path, "d", format="parquet"))


def test_garbled_first_file_fails_initialize_naming_it(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"definitely not parquet" * 10)

    reader = FileReader()
    with pytest.raises(SourceError) as info:
        reader.initialize(config(tmp_path, "bad.parquet"))
    reader.close()

    assert str(tmp_path / "bad.parquet") in str(info.value)
    assert "magic bytes" in str(info.value)


def test_garbled_later_file_fails_the_read_naming_it(tmp_path: Path) -> None:
    write_parquet(tmp_path / "p" / "1.parquet", pa.table({"n": [1]}))
    (tmp_path / "p" / "2.parquet").write_bytes(b"PAR1 but not really")

    reader = FileReader()
    reader.initialize(config(tmp_path, "p"))
    batches = reader.read_batch(10)
    first = next(batches)
    with pytest.raises(SourceError, match=r"cannot read .*2\.parquet as parquet"):
        next(batches)
    reader.close()

    assert first.to_pylist() == [{"n": 1}]


def test_garbled_csv_row(tmp_path: Path) -> None:
    write(tmp_path / "ragged.csv", "a,b\n1,2\n3,4,5\n")

    with pytest.raises(SourceError, match=r"ragged\.csv.*Expected 2 columns, got 3"):
        read_all(config(tmp_path, "ragged.csv"))


def test_format_that_cannot_be_inferred_or_is_ambiguous(tmp_path: Path) -> None:
    write(tmp_path / "data.bin", "x")
    write(tmp_path / "mix" / "a.csv", "id\n1\n")
    write_parquet(tmp_path / "mix" / "b.parquet", pa.table({"id": [2]}))

    with pytest.raises(ConfigError, match=r"cannot tell the format of .*data\.bin"):
        read_all(config(tmp_path, "data.bin"))
    with pytest.raises(ConfigError, match="holds csv and parquet files"):
        read_all(config(tmp_path, "mix"))
    _, batches = read_all(config(tmp_path, "mix", format="parquet"))
    assert rows_of(batches) == [{"id": 2}]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ({"format": "xml"}, "unknown format 'xml'"),
        ({"options": {"delimiter": ";;"}}, "options.delimiter must be a single character"),
        ({"options": {"sep": ";"}}, "unknown csv option"),
        ({"options": {"schema": {"id": "integer64"}}}, "column 'id': unknown Arrow type 'integer64'"),
        ({"options": {"schema": []}}, "options.schema must be a non-empty mapping"),
        ({"options": {"header": "yes"}}, "options.header must be true or false"),
        ({"options": {"encoding": "klingon"}}, "unknown options.encoding"),
        ({"connection": {"access_key": "x"}}, "unknown connection key"),
        ({"path": None}, "source.path is missing"),
        ({"path": "ftp://host/x.csv"}, "unsupported URL scheme"),
        ({"cast_to_text": ["nope"]}, "cast_to_text names column"),
        (
            {"cast_to_text": ["id"], "options": {"schema": {"id": "int64"}}},
            "in cast_to_text but declared int64",
        ),
    ],
)
def test_configuration_errors(tmp_path: Path, source: dict[str, Any], expected: str) -> None:
    write(tmp_path / "a.csv", "id\n1\n")
    cfg = config(tmp_path, "a.csv")
    cfg.update(source)

    with pytest.raises(ConfigError) as info:
        read_all(cfg)

    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("int64", pa.int64()),
        ("INT32", pa.int32()),
        ("string", pa.string()),
        ("bool", pa.bool_()),
        ("float64", pa.float64()),
        ("double", pa.float64()),
        ("date32", pa.date32()),
        ("binary", pa.binary()),
        ("timestamp[us]", pa.timestamp("us")),
        ("timestamp[us, tz=UTC]", pa.timestamp("us", tz="UTC")),
        ("timestamp[ms,tz=Europe/Paris]", pa.timestamp("ms", tz="Europe/Paris")),
        ("decimal128(14,2)", pa.decimal128(14, 2)),
        ("decimal128(14, 2)", pa.decimal128(14, 2)),  # str() of the Arrow type round-trips
        ("decimal(10)", pa.decimal128(10, 0)),
        ("decimal(40,2)", pa.decimal256(40, 2)),
        ("time64[us]", pa.time64("us")),
    ],
)
def test_parse_arrow_type(text: str, expected: pa.DataType) -> None:
    assert parse_arrow_type(text) == expected


@pytest.mark.parametrize("text", ["integer64", "decimal128(39,2)", "decimal128(0,0)", "list<int64>", ""])
def test_parse_arrow_type_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_arrow_type(text)


def test_lifecycle_errors_and_idempotent_close(tmp_path: Path) -> None:
    reader = FileReader()
    reader.close()  # never initialized
    with pytest.raises(PluginError):
        reader.get_schema()
    write(tmp_path / "a.csv", "id\n1\n")
    reader.initialize(config(tmp_path, "a.csv"))
    reader.close()
    reader.close()
    with pytest.raises(PluginError):
        list(reader.read_batch(10))


# -- S3 (moto's real HTTP server) -------------------------------------------------------


def put_csv(server: S3Server, bucket: str, key: str, text: str) -> None:
    server.put_object(bucket, key, text.encode())


def test_s3_single_object(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    put_csv(s3_server, s3_bucket, "in/orders.csv", "id,v\n1,a\n2,b\n")

    schema, batches = read_all(config(tmp_path, f"s3://{s3_bucket}/in/orders.csv", connection=s3_server.connection()))

    assert schema == pa.schema([("id", pa.int64()), ("v", pa.string())])
    assert rows_of(batches) == [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}]


def test_s3_prefix_with_several_files_and_batches(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    put_csv(s3_server, s3_bucket, "in/2.csv", "id\n3\n4\n5\n")
    put_csv(s3_server, s3_bucket, "in/1.csv", "id\n1\n2\n")
    put_csv(s3_server, s3_bucket, "in/_SUCCESS", "")
    put_csv(s3_server, s3_bucket, "other/9.csv", "id\n9\n")

    _, batches = read_all(config(tmp_path, f"s3://{s3_bucket}/in/", connection=s3_server.connection()), batch_size=2)

    assert [r["id"] for r in rows_of(batches)] == [1, 2, 3, 4, 5]
    assert [b.num_rows for b in batches] == [2, 2, 1]


def test_s3_glob_parquet_and_jsonl(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    local = write_parquet(tmp_path / "x.parquet", pa.table({"id": [1, 2], "v": [0.5, None]}))
    s3_server.put_object(s3_bucket, "p/day=1/x.parquet", local.read_bytes())
    s3_server.put_object(s3_bucket, "p/day=2/x.parquet", local.read_bytes())
    s3_server.put_object(s3_bucket, "p/day=2/notes.txt", b"ignored")
    s3_server.put_object(s3_bucket, "j/e.jsonl", b'{"id": 7}\n')

    _, parquet = read_all(config(tmp_path, f"s3://{s3_bucket}/p/*/*.parquet", connection=s3_server.connection()))
    _, jsonl = read_all(config(tmp_path, f"s3://{s3_bucket}/j", connection=s3_server.connection()))

    assert [r["id"] for r in rows_of(parquet)] == [1, 2, 1, 2]
    assert rows_of(jsonl) == [{"id": 7}]


def test_s3_credentials_from_the_environment(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_csv(s3_server, s3_bucket, "a.csv", "id\n1\n")
    key_id, secret = s3_server.create_iam_credentials()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    connection = {"endpoint_url": s3_server.endpoint_url, "region": s3_server.region}  # no keys

    with s3_server.enforce_auth():  # only the IAM user's keys are accepted now
        _, batches = read_all(config(tmp_path, f"s3://{s3_bucket}/a.csv", connection=connection))

    assert rows_of(batches) == [{"id": 1}]


def test_s3_bad_credentials_error_hides_the_secret(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    put_csv(s3_server, s3_bucket, "a.csv", "id\n1\n")
    secret = "wrong-secret-Zq81xT0pK"
    connection = {**s3_server.connection(), "access_key_id": "AKIAWRONGKEY0001", "secret_access_key": secret}

    with s3_server.enforce_auth(), pytest.raises(SourceError) as info:
        read_all(config(tmp_path, f"s3://{s3_bucket}/a.csv", connection=connection))

    message = str(info.value)
    assert f"s3://{s3_bucket}/a.csv" in message
    assert "ACCESS_DENIED" in message or "INVALID_ACCESS_KEY_ID" in message
    assert secret not in message
    assert redact(secret) == "***"  # the reader registered the secret for every later redaction


def test_s3_missing_key_and_missing_bucket(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=rf"s3://{s3_bucket}/nope\.csv does not exist"):
        read_all(config(tmp_path, f"s3://{s3_bucket}/nope.csv", connection=s3_server.connection()))
    with pytest.raises(SourceError, match=r"bucket 'no-such-bucket-dativo' .* does not exist"):
        read_all(config(tmp_path, "s3://no-such-bucket-dativo/x.csv", connection=s3_server.connection()))


def test_s3_unreachable_endpoint_is_transient(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    connection = {
        "endpoint_url": f"http://127.0.0.1:{port}",
        "region": "us-east-1",
        "access_key_id": "AKIAUNREACHABLE01",
        "secret_access_key": "unreachable-secret-77",
    }

    with pytest.raises(SourceError) as info:
        read_all(config(tmp_path, "s3://bucket-x/a.csv", connection=connection))

    assert info.value.transient
    assert "unreachable-secret-77" not in str(info.value)


def test_s3_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both access_key_id and secret_access_key"):
        read_all(config(tmp_path, "s3://b-x/a.csv", connection={"access_key_id": "AKIAONLYKEY"}))
    with pytest.raises(ConfigError, match="names no bucket"):
        read_all(config(tmp_path, "s3://", connection={}))
    with pytest.raises(ConfigError, match="cannot contain wildcards"):
        read_all(config(tmp_path, "s3://b*/a.csv", connection={}))
    assert os.environ.get("AWS_ACCESS_KEY_ID") != "AKIAONLYKEY"
