"""One job with ``public.*`` over N tables against N single-table jobs, each its own ``dativo run`` process.

    python benchmarks/many_tables.py              # 50 tables of 2,000 rows, mixed types
    python benchmarks/many_tables.py --tables 20 --rows 500
    python benchmarks/many_tables.py --streams-only      # skip the N single-table processes

Starts a throw-away PostgreSQL server (tests/support/pgserver.py), builds the tables
of tests/test_streams_postgres.py, and times, as a user would run them:
  * streams: one ``dativo run lake.yaml`` (max_concurrent_streams 1 and 4);
  * single: N ``dativo run tNN.yaml`` processes, one after the other.
For each run it also records the PostgreSQL sessions the server saw (``pg_stat_database.sessions``
of the source database, before and after), the most sessions open at once (``pg_stat_activity``,
sampled every 20 ms), the CPU time (user + system) and the exact peak RSS (``wait4``) of the dativo
process(es) (for N processes, the largest one).
Prints a Markdown table and writes the figures to benchmarks/results/many_tables.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from subprocess import DEVNULL

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


def run(args: list[str], cwd: Path) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (MB, exact: ``wait4``) of one ``dativo`` command."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen([sys.executable, "-m", "dativo", *args], cwd=cwd, stdout=DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            stderr.seek(0)
            raise SystemExit(f"dativo {' '.join(args)} failed: {stderr.read().decode(errors='replace')}")
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def _figures(wall: float, cpu: float, rss: float, sessions: Sessions) -> dict[str, float]:
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss, "sessions": sessions.opened, "peak": sessions.peak}


class Sessions:
    """Sessions of database ``dbname`` as the server counts them: total opened, and the peak open at once."""

    def __init__(self, server: PostgresServer, dbname: str) -> None:
        self._server, self._dbname = server, dbname
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def total(self) -> int:
        time.sleep(0.5)  # a session's end reaches the statistics when its backend exits
        rows = self._server.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", (self._dbname,))
        return int(rows[0][0])

    def _sample(self) -> None:
        with self._server.connect() as conn:  # connected to database postgres: not counted
            while not self._stop.wait(0.02):
                row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self._dbname,))
                self.peak = max(self.peak, int(row.fetchone()[0]))  # type: ignore[index]

    def __enter__(self) -> Sessions:
        self._before = self.total()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.opened = self.total() - self._before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", type=int, default=50)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--reader", help="source.reader.implementation (default: the connector's choice)")
    parser.add_argument("--streams-only", action="store_true", help="skip the N single-table processes")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "many_tables.json")
    opts = parser.parse_args()
    with PostgresServer() as server, tempfile.TemporaryDirectory() as tmp:
        dbname = "many"
        server.create_database(dbname)
        connection = json.dumps(server.connection_params(dbname))
        reader = f", reader: {{implementation: {opts.reader}}}" if opts.reader else ""
        build(server, dbname, opts.tables, opts.rows)
        work = Path(tmp)
        figures: dict[str, dict[str, float]] = {}
        for concurrency in (1, 4):
            folder = work / f"streams{concurrency}"
            folder.mkdir()
            (folder / "lake.yaml").write_text(
                f"defaults:\n  source: {{connector: postgres, connection: {connection}{reader}}}\n"
                '  target: {connector: iceberg, table: "raw.{table}"}\n'
                f"streams:\n  public.*: {{}}\nengine: {{max_concurrent_streams: {concurrency}}}\n"
            )
            with Sessions(server, dbname) as sessions:
                wall, cpu, rss = run(["run", "lake.yaml", "--quiet"], folder)
            name = f"one process, {opts.tables} streams, {concurrency} at a time"
            figures[name] = _figures(wall, cpu, rss, sessions)
            print(f"{name}: {figures[name]}", file=sys.stderr)
        if not opts.streams_only:
            folder = work / "single"
            folder.mkdir()
            wall = cpu = rss = 0.0
            with Sessions(server, dbname) as sessions:
                for index in range(opts.tables):
                    (folder / f"t{index:02d}.yaml").write_text(
                        f"source: {{connector: postgres, connection: {connection}, "
                        f"table: public.t{index:02d}{reader}}}\n"
                        f"target: {{connector: iceberg, table: raw.t{index:02d}}}\n"
                    )
                    one = run(["run", f"t{index:02d}.yaml", "--quiet"], folder)
                    wall, cpu, rss = wall + one[0], cpu + one[1], max(rss, one[2])
            name = f"{opts.tables} processes, one table each"
            figures[name] = _figures(wall, cpu, rss, sessions)
            print(f"{name}: {figures[name]}", file=sys.stderr)
    report = {
        "tables": opts.tables,
        "rows_per_table": opts.rows,
        "reader": opts.reader or "default",
        "runs": figures,
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"| run ({opts.tables} tables x {opts.rows:,} rows) | wall time | CPU time | peak RSS ", end="")
    print("| sessions | peak open |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, f in figures.items():
        print(
            f"| {name} | {f['wall_s']:.1f} s | {f['cpu_s']:.1f} s | {f['peak_rss_mb']:.0f} MB | "
            f"{f['sessions']:.0f} | {f['peak']:.0f} |"
        )


if __name__ == "__main__":
    main()
