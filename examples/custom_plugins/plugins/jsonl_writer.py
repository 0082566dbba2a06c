"""A worked example of a custom writer: JSON lines, published atomically by rename.

Rows go to a hidden temporary file next to the target; ``finalize`` renames it
into place (atomic on one file system) and ``abort`` deletes it, so readers of
the target never see half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from dativo import DataWriter, PluginConfig, TargetError


class JsonLinesWriter(DataWriter):
    """Writes every row as one JSON object per line to ``path`` (relative to the job file)."""

    def initialize(self, config: PluginConfig) -> None:
        self.target = Path(config["job"]["dir"]) / config["options"]["path"]
        self.temp = self.target.with_name(f".{self.target.name}.{config['job']['run_id']}.tmp")
        self.file: IO[str] | None = None
        self.rows = 0

    def prepare(self, schema: pa.Schema) -> None:
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.file = self.temp.open("w", encoding="utf-8")
        except OSError as exc:
            raise TargetError(f"cannot write next to {self.target}: {exc.strerror}") from None

    def write_batch(self, batch: pa.RecordBatch) -> None:
        assert self.file is not None
        for row in batch.to_pylist():
            self.file.write(json.dumps(row, default=str) + "\n")
        self.rows += batch.num_rows

    def finalize(self) -> dict[str, Any]:
        assert self.file is not None
        self.file.close()
        os.replace(self.temp, self.target)
        return {"files": [str(self.target)], "rows": self.rows, "bytes": self.target.stat().st_size}

    def abort(self) -> None:
        if self.file is not None:
            self.file.close()
        self.temp.unlink(missing_ok=True)
