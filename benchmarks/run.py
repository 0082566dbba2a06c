"""Benchmark dativo against the fastest possible PostgreSQL export and a naive baseline.

One command::

    python benchmarks/run.py [--rows 1000000] [--runs 5] [--out benchmarks/results/latest.json]
                             [--readers adbc,psycopg,sqlalchemy] [--rows-scaling 1000000,5000000]

starts a throw-away PostgreSQL server (``tests/support/pgserver.py``; or uses
``--dsn``), builds the standard 50-column table ``public.wide`` server-side,
then measures every selected *variant* ``--runs`` times, interleaved (floor,
variant, variant, ..., then again) so that drift hits all of them alike:

* ``floor``: ``psql \\copy (SELECT * FROM wide) TO '/dev/null' (FORMAT binary)``,
  the fastest a single stream can leave the server (psql's own client cost included);
* ``adbc`` / ``psycopg``: ``dativo run --quiet`` into a fresh embedded Iceberg
  table, with the default ADBC reader and with the psycopg reader;
* ``sqlalchemy``: row-by-row SQLAlchemy extraction (``sqlalchemy_rowwise.py``).

Each variant runs as a child process, started through ``_launch.py`` (a bare
interpreter that times it and reaps it with ``os.wait4``): wall time, exact
peak RSS (``ru_maxrss``; for a process tree the largest single process, see
``--sample-tree-rss``) and CPU time of that child alone.
The report is a Markdown table on stdout (also written next to ``--out`` as
``.md``) and every raw figure is written as JSON to ``--out``.

New variants are one entry in ``_variants.py``'s ``VARIANTS`` (see ``dativo_variant``). This file is
the command line and the order of work; the parts are modules beside it: ``_table.py`` (the standard
table), ``_measure.py`` (one measured child), ``_variants.py``, ``_runner.py`` (passes),
``_report.py`` (summaries, targets, the report), ``_environment.py`` (the server, the machine).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import HERE
from _environment import dativo_command, filesystem_of, machine_facts, postgres
from _measure import rss_measurement_floor
from _report import check_targets, render_report, result_head, summarize, write_results
from _runner import Runner
from _table import ensure_table
from _variants import VARIANTS, BenchContext, select_variants

from dativo.config.models import EngineConfig


def _int_list(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring and benchmarks/README.md)."""
    p = argparse.ArgumentParser(
        description="Measure dativo against the PostgreSQL export floor and a row-by-row baseline.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--rows", type=lambda s: int(s.replace("_", "")), default=1_000_000, help="rows in the table")
    p.add_argument("--runs", type=int, default=5, help="measured passes (the report shows medians)")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes first (caches, .pyc, page cache)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "latest.json", help="JSON output (+ .md)")
    keys = ",".join(v.key for v in VARIANTS if v.default and v.role != "floor")
    p.add_argument(
        "--readers",
        default=None,
        help=f"comma-separated variants to run besides the floor (default: {keys}; "
        f"known: {', '.join(v.key for v in VARIANTS if v.role != 'floor')})",
    )
    p.add_argument("--rows-scaling", type=_int_list, default=[], help="e.g. 1000000,5000000: RSS per table size")
    p.add_argument("--scaling-runs", type=int, default=1, help="passes per size for --rows-scaling")
    p.add_argument("--scaling-readers", default="adbc", help="variants measured at each --rows-scaling size")
    p.add_argument("--dsn", default=None, help="use this server instead of starting one (needs CREATE on it)")
    p.add_argument("--table", default="public.wide", help="source table (scaling sizes get a _<rows> suffix)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=EngineConfig().batch_size,
        help="engine.batch_size of the dativo jobs (default: dativo's own default)",
    )
    p.add_argument("--workdir", type=Path, default=None, help="where run directories go (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep every run directory (job, logs, Iceberg table)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before a single run is killed")
    p.add_argument("--sample-tree-rss", action="store_true", help="also sample summed RSS of every process tree")
    p.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="postgresql.conf setting for the server this script starts (repeatable)",
    )
    args = p.parse_args(argv)
    if args.runs < 1 or args.rows < 1:
        p.error("--runs and --rows must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit code (0 unless the benchmark itself could not run)."""
    args = parse_args(argv)
    variants = select_variants(args.readers)
    scaling_variants = [v for v in select_variants(args.scaling_readers) if v.role != "floor"]
    floor_variant = next(v for v in VARIANTS if v.role == "floor")
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="dativo-bench-")) if own_workdir else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with postgres(args) as (dsn, psql, server_note):
            ctx = BenchContext(
                dsn=dsn,
                psql=psql,
                python=sys.executable,
                dativo=dativo_command(),
                batch_size=args.batch_size,
            )
            machine = machine_facts(dsn, psql)
            machine["server"] = server_note
            machine["workdir_filesystem"] = filesystem_of(workdir)
            machine["rss_measurement_floor_mb"] = rss_measurement_floor(workdir)
            source = ensure_table(dsn, args.table, args.rows)
            runner = Runner(
                ctx=ctx,
                workdir=workdir,
                timeout_s=args.timeout,
                keep=args.keep,
                force_tree_rss=args.sample_tree_rss,
            )
            for i in range(1, args.warmup + 1):
                runner.run_pass(variants, source, "warmup", i)
            for i in range(1, args.runs + 1):
                runner.run_pass(variants, source, "run", i)
            summary = {
                v.key: summarize([m for m in runner.measurements if m.phase == "run" and m.variant == v.key])
                for v in variants
            }
            scaling: list[dict[str, Any]] = []
            scaling_tables: list[dict[str, Any]] = []
            for n in args.rows_scaling:
                table = source if n == args.rows else ensure_table(dsn, f"{args.table}_{n}", n)
                scaling_tables.append(asdict(table))
                for i in range(1, args.scaling_runs + 1):
                    runner.run_pass([floor_variant, *scaling_variants], table, "scaling", i)
                for v in [floor_variant, *scaling_variants]:
                    ms = [m for m in runner.measurements if m.phase == "scaling" and m.variant == v.key]
                    scaling.append({"rows": n, "variant": v.key, **summarize([m for m in ms if m.rows_expected == n])})
            machine["load_average_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    finally:
        if own_workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    result: dict[str, Any] = {
        **result_head(
            started_at,
            args,
            variants=[v.key for v in variants],
            rows_scaling=args.rows_scaling,
            scaling_runs=args.scaling_runs,
            scaling_variants=[v.key for v in scaling_variants],
            workdir=str(workdir) if args.keep else None,
        ),
        "machine": machine,
        "source": asdict(source),
        "variants": [{"key": v.key, "label": v.label, "role": v.role, "description": v.description} for v in variants],
        "summary": summary,
        "scaling": scaling,
        "scaling_tables": scaling_tables,
        "verification": runner.verification,
        "measurements": [asdict(m) for m in runner.measurements],
    }
    result["targets"] = check_targets(summary, variants, scaling)
    report = render_report(result, variants)
    write_results(args.out, result, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
