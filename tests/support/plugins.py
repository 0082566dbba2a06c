"""Small plugins the tests load by file path (tests/support/plugins.py:Name) or import path."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pyarrow as pa

from dativo import DataReader, DataWriter

SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string()), ("score", pa.float64())])


def make_batch(start: int, count: int) -> pa.RecordBatch:
    ids = range(start, start + count)
    return pa.record_batch(
        [pa.array(ids, pa.int64()), pa.array([f"name-{i}" for i in ids]), pa.array([i / 4 for i in ids])],
        schema=SCHEMA,
    )


class CapsuleStream:
    """Exposes only the Arrow PyCapsule stream interface, like a polars or arrow-rs object would."""

    def __init__(self, table: pa.Table) -> None:
        self._table = table

    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object:
        return self._table.__arrow_c_stream__(requested_schema)


class CapsuleArray:
    """Exposes only the PyCapsule array interface (one struct array = one batch)."""

    def __init__(self, batch: pa.RecordBatch) -> None:
        self._batch = batch

    def __arrow_c_array__(self, requested_schema: object | None = None) -> tuple[object, object]:
        return self._batch.__arrow_c_array__(requested_schema)


class GeneratedReader(DataReader):
    """Options: rows, fail_after (batches), sleep (s per batch), form (batch|table|stream|array),
    change_schema_at (batch index), marker_file (created when reading starts; then holds the
    number of batches the engine has taken)."""

    produced = 0

    def get_schema(self) -> pa.Schema:
        return SCHEMA

    def read_batch(self, batch_size: int) -> Iterator[Any]:
        options = self.config["options"]
        rows = int(options.get("rows", 1000))
        form = options.get("form", "batch")
        if options.get("marker_file"):
            open(options["marker_file"], "w").close()
        for index, start in enumerate(range(0, rows, batch_size)):
            if options.get("fail_after") is not None and index >= int(options["fail_after"]):
                raise RuntimeError(f"source exploded at batch {index}")
            if options.get("sleep"):
                time.sleep(float(options["sleep"]))
            batch = make_batch(start, min(batch_size, rows - start))
            if options.get("change_schema_at") == index:
                batch = batch.set_column(2, "score", pa.array([str(v) for v in batch.column(2).to_pylist()]))
            type(self).produced += 1
            if form == "table":
                yield pa.Table.from_batches([batch])
            elif form == "stream":
                yield CapsuleStream(pa.Table.from_batches([batch]))
            elif form == "array":
                yield CapsuleArray(batch)
            else:
                yield batch
            if options.get("marker_file"):
                with open(options["marker_file"], "w") as marker:
                    marker.write(str(index + 1))


class SlowStartReader(GeneratedReader):
    """A GeneratedReader whose ``initialize`` sleeps ``init_sleep`` seconds when ``slow_marker`` exists
    (so a Flight ``DoGet``, which initializes a fresh reader on the server, is slow to start)."""

    def initialize(self, config: Any) -> None:
        super().initialize(config)
        options = config["options"]
        if options.get("slow_marker") and os.path.exists(options["slow_marker"]):
            time.sleep(float(options.get("init_sleep", 0)))


class CountingWriter(DataWriter):
    """Discards batches, recording how far the reader ran ahead of it at each write (``aheads``)."""

    max_ahead = 0
    aheads: ClassVar[list[int]] = []
    lock = threading.Lock()

    def write_batch(self, batch: pa.RecordBatch) -> None:
        self.written = getattr(self, "written", 0) + 1
        with self.lock:
            ahead = GeneratedReader.produced - self.written
            type(self).aheads.append(ahead)
            type(self).max_ahead = max(type(self).max_ahead, ahead)
        time.sleep(0.005)

    def finalize(self) -> dict[str, Any]:
        return {"rows": 0, "files": []}


class FinalizeFailsWriter(DataWriter):
    aborted = False

    def write_batch(self, batch: pa.RecordBatch) -> None:
        pass

    def finalize(self) -> dict[str, Any]:
        raise OSError("disk on fire")

    def abort(self) -> None:
        type(self).aborted = True


class InitializeFailsReader(DataReader):
    def initialize(self, config: Any) -> None:
        raise ValueError("bad option 'speed'")

    def get_schema(self) -> pa.Schema:
        return SCHEMA

    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        yield make_batch(0, 1)


class FutureReader(GeneratedReader):
    api_version = "2.0"


class NotAReader:
    def read_batch(self, batch_size: int) -> None:
        return None


class HalfReader(DataReader):  # type: ignore[abstract]  # deliberately missing read_batch
    def get_schema(self) -> pa.Schema:
        return SCHEMA


class EnvPasswordReader(GeneratedReader):
    """Fails with a message containing the connection password, to prove redaction."""

    def read_batch(self, batch_size: int) -> Iterator[Any]:
        password = self.config["connection"]["password"]
        raise RuntimeError(f"login rejected for password {password} (pid {os.getpid()})")
        yield  # pragma: no cover


def all_types_batch() -> pa.RecordBatch:
    """One batch holding every canonical type of the type table, with a NULL in each column."""
    import datetime as dt
    import decimal
    import uuid

    utc = dt.UTC
    columns = {
        "i16": (pa.int16(), [-32768, 32767, None]),
        "i32": (pa.int32(), [-(2**31), 2**31 - 1, None]),
        "i64": (pa.int64(), [-(2**63), 2**63 - 1, None]),
        "f32": (pa.float32(), [1.5, float("inf"), None]),
        "f64": (pa.float64(), [float("nan"), float("-inf"), None]),
        "dec": (pa.decimal128(14, 2), [decimal.Decimal("-999999999999.99"), decimal.Decimal("0.01"), None]),
        "dec38": (
            pa.decimal128(38, 9),
            [decimal.Decimal("12345678901234567890123456789.123456789"), None, None],
        ),
        "txt": (pa.string(), ["héllo ✓", "", None]),
        "flag": (pa.bool_(), [True, False, None]),
        "day": (pa.date32(), [dt.date(1, 1, 1), dt.date(9999, 12, 31), None]),
        "clock": (pa.time64("us"), [dt.time(0, 0), dt.time(23, 59, 59, 999999), None]),
        "ts": (
            pa.timestamp("us"),
            [dt.datetime(1970, 1, 1), dt.datetime(2262, 4, 11, 23, 47, 16, 854775), None],
        ),
        "tstz": (pa.timestamp("us", tz="UTC"), [dt.datetime(2024, 2, 29, 12, tzinfo=utc), None, None]),
        "uid": (
            pa.uuid(),
            [uuid.UUID(int=1).bytes, uuid.UUID("12345678-1234-5678-1234-567812345678").bytes, None],
        ),
        "raw": (pa.binary(), [b"\x00\xff", b"", None]),
        "ints": (pa.list_(pa.int32()), [[1, None, 3], [], None]),
        "words": (pa.list_(pa.string()), [["a", None], [], None]),
    }
    arrays = []
    for kind, values in columns.values():
        if kind == pa.uuid():
            storage = pa.array(values, pa.binary(16))
            arrays.append(pa.ExtensionArray.from_storage(kind, storage))
        else:
            arrays.append(pa.array(values, kind))
    return pa.RecordBatch.from_arrays(arrays, names=list(columns))


class AllTypesReader(DataReader):
    def get_schema(self) -> pa.Schema:
        return all_types_batch().schema

    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        yield all_types_batch()


class FlakyReader(GeneratedReader):
    """Fails its first run with a dropped connection (a transient error), then reads 100 rows."""

    def read_batch(self, batch_size: int) -> Iterator[Any]:
        marker = self.config["options"]["marker"]
        if not os.path.exists(marker):
            open(marker, "w").close()
            yield make_batch(0, 10)
            raise ConnectionResetError("server closed the connection unexpectedly")
        yield make_batch(0, 100)
