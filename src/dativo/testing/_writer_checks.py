"""The writer rules' checks (``writer.*``): each takes the certification context and returns what it saw."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from dativo.testing._context import Context, Failed, Skipped, close_twice, describe, quietly_closed
from dativo.testing.scenarios import ReadBack, load_read_back
from dativo.testing.type_table import sample_table, storage_type, type_name

__all__ = ["WRITER_CHECKS"]


def _files_of(metadata: Mapping[str, Any], path: Path) -> list[str]:
    listed = metadata.get("files")
    if isinstance(listed, list) and listed:
        return [_local(str(item)) for item in listed]
    found = (p for p in path.rglob("*.parquet") if not p.name.startswith((".", "_")))
    return sorted(str(p) for p in found)


def _local(location: str) -> str:
    """A ``file:`` URI (what Iceberg lists) as a local path; anything else unchanged."""
    if location.startswith("file:"):
        return unquote(urlparse(location).path)
    return location


def _writer_roundtrip(ctx: Context) -> str:
    metadata, path, config = ctx.written()
    if not isinstance(metadata, Mapping):
        raise Skipped("finalize() returned no dict (see writer.finalize-metadata); nothing to read back")
    files = _files_of(metadata, path)
    if not files:
        raise Skipped("no Parquet files were listed in finalize()'s 'files' or found under the target path")
    if ctx.scenarios.read_back is not None:
        got = _read_back(ctx.scenarios.read_back, files, config)
    else:
        got = _read_parquet(files)
    expected = sample_table()
    if got.num_rows != expected.num_rows:
        raise Failed(f"{got.num_rows} rows read back, {expected.num_rows} written")
    if "id" not in got.column_names:
        raise Failed(f"column 'id' is missing from what was written (columns: {got.column_names})")
    got = got.sort_by("id")
    wrong: list[str] = []
    notes: set[str] = set()
    for name in expected.column_names:
        if name not in got.column_names:
            wrong.append(f"'{name}' missing")
            continue
        want = expected.column(name)
        have = got.column(name)
        widened = ctx.scenarios.widens.get(type_name(want.type))
        if widened is not None and str(have.type) == widened:
            want = want.cast(have.type)  # a widening the scenarios declare (and the suite knows to be lossless)
            notes.add(f"{type_name(expected.column(name).type)} stored as {widened}, as declared")
        if storage_type(have.type) != storage_type(want.type):
            wrong.append(f"'{name}' came back as {have.type}, written as {want.type}")
            continue
        have = _to_storage(have)
        if not have.equals(_to_storage(want)):
            wrong.append(f"'{name}' ({type_name(want.type)}) values differ: {have.to_pylist()[:3]}...")
    if wrong:
        raise Failed("round-trip differs: " + "; ".join(wrong))
    widened = f" ({'; '.join(sorted(notes))})" if notes else ""
    return (
        f"{len(expected.column_names)} columns of every table type read back equal from {len(files)} file(s)" + widened
    )


def _read_parquet(files: list[str]) -> pa.Table:
    if any(file.startswith(("s3://", "gs://", "az://")) or not file.endswith(".parquet") for file in files):
        raise Skipped(
            "the written files are not local Parquet files; round-trips are checked for Parquet only "
            "(give the scenarios a read_back function for other files)"
        )
    missing = [file for file in files if not Path(file).is_file()]
    if missing:
        raise Failed(f"finalize() lists files that do not exist: {', '.join(missing[:3])}")
    try:
        return pa.concat_tables([pq.read_table(file) for file in files], promote_options="permissive")
    except (pa.ArrowException, OSError) as exc:
        raise Failed(f"reading the written Parquet back failed: {describe(exc)}") from None


def _read_back(read_back: str | ReadBack, files: list[str], config: dict[str, Any]) -> pa.Table:
    function = load_read_back(read_back)
    try:
        table = function(files, config)
    except Exception as exc:
        raise Failed(f"reading the {len(files)} written file(s) back with read_back raised {describe(exc)}") from None
    if not isinstance(table, pa.Table):
        raise Failed(f"read_back returned {type(table).__name__}, not a pyarrow.Table")
    return table


def _to_storage(array: pa.ChunkedArray) -> pa.ChunkedArray:
    if isinstance(array.type, pa.ExtensionType):
        return pa.chunked_array([chunk.storage for chunk in array.chunks], type=array.type.storage_type)
    return array


def _check_metadata(metadata: object, rows: int) -> str:
    if not isinstance(metadata, Mapping):
        raise Failed(f"finalize() returned {type(metadata).__name__}; it must return a dict such as {{'rows': N}}")
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise Failed(f"finalize()'s dict is not JSON-serialisable: {exc}") from None
    if "rows" not in metadata:
        raise Failed(f"finalize()'s dict lacks 'rows' (keys: {', '.join(map(str, metadata)) or 'none'})")
    if metadata["rows"] != rows or isinstance(metadata["rows"], bool):
        raise Failed(f"finalize() reports rows = {metadata['rows']!r}, but {rows} rows were written")
    files = metadata.get("files")
    if files is not None and not (isinstance(files, list) and all(isinstance(item, str) for item in files)):
        raise Failed(f"finalize()'s 'files' must be a list of paths, not {files!r}")
    return f"{dict(metadata)}"[:200]


def _writer_metadata(ctx: Context) -> str:
    metadata, _, _ = ctx.written()
    return _check_metadata(metadata, sample_table().num_rows)


def _writer_empty(ctx: Context) -> str:
    writer, _ = ctx.writer()
    with quietly_closed(writer):
        writer.prepare(sample_table().schema)
        metadata = writer.finalize()
    return _check_metadata(metadata, 0)


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _writer_abort(ctx: Context) -> str:
    table = sample_table()
    for label, batches in (("after prepare()", []), ("after write_batch()", table.to_batches(max_chunksize=3))):
        before = _tree(ctx.workdir)
        writer, _ = ctx.writer()
        with quietly_closed(writer):
            writer.prepare(table.schema)
            for batch in batches:
                writer.write_batch(batch)
            try:
                writer.abort()
            except Exception as exc:
                raise Failed(f"abort() {label} raised {describe(exc)}") from None
        left = sorted(set(_tree(ctx.workdir)) - set(before))
        if left:
            raise Failed(f"abort() {label} left {len(left)} file(s) behind: {', '.join(left[:3])}")
    return "nothing left behind after abort() (after prepare, after writing)"


def _writer_after_finalize(ctx: Context) -> str:
    table = sample_table()
    writer, _ = ctx.writer()
    with quietly_closed(writer):
        writer.prepare(table.schema)
        writer.write_batch(table.to_batches()[0])
        writer.finalize()
        try:
            writer.write_batch(table.to_batches()[0])
        except Exception as exc:
            return f"raised {describe(exc)}"
    raise Failed("write_batch() after finalize() was accepted; it must raise (the data is already published)")


def _writer_close(ctx: Context) -> str:
    table = sample_table()
    writer, _ = ctx.writer()
    close_twice(writer, "without prepare()")
    writer, _ = ctx.writer()
    writer.prepare(table.schema)
    writer.write_batch(table.to_batches()[0])
    writer.finalize()
    close_twice(writer, "after finalize()")
    writer, _ = ctx.writer()
    writer.prepare(table.schema)
    writer.abort()
    close_twice(writer, "after abort()")
    return "close() twice is safe (without prepare, after finalize, after abort)"


WRITER_CHECKS: dict[str, Callable[[Context], str]] = {
    "writer.types-roundtrip": _writer_roundtrip,
    "writer.finalize-metadata": _writer_metadata,
    "writer.empty": _writer_empty,
    "writer.abort-leaves-nothing": _writer_abort,
    "writer.write-after-finalize": _writer_after_finalize,
    "writer.close-idempotent": _writer_close,
}
