"""dlt's ``sql_table`` source into Parquet files on the local file system: the peer run.py compares with.

Runs inside the peers' own virtual environment (``benchmarks/peers.py`` builds it), never
in dativo's, so neither project's dependencies bend the other's::

    <peers venv>/bin/python benchmarks/dlt_job.py --table public.wide --backend connectorx --out DIR

The DSN comes from ``$DATIVO_BENCH_DSN`` (kept out of argv). Prints one JSON line with the
rows dlt reports having loaded. dlt's defaults are kept except what a user tuning for speed
sets (its docs' "fast" advice): the chunk size, parallel extraction off (one table), and
Parquet as the file format; it writes ``DIR/<dataset>/<table>/*.parquet``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--table", required=True, help="schema.table")
    p.add_argument("--backend", choices=["sqlalchemy", "pyarrow", "connectorx"], required=True)
    p.add_argument("--out", required=True, help="folder the Parquet files go to")
    p.add_argument("--chunk-size", type=int, default=100_000)
    args = p.parse_args()

    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
    os.environ.setdefault("DLT_DATA_DIR", os.path.join(args.out, ".dlt-data"))
    os.environ.setdefault("DLT_PIPELINE_DIR", os.path.join(args.out, ".dlt-pipelines"))
    import dlt
    from dlt.destinations import filesystem
    from dlt.sources.sql_database import sql_table

    schema, table = args.table.split(".", 1)
    dsn = os.environ["DATIVO_BENCH_DSN"]
    backend_kwargs = {"conn": dsn, "return_type": "arrow"} if args.backend == "connectorx" else None
    resource = sql_table(
        credentials=dsn.replace("postgresql://", "postgresql+psycopg2://", 1),
        schema=schema,
        table=table,
        backend=args.backend,
        chunk_size=args.chunk_size,
        backend_kwargs=backend_kwargs,
        reflection_level="full_with_precision",
    )
    pipeline = dlt.pipeline(
        pipeline_name=f"bench_{args.backend}",
        destination=filesystem(bucket_url=os.path.join(args.out, "data")),
        dataset_name="bench",
        pipelines_dir=os.path.join(args.out, ".dlt-pipelines"),
    )
    info = pipeline.run(resource, loader_file_format="parquet")
    info.raise_on_failed_jobs()
    counts = pipeline.last_trace.last_normalize_info.row_counts
    print(json.dumps({"rows": int(counts.get(table, 0)), "backend": args.backend}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
