"""The engine's own overhead: a synthetic in-memory reader into a writer that discards its input.

    python benchmarks/engine_overhead.py --table public.wide --rows 1000000 [--batch-size 65536]

Reads one sample batch of ``--batch-size`` rows of the benchmark table (with
the default ADBC reader, untimed), then times ``dativo.engine.pipeline.run``
moving ``--rows`` rows made of that batch through the whole engine (reader
thread, bounded queue, schema checks, writer calls, summary) into a writer
that drops every batch. Prints one JSON line: rows, bytes (Arrow), engine_s.
``run.py`` runs it as the ``engine`` variant, next to the COPY floor.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from dativo import DataReader, DataWriter
from dativo.config.loader import load_job
from dativo.connectors.postgres.adbc import AdbcPostgresReader
from dativo.engine import pipeline
from dativo.engine.plan import build_plan

DSN_ENV = "DATIVO_BENCH_DSN"
_SAMPLE: pa.RecordBatch | None = None


def _sample() -> pa.RecordBatch:
    # The engine loads this file again as a module of its own: the sample lives in __main__.
    sample = getattr(sys.modules["__main__"], "_SAMPLE", None)
    assert sample is not None
    return sample


class MemoryReader(DataReader):
    """Yields the pre-read sample batch (the same buffers) until ``rows`` rows have gone out."""

    def get_schema(self) -> pa.Schema:
        return _sample().schema

    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        sample = _sample()
        left = int(self.config["options"]["rows"])
        while left > 0:
            batch = sample if left >= sample.num_rows else sample.slice(0, left)
            left -= batch.num_rows
            yield batch


class NullWriter(DataWriter):
    """Counts what it is given and keeps nothing."""

    def write_batch(self, batch: pa.RecordBatch) -> None:
        self.rows = getattr(self, "rows", 0) + batch.num_rows

    def finalize(self) -> dict[str, Any]:
        return {"rows": getattr(self, "rows", 0)}


def main() -> int:
    global _SAMPLE
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", default="public.wide")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=65_536)
    args = p.parse_args()

    reader = AdbcPostgresReader()
    query = f"SELECT * FROM {args.table} LIMIT {args.batch_size}"
    reader.initialize({"connection": {"dsn": os.environ[DSN_ENV]}, "query": query})
    try:
        batches = list(reader.read_batch(args.batch_size))
    finally:
        reader.close()
    _SAMPLE = pa.Table.from_batches(batches).combine_chunks().to_batches()[0]

    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job.yaml"
        here = Path(__file__).resolve()
        job.write_text(
            textwrap.dedent(
                f"""\
                name: engine-overhead
                source:
                  connector: custom
                  reader: {{implementation: "{here}:MemoryReader", options: {{rows: {args.rows}}}}}
                target:
                  connector: custom
                  writer: {{implementation: "{here}:NullWriter"}}
                engine: {{batch_size: {args.batch_size}}}
                """
            )
        )
        plan = build_plan(load_job(job))
        started = time.perf_counter()
        summary = pipeline.run(plan)
        elapsed = time.perf_counter() - started
    print(json.dumps({"rows": summary.rows, "bytes": summary.bytes, "engine_s": round(elapsed, 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
