"""A tiny in-memory ChangeReader (no database), for protocol-level tests of change readers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa

from dativo import DataReader

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64()),
        pa.field("_cdc_op", pa.string()),
        pa.field("_cdc_lsn", pa.int64()),
        pa.field("_cdc_ts", pa.timestamp("us", tz="UTC")),
    ]
)


class MemoryChangeReader(DataReader):
    """Rows 1..3 as inserts at positions 1..3; ``begin_changes`` skips what ``committed`` covers."""

    def initialize(self, config: Mapping[str, Any]) -> None:
        self.after = 0

    def get_schema(self) -> pa.Schema:
        return SCHEMA

    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        ids = [i for i in (1, 2, 3) if i > self.after]
        yield pa.RecordBatch.from_arrays(
            [
                pa.array(ids, pa.int64()),
                pa.array(["insert"] * len(ids)),
                pa.array(ids, pa.int64()),
                pa.nulls(len(ids), SCHEMA[3].type),
            ],
            schema=SCHEMA,
        )

    def change_keys(self) -> Sequence[str]:
        return ["id"]

    def check_changes(self, keys: Sequence[str]) -> list[str]:
        return [] if list(keys) == ["id"] else [f"key {list(keys)} is not ['id']"]

    def begin_changes(self, committed: Mapping[str, Any] | None, keys: Sequence[str]) -> Mapping[str, Any]:
        self.after = int((committed or {}).get("lsn", 0))
        return {"position": {"lsn": 3}, "replace": committed is None, "snapshot": False}

    def confirm(self, position: Mapping[str, Any]) -> Mapping[str, Any]:
        return {"confirmed_lsn": position["lsn"]}
