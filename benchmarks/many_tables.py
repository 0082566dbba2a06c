"""One job with ``public.*`` over N tables against N single-table jobs, each its own ``dativo run`` process.

    python benchmarks/many_tables.py              # 50 tables of 2,000 rows, mixed types
    python benchmarks/many_tables.py --tables 20 --rows 500

Starts a throw-away PostgreSQL server (tests/support/pgserver.py), builds the tables
of tests/test_streams_postgres.py, and times, as a user would run them:
  * streams: one ``dativo run lake.yaml`` (max_concurrent_streams 1 and 4);
  * single: N ``dativo run tNN.yaml`` processes, one after the other.
Prints a Markdown table and writes the figures to benchmarks/results/many_tables.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_streams_postgres import COLUMNS  # noqa: E402

from support.pgserver import PostgresServer  # noqa: E402


def build(server: PostgresServer, dbname: str, tables: int, rows: int) -> None:
    sql = []
    for index in range(tables):
        columns, values = COLUMNS[index % len(COLUMNS)]
        sql.append(f"CREATE TABLE t{index:02d} (id bigint PRIMARY KEY, {columns}, updated_at timestamptz);")
        sql.append(
            f"INSERT INTO t{index:02d} SELECT g, {values}, timestamptz '2024-01-01 00:00+00' + g * interval '1 s' "
            f"FROM generate_series(1, {rows}) g;"
        )
    server.psql("\n".join(sql), dbname=dbname)


def run(args: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "dativo", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"dativo {' '.join(args)} failed: {result.stderr}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", type=int, default=50)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "many_tables.json")
    opts = parser.parse_args()
    with PostgresServer() as server, tempfile.TemporaryDirectory() as tmp:
        dbname = "many"
        server.create_database(dbname)
        connection = json.dumps(server.connection_params(dbname))
        build(server, dbname, opts.tables, opts.rows)
        work = Path(tmp)
        figures: dict[str, float] = {}
        for concurrency in (1, 4):
            folder = work / f"streams{concurrency}"
            folder.mkdir()
            (folder / "lake.yaml").write_text(
                f"defaults:\n  source: {{connector: postgres, connection: {connection}}}\n"
                '  target: {connector: iceberg, table: "raw.{table}"}\n'
                f"streams:\n  public.*: {{}}\nengine: {{max_concurrent_streams: {concurrency}}}\n"
            )
            figures[f"one process, {opts.tables} streams, {concurrency} at a time"] = run(
                ["run", "lake.yaml", "--quiet"], folder
            )
            print(f"streams x{concurrency}: {figures[list(figures)[-1]]:.1f} s", file=sys.stderr)
        folder = work / "single"
        folder.mkdir()
        total = 0.0
        for index in range(opts.tables):
            (folder / f"t{index:02d}.yaml").write_text(
                f"source: {{connector: postgres, connection: {connection}, table: public.t{index:02d}}}\n"
                f"target: {{connector: iceberg, table: raw.t{index:02d}}}\n"
            )
            total += run(["run", f"t{index:02d}.yaml", "--quiet"], folder)
        figures[f"{opts.tables} processes, one table each"] = total
        print(f"single: {total:.1f} s", file=sys.stderr)
    report = {
        "tables": opts.tables,
        "rows_per_table": opts.rows,
        "seconds": figures,
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"| run ({opts.tables} tables x {opts.rows:,} rows) | wall time |\n| --- | --- |")
    for name, seconds in figures.items():
        print(f"| {name} | {seconds:.1f} s |")


if __name__ == "__main__":
    main()
