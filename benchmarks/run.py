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

New variants are one entry in :data:`VARIANTS` (see :func:`dativo_variant`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import yaml
from peers import DLT_BACKENDS, PEER_REQUIREMENTS, peers_python

from dativo.config.models import EngineConfig

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DSN_ENV = "DATIVO_BENCH_DSN"
#: Bump when the table definition changes: an existing table with another version is rebuilt.
TABLE_VERSION = 1
TARGET_TABLE = "bench.wide"

# Targets the report checks (and prints; it never fails the command on them); issue 15's figures.
TARGET_RATIO_TO_FLOOR = 1.35  # default reader
TARGET_RUST_RATIO_TO_FLOOR = 1.15  # postgres-rs, one connection
TARGET_PEAK_RSS_MB = 256.0
TARGET_SPEEDUP_VS_ROWWISE = 5.0
TARGET_ONE_ROW_S = 1.0
TARGET_ONE_ROW_RSS_MB = 150.0
TARGET_VERSION_S = 0.3
TARGET_PEER_SLOWDOWN = 2.5  # dlt's fastest backend takes at least this times dativo's time
TARGET_RSS_GROWTH = 0.05  # peak RSS at the largest --rows-scaling size within +-5% of the smallest's

Role = Literal["floor", "dativo", "baseline", "peer", "startup"]
Phase = Literal["warmup", "run", "scaling"]


def log(message: str) -> None:
    """Progress goes to stderr so that stdout carries only the report."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# The standard wide table
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One column of the benchmark table: ``expr`` computes it from ``g``, the 1-based row number."""

    name: str
    type: str
    expr: str


def _null_every(n: int, expr: str) -> str:
    """``expr``, but NULL on every ``n``-th row."""
    return f"CASE WHEN g % {n} = 0 THEN NULL ELSE {expr} END"


#: 50 columns: 10 bigint, 10 double precision, 10 text (5 md5 hashes, 5 short), 5 timestamptz,
#: 5 date, 5 boolean, 3 numeric(14,2), 2 uuid. Deterministic in the row number, with some NULLs.
WIDE_COLUMNS: tuple[Column, ...] = (
    Column("id", "bigint", "g"),
    Column("i02", "bigint", "g * 7919 % 1000003"),
    Column("i03", "bigint", "(g * 2654435761) % 4294967296"),
    Column("i04", "bigint", "-g"),
    Column("i05", "bigint", "g / 1000"),
    Column("i06", "bigint", _null_every(10, "g * 31")),
    Column("i07", "bigint", "g % 100"),
    Column("i08", "bigint", "1000000000000 + g"),
    Column("i09", "bigint", "g # 123456789"),
    Column("i10", "bigint", _null_every(3, "(g * g) % 999983")),
    Column("f01", "double precision", "g::float8 * 0.5"),
    Column("f02", "double precision", "sqrt(g::float8)"),
    Column("f03", "double precision", "sin(g::float8)"),
    Column("f04", "double precision", "g::float8 / 7"),
    Column("f05", "double precision", "ln(g::float8 + 1)"),
    Column("f06", "double precision", _null_every(11, "cos(g::float8) * 1000")),
    Column("f07", "double precision", "g::float8 * 1e-3"),
    Column("f08", "double precision", "(g % 1000)::float8 / 3"),
    Column("f09", "double precision", "exp(-(g % 50)::float8)"),
    Column("f10", "double precision", _null_every(5, "g::float8 * 1.1")),
    Column("h01", "text", "md5(g::text)"),
    Column("h02", "text", "md5((g * 2)::text)"),
    Column("h03", "text", "md5('h3-' || g)"),
    Column("h04", "text", "md5(g::text || 'salt')"),
    Column("h05", "text", _null_every(8, "md5((g + 17)::text)")),
    Column("s01", "text", "'row-' || g"),
    Column("s02", "text", "(ARRAY['red', 'green', 'blue', 'amber'])[g % 4 + 1]"),
    Column("s03", "text", "'x' || (g % 97)"),
    Column("s04", "text", _null_every(7, "lpad((g % 1000)::text, 6, '0')")),
    Column("s05", "text", "chr(65 + (g % 26)::int) || chr(97 + ((g / 26) % 26)::int)"),
    Column("t01", "timestamptz", "timestamptz '2020-01-01 00:00:00+00' + g * interval '1 second'"),
    Column("t02", "timestamptz", "timestamptz '2000-01-01 00:00:00+00' + g * interval '1 minute'"),
    Column(
        "t03",
        "timestamptz",
        _null_every(13, "timestamptz '2021-06-15 12:00:00+00' - g * interval '17 seconds'"),
    ),
    Column(
        "t04",
        "timestamptz",
        "timestamptz '1999-12-31 23:59:59+00' + (g % 86400000) * interval '1 millisecond'",
    ),
    Column("t05", "timestamptz", "timestamptz '2024-02-29 00:00:00+00' + g * interval '37 microseconds'"),
    Column("d01", "date", "date '2000-01-01' + (g % 10000)::int"),
    Column("d02", "date", "date '1970-01-01' + (g % 36500)::int"),
    Column("d03", "date", _null_every(9, "date '2023-01-01' - (g % 3650)::int")),
    Column("d04", "date", "date '2020-02-29' + (g % 7)::int"),
    Column("d05", "date", "date '1900-01-01' + (g % 73000)::int"),
    Column("b01", "boolean", "g % 2 = 0"),
    Column("b02", "boolean", "g % 3 = 0"),
    Column("b03", "boolean", _null_every(4, "g % 5 = 0")),
    Column("b04", "boolean", "g % 7 < 3"),
    Column("b05", "boolean", "true"),
    Column("n01", "numeric(14,2)", "(g % 1000000) / 100.0"),
    Column("n02", "numeric(14,2)", "g * 1.25"),
    Column("n03", "numeric(14,2)", _null_every(9, "(g % 99999) * -0.01")),
    Column("u01", "uuid", "md5(g::text || 'u')::uuid"),
    Column("u02", "uuid", _null_every(6, "md5('v' || g)::uuid")),
)


def _check_table_definition() -> None:
    counts: dict[str, int] = {}
    for col in WIDE_COLUMNS:
        counts[col.type] = counts.get(col.type, 0) + 1
    expected = {
        "bigint": 10,
        "double precision": 10,
        "text": 10,
        "timestamptz": 5,
        "date": 5,
        "boolean": 5,
        "numeric(14,2)": 3,
        "uuid": 2,
    }
    if counts != expected or len({c.name for c in WIDE_COLUMNS}) != 50:
        raise AssertionError(f"WIDE_COLUMNS does not match the standard table: {counts}")


_check_table_definition()


@dataclass
class SourceTable:
    """A benchmark table on the server and the fingerprint its copies are checked against."""

    name: str
    rows: int
    size_mb: float = 0.0
    built_s: float | None = None  # None: an existing table was reused
    fingerprint: dict[str, int] = field(default_factory=dict)


def _split_table(name: str) -> tuple[str, str]:
    schema, _, table = name.rpartition(".")
    return schema or "public", table


def _table_comment(rows: int) -> str:
    return f"dativo benchmark table v{TABLE_VERSION} rows={rows}"


def ensure_table(dsn: str, name: str, rows: int) -> SourceTable:
    """Create ``name`` with ``rows`` rows of :data:`WIDE_COLUMNS` unless it already exists as such.

    The table is generated server-side with ``generate_series`` (no data crosses
    the wire), gets a primary key on ``id`` and is ``VACUUM ANALYZE``d.
    """
    import psycopg
    from psycopg import sql

    schema, table = _split_table(name)
    ident = sql.Identifier(schema, table)
    with psycopg.connect(dsn, autocommit=True) as conn:
        regclass = conn.execute("SELECT to_regclass(%s)::text", [f'"{schema}"."{table}"']).fetchone()
        existing = None
        if regclass and regclass[0]:
            comment = conn.execute("SELECT obj_description(%s::regclass, 'pg_class')", [regclass[0]]).fetchone()
            if comment and comment[0] == _table_comment(rows):
                count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ident)).fetchone()
                existing = count[0] if count else None
        built_s: float | None = None
        if existing == rows:
            log(f"reusing {name} ({rows:,} rows)")
        else:
            log(f"building {name} with {rows:,} rows server-side ...")
            started = time.perf_counter()
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
            columns = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type)) for c in WIDE_COLUMNS
            )
            conn.execute(sql.SQL("CREATE TABLE {} ({})").format(ident, columns))
            exprs = sql.SQL(", ").join(sql.SQL(c.expr) for c in WIDE_COLUMNS)
            conn.execute(
                sql.SQL("INSERT INTO {} SELECT {} FROM generate_series(1::bigint, {}::bigint) AS g").format(
                    ident, exprs, sql.Literal(rows)
                )
            )
            conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(ident))
            conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(ident, sql.Literal(_table_comment(rows))))
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(ident))
            built_s = time.perf_counter() - started
            log(f"built {name} in {built_s:.1f}s")
        size = conn.execute("SELECT pg_total_relation_size(%s::regclass)", [f'"{schema}"."{table}"']).fetchone()
        # The fingerprint every copy must reproduce: row count, sum(id) and each column's non-NULL count.
        counts = sql.SQL(", ").join(sql.SQL("count({})").format(sql.Identifier(c.name)) for c in WIDE_COLUMNS)
        fp_row = conn.execute(sql.SQL("SELECT count(*), sum(id)::bigint, {} FROM {}").format(counts, ident)).fetchone()
    assert fp_row is not None
    fingerprint = {"rows": int(fp_row[0]), "sum_id": int(fp_row[1] or 0)}
    fingerprint.update({f"non_null.{c.name}": int(v) for c, v in zip(WIDE_COLUMNS, fp_row[2:], strict=True)})
    return SourceTable(
        name=name,
        rows=rows,
        size_mb=round((size[0] if size else 0) / 1e6, 1),
        built_s=None if built_s is None else round(built_s, 2),
        fingerprint=fingerprint,
    )


# --------------------------------------------------------------------------------------------------
# Measuring one child process
# --------------------------------------------------------------------------------------------------


class TreeRssSampler(threading.Thread):
    """Samples the summed RSS of all descendants of ``root_pid`` (the launcher) from ``/proc``.

    ``wait4``'s ``ru_maxrss`` is exact but is the peak of the *largest single
    process* of a tree; a variant that fans out into worker processes needs the
    sum, which only sampling can give (it can miss a short spike between samples).
    """

    def __init__(self, root_pid: int, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.root_pid = root_pid
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop_event = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _tree_rss(self) -> int:
        parents: dict[int, int] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as fh:
                    stat = fh.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            parents[int(entry.name)] = int(fields[1])
        tree: set[int] = set()
        frontier = [self.root_pid]
        children: dict[int, list[int]] = {}
        for pid, ppid in parents.items():
            children.setdefault(ppid, []).append(pid)
        while frontier:
            for child in children.get(frontier.pop(), []):
                if child not in tree:
                    tree.add(child)
                    frontier.append(child)
        total = 0
        for pid in tree:
            try:
                with open(f"/proc/{pid}/statm", "rb") as fh:
                    total += int(fh.read().split()[1]) * self._page
            except (OSError, IndexError, ValueError):
                continue
        return total

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak_bytes = max(self.peak_bytes, self._tree_rss())
            self._stop_event.wait(self.interval_s)

    def stop(self) -> float:
        """Stop sampling; returns the peak in MB."""
        self._stop_event.set()
        self.join()
        return self.peak_bytes / 1e6


@dataclass
class ProcessResult:
    """What the OS says about one finished child."""

    exit_code: int
    wall_s: float
    peak_rss_mb: float
    user_s: float
    sys_s: float
    tree_rss_mb: float | None
    timed_out: bool


def run_measured(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    stdout: Path,
    stderr: Path,
    timeout_s: float,
    sample_tree: bool = False,
) -> ProcessResult:
    """Run ``argv`` and return its wall time, peak RSS and CPU time.

    The command is started by ``_launch.py``, a bare interpreter that forks it,
    times it and reaps it with ``os.wait4`` (see that file for why run.py does
    not fork it itself). Output goes to files, never pipes, so the child cannot
    block on a full pipe. On timeout the whole process group is killed.
    """
    result_file = stdout.with_name("rusage.txt")
    result_file.unlink(missing_ok=True)
    launcher = [sys.executable, "-I", "-S", str(HERE / "_launch.py"), str(result_file)]
    timed_out = False
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [*launcher, *argv],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,  # its own process group, so a timeout can kill the whole tree
        )
        sampler = TreeRssSampler(proc.pid) if sample_tree else None
        if sampler:
            sampler.start()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            tree = sampler.stop() if sampler else None
    figures: dict[str, str] = {}
    with contextlib.suppress(OSError):
        figures = dict(line.split("=", 1) for line in result_file.read_text().splitlines() if "=" in line)
    if not figures:
        return ProcessResult(proc.returncode or -1, 0.0, 0.0, 0.0, 0.0, tree, timed_out)
    return ProcessResult(
        exit_code=int(figures["exit_code"]),
        wall_s=float(figures["wall_s"]),
        peak_rss_mb=int(figures["maxrss_kb"]) * 1024 / 1e6,  # Linux reports KiB
        user_s=float(figures["user_s"]),
        sys_s=float(figures["sys_s"]),
        tree_rss_mb=tree,
        timed_out=timed_out,
    )


def rss_measurement_floor(workdir: Path) -> float:
    """Peak RSS reported for ``true``: the launcher's pre-exec share, a lower bound of every RSS figure."""
    probe = workdir / "rss-floor"
    probe.mkdir(parents=True, exist_ok=True)
    result = run_measured(
        ["true"],
        env=os.environ,
        cwd=probe,
        stdout=probe / "stdout.txt",
        stderr=probe / "stderr.txt",
        timeout_s=60,
    )
    shutil.rmtree(probe, ignore_errors=True)
    return round(result.peak_rss_mb, 1)


# --------------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchContext:
    """Everything a variant needs to build its command."""

    dsn: str
    psql: str
    python: str
    dativo: tuple[str, ...]
    batch_size: int


@dataclass(frozen=True)
class Outcome:
    """What a finished variant reports about itself (read from its output files)."""

    rows: int | None
    engine_s: float | None = None  # time the engine itself measured (dativo's summary), if any


@dataclass(frozen=True)
class Invocation:
    """One ready-to-run command of a variant, in its own fresh directory."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    #: Reads the outcome from the run directory after the child exited with status 0.
    outcome: Callable[[Path], Outcome]
    #: Deeper, untimed correctness check of what the run produced; returns figures to compare
    #: with :attr:`SourceTable.fingerprint`. Run once per variant.
    verify: Callable[[SourceTable], dict[str, int]] | None = None


@dataclass(frozen=True)
class Variant:
    """Something to measure.

    ``key`` selects it on the command line (``--readers``), ``label`` names it in
    the report. ``build`` prepares a fresh run directory and returns the command.
    """

    key: str
    label: str
    role: Role
    description: str
    build: Callable[[BenchContext, SourceTable, Path], Invocation]
    default: bool = True
    #: Also sample the summed RSS of the whole process tree (for variants that spawn workers).
    sample_tree_rss: bool = False
    #: Rows the variant must report (None: the whole source table).
    expected_rows: int | None = None


def _pg_client_env(dsn: str) -> tuple[list[str], dict[str, str]]:
    """``psql`` arguments and environment for ``dsn``, keeping the password out of argv."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    env = {}
    if "password" in params:
        env["PGPASSWORD"] = params.pop("password")
    return ["-d", make_conninfo(**params)], env


def _floor_build(ctx: BenchContext, source: SourceTable, run_dir: Path) -> Invocation:
    conn_args, env = _pg_client_env(ctx.dsn)
    copy_cmd = f"\\copy (SELECT * FROM {source.name}) TO '/dev/null' (FORMAT binary)"
    argv = [ctx.psql, "-X", "-v", "ON_ERROR_STOP=1", *conn_args, "-c", copy_cmd]

    def outcome(directory: Path) -> Outcome:
        text = (directory / "stdout.txt").read_text().strip()  # "COPY <n>"
        parts = text.split()
        return Outcome(rows=int(parts[-1]) if parts and parts[-1].isdigit() else None)

    return Invocation(argv=argv, env=env, cwd=run_dir, outcome=outcome)


def _sqlalchemy_build(ctx: BenchContext, source: SourceTable, run_dir: Path) -> Invocation:
    argv = [
        ctx.python,
        str(HERE / "sqlalchemy_rowwise.py"),
        "--table",
        source.name,
        "--batch-size",
        str(ctx.batch_size),
    ]

    def outcome(directory: Path) -> Outcome:
        lines = (directory / "stdout.txt").read_text().strip().splitlines()
        return Outcome(rows=int(json.loads(lines[-1])["rows"]) if lines else None)

    return Invocation(argv=argv, env={DSN_ENV: ctx.dsn}, cwd=run_dir, outcome=outcome)


def _version_build(ctx: BenchContext, source: SourceTable, run_dir: Path) -> Invocation:
    return Invocation(argv=[*ctx.dativo, "--version"], env={}, cwd=run_dir, outcome=lambda d: Outcome(rows=0))


def _dlt_build(backend: str) -> Callable[[BenchContext, SourceTable, Path], Invocation]:
    """dlt's sql_table with ``backend`` into Parquet files (benchmarks/dlt_job.py in the peers' venv)."""

    def build(ctx: BenchContext, source: SourceTable, run_dir: Path) -> Invocation:
        out = run_dir / "dlt"
        argv = [peers_python(log), str(HERE / "dlt_job.py"), "--table", source.name, "--backend", backend]
        argv += ["--out", str(out), "--chunk-size", str(ctx.batch_size)]

        def outcome(directory: Path) -> Outcome:
            lines = (directory / "stdout.txt").read_text().strip().splitlines()
            return Outcome(rows=int(json.loads(lines[-1])["rows"]) if lines else None)

        def verify(src: SourceTable) -> dict[str, int]:
            table = _split_table(src.name)[1]
            fp = parquet_fingerprint(next((out / "data" / "bench").glob(table)))
            dlt_columns = [k for k in fp if k.startswith("non_null._dlt_")]
            for k in dlt_columns:  # dlt's own _dlt_load_id / _dlt_id bookkeeping columns
                del fp[k]
            fp["columns"] -= len(dlt_columns)
            return fp

        return Invocation(argv=argv, env={DSN_ENV: ctx.dsn}, cwd=run_dir, outcome=outcome, verify=verify)

    return build


def _engine_overhead_build(ctx: BenchContext, source: SourceTable, run_dir: Path) -> Invocation:
    argv = [
        ctx.python,
        str(HERE / "engine_overhead.py"),
        "--table",
        source.name,
        "--rows",
        str(source.rows),
        "--batch-size",
        str(ctx.batch_size),
    ]

    def outcome(directory: Path) -> Outcome:
        lines = (directory / "stdout.txt").read_text().strip().splitlines()
        result = json.loads(lines[-1]) if lines else {}
        return Outcome(rows=result.get("rows"), engine_s=result.get("engine_s"))

    return Invocation(argv=argv, env={DSN_ENV: ctx.dsn}, cwd=run_dir, outcome=outcome)


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated recursively with ``extra``; a ``None`` value in ``extra`` removes the key."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def iceberg_fingerprint(warehouse: Path, table: str) -> dict[str, int]:
    """Read the Iceberg table back with PyIceberg and compute the same fingerprint as the server's.

    The embedded catalog is PyIceberg's SQL catalog named ``dativo`` (the SQL
    catalog scopes tables by catalog name). Streams batch by batch.
    """
    import pyarrow.compute as pc
    from pyiceberg.catalog import load_catalog

    catalog = load_catalog(
        "dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )
    tbl = catalog.load_table(table)
    names = [f.name for f in tbl.schema().fields]
    fp: dict[str, int] = {"rows": 0, "sum_id": 0, "columns": len(names)}
    fp.update({f"non_null.{n}": 0 for n in names})
    for batch in tbl.scan().to_arrow_batch_reader():
        fp["rows"] += batch.num_rows
        fp["sum_id"] += int(pc.sum(batch.column("id")).as_py() or 0) if "id" in names else 0
        for name in names:
            col = batch.column(name)
            fp[f"non_null.{name}"] += len(col) - col.null_count
    snapshot = tbl.current_snapshot()
    if snapshot is not None and snapshot.summary is not None:
        fp["snapshot.total-records"] = int(snapshot.summary.get("total-records", -1))
    return fp


def dativo_variant(
    key: str,
    label: str,
    *,
    description: str,
    reader: str | None = None,
    reader_options: Mapping[str, Any] | None = None,
    job: Mapping[str, Any] | None = None,
    default: bool = True,
    sample_tree_rss: bool = False,
    verify_iceberg: bool = True,
    role: Role = "dativo",
    expected_rows: int | None = None,
) -> Variant:
    """A variant that runs ``dativo run --quiet`` from the source table into a fresh embedded Iceberg table.

    ``reader`` names the reader implementation (``None``: the connector's
    default); ``reader_options`` become ``source.reader.options``; ``job`` is
    deep-merged into the generated job last, so a variant can set anything
    (``engine``, ``target.options``, another writer, ...; a ``None`` value
    removes a key). ``verify_iceberg=False`` skips reading the result back (for
    a variant whose target is not the embedded Iceberg table).
    """

    def build(ctx: BenchContext, source: SourceTable, run_dir: Path) -> Invocation:
        spec: dict[str, Any] = {
            "name": f"bench-{key}",
            "source": {
                "connector": "postgres",
                "connection": {"dsn": "${" + DSN_ENV + "}"},
                "table": source.name,
            },
            "target": {"connector": "iceberg", "table": TARGET_TABLE},  # embedded catalog next to the job
            "engine": {"batch_size": ctx.batch_size},
        }
        if reader is not None or reader_options:
            spec["source"]["reader"] = {"implementation": reader or "postgres-adbc"}
            if reader_options:
                spec["source"]["reader"]["options"] = dict(reader_options)
        spec = _deep_merge(spec, job or {})
        job_file = run_dir / "job.yaml"
        job_file.write_text(yaml.safe_dump(spec, sort_keys=False))
        summary_file = run_dir / "summary.json"
        argv = [*ctx.dativo, "run", str(job_file), "--quiet", "--summary-json", str(summary_file)]

        def outcome(directory: Path) -> Outcome:
            summary = json.loads(summary_file.read_text())
            return Outcome(rows=summary.get("rows"), engine_s=summary.get("duration_s"))

        def verify(src: SourceTable) -> dict[str, int]:
            return iceberg_fingerprint(run_dir / "warehouse", TARGET_TABLE)

        return Invocation(
            argv=argv,
            env={DSN_ENV: ctx.dsn},
            cwd=run_dir,
            outcome=outcome,
            verify=verify if verify_iceberg else None,
        )

    return Variant(
        key=key,
        label=label,
        role=role,
        description=description,
        build=build,
        default=default,
        sample_tree_rss=sample_tree_rss,
        expected_rows=expected_rows,
    )


def parquet_fingerprint(folder: Path, key_file: Path | None = None) -> dict[str, int]:
    """The source fingerprint of a folder of Parquet files (decrypted with the local KMS when ``key_file``)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fp: dict[str, int] = {"rows": 0, "sum_id": 0}
    for path in sorted(folder.glob("*.parquet")):
        if key_file is not None:
            from dativo.encryption.kms.local import LocalKeyFileKms
            from dativo.targets.encrypted_parquet import read_encrypted

            table = read_encrypted(str(path), LocalKeyFileKms({"type": "local", "key_file": str(key_file)}, folder))
        else:
            table = pq.read_table(path)
        fp["rows"] += table.num_rows
        fp["sum_id"] += int(pc.sum(table.column("id")).as_py() or 0)
        fp["columns"] = table.num_columns
        for name in table.column_names:
            col = table.column(name)
            fp[f"non_null.{name}"] = fp.get(f"non_null.{name}", 0) + len(col) - col.null_count
    return fp


def parquet_target_variant(key: str, label: str, *, encrypted: bool, description: str) -> Variant:
    """``dativo run`` into a local folder with the ``parquet`` or ``encrypted-parquet`` writer (same file size).

    The encrypted variant uses the ``local`` KMS (a fresh 0600 key file in the run directory), a footer
    key for most columns and a second master key for the five md5 text columns, footer encrypted.
    """
    options: dict[str, Any] = {"target_file_size_mb": 128}
    if encrypted:
        options |= {
            "footer_key": "footer_key",
            "column_keys": {"phi_key": ["h01", "h02", "h03", "h04", "h05"]},
            "kms": {"type": "local", "key_file": "keys.json"},
            "audit": {"log": "audit.jsonl"},
        }
    target = {"connector": "encrypted-parquet" if encrypted else "parquet", "path": "out", "options": options}
    base = dativo_variant(
        key, label, description=description, job={"target": {"table": None, **target}}, verify_iceberg=False
    )

    def build(ctx: BenchContext, source: SourceTable, run_dir: Path) -> Invocation:
        if encrypted:
            from dativo.encryption.kms.local import new_key_file

            new_key_file(run_dir / "keys.json", ["footer_key", "phi_key"])
        invocation = base.build(ctx, source, run_dir)
        key_file = run_dir / "keys.json" if encrypted else None
        return dataclasses.replace(invocation, verify=lambda src: parquet_fingerprint(run_dir / "out", key_file))

    return dataclasses.replace(base, build=build, default=False)


#: Everything the benchmark can measure, in the order each pass runs them. The floor comes first
#: and is always run. To add a variant (a Rust reader, parallel connections, a process runtime, an
#: encrypted writer, an engine-overhead run ...) append one entry, for example::
#:
#:     dativo_variant("rust", "dativo postgres-rust", reader="postgres-rust",
#:                    description="the Rust reader", default=False),
#:     dativo_variant("parallel4", "dativo postgres-adbc x4", reader_options={"connections": 4},
#:                    description="four connections"),
#:     dativo_variant("procs", "dativo process runtime", job={"source": {"reader": {"type": "..."}}},
#:                    description="reader in a child process", sample_tree_rss=True),
#:
#: and select it with ``--readers adbc,rust``.
VARIANTS: list[Variant] = [
    Variant(
        key="floor",
        label="floor: psql \\copy binary",
        role="floor",
        description="psql \\copy (SELECT * FROM t) TO '/dev/null' (FORMAT binary): the server's "
        "single-stream export speed, including psql's own (small) client cost",
        build=_floor_build,
    ),
    dativo_variant(
        "adbc",
        "dativo postgres-adbc",
        reader="postgres-adbc",
        description="dativo run --quiet, ADBC reader (the default without dativo[native]), into a fresh "
        "embedded Iceberg table",
    ),
    dativo_variant(
        "psycopg",
        "dativo postgres-psycopg",
        reader="postgres-psycopg",
        description="dativo run --quiet, psycopg reader, into a fresh embedded Iceberg table",
    ),
    dativo_variant(
        "adbc-1",
        "dativo postgres-adbc, 1 connection",
        reader="postgres-adbc",
        job={"source": {"parallelism": 1}},
        description="default ADBC reader, source.parallelism: 1 (one stream), into Iceberg",
    ),
    dativo_variant(
        "adbc-2",
        "dativo postgres-adbc, 2 connections",
        reader="postgres-adbc",
        job={"source": {"parallelism": 2}},
        description="default ADBC reader, source.parallelism: 2 (ctid ranges in one exported snapshot), into Iceberg",
    ),
    dativo_variant(
        "rust-1",
        "dativo postgres-rs, 1 connection",
        reader="postgres-rs",
        job={"source": {"parallelism": 1}},
        description="native Rust reader (plugins/postgres-rs), one stream, into Iceberg",
    ),
    dativo_variant(
        "rust-2",
        "dativo postgres-rs, 2 connections",
        reader="postgres-rs",
        job={"source": {"parallelism": 2}},
        description="native Rust reader, source.parallelism: 2 (ctid ranges in one exported snapshot), into Iceberg",
    ),
    # Issue #5: the same ADBC reader out of process (compare with adbc-1), and the Go reader.
    dativo_variant(
        "process-adbc",
        "dativo postgres-adbc, process runtime",
        job={
            "source": {
                "parallelism": 1,
                "reader": {
                    "type": "process",
                    "command": [sys.executable, "-m", "dativo.runtimes.serve", "process", "postgres-adbc"],
                    "sandbox": {"network": True},
                },
            }
        },
        description="the ADBC reader served by 'dativo serve process' in a sandboxed child (bwrap), Arrow IPC "
        "over a pipe, one stream, into Iceberg (compare with adbc-1)",
        sample_tree_rss=True,
    ),
    dativo_variant(
        "go",
        "dativo go-postgres-reader, process runtime",
        job={
            "source": {
                "parallelism": 1,
                "reader": {
                    "type": "process",
                    "command": [str(REPO / "plugins" / "go-postgres-reader" / "bin" / "go-postgres-reader")],
                    "sandbox": {"network": True},
                    "source_plan": True,
                },
            }
        },
        description="the Go reader (pgx binary rows -> Arrow, plugins/go-postgres-reader) in a sandboxed child, "
        "one stream, into Iceberg",
        sample_tree_rss=True,
    ),
    dativo_variant(
        "one-row",
        "dativo 1-row job (start-up, default reader)",
        job={"source": {"table": None, "query": "SELECT * FROM public.wide WHERE id = 1"}},
        description="a 1-row PostgreSQL -> Iceberg job, default reader: start-up, planning and one commit",
        verify_iceberg=False,
        role="startup",
        expected_rows=1,
    ),
    Variant(
        key="version",
        label="dativo --version",
        role="startup",
        description="the console script's --version: interpreter start-up plus dativo's entry point",
        build=_version_build,
        expected_rows=0,
    ),
    *[
        Variant(
            key=f"dlt-{backend}",
            label=f"peer: dlt sql_table, {backend} backend -> parquet",
            role="peer",
            description=f"dlt {PEER_REQUIREMENTS[0].split('==')[1]} sql_table(backend='{backend}') into local "
            "Parquet files (filesystem destination), from its own venv (benchmarks/peers.py)",
            build=_dlt_build(backend),
            default=False,
        )
        for backend in DLT_BACKENDS
    ],
    Variant(
        key="engine",
        label="engine overhead: memory -> null writer",
        role="baseline",
        description="benchmarks/engine_overhead.py: the table's rows (a sample batch repeated) from an in-memory "
        "reader through the whole engine into a writer that discards them; 'engine s' excludes start-up",
        build=_engine_overhead_build,
        default=False,
    ),
    Variant(
        key="sqlalchemy",
        label="sqlalchemy row-by-row",
        role="baseline",
        description="SQLAlchemy stream_results=True, iterating rows one by one into Python lists "
        "(no Arrow, no writing: strictly less work than dativo)",
        build=_sqlalchemy_build,
    ),
    parquet_target_variant(
        "parquet",
        "dativo -> parquet folder",
        encrypted=False,
        description="default ADBC reader into a local folder with the plain parquet writer (128 MB files)",
    ),
    parquet_target_variant(
        "encrypted",
        "dativo -> encrypted-parquet folder",
        encrypted=True,
        description="the same into encrypted-parquet: local KMS, AES-GCM, footer + column keys, audit log",
    ),
]


def select_variants(keys: str | None) -> list[Variant]:
    """The floor plus the variants named in the comma-separated ``keys`` (default: the default ones)."""
    by_key = {v.key: v for v in VARIANTS}
    if keys is None:
        wanted = {v.key for v in VARIANTS if v.default}
    else:
        wanted = {k.strip() for k in keys.split(",") if k.strip()}
        unknown = wanted - by_key.keys()
        if unknown:
            raise SystemExit(f"unknown variant(s) {', '.join(sorted(unknown))}; known: {', '.join(by_key)}")
    wanted |= {v.key for v in VARIANTS if v.role == "floor"}
    return [v for v in VARIANTS if v.key in wanted]


# --------------------------------------------------------------------------------------------------
# Running passes
# --------------------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """One measured run of one variant (a row of the raw JSON)."""

    variant: str
    phase: Phase
    run: int
    table: str
    rows_expected: int
    ok: bool
    exit_code: int
    wall_s: float
    peak_rss_mb: float
    user_s: float
    sys_s: float
    tree_rss_mb: float | None
    rows: int | None
    engine_s: float | None
    ratio_to_floor: float | None = None
    error: str | None = None


@dataclass
class Runner:
    """Runs variants against source tables and keeps every measurement."""

    ctx: BenchContext
    workdir: Path
    timeout_s: float
    keep: bool
    force_tree_rss: bool
    measurements: list[Measurement] = field(default_factory=list)
    verification: dict[str, dict[str, Any]] = field(default_factory=dict)

    def measure(self, variant: Variant, source: SourceTable, phase: Phase, run: int) -> Measurement:
        """Run ``variant`` once on ``source`` in a fresh directory; verify its output the first time."""
        run_dir = self.workdir / f"{phase}-{run}-{source.rows}-{variant.key}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        inv = variant.build(self.ctx, source, run_dir)
        result = run_measured(
            inv.argv,
            env={**os.environ, **inv.env},
            cwd=inv.cwd,
            stdout=run_dir / "stdout.txt",
            stderr=run_dir / "stderr.txt",
            timeout_s=self.timeout_s,
            sample_tree=variant.sample_tree_rss or self.force_tree_rss,
        )
        outcome, error = Outcome(rows=None), None
        if result.timed_out:
            error = f"timed out after {self.timeout_s:g}s"
        elif result.exit_code != 0:
            tail = (run_dir / "stderr.txt").read_text(errors="replace").strip()[-1500:]
            error = f"exit code {result.exit_code}: {tail}"
        else:
            try:
                outcome = inv.outcome(run_dir)
            except (OSError, ValueError, KeyError) as exc:
                error = f"could not read the outcome: {exc!r}"
            else:
                expected = source.rows if variant.expected_rows is None else variant.expected_rows
                if outcome.rows != expected:
                    error = f"reported {outcome.rows} rows, expected {expected}"
        m = Measurement(
            variant=variant.key,
            phase=phase,
            run=run,
            table=source.name,
            rows_expected=source.rows,
            ok=error is None,
            exit_code=result.exit_code,
            wall_s=round(result.wall_s, 4),
            peak_rss_mb=round(result.peak_rss_mb, 1),
            user_s=round(result.user_s, 3),
            sys_s=round(result.sys_s, 3),
            tree_rss_mb=None if result.tree_rss_mb is None else round(result.tree_rss_mb, 1),
            rows=outcome.rows,
            engine_s=outcome.engine_s,
            error=error,
        )
        verify_key = f"{variant.key}@{source.name}"
        if m.ok and inv.verify is not None and verify_key not in self.verification:
            self.verification[verify_key] = self._verify(inv, source)
        if not self.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        os.sync()  # flush this run's writes now, not during the next measurement
        status = f"{m.wall_s:8.2f}s  {m.peak_rss_mb:7.1f} MB" if m.ok else f"FAILED ({(error or '')[:300]})"
        log(f"{phase} {run} {source.rows:>10,} rows  {variant.key:<12} {status}")
        self.measurements.append(m)
        return m

    def _verify(self, inv: Invocation, source: SourceTable) -> dict[str, Any]:
        assert inv.verify is not None
        try:
            got = inv.verify(source)
        except Exception as exc:  # a broken output must show up in the report, not abort the benchmark
            return {"ok": False, "error": repr(exc)}
        mismatches = {k: {"expected": v, "got": got.get(k)} for k, v in source.fingerprint.items() if got.get(k) != v}
        if got.get("columns", len(WIDE_COLUMNS)) != len(WIDE_COLUMNS):
            mismatches["columns"] = {"expected": len(WIDE_COLUMNS), "got": got.get("columns")}
        total = got.get("snapshot.total-records")
        if total is not None and total != source.rows:
            mismatches["snapshot.total-records"] = {"expected": source.rows, "got": total}
        return {"ok": not mismatches, "rows": got.get("rows"), "mismatches": mismatches}

    def run_pass(self, variants: Sequence[Variant], source: SourceTable, phase: Phase, run: int) -> None:
        """Run each variant once, in order; ratios are to the floor measured in this same pass."""
        floor: Measurement | None = None
        for variant in variants:
            m = self.measure(variant, source, phase, run)
            if variant.role == "floor":
                floor = m if m.ok else None
            elif m.ok and floor is not None and floor.wall_s > 0 and variant.role != "startup":
                m.ratio_to_floor = round(m.wall_s / floor.wall_s, 3)


# --------------------------------------------------------------------------------------------------
# Summaries, targets and the report
# --------------------------------------------------------------------------------------------------


def summarize(measurements: Sequence[Measurement]) -> dict[str, Any]:
    """Medians (and spread) over the successful measurements of one variant."""
    ok = [m for m in measurements if m.ok]
    out: dict[str, Any] = {
        "runs": len(measurements),
        "ok_runs": len(ok),
        "failed_runs": len(measurements) - len(ok),
    }
    if not ok:
        out["errors"] = sorted({m.error or "" for m in measurements})
        return out
    walls = [m.wall_s for m in ok]
    ratios = [m.ratio_to_floor for m in ok if m.ratio_to_floor is not None]
    engine = [m.engine_s for m in ok if m.engine_s is not None]
    trees = [m.tree_rss_mb for m in ok if m.tree_rss_mb is not None]
    rows = ok[0].rows_expected
    median_wall = statistics.median(walls)
    out.update(
        {
            "rows": rows,
            "median_wall_s": round(median_wall, 3),
            "min_wall_s": round(min(walls), 3),
            "max_wall_s": round(max(walls), 3),
            "median_ratio_to_floor": round(statistics.median(ratios), 3) if ratios else None,
            "median_peak_rss_mb": round(statistics.median(m.peak_rss_mb for m in ok), 1),
            "max_peak_rss_mb": round(max(m.peak_rss_mb for m in ok), 1),
            "max_tree_rss_mb": round(max(trees), 1) if trees else None,
            "median_cpu_s": round(statistics.median(m.user_s + m.sys_s for m in ok), 3),
            "median_engine_s": round(statistics.median(engine), 3) if engine else None,
            "rows_per_s": round(rows / median_wall) if median_wall > 0 else None,
        }
    )
    return out


def rss_growth(scaling: Sequence[Mapping[str, Any]]) -> dict[str, tuple[int, int, float]]:
    """Per dativo variant of ``--rows-scaling``: (fewest rows, most rows, relative change of median peak RSS)."""
    out: dict[str, tuple[int, int, float]] = {}
    for key in sorted({row["variant"] for row in scaling if row["variant"] != "floor"}):
        sizes = sorted((row["rows"], row.get("median_peak_rss_mb")) for row in scaling if row["variant"] == key)
        sizes = [(n, rss) for n, rss in sizes if rss]
        if len(sizes) >= 2 and sizes[0][0] != sizes[-1][0]:
            out[key] = (sizes[0][0], sizes[-1][0], round(sizes[-1][1] / sizes[0][1] - 1, 3))
    return out


def check_targets(
    summary: Mapping[str, Mapping[str, Any]],
    variants: Sequence[Variant],
    scaling: Sequence[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Evaluate the project's performance targets (issue 15's right column); ``met`` is None when not measured."""
    targets: list[dict[str, Any]] = []
    adbc = summary.get("adbc", {})
    ratio = adbc.get("median_ratio_to_floor")
    targets.append(
        {
            "target": f"default reader (adbc) <= {TARGET_RATIO_TO_FLOOR}x floor",
            "value": ratio,
            "met": None if ratio is None else ratio <= TARGET_RATIO_TO_FLOOR,
        }
    )
    rust = summary.get("rust-1", {}).get("median_ratio_to_floor")
    targets.append(
        {
            "target": f"postgres-rs, 1 connection <= {TARGET_RUST_RATIO_TO_FLOOR}x floor",
            "value": rust,
            "met": None if rust is None else rust <= TARGET_RUST_RATIO_TO_FLOOR,
        }
    )
    for key, limit, what in [
        ("one-row", TARGET_ONE_ROW_S, "1-row job wall"),
        ("version", TARGET_VERSION_S, "dativo --version wall"),
    ]:
        wall = summary.get(key, {}).get("median_wall_s")
        met = None if wall is None else wall <= limit
        targets.append({"target": f"{what} <= {limit} s", "value": wall, "met": met})
    one_row_rss = summary.get("one-row", {}).get("max_peak_rss_mb")
    targets.append(
        {
            "target": f"1-row job peak RSS <= {TARGET_ONE_ROW_RSS_MB:.0f} MB",
            "value": one_row_rss,
            "met": None if one_row_rss is None else one_row_rss <= TARGET_ONE_ROW_RSS_MB,
        }
    )
    peer_walls = [summary.get(f"dlt-{b}", {}).get("median_wall_s") for b in DLT_BACKENDS]
    fastest_peer = min((w for w in peer_walls if w), default=None)
    slowdown = None
    if fastest_peer and adbc.get("median_wall_s"):
        slowdown = round(fastest_peer / adbc["median_wall_s"], 2)
    targets.append(
        {
            "target": f"dlt's fastest backend takes >= {TARGET_PEER_SLOWDOWN}x dativo's (adbc) time",
            "value": slowdown,
            "met": None if slowdown is None else slowdown >= TARGET_PEER_SLOWDOWN,
        }
    )
    for v in variants:
        if v.role != "dativo":
            continue
        s = summary.get(v.key, {})
        rss = s.get("max_tree_rss_mb") or s.get("max_peak_rss_mb")
        targets.append(
            {
                "target": f"{v.key}: peak RSS <= {TARGET_PEAK_RSS_MB:.0f} MB (worst run)",
                "value": rss,
                "met": None if rss is None else rss <= TARGET_PEAK_RSS_MB,
            }
        )
    growth = rss_growth(scaling)
    for key, (low, high, change) in growth.items():
        targets.append(
            {
                "target": f"{key}: peak RSS {low:,} -> {high:,} rows flat (+-{TARGET_RSS_GROWTH:.0%}, median runs)",
                "value": f"{change:+.1%}",
                "met": abs(change) <= TARGET_RSS_GROWTH,
            }
        )
    if not growth:
        targets.append(
            {
                "target": f"peak RSS 1M -> 5M rows flat (+-{TARGET_RSS_GROWTH:.0%}; needs --rows-scaling)",
                "value": None,
                "met": None,
            }
        )
    psy, rowwise = summary.get("psycopg", {}), summary.get("sqlalchemy", {})
    speedup = None
    if psy.get("median_wall_s") and rowwise.get("median_wall_s"):
        speedup = round(rowwise["median_wall_s"] / psy["median_wall_s"], 2)
    targets.append(
        {
            "target": f"psycopg reader >= {TARGET_SPEEDUP_VS_ROWWISE}x faster than SQLAlchemy row-by-row",
            "value": speedup,
            "met": None if speedup is None else speedup >= TARGET_SPEEDUP_VS_ROWWISE,
        }
    )
    return targets


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A GitHub-flavoured Markdown table; ``align`` has one ``l`` or ``r`` per column (default ``lrr...``)."""
    align = align or "l" + "r" * (len(headers) - 1)
    aligns = ["--:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(aligns) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _ratio_to(summary: Mapping[str, Mapping[str, Any]], v: Variant, key: str) -> float | None:
    """``v``'s median wall over variant ``key``'s (peers and baselines only; None when either is missing)."""
    mine, theirs = summary.get(v.key, {}).get("median_wall_s"), summary.get(key, {}).get("median_wall_s")
    if v.role not in ("peer", "baseline") or not mine or not theirs:
        return None
    return round(mine / theirs, 2)


def render_report(result: Mapping[str, Any], variants: Sequence[Variant]) -> str:
    """The Markdown report printed at the end (and saved next to the JSON)."""
    meta, cfg = result["machine"], result["config"]
    source = result["source"]
    parts = [
        "# dativo benchmark",
        "",
        f"{source['rows']:,} rows x {len(WIDE_COLUMNS)} columns from `{source['name']}` "
        f"({source['size_mb']:,} MB on the server); median of {cfg['runs']} interleaved runs "
        f"after {cfg['warmup']} warm-up pass(es); batch size {cfg['batch_size']:,}.",
        "",
    ]
    rows = []
    for v in variants:
        s = result["summary"].get(v.key, {})
        if not s.get("ok_runs"):
            rows.append([v.label, "failed", "-", "-", "-", "-", "-", "-", "-"])
            continue
        rss = _fmt(s["max_peak_rss_mb"], ".0f")
        if s.get("max_tree_rss_mb") is not None:
            rss += f" (tree {s['max_tree_rss_mb']:.0f})"
        rows.append(
            [
                v.label,
                _fmt(s["median_wall_s"], ".2f"),
                f"{s['min_wall_s']:.2f} / {s['max_wall_s']:.2f}",
                "1.00" if v.role == "floor" else _fmt(s["median_ratio_to_floor"], ".2f"),
                _fmt(_ratio_to(result["summary"], v, "adbc"), ".2f"),
                rss,
                "-" if v.role == "startup" else _fmt(s["rows_per_s"], ",.0f"),
                _fmt(s["median_cpu_s"], ".2f"),
                _fmt(s["median_engine_s"], ".2f"),
            ]
        )
    parts.append(
        markdown_table(
            [
                "variant",
                "median wall s",
                "min / max s",
                "x floor",
                "x dativo",
                "peak RSS MB",
                "rows/s",
                "client CPU s",
                "engine s",
            ],
            rows,
        )
    )
    parts += [
        "",
        "- *x floor*: median over runs of (variant wall / floor wall of the same run); not given for start-up rows.",
        "- *x dativo*: median wall / the default dativo variant's (adbc) median wall; above 1 is slower than dativo.",
        "- Peers (dlt) run from their own venv (benchmarks/peers.py). Sling and ingestr are not measured: both "
        "download binaries or DuckDB extensions at run time from hosts these machines cannot reach.",
        "- *peak RSS*: worst run; `ru_maxrss` of the child from `wait4` (largest single process); "
        f"figures near {meta.get('rss_measurement_floor_mb')} MB (what `true` reports) are at most that.",
        "- *client CPU s*: user + system CPU of the child (the server's CPU is not included).",
        "- *engine s*: the run's own duration from dativo's summary (no interpreter start-up, no imports).",
        "- The server runs on the same machine; its work is inside every wall time, including the floor's.",
        "",
    ]
    failures = {k: s["errors"] for k, s in result["summary"].items() if s.get("errors")}
    for key, errors in failures.items():
        parts.append(f"**{key} failed**: {errors[0][:500]}")
        parts.append("")
    load = meta.get("load_average_at_start", "")
    if load and float(load.split()[0]) >= 0.5:
        parts += [
            f"**Warning**: the machine was busy when the benchmark started (load average {load}); "
            "other processes compete with the client and the server, so figures are noisy.",
            "",
        ]
    if result.get("scaling"):
        parts += ["## Memory vs row count", ""]
        base = {
            row["variant"]: row.get("median_peak_rss_mb")
            for row in sorted(result["scaling"], key=lambda r: -r["rows"])
            if row.get("median_peak_rss_mb")
        }
        srows = [
            [
                f"{row['rows']:,}",
                row["variant"],
                _fmt(row.get("median_wall_s"), ".2f"),
                "1.00" if row["variant"] == "floor" else _fmt(row.get("median_ratio_to_floor"), ".2f"),
                _fmt(row.get("median_peak_rss_mb"), ".0f"),
                _fmt(row.get("max_peak_rss_mb"), ".0f"),
                "-"
                if not row.get("median_peak_rss_mb") or not base.get(row["variant"])
                else f"{row['median_peak_rss_mb'] / base[row['variant']] - 1:+.1%}",
                _fmt(row.get("median_cpu_s"), ".2f"),
                _fmt(row.get("rows_per_s"), ",.0f"),
            ]
            for row in result["scaling"]
        ]
        parts.append(
            markdown_table(
                [
                    "rows",
                    "variant",
                    "median wall s",
                    "x floor",
                    "median peak RSS MB",
                    "worst peak RSS MB",
                    "vs smallest",
                    "client CPU s",
                    "rows/s",
                ],
                srows,
                "rlrrrrrrr",
            )
        )
        parts += ["", "- *vs smallest*: median peak RSS over that of the fewest rows (the scaling target).", ""]
    parts += ["## Correctness (read back with PyIceberg)", ""]
    vrows = [
        [
            key,
            "ok" if v.get("ok") else "MISMATCH",
            _fmt(v.get("rows"), ","),
            json.dumps(v.get("mismatches") or v.get("error") or "")[:200],
        ]
        for key, v in result["verification"].items()
    ]
    parts.append(
        markdown_table(["variant@table", "check", "rows", "details"], vrows, "llrl") if vrows else "(nothing verified)"
    )
    parts += ["", "## Targets", ""]
    trows = [
        [t["target"], _fmt(t["value"]), {True: "met", False: "NOT met", None: "not measured"}[t["met"]]]
        for t in result["targets"]
    ]
    parts.append(markdown_table(["target", "value", "status"], trows, "lrl"))
    parts += ["", "## Machine", ""]
    parts += [f"- {k}: {v}" for k, v in meta.items()]
    parts.append("")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------
# Environment facts
# --------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _ram_gb() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / 1e9, 1)
    return None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return rev + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_facts(dsn: str, psql: str) -> dict[str, Any]:
    """CPU, memory, versions and the server settings that matter for a read benchmark."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        pg_version = conn.execute("SHOW server_version").fetchone()
        settings: dict[str, str] = dict(
            conn.execute(
                "SELECT name, current_setting(name) FROM unnest(%s::text[]) AS name",
                [["shared_buffers", "work_mem", "jit", "fsync", "max_parallel_workers_per_gather"]],
            ).fetchall()
        )
    psql_version = subprocess.run([psql, "--version"], capture_output=True, text=True).stdout.strip()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": _cpu_model(),
        "cores": f"{os.cpu_count()} ({affinity} usable)",
        "ram_gb": _ram_gb(),
        "kernel": platform.release(),
        "load_average_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "postgresql": pg_version[0] if pg_version else "unknown",
        "postgresql_settings": ", ".join(f"{k}={v}" for k, v in sorted(settings.items())),
        "psql": psql_version,
        "python": platform.python_version(),
        "dativo": f"{_version('dativo')} @ {_git_revision()}",
        "pyarrow": _version("pyarrow"),
        "pyiceberg": _version("pyiceberg"),
        "adbc-driver-postgresql": _version("adbc-driver-postgresql"),
        "psycopg": _version("psycopg"),
        "sqlalchemy": _version("sqlalchemy"),
        "workdir_filesystem": None,  # filled by main
    }


def _filesystem_of(path: Path) -> str:
    best, fs = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mount, fstype, *_ = line.split()
            if str(path).startswith(mount) and len(mount) > len(best):
                best, fs = mount, f"{fstype} on {mount} ({dev})"
    return fs


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


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


@contextlib.contextmanager
def postgres(args: argparse.Namespace) -> Iterator[tuple[str, str, str]]:
    """Yield (dsn, psql path, description) for ``--dsn`` or for a server started here."""
    if args.dsn:
        yield args.dsn, shutil.which("psql") or "psql", "given with --dsn"
        return
    sys.path.insert(0, str(REPO / "tests"))
    from support.pgserver import PostgresServer  # tests/ is on sys.path now

    settings = dict(s.split("=", 1) for s in args.pg_setting)
    log("starting a PostgreSQL server ...")
    with PostgresServer(settings=settings) as pg:
        psql = pg.bindir / "psql"
        yield (
            pg.dsn,
            str(psql) if psql.is_file() else (shutil.which("psql") or "psql"),
            ("started by run.py (tests/support/pgserver.py: fsync off, 127.0.0.1 TCP, SCRAM)"),
        )
        log("stopping the PostgreSQL server")


def _dativo_command() -> tuple[str, ...]:
    # Byte-compile dativo once, as `pip install` does: an editable install run with PYTHONDONTWRITEBYTECODE
    # would otherwise compile every dativo module from source in every measured run (~0.05-0.1 s of CPU).
    import compileall

    import dativo

    compileall.compile_dir(Path(dativo.__file__).parent, quiet=1)
    script = Path(sys.executable).parent / "dativo"
    if script.is_file():
        return (str(script),)
    found = shutil.which("dativo")
    return (found,) if found else (sys.executable, "-m", "dativo")


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
                dativo=_dativo_command(),
                batch_size=args.batch_size,
            )
            machine = machine_facts(dsn, psql)
            machine["server"] = server_note
            machine["workdir_filesystem"] = _filesystem_of(workdir)
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
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "config": {
            "rows": args.rows,
            "runs": args.runs,
            "warmup": args.warmup,
            "batch_size": args.batch_size,
            "variants": [v.key for v in variants],
            "rows_scaling": args.rows_scaling,
            "scaling_runs": args.scaling_runs,
            "scaling_variants": [v.key for v in scaling_variants],
            "workdir": str(workdir) if args.keep else None,
        },
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(report)
    print(report)
    log(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
