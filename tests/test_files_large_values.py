"""The files reader and values larger than pyarrow's read block (1 MiB): CSV and JSON lines, real files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from dativo.connectors.files import FileReader

BIG = 3 << 20  # a 3 MiB value: three times pyarrow's default read block
SMALL_ROWS = 60_000  # about 1.5 MiB of small rows before it: the big row comes after the first block


def value(i: int) -> str:
    return f"v{i}" if i != SMALL_ROWS else "é" + "x" * BIG + "é"


def write(path: Path, fmt: str, ids: list[int]) -> Path:
    if fmt == "csv":
        path.write_text("id,text\n" + "".join(f'{i},"{value(i)}"\n' for i in ids), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps({"id": i, "text": value(i)}) + "\n" for i in ids), encoding="utf-8")
    return path


def read(path: Path, batch_size: int = 10_000, **source: Any) -> list[pa.RecordBatch]:
    reader = FileReader()
    try:
        reader.initialize(
            {"connector": "files", "path": str(path), "job": {"name": "t", "dir": str(path.parent)}, **source}
        )
        schema = reader.get_schema()
        batches = list(reader.read_batch(batch_size))
    finally:
        reader.close()
    assert all(batch.schema.equals(schema) for batch in batches)
    return batches


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_3_mib_value_after_the_first_block_is_read_once_and_whole(tmp_path, fmt):
    ids = list(range(SMALL_ROWS + 1000))  # small rows, the big one, more small rows
    batches = read(write(tmp_path / f"data.{fmt}", fmt, ids))
    got = [i for batch in batches for i in batch.column("id").to_pylist()]
    assert got == ids  # the rows read before the file was read again are not repeated
    texts = {row["id"]: row["text"] for batch in batches for row in batch.to_pylist()}
    assert len(texts[SMALL_ROWS]) == BIG + 2 and texts[SMALL_ROWS] == value(SMALL_ROWS)
    assert texts[SMALL_ROWS + 999] == f"v{SMALL_ROWS + 999}"
    assert max(batch.num_rows for batch in batches) <= 10_000


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_3_mib_value_in_the_first_row_is_inferred_and_read(tmp_path, fmt):
    ids = [SMALL_ROWS, 1, 2]
    batches = read(write(tmp_path / f"first.{fmt}", fmt, ids), batch_size=2)
    rows = [row for batch in batches for row in batch.to_pylist()]
    assert [row["id"] for row in rows] == ids
    assert len(rows[0]["text"]) == BIG + 2 and rows[2]["text"] == "v2"
    assert batches[0].schema.field("text").type == pa.string()


def test_files_after_a_long_row_and_a_declared_json_schema(tmp_path):
    """Several files: the larger block is kept for the files after; a declared JSON schema is read the same."""
    (tmp_path / "d").mkdir()
    write(tmp_path / "d" / "a.jsonl", "jsonl", [SMALL_ROWS - 1, SMALL_ROWS])
    write(tmp_path / "d" / "b.jsonl", "jsonl", [7, SMALL_ROWS, 8])
    batches = read(tmp_path / "d", options={"schema": {"id": "int64", "text": "string"}})
    rows = [row for batch in batches for row in batch.to_pylist()]
    assert [row["id"] for row in rows] == [SMALL_ROWS - 1, SMALL_ROWS, 7, SMALL_ROWS, 8]
    assert [len(row["text"]) for row in rows] == [len(f"v{SMALL_ROWS - 1}"), BIG + 2, 2, BIG + 2, 2]
