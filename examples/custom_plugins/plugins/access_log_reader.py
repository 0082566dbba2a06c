"""A worked example of a custom reader: web server access logs (Common Log Format) as Arrow.

Run it with ``dativo run examples/custom_plugins/logs_to_iceberg.yaml``; docs/writing-plugins.md
walks through it line by line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pyarrow as pa

from dativo import DataReader, PluginConfig, SourceError

# 10.0.0.1 - - [01/Mar/2025:08:00:01 +0100] "GET /cart HTTP/1.1" 200 5120
LINE = re.compile(
    r'(?P<host>\S+) \S+ \S+ \[(?P<ts>[^\]]+)\] "(?P<method>\S+) (?P<path>\S+) [^"]*" (?P<status>\d{3}) (?P<size>\d+|-)'
)
SCHEMA = pa.schema(
    [
        ("host", pa.string()),
        ("requested_at", pa.timestamp("us", tz="UTC")),
        ("method", pa.string()),
        ("path", pa.string()),
        ("status", pa.int32()),
        ("bytes", pa.int64()),
    ]
)


class AccessLogReader(DataReader):
    """Reads ``path`` (relative to the job file). Option ``on_bad_line``: ``fail`` (default) or ``skip``."""

    def initialize(self, config: PluginConfig) -> None:
        self.path = Path(config["job"]["dir"]) / config["options"]["path"]
        self.skip_bad = config["options"].get("on_bad_line", "fail") == "skip"
        if not self.path.is_file():
            raise SourceError(f"access log {self.path} does not exist")

    def get_schema(self) -> pa.Schema:
        return SCHEMA

    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        rows: list[dict[str, object]] = []
        with self.path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                match = LINE.match(line)
                if match is None:
                    if self.skip_bad:
                        continue
                    raise SourceError(f"{self.path}:{number}: not a Common Log Format line")
                rows.append(
                    {
                        "host": match["host"],
                        "requested_at": datetime.strptime(match["ts"], "%d/%b/%Y:%H:%M:%S %z"),
                        "method": match["method"],
                        "path": match["path"],
                        "status": int(match["status"]),
                        "bytes": None if match["size"] == "-" else int(match["size"]),
                    }
                )
                if len(rows) == batch_size:
                    yield pa.RecordBatch.from_pylist(rows, schema=SCHEMA)
                    rows = []
        if rows:
            yield pa.RecordBatch.from_pylist(rows, schema=SCHEMA)
