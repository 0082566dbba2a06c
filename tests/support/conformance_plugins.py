"""A well-behaved reader and writer, and deliberately broken variants, for the conformance suite's own tests.

Each broken plugin breaks exactly one rule; ``BROKEN_READERS`` / ``BROKEN_WRITERS``
map its class name to the rule certification must name.
Options (the scenarios in ``SCENARIOS``): ``rows``, ``fail_at_row``,
``large_value_bytes``, ``all_types``.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dativo import DataReader, DataWriter, SourceError, TargetError
from dativo.testing import sample_table

SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string()), ("score", pa.float64()), ("payload", pa.binary())])

SCENARIOS: dict[str, Any] = {
    "reader": {
        "standard": {"options": {"rows": 100}},
        "empty": {"options": {"rows": 0}},
        "large_values": {"options": {"rows": 3, "large_value_bytes": 3 * 1024 * 1024}},
        "error": {"options": {"rows": 100, "fail_at_row": 50}},
        "all_types": {"options": {"all_types": True}},
    },
    "writer": {"standard": {}},
}


class GoodReader(DataReader):
    """A deterministic dataset: ``rows`` rows of (id, name, score, payload)."""

    def initialize(self, config: Any) -> None:
        self.options = dict(config.get("options") or {})
        self.closed = False

    def get_schema(self) -> pa.Schema:
        return sample_table().schema if self.options.get("all_types") else SCHEMA

    def rows(self) -> Iterator[tuple[int, str, float, bytes]]:
        big = int(self.options.get("large_value_bytes", 0))
        fail_at = self.options.get("fail_at_row")
        for i in range(int(self.options.get("rows", 100))):
            if fail_at is not None and i == int(fail_at):
                raise SourceError(f"example failure at row {i} (option fail_at_row)")
            yield i, f"row {i}", i * 0.5, (b"x" * big if i == 0 and big else bytes([i % 256]))

    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        if self.options.get("all_types"):
            yield from sample_table().to_batches(max_chunksize=batch_size)
            return
        chunk: list[tuple[int, str, float, bytes]] = []
        for row in self.rows():
            chunk.append(row)
            if len(chunk) == batch_size:
                yield self.batch(chunk)
                chunk = []
        if chunk:
            yield self.batch(chunk)

    def batch(self, rows: list[tuple[int, str, float, bytes]]) -> pa.RecordBatch:
        columns = list(zip(*rows, strict=True))
        return pa.record_batch([pa.array(c, type=f.type) for c, f in zip(columns, SCHEMA, strict=True)], schema=SCHEMA)

    def close(self) -> None:
        self.closed = True


class GoodWriter(DataWriter):
    """Parquet files staged in a hidden folder and renamed into ``path`` at finalize."""

    def initialize(self, config: Any) -> None:
        self.target = Path(config["path"])
        self.staging = self.target.parent / f".{self.target.name}.staging-{uuid.uuid4().hex}"
        self.files: list[Path] = []
        self.rows = 0
        self.finalized = False

    def prepare(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.staging.mkdir(parents=True)

    def write_batch(self, batch: pa.RecordBatch) -> None:
        if self.finalized:
            raise TargetError("write_batch() after finalize(): the data is already published")
        file = self.staging / f"part-{len(self.files):05d}.parquet"
        pq.write_table(pa.Table.from_batches([batch], schema=self.schema), file)
        self.files.append(file)
        self.rows += batch.num_rows

    def finalize(self) -> dict[str, Any]:
        self.target.mkdir(parents=True, exist_ok=True)
        published = []
        for file in self.files:
            os.replace(file, self.target / file.name)
            published.append(str(self.target / file.name))
        self.staging.rmdir()
        self.finalized = True
        return {"rows": self.rows, "files": published}

    def abort(self) -> None:
        for file in self.files:
            file.unlink(missing_ok=True)
        if self.staging.exists():
            self.staging.rmdir()

    def close(self) -> None:
        self.files = []


# -- broken readers ----------------------------------------------------------------------------------


class SchemaChangesMidStream(GoodReader):
    def batch(self, rows: list[tuple[int, str, float, bytes]]) -> pa.RecordBatch:
        batch = super().batch(rows)
        if rows[0][0] == 0:
            return batch
        return batch.set_column(2, "score", batch.column(2).cast(pa.string()))


class FewerColumnsThanDeclared(GoodReader):
    def batch(self, rows: list[tuple[int, str, float, bytes]]) -> pa.RecordBatch:
        return super().batch(rows).drop_columns(["payload"])


class SwallowsErrors(GoodReader):
    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        try:
            yield from super().read_batch(batch_size)
        except SourceError:
            return  # "end of data": exactly what a reader must never do


class CloseRaises(GoodReader):
    def close(self) -> None:
        if self.closed:
            raise RuntimeError("already closed")
        self.closed = True


class IgnoresBatchSize(GoodReader):
    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        yield from super().read_batch(1_000_000)


class LeaksThread(GoodReader):
    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        stop = threading.Event()
        # A prefetch thread nobody stops: close() leaves it running.
        threading.Thread(target=lambda: stop.wait(60), name="leaky-prefetch", daemon=True).start()
        yield from super().read_batch(batch_size)
        stop.set()


class NoSchemaBeforeData(GoodReader):
    def get_schema(self) -> pa.Schema:
        return None  # type: ignore[return-value]  # "known once data was read"


class EmptySourceFails(GoodReader):
    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        if int(self.options.get("rows", 100)) == 0:
            raise SourceError("no rows")
        yield from super().read_batch(batch_size)


class TruncatesLargeValues(GoodReader):
    def rows(self) -> Iterator[tuple[int, str, float, bytes]]:
        for i, name, score, payload in super().rows():
            yield i, name, score, payload[:65536]


BROKEN_READERS = {
    "SchemaChangesMidStream": "reader.schema-stable",
    "FewerColumnsThanDeclared": "reader.batches-match-schema",
    "SwallowsErrors": "reader.errors-raise",
    "CloseRaises": "reader.close-idempotent",
    "IgnoresBatchSize": "reader.batch-size-hint",
    "LeaksThread": "reader.cancel-releases",
    "NoSchemaBeforeData": "reader.schema-before-data",
    "EmptySourceFails": "reader.empty-source",
    "TruncatesLargeValues": "reader.large-values",
}


# -- broken writers ----------------------------------------------------------------------------------


class FinalizeReturnsNothing(GoodWriter):
    def finalize(self) -> dict[str, Any]:
        super().finalize()
        return None  # type: ignore[return-value]


class LeavesFilesAfterAbort(GoodWriter):
    def abort(self) -> None:
        pass  # the staged files stay


class AcceptsWriteAfterFinalize(GoodWriter):
    def write_batch(self, batch: pa.RecordBatch) -> None:
        if self.finalized:  # straight into the published folder
            pq.write_table(pa.Table.from_batches([batch]), self.target / f"late-{uuid.uuid4().hex}.parquet")
            return
        super().write_batch(batch)


class LosesTypes(GoodWriter):
    def write_batch(self, batch: pa.RecordBatch) -> None:
        # Writes timestamps as text, as a careless CSV-minded writer would.
        for i, field in enumerate(batch.schema):
            if pa.types.is_timestamp(field.type):
                batch = batch.set_column(i, field.name, batch.column(i).cast(pa.string()))
        self.schema = batch.schema
        super().write_batch(batch)


class WriterCloseRaises(GoodWriter):
    def close(self) -> None:
        if getattr(self, "was_closed", False):
            raise RuntimeError("already closed")
        self.was_closed = True


class EmptyWriteFails(GoodWriter):
    def finalize(self) -> dict[str, Any]:
        if not self.rows:
            raise TargetError("nothing to publish")
        return super().finalize()


BROKEN_WRITERS = {
    "FinalizeReturnsNothing": "writer.finalize-metadata",
    "LeavesFilesAfterAbort": "writer.abort-leaves-nothing",
    "AcceptsWriteAfterFinalize": "writer.write-after-finalize",
    "LosesTypes": "writer.types-roundtrip",
    "WriterCloseRaises": "writer.close-idempotent",
    "EmptyWriteFails": "writer.empty",
}
