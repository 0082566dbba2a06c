"""What the benchmark can measure: the variants (commands), how each is built, how its output is checked.

New variants are one entry in :data:`VARIANTS` (see :func:`dativo_variant`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from _common import DSN_ENV, HERE, REPO, TARGET_TABLE, Role, log
from _table import SourceTable, split_table
from peers import DLT_BACKENDS, PEER_REQUIREMENTS, peers_python


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


def pg_client_env(dsn: str) -> tuple[list[str], dict[str, str]]:
    """``psql`` arguments and environment for ``dsn``, keeping the password out of argv."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    env = {}
    if "password" in params:
        env["PGPASSWORD"] = params.pop("password")
    return ["-d", make_conninfo(**params)], env


def _floor_build(ctx: BenchContext, source: SourceTable, run_dir: Path) -> Invocation:
    conn_args, env = pg_client_env(ctx.dsn)
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
            table = split_table(src.name)[1]
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
        "default",
        "dativo, default reader and settings",
        description="dativo run --quiet with no reader named and source.parallelism unset: what a user gets "
        "(postgres-rs where dativo[native] is installed, else postgres-adbc), into a fresh embedded Iceberg table",
        default=False,
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
