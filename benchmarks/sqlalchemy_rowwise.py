"""Baseline for ``run.py``: row-by-row extraction with SQLAlchemy, the way a naive pipeline does it.

Runs ``SELECT * FROM <table>`` on a connection with ``stream_results=True``
(a server-side cursor, so the result set is not materialised at once), iterates
over the rows one by one and appends each to a Python list that is handed off
(cleared) every ``--batch-size`` rows. It converts nothing to Arrow and writes
nothing, so it does strictly less work than a dativo run: a ratio against it
understates dativo's advantage, never overstates it.

The DSN comes from the environment variable ``DATIVO_BENCH_DSN`` (not argv, so
the password does not show in the process list). Prints ``{"rows": N}`` on stdout.

    DATIVO_BENCH_DSN=postgresql://... python benchmarks/sqlalchemy_rowwise.py --table public.wide
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import psycopg
from sqlalchemy import create_engine, text

DSN_ENV = "DATIVO_BENCH_DSN"


def extract(dsn: str, table: str, batch_size: int) -> int:
    """Stream every row of ``table`` through SQLAlchemy row by row; return the row count."""
    # A creator accepts both URI and key=value DSNs and pins the psycopg 3 driver.
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))
    rows = 0
    batch: list[Any] = []
    try:
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True).execute(text(f"SELECT * FROM {table}"))
            for row in result:
                batch.append(row)
                if len(batch) >= batch_size:
                    rows += len(batch)
                    batch = []  # "hand the batch off" to the next stage
            rows += len(batch)
    finally:
        engine.dispose()
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", default="public.wide", help="table to read (schema.name, trusted input)")
    parser.add_argument("--batch-size", type=int, default=65_536, help="rows per handed-off list")
    args = parser.parse_args(argv)
    dsn = os.environ.get(DSN_ENV)
    if not dsn:
        print(f"{DSN_ENV} is not set", file=sys.stderr)
        return 2
    rows = extract(dsn, args.table, args.batch_size)
    print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
