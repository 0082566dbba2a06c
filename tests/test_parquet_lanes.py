"""Parallel Parquet encoding lanes of the shared RollingParquetWriter."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dativo.targets._parquet import ParquetSettings, RollingParquetWriter

SCHEMA = pa.schema([("id", pa.int64()), ("s", pa.string())])


def batch(start: int, n: int) -> pa.RecordBatch:
    ids = pa.array(range(start, start + n), pa.int64())
    return pa.record_batch([ids, pa.array([f"v{i}" for i in range(start, start + n)])], schema=SCHEMA)


def opener(tmp_path, threads: set[str] | None = None):
    def open_file(index: int):
        if threads is not None:
            threads.add(threading.current_thread().name)
        path = tmp_path / f"part-{index}.parquet"
        return str(path), pa.OSFile(str(path), "wb")

    return open_file


def test_row_groups_spread_over_lanes_encoded_off_the_caller_thread(tmp_path):
    threads: set[str] = set()
    settings = ParquetSettings(row_group_bytes=4096)
    writer = RollingParquetWriter(SCHEMA, opener(tmp_path, threads), settings, lanes=3)
    assert writer.lanes == 3
    for start in range(0, 20_000, 1000):
        writer.write(batch(start, 1000))
    files = writer.close()
    assert [f.path for f in files] == writer.paths == [str(tmp_path / f"part-{i}.parquet") for i in range(3)]
    assert all(name.startswith("dativo-parquet") for name in threads)
    table = pa.concat_tables(pq.read_table(f.path) for f in files)
    assert sorted(table.column("id").to_pylist()) == list(range(20_000))
    assert sum(f.rows for f in files) == 20_000
    assert all(pq.ParquetFile(f.path).metadata.num_row_groups >= 2 for f in files)


def test_single_lane_writes_one_file_in_order(tmp_path):
    writer = RollingParquetWriter(SCHEMA, opener(tmp_path), ParquetSettings(row_group_bytes=4096), lanes=1)
    for start in range(0, 5000, 500):
        writer.write(batch(start, 500))
    (only,) = writer.close()
    assert pq.read_table(only.path).column("id").to_pylist() == list(range(5000))


def test_lane_failure_surfaces_and_abandon_closes_everything(tmp_path):
    calls = []

    def open_file(index: int):
        calls.append(index)
        if index == 1:
            raise OSError("disk full on lane 1")
        path = tmp_path / f"part-{index}.parquet"
        return str(path), pa.OSFile(str(path), "wb")

    writer = RollingParquetWriter(SCHEMA, open_file, ParquetSettings(row_group_bytes=4096), lanes=2)
    with pytest.raises(OSError, match="disk full on lane 1"):
        for start in range(0, 20_000, 1000):
            writer.write(batch(start, 1000))
        writer.close()
    writer.abandon()
    writer.abandon()
    assert sorted(calls)[:2] == [0, 1]


def _dictionary_columns(path: str) -> set[str]:
    metadata = pq.ParquetFile(path).metadata
    group = metadata.row_group(0)
    return {
        group.column(i).path_in_schema
        for i in range(group.num_columns)
        if group.column(i).dictionary_page_offset is not None
    }


def test_auto_dictionary_encodes_only_text_that_repeats_in_the_first_row_group(tmp_path):
    schema = pa.schema([("id", pa.int64()), ("key", pa.string()), ("colour", pa.string()), ("empty", pa.string())])
    n = 20_000
    data = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "key": [f"key-{i:08d}" for i in range(n)],  # unique: a dictionary only costs
            "colour": ["red", "green", "blue", "amber"] * (n // 4),
            "empty": pa.nulls(n, pa.string()),
        },
        schema=schema,
    )
    writer = RollingParquetWriter(schema, opener(tmp_path), ParquetSettings(), lanes=1)
    for chunk in data.to_batches(max_chunksize=5000):
        writer.write(chunk)
    (auto,) = writer.close()
    assert _dictionary_columns(auto.path) == {"colour"}
    assert pq.read_table(auto.path).equals(data)

    (tmp_path / "strings").mkdir()
    strings = RollingParquetWriter(schema, opener(tmp_path / "strings"), ParquetSettings(dictionary="strings"), lanes=1)
    strings.write(data.to_batches()[0])
    (every_text,) = strings.close()
    assert _dictionary_columns(every_text.path) == {"key", "colour", "empty"}


@pytest.mark.parametrize(("given", "expected"), [(None, "jemalloc"), ("system", "system")])
def test_the_dativo_command_picks_arrow_pool_before_pyarrow_loads(given, expected):
    """jemalloc on Linux unless the user chose a pool (measured: lower and flatter peak RSS than mimalloc)."""
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if given is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = given

    def pool(code: str) -> str:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return out.stdout.strip().splitlines()[-1]

    show = "import pyarrow as pa; print(pa.default_memory_pool().backend_name)"
    command = (
        "import sys; sys.argv = ['dativo', 'plugins', 'list']\nfrom dativo._entry import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
    )
    assert pool(command + show) == (expected if sys.platform.startswith("linux") or given else "system")
    # An application importing dativo keeps pyarrow's default (or its own choice): no process-wide change.
    assert pool("import dativo\n" + show) == pool(show)


def _typed_table(n: int) -> pa.Table:
    """Mixed types with nulls, unique and repetitive text, as the encoder sees them from a reader."""
    import decimal
    import hashlib

    fields = [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("maybe", pa.int64()),
        pa.field("ratio", pa.float64()),
        pa.field("hash", pa.string()),
        pa.field("colour", pa.string()),
        pa.field("at", pa.timestamp("us", tz="UTC")),
        pa.field("amount", pa.decimal128(14, 2)),
    ]
    schema = pa.schema([f.with_metadata({b"PARQUET:field_id": str(i + 1).encode()}) for i, f in enumerate(fields)])
    return pa.table(
        [
            pa.array(range(n), pa.int64()),
            pa.array([None if i % 7 == 0 else i * 31 for i in range(n)], pa.int64()),
            pa.array([(i * 2654435761 % 1000003) / 997 for i in range(n)], pa.float64()),
            pa.array([hashlib.md5(str(i).encode()).hexdigest() for i in range(n)]),
            pa.array([None if i % 11 == 0 else ("red", "green", "blue")[i % 3] for i in range(n)]),
            pa.array([1_600_000_000_000_000 + i * 1_000_003 for i in range(n)], pa.timestamp("us", tz="UTC")),
            pa.array([decimal.Decimal(i % 99_999) / 100 for i in range(n)], pa.decimal128(14, 2)),
        ],
        schema=schema,
    )


def test_write_batch_rows_changes_neither_values_nor_statistics_nor_iceberg_metrics(tmp_path):
    """The encoder's step (8,192 values by default, Arrow's 1,024 before) is invisible in what readers see."""
    from pyiceberg.io.pyarrow import pyarrow_to_schema
    from pyiceberg.typedef import Record

    from dativo.targets.iceberg.files import data_file

    data = _typed_table(50_001)  # not a multiple of any step: the last step of each row group is partial
    assert ParquetSettings().write_batch_rows == 8_192
    written = {}
    for rows in (1_024, 8_192):
        (tmp_path / str(rows)).mkdir()
        settings = ParquetSettings(row_group_bytes=1024 * 1024, write_batch_rows=rows)
        writer = RollingParquetWriter(data.schema, opener(tmp_path / str(rows)), settings, lanes=1)
        for chunk in data.to_batches(max_chunksize=4096):
            writer.write(chunk)
        (written[rows],) = writer.close()
        assert pq.read_table(written[rows].path).equals(data)

    old, new = (pq.ParquetFile(written[rows].path).metadata for rows in (1_024, 8_192))
    assert old.num_row_groups == new.num_row_groups >= 3
    for g in range(new.num_row_groups):
        for c in range(new.num_columns):
            before, after = old.row_group(g).column(c), new.row_group(g).column(c)
            assert after.statistics is not None and after.statistics.has_min_max
            assert after.statistics == before.statistics, (g, before.path_in_schema)

    schema = pyarrow_to_schema(data.schema)

    def metrics(rows: int) -> tuple:
        entry = data_file(written[rows], schema, {}, Record(), 0)
        return (entry.record_count, entry.value_counts, entry.null_value_counts, entry.lower_bounds, entry.upper_bounds)

    assert metrics(8_192) == metrics(1_024)
    assert metrics(8_192)[2][2] == len(range(0, 50_001, 7))  # null count of "maybe"


def test_write_batch_rows_reaches_the_encoder(tmp_path):
    """Pages close only between steps: with 4 KiB pages, one step of the whole row group makes one page per chunk."""
    data = pa.table({"id": pa.array(range(20_000), pa.int64())})

    def chunk_bytes(rows: int) -> int:
        folder = tmp_path / str(rows)
        folder.mkdir()
        settings = ParquetSettings(data_page_bytes=4096, write_batch_rows=rows, compression="none")
        writer = RollingParquetWriter(data.schema, opener(folder), settings, lanes=1)
        writer.write(data.to_batches()[0])
        (file,) = writer.close()
        return pq.ParquetFile(file.path).metadata.row_group(0).column(0).total_uncompressed_size

    # The same 160,000 bytes of values; each extra page adds a page header.
    assert chunk_bytes(1_024) > chunk_bytes(20_000) + 10 * 10
