"""Change data capture: how fast one ``dativo run`` applies 1M updates or inserts (docs/cdc.md, docs/performance.md).

    python benchmarks/cdc_updates.py                              # 5-column table, 1M rows, 1M updates, 1 run
    python benchmarks/cdc_updates.py --table wide --runs 3        # the 50-column table of run.py
    python benchmarks/cdc_updates.py --change insert              # 1M new rows instead of updates
    python benchmarks/cdc_updates.py --rows 20000 --updates 20000 # smoke test, ~1 min

Starts a throw-away PostgreSQL server (``wal_level=logical``, tests/support/pgserver.py;
``--dsn`` uses an existing one), builds the table with ``REPLICA IDENTITY FULL``, runs the
job's initial load once (the full read of the table, for comparison), then per run: applies
``--updates`` updates spread evenly over the table (or, with ``--change insert``, as many new
rows after the last id; in transactions of 100,000), and times
one ``dativo run`` change run as its own process (wall time and exact peak RSS through
``_launch.py``). Each change run is checked: it must report exactly ``--updates`` changes, and
the target's row count and sum of the updated column must equal the server's.
Prints a Markdown table and writes every figure to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import log  # noqa: E402  (run.py's modules: table builder, measured launches, the server)
from _environment import dativo_command, postgres  # noqa: E402
from _measure import ProcessResult, run_measured  # noqa: E402
from _table import WIDE_COLUMNS, ensure_table  # noqa: E402

NARROW = "public.cdc_narrow"
WIDE = "public.cdc_wide"
BATCH = 100_000
#: The narrow table's row for id ``g`` (built and inserted alike).
NARROW_ROW = "g, 'item ' || g, g * 1.5, timestamptz '2024-01-01' + g * interval '1 s', g % 2 = 0"


def build(dsn: str, kind: str, rows: int) -> tuple[str, str]:
    """Create the table (or reuse the wide one) with REPLICA IDENTITY FULL; returns (table, updated column)."""
    import psycopg

    if kind == "wide":
        ensure_table(dsn, WIDE, rows)
        table, column = WIDE, "i07"
    else:
        table, column = NARROW, "amount"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(
                f"CREATE TABLE {table} (id int PRIMARY KEY, name text, amount numeric(12,2), ts timestamptz, "
                "flag boolean)"
            )
            conn.execute(f"INSERT INTO {table} SELECT {NARROW_ROW} FROM generate_series(1, {rows}) g")
            conn.execute(f"VACUUM ANALYZE {table}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {table} REPLICA IDENTITY FULL")
    return table, column


def apply_updates(dsn: str, table: str, column: str, rows: int, updates: int) -> float:
    """``updates`` single-row updates spread evenly over the table, committed every 100,000; returns seconds."""
    import psycopg

    step = max(1, rows // updates)
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        done = 0
        while done < updates:
            first, last = done, min(updates, done + BATCH)
            conn.execute(
                f"UPDATE {table} SET {column} = {column} + 1 WHERE id IN "
                f"(SELECT 1 + g * {step} FROM generate_series({first}, {last - 1}) g)"
            )
            done = last
    return time.perf_counter() - started


def apply_inserts(dsn: str, table: str, kind: str, first_id: int, count: int) -> float:
    """``count`` new rows with ids from ``first_id``, committed every 100,000; returns seconds."""
    import psycopg

    exprs = ", ".join(c.expr for c in WIDE_COLUMNS) if kind == "wide" else NARROW_ROW
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for first in range(first_id, first_id + count, BATCH):
            last = min(first_id + count, first + BATCH) - 1
            conn.execute(f"INSERT INTO {table} SELECT {exprs} FROM generate_series({first}::bigint, {last}::bigint) g")
    return time.perf_counter() - started


def server_facts(dsn: str, table: str, column: str) -> tuple[int, float]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*), coalesce(sum({column}), 0)::float8 FROM {table}").fetchone()
    assert row is not None
    return int(row[0]), float(row[1])


def target_facts(work: Path, column: str) -> tuple[int, float]:
    from pyiceberg.catalog import load_catalog

    warehouse = work / "warehouse"
    uri = f"sqlite:///{warehouse / 'catalog.db'}"
    catalog = load_catalog("dativo", type="sql", uri=uri, warehouse=warehouse.as_uri())
    data = catalog.load_table("raw.cdc_bench").scan(selected_fields=(column,)).to_arrow()
    values = data.column(column).to_pylist()
    return data.num_rows, float(sum(float(v) for v in values if v is not None))


def measured_run(work: Path, name: str) -> tuple[ProcessResult, dict[str, Any]]:
    summary = work / f"{name}.json"
    result = run_measured(
        [*dativo_command(), "run", "cdc.yaml", "--quiet", "--summary-json", str(summary)],
        env=dict(os.environ),
        cwd=work,
        stdout=work / f"{name}.out",
        stderr=work / f"{name}.err",
        timeout_s=7200,
    )
    if result.exit_code != 0:
        raise SystemExit(f"dativo run ({name}) failed: {(work / f'{name}.err').read_text()[-2000:]}")
    return result, json.loads(summary.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", choices=("narrow", "wide"), default="narrow")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--updates", type=int, default=1_000_000, help="changes per run (updates or inserts)")
    parser.add_argument("--change", choices=("update", "insert"), default="update")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--dsn", default=None, help="use this server (wal_level=logical) instead of starting one")
    parser.add_argument("--pg-setting", action="append", default=[], help="name=value for the started server")
    parser.add_argument("--out", type=Path, default=None, help="default: results/cdc_<change>s_<table>.json")
    opts = parser.parse_args()
    opts.out = opts.out or HERE / "results" / f"cdc_{opts.change}s_{opts.table}.json"
    if opts.change == "update" and opts.updates > opts.rows:
        parser.error("--updates must not exceed --rows (each update touches another row)")
    with postgres(opts) as (dsn, _psql, server), tempfile.TemporaryDirectory(prefix="dativo-cdc-bench-") as tmp:
        work = Path(tmp)
        log(f"building {opts.table} table of {opts.rows:,} rows ...")
        table, column = build(dsn, opts.table, opts.rows)
        (work / "cdc.yaml").write_text(
            "name: cdc_bench\n"
            f"source: {{connector: postgres, connection: {{dsn: {json.dumps(dsn)}}}, table: {table}, cdc: {{}}}}\n"
            "target: {connector: iceberg, table: raw.cdc_bench}\n"
        )
        log("initial load (a full read of the table) ...")
        load, load_summary = measured_run(work, "load")
        runs: list[dict[str, Any]] = []
        for index in range(opts.runs):
            log(f"run {index + 1}/{opts.runs}: {opts.updates:,} {opts.change}s ...")
            if opts.change == "insert":
                update_s = apply_inserts(dsn, table, opts.table, opts.rows + 1 + index * opts.updates, opts.updates)
            else:
                update_s = apply_updates(dsn, table, column, opts.rows, opts.updates)
            result, summary = measured_run(work, f"changes{index}")
            changes = summary["target"]["cdc"]["changes"]
            ok = changes == opts.updates and target_facts(work, column) == server_facts(dsn, table, column)
            runs.append(
                {
                    "wall_s": round(result.wall_s, 2),
                    "engine_s": summary.get("duration_s"),
                    "peak_rss_mb": round(result.peak_rss_mb, 1),
                    "cpu_s": round(result.user_s + result.sys_s, 1),
                    "changes": changes,
                    "updates_applied_s": round(update_s, 1),
                    "correct": ok,
                }
            )
            log(f"  {result.wall_s:.1f} s, {result.peak_rss_mb:.0f} MB, correct: {ok}")
    median = statistics.median(r["wall_s"] for r in runs)
    figures = {
        "table": opts.table,
        "rows": opts.rows,
        "change": opts.change,
        "updates": opts.updates,
        "server": server,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "initial_load": {"wall_s": round(load.wall_s, 2), "peak_rss_mb": round(load.peak_rss_mb, 1)},
        "load_rows": load_summary.get("rows"),
        "change_runs": runs,
        "median_wall_s": median,
        "updates_per_s": round(opts.updates / median),
        "worst_peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "all_correct": all(r["correct"] for r in runs),
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"| run ({opts.table} table, {opts.rows:,} rows) | wall (median of {opts.runs}) | rows/s | peak RSS |")
    print("|---|---|---|---|")
    print(
        f"| initial load (full read) | {load.wall_s:.1f} s | {opts.rows / load.wall_s:,.0f} | "
        f"{load.peak_rss_mb:.0f} MB |"
    )
    print(
        f"| change run: {opts.updates:,} {opts.change}s | {median:.1f} s | {figures['updates_per_s']:,} | "
        f"{figures['worst_peak_rss_mb']:.0f} MB |"
    )
    print(f"correct: {figures['all_correct']}; figures in {opts.out}")
    return 0 if figures["all_correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
