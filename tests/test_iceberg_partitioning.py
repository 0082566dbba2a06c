"""Partitioned Iceberg tables: new ones from ``partition_by``, existing ones made by another engine, bad transforms."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import BucketTransform, IdentityTransform, MonthTransform
from pyiceberg.types import BinaryType, IntegerType, NestedField, StringType, TimestamptzType

from dativo.config.loader import load_job
from dativo.engine.retry import run_job
from dativo.errors import ConfigError

from support.cli import assert_one_line_error, dativo
from support.iceberg_fixtures import embedded_catalog

PARTITION_BY = ["day(created_at)", "bucket(4, id)", "identity(region)", "truncate(2, sku)"]


@pytest.fixture
def orders(pg_db: Any) -> Any:
    pg_db.psql(
        "CREATE TABLE orders (id int PRIMARY KEY, created_at timestamptz, region text, sku text, payload bytea);"
        "INSERT INTO orders SELECT g, '2024-01-01 00:00:00+00'::timestamptz + (g % 5) * interval '1 day' "
        "+ g * interval '1 second', (ARRAY['eu', 'us', NULL])[1 + g % 3], 'sku-' || (g % 7), 'x'::bytea "
        "FROM generate_series(1, 300) g;"
    )
    return pg_db


def write_job(job_dir: Path, db: Any, mode: str = "append", **target: Any) -> Path:
    spec = {"connector": "iceberg", "table": "raw.orders", "mode": mode, **target}
    if mode == "merge":
        spec["merge"] = {"keys": ["id"]}
    path = job_dir / "orders.yaml"
    path.write_text(
        "name: orders\nsource:\n  connector: postgres\n"
        f"  connection: {json.dumps(db.connection)}\n  table: public.orders\n"
        f"target: {json.dumps(spec)}\n"
    )
    return path


def source_rows(db: Any) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        return [tuple(row) for row in conn.execute("SELECT id, region, sku FROM orders ORDER BY id").fetchall()]


def table_rows(job_dir: Path) -> list[tuple[Any, ...]]:
    data = embedded_catalog(job_dir).load_table("raw.orders").scan().to_arrow().sort_by("id")
    return list(zip(*(data.column(name).to_pylist() for name in ("id", "region", "sku")), strict=True))


def assert_files_split_by_partition(table: Any) -> int:
    """Every data file holds one partition: its rows' transformed values equal the file's partition record."""
    spec, schema = table.spec(), table.schema()
    partitions = set()
    for task in table.scan().plan_files():
        with table.io.new_input(task.file.file_path).open() as stream:
            rows = pq.read_table(stream)
        for position, field in enumerate(spec.fields):
            source = schema.find_field(field.source_id)
            kernel = field.transform.pyarrow_transform(source.field_type)
            values = set(kernel(rows.column(source.name).combine_chunks()).to_pylist())
            assert values == {task.file.partition[position]}, (task.file.file_path, field.name, values)
        partitions.add(tuple(task.file.partition[i] for i in range(len(spec.fields))))
    return len(partitions)


def test_new_table_gets_the_spec_and_files_split_by_partition(tmp_path, orders):
    path = write_job(tmp_path, orders, partition_by=PARTITION_BY, sort_by=["id"])
    assert dativo("validate", path).returncode == 0
    run_job(load_job(path))
    table = embedded_catalog(tmp_path).load_table("raw.orders")
    assert [(f.name, str(f.transform)) for f in table.spec().fields] == [
        ("created_at_day", "day"),
        ("id_bucket", "bucket[4]"),
        ("region", "identity"),
        ("sku_trunc", "truncate[2]"),
    ]
    assert [table.schema().find_column_name(f.source_id) for f in table.sort_order().fields] == ["id"]
    files = list(table.scan().plan_files())
    assert len(files) == assert_files_split_by_partition(table) > 20  # one file per partition
    for task in files:  # sort_by: rows of each file in id order
        with table.io.new_input(task.file.file_path).open() as stream:
            ids = pq.read_table(stream).column("id").to_pylist()
        assert ids == sorted(ids)
    assert table_rows(tmp_path) == source_rows(orders)
    # Partition pruning works on what dativo wrote: one region reads only its files.
    eu = table.scan(row_filter="region == 'eu'")
    assert {row for row in eu.to_arrow().column("region").to_pylist()} == {"eu"}
    assert len(list(eu.plan_files())) < len(files)


def existing_table(job_dir: Path, transform_field: PartitionField | None = None) -> Any:
    """A partitioned table made with PyIceberg directly (standing in for Spark or Trino), holding one row."""
    catalog = embedded_catalog(job_dir)
    catalog.create_namespace("raw")
    schema = Schema(
        NestedField(1, "id", IntegerType(), required=False),
        NestedField(2, "created_at", TimestamptzType(), required=False),
        NestedField(3, "region", StringType(), required=False),
        NestedField(4, "sku", StringType(), required=False),
        NestedField(5, "payload", BinaryType(), required=False),
    )
    fields = [
        PartitionField(2, 1000, MonthTransform(), "created_at_month"),
        PartitionField(3, 1001, IdentityTransform(), "region"),
        PartitionField(1, 1002, BucketTransform(3), "id_bucket"),
    ]
    if transform_field is not None:
        fields.append(transform_field)
    table = catalog.create_table("raw.orders", schema=schema, partition_spec=PartitionSpec(*fields))
    row = {"id": 0, "created_at": datetime(2023, 12, 31, tzinfo=UTC), "region": "apac", "sku": "old", "payload": b""}
    table.append(pa.Table.from_pylist([row], schema=table.schema().as_arrow()))
    return table


def rewrite_transform(job_dir: Path, table: Any, field: str, transform: str) -> None:
    """Give partition field ``field`` a transform name PyIceberg does not know, as another engine could."""
    metadata = json.loads(Path(table.metadata_location.removeprefix("file://")).read_text())
    for spec in metadata["partition-specs"]:
        for entry in spec["fields"]:
            if entry["name"] == field:
                entry["transform"] = transform
    new = Path(table.metadata_location.removeprefix("file://")).with_name("00099-edited.metadata.json")
    new.write_text(json.dumps(metadata))
    with sqlite3.connect(job_dir / "warehouse" / "catalog.db") as db:
        db.execute("UPDATE iceberg_tables SET metadata_location = ? WHERE table_name = 'orders'", (new.as_uri(),))


def test_existing_partitioned_table_append_merge_overwrite(tmp_path, orders):
    existing_table(tmp_path)
    path = write_job(tmp_path, orders)
    run_job(load_job(path))
    assert table_rows(tmp_path) == [(0, "apac", "old"), *source_rows(orders)]
    table = embedded_catalog(tmp_path).load_table("raw.orders")
    assert assert_files_split_by_partition(table) == len(list(table.scan().plan_files()))

    orders.psql(
        "UPDATE orders SET sku = 'changed' WHERE id % 10 = 0; INSERT INTO orders (id, region) VALUES (301, 'eu')"
    )
    run_job(load_job(write_job(tmp_path, orders, mode="merge")))
    assert table_rows(tmp_path) == [(0, "apac", "old"), *source_rows(orders)]
    table = embedded_catalog(tmp_path).load_table("raw.orders")
    assert assert_files_split_by_partition(table) == len(list(table.scan().plan_files()))

    run_job(load_job(write_job(tmp_path, orders, mode="overwrite")))
    assert table_rows(tmp_path) == source_rows(orders)
    table = embedded_catalog(tmp_path).load_table("raw.orders")
    assert [f.name for f in table.spec().fields] == ["created_at_month", "region", "id_bucket"]  # spec untouched
    assert assert_files_split_by_partition(table) == len(list(table.scan().plan_files()))


def test_a_transform_the_writer_cannot_compute_fails_validate(tmp_path, orders):
    path = write_job(tmp_path, orders, partition_by=["identity(id)", "day(region)"])
    result = dativo("validate", path)
    assert_one_line_error(result, "'day(region)'", "transform day", "column 'region'", code=2)
    assert not (tmp_path / "warehouse" / "catalog.db").exists() or not embedded_catalog(tmp_path).table_exists(
        "raw.orders"
    )


def test_an_existing_table_with_an_unwritable_transform_fails_validate(tmp_path, orders):
    # A transform PyIceberg does not know (written by a newer engine, say) cannot be computed per row.
    table = existing_table(tmp_path, PartitionField(4, 1003, IdentityTransform(), "sku_zorder"))
    rewrite_transform(tmp_path, table, "sku_zorder", "zorder")
    result = dativo("validate", write_job(tmp_path, orders))
    assert_one_line_error(result, "table raw.orders", "partition field 'sku_zorder'", "zorder", code=2)
    run = dativo("run", write_job(tmp_path, orders), "--quiet")
    assert_one_line_error(run, "partition field 'sku_zorder'", code=2)
    assert len(embedded_catalog(tmp_path).load_table("raw.orders").snapshots()) == 1  # nothing written


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("bucket(id)", "must be written bucket(N, id)"),
        ("week(created_at)", "unknown transform 'week'"),
        ("day(nope)", "column 'nope' is not in the source"),
        ("day(region)", "cannot apply to column 'region'"),
        ("day(created_at", "is not a partition transform"),
    ],
)
def test_bad_partition_by_names_the_entry(tmp_path, orders, entry, message):
    with pytest.raises(
        ConfigError, match=r"target\.partition_by: .*" + message.replace("(", r"\(").replace(")", r"\)")
    ):
        run_job(load_job(write_job(tmp_path, orders, partition_by=[entry])))
    assert not (tmp_path / "warehouse" / "raw" / "orders").exists() or not list(
        (tmp_path / "warehouse" / "raw" / "orders").rglob("*.parquet")
    )
