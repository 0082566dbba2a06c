"""PostgreSQL -> Iceberg on a Ray cluster vs the local executor, next to the server's export floor.

One command::

    python benchmarks/ray_scale.py [--rows 1000000] [--runs 3] [--partitions 4] [--many-partitions 32]
                                   [--nodes 1,2] [--name latest]

starts a throw-away PostgreSQL server (or uses ``--dsn``), builds the standard 50-column
``public.wide`` table (``run.py``'s builder), then measures, pass by pass (interleaved, so drift
hits every variant alike):

* ``floor``: ``psql \\copy (SELECT * FROM wide) TO '/dev/null' (FORMAT binary)`` (``run.py``'s floor);
* ``local``: ``dativo run`` with the local executor, ``source.parallelism: --partitions`` (ctid
  ranges in one exported snapshot, each on its own connection and thread);
* ``ray<N>``: the same job with ``engine.executor: ray`` on a real cluster of this machine: a head
  node (driver only, no task slots) plus N worker nodes, each a separate ``ray start`` process tree
  with its own limits (``_raycluster.py``); a fresh cluster per pass and node count;
* ``local-many`` / ``ray1-many``: the same with ``--many-partitions``: the per-partition overhead.

For every run: wall time and peak RSS of the driver (``wait4``, through ``run.py``'s launcher), the
summed RSS/PSS and CPU time of each Ray node's process tree and of the PostgreSQL server (sampled
from ``/proc``), the load average. Every variant's table is read back once with PyIceberg and
compared with the source: row count, ``sum(id)``, every column's non-NULL count, and checksums of
six columns (bigint, double, numeric, timestamptz, md5 text). Results: ``benchmarks/results/
ray-<name>.json`` (every figure) and ``.md`` (the report, also printed).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import DSN_ENV, TARGET_TABLE, Phase, log
from _environment import dativo_command, dist_version, filesystem_of, machine_facts, postgres
from _measure import rss_measurement_floor
from _ray_report import model_inputs, render
from _raycluster import LocalRayCluster, NodeLimits, NodeSampler
from _report import result_head, summarize, write_results
from _runner import Measurement, Runner
from _table import SourceTable, ensure_table
from _variants import (
    VARIANTS,
    BenchContext,
    Invocation,
    Outcome,
    Variant,
    dativo_variant,
    iceberg_fingerprint,
    pg_client_env,
)

from dativo.config.models import EngineConfig

HERE = Path(__file__).resolve().parent
FLOOR = next(v for v in VARIANTS if v.role == "floor")

#: Checksums computed on the server and from the Iceberg table, as exact integers.
CHECKSUM_SQL = """SELECT sum(i03)::numeric, sum(i08)::numeric, (sum(f01) * 2)::numeric, (sum(n02) * 100)::numeric,
       sum(extract(epoch FROM t01) * 1000000)::numeric, sum(('x' || substr(h01, 1, 8))::bit(32)::bigint)::numeric
FROM {table}"""
CHECKSUM_KEYS = ("sum.i03", "sum.i08", "sum2.f01", "sum100.n02", "sum_us.t01", "sum_hex8.h01")


def source_checksums(dsn: str, table: str) -> dict[str, int]:
    """The checksums of :data:`CHECKSUM_SQL` on the server."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(CHECKSUM_SQL.format(table=table)).fetchone()
    assert row is not None
    return {k: int(v) for k, v in zip(CHECKSUM_KEYS, row, strict=True)}


def iceberg_checksums(warehouse: Path, table: str) -> dict[str, int]:
    """The same checksums from the Iceberg table (only those columns scanned), and its data file bytes."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyiceberg.catalog import load_catalog

    catalog = load_catalog(
        "dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )
    tbl = catalog.load_table(table)
    sums = dict.fromkeys(CHECKSUM_KEYS, 0)
    scan = tbl.scan(selected_fields=("i03", "i08", "f01", "n02", "t01", "h01"))
    for b in scan.to_arrow_batch_reader():
        sums["sum.i03"] += int(pc.sum(b.column("i03")).as_py() or 0)
        sums["sum.i08"] += int(pc.sum(b.column("i08")).as_py() or 0)
        sums["sum2.f01"] += round((pc.sum(b.column("f01")).as_py() or 0) * 2)
        sums["sum100.n02"] += int((pc.sum(b.column("n02")).as_py() or 0) * 100)
        micros = b.column("t01").cast(pa.int64()).cast(pa.decimal128(38, 0))  # int64 sums overflow here
        sums["sum_us.t01"] += int(pc.sum(micros).as_py() or 0)
        sums["sum_hex8.h01"] += sum(int(s[:8], 16) for s in b.column("h01").to_pylist() if s is not None)
    snapshot = tbl.current_snapshot()
    summary = snapshot.summary if snapshot is not None and snapshot.summary is not None else {}
    sums["data_files"] = int(summary.get("total-data-files", -1))
    sums["data_file_bytes"] = int(summary.get("total-files-size", -1))
    return sums


def wire_bytes(ctx: BenchContext, table: str) -> int:
    """Bytes of ``COPY (SELECT * FROM table) TO STDOUT (FORMAT binary)``: what every reader receives."""
    conn_args, env = pg_client_env(ctx.dsn)
    copy_cmd = f"\\copy (SELECT * FROM {table}) TO STDOUT (FORMAT binary)"
    proc = subprocess.Popen(
        [ctx.psql, "-X", "-v", "ON_ERROR_STOP=1", *conn_args, "-c", copy_cmd],
        stdout=subprocess.PIPE,
        env={**os.environ, **env},
    )
    assert proc.stdout is not None
    total = 0
    while chunk := proc.stdout.read(1 << 20):
        total += len(chunk)
    if proc.wait() != 0:
        raise RuntimeError(f"psql \\copy of {table} failed with exit code {proc.returncode}")
    return total


def postmaster_pid(dsn: str) -> int | None:
    """The PostgreSQL server's postmaster pid when it runs on this machine (its CPU is sampled), else None."""
    import psycopg

    with contextlib.suppress(Exception), psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        with open(f"/proc/{row[0]}/stat", "rb") as fh:
            stat = fh.read()
        return int(stat[stat.rfind(b")") + 2 :].split()[1])
    return None


# --------------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One thing to measure: ``nodes`` 0 is the local executor; ``floor`` is psql."""

    key: str
    label: str
    partitions: int
    nodes: int  # Ray worker nodes; 0: local executor


@dataclass
class Bench:
    """Runs the passes and keeps what ``Runner`` does not: node samples and dativo summaries."""

    args: argparse.Namespace
    ctx: BenchContext
    runner: Runner
    source: SourceTable
    pg_pid: int | None
    limits: NodeLimits
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)  # run dir name -> figures
    clusters: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, dict[str, int]] = field(default_factory=dict)  # variant -> data files of its table

    def variant(self, spec: Spec, address: str | None) -> Variant:
        job: dict[str, Any] = {"source": {"parallelism": spec.partitions}}
        if self.args.writer_implementation:
            job["target"] = {"writer": {"implementation": self.args.writer_implementation}}
        if address is not None:
            ray: dict[str, Any] = {"address": address, "num_cpus": 1}
            job["engine"] = {"executor": "ray", "ray": ray}
        base = dativo_variant(spec.key, spec.label, description=spec.label, job=job, sample_tree_rss=True)
        summaries, files = self.extra, self.files

        def build(ctx: BenchContext, source: SourceTable, run_dir: Path) -> Invocation:
            inv = base.build(ctx, source, run_dir)

            def outcome(directory: Path) -> Outcome:
                summary = json.loads((directory / "summary.json").read_text())
                summaries.setdefault(directory.name, {})["summary"] = summary
                return inv.outcome(directory)

            def verify(src: SourceTable) -> dict[str, int]:
                warehouse = run_dir / "warehouse"
                got = iceberg_fingerprint(warehouse, TARGET_TABLE) | iceberg_checksums(warehouse, TARGET_TABLE)
                files[spec.key] = {"data_files": got["data_files"], "data_file_bytes": got["data_file_bytes"]}
                return got

            return dataclasses.replace(inv, outcome=outcome, verify=verify)

        return dataclasses.replace(base, build=build)

    def measure(self, variant: Variant, phase: Phase, i: int, roots: dict[str, int]) -> Measurement:
        """``Runner.measure`` (``_runner.py``) with the nodes' and the server's process trees sampled meanwhile."""
        if self.pg_pid is not None:
            roots = {**roots, "postgres": self.pg_pid}
        sampler = NodeSampler(roots, interval_s=self.args.sample_interval)
        load_before = os.getloadavg()[0]
        sampler.start()
        try:
            m = self.runner.measure(variant, self.source, phase, i)
        finally:
            nodes = sampler.stop()
        name = f"{phase}-{i}-{self.source.rows}-{variant.key}"
        self.extra.setdefault(name, {}).update(
            variant=variant.key, phase=phase, run=i, nodes=nodes, load_1m=[round(load_before, 2), os.getloadavg()[0]]
        )
        return m

    def _start_cluster(self, phase: Phase, i: int, nodes: int, attempts: int = 3) -> LocalRayCluster | None:
        """A started cluster, or None (logged, recorded) when it did not come up ``attempts`` times."""
        for attempt in range(1, attempts + 1):
            cluster = LocalRayCluster(
                self.runner.workdir / f"cluster-{phase}-{i}-{nodes}-{attempt}",
                nodes,
                self.limits,
                env={DSN_ENV: self.ctx.dsn},  # the job's ${DATIVO_BENCH_DSN}, resolved on the workers
            )
            log(f"starting a Ray cluster: head + {nodes} worker node(s) (attempt {attempt}) ...")
            try:
                return cluster.start()
            except RuntimeError as exc:
                cluster.stop()
                log(f"the Ray cluster did not come up: {str(exc)[:300]}")
                self.clusters.append({"phase": phase, "run": i, "nodes": nodes, "failed": str(exc)[-2000:]})
            except BaseException:  # interrupted: leave no node behind
                cluster.stop()
                raise
        return None

    def run_pass(self, specs: Sequence[Spec], phase: Phase, i: int) -> None:
        """Floor, local variants, then each cluster size on a fresh cluster; ratios to this pass's floor."""
        floor = self.measure(FLOOR, phase, i, {})
        measured: list[Measurement] = []
        for spec in [s for s in specs if s.nodes == 0]:
            measured.append(self.measure(self.variant(spec, None), phase, i, {}))
        for nodes in sorted({s.nodes for s in specs if s.nodes > 0}):
            cluster = self._start_cluster(phase, i, nodes)
            if cluster is None:
                continue
            with contextlib.closing(cluster):
                self.clusters.append({"phase": phase, "run": i, "nodes": nodes, "start_s": cluster.start_s})
                self.clusters[-1]["probe"] = cluster.probe
                log(f"cluster up in {cluster.start_s:.1f}s; probe {json.dumps(cluster.probe)}")
                for spec in [s for s in specs if s.nodes == nodes]:
                    measured.append(self.measure(self.variant(spec, cluster.address), phase, i, cluster.roots()))
        for m in measured:
            if m.ok and floor.ok and floor.wall_s > 0:
                m.ratio_to_floor = round(m.wall_s / floor.wall_s, 3)


def select_specs(args: argparse.Namespace) -> list[Spec]:
    """The variants of this run (``--variants`` filters by key)."""
    p, many = args.partitions, args.many_partitions
    specs = [Spec("local", f"local executor, {p} partitions", p, 0)]
    specs += [Spec(f"ray{n}", f"Ray, {n} worker node(s), {p} partitions", p, n) for n in args.nodes]
    if many:
        specs.append(Spec("local-many", f"local executor, {many} partitions", many, 0))
        n = min(args.nodes)
        specs.append(Spec(f"ray{n}-many", f"Ray, {n} worker node(s), {many} partitions", many, n))
    if args.variants:
        wanted = {k.strip() for k in args.variants.split(",")}
        unknown = wanted - {s.key for s in specs}
        if unknown:
            raise SystemExit(f"unknown variant(s) {sorted(unknown)}; known: {[s.key for s in specs]}")
        specs = [s for s in specs if s.key in wanted]
    return specs


# --------------------------------------------------------------------------------------------------
# Summaries and the report
# --------------------------------------------------------------------------------------------------


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def summarize_variant(bench: Bench, key: str) -> dict[str, Any]:
    """``summarize`` plus the nodes' and server's figures and the executor's own report."""
    ms = [m for m in bench.runner.measurements if m.phase == "run" and m.variant == key]
    out = summarize(ms)
    runs = [e for e in bench.extra.values() if e.get("variant") == key and e.get("phase") == "run"]
    nodes: dict[str, dict[str, Any]] = {}
    for e in runs:
        for name, fig in e.get("nodes", {}).items():
            agg = nodes.setdefault(name, {"rss_mb": [], "pss_mb": [], "cpu_s": [], "worst": fig})
            agg["rss_mb"].append(fig["rss_mb"])
            agg["pss_mb"].append(fig.get("pss_mb"))
            agg["cpu_s"].append(fig["cpu_s"])
            if fig["rss_mb"] >= agg["worst"]["rss_mb"]:
                agg["worst"] = fig
    out["nodes"] = {
        name: {
            "max_rss_mb": max(a["rss_mb"]),
            "max_pss_mb": max((p for p in a["pss_mb"] if p is not None), default=None),
            "median_cpu_s": _median(a["cpu_s"]),
            "worst_run_rss_by_role_mb": a["worst"].get("rss_by_role_mb"),
            "worst_run_processes": a["worst"].get("processes"),
        }
        for name, a in sorted(nodes.items())
    }
    workers_cpu = [sum(fig["cpu_s"] for n, fig in e.get("nodes", {}).items() if n.startswith("worker-")) for e in runs]
    driver_cpu = [m.user_s + m.sys_s for m in ms if m.ok]
    out["median_worker_nodes_cpu_s"] = _median(workers_cpu) if any(workers_cpu) else None
    out["median_driver_cpu_s"] = _median(driver_cpu)
    out["median_server_cpu_s"] = _median([e.get("nodes", {}).get("postgres", {}).get("cpu_s") for e in runs])
    out["load_1m"] = [e.get("load_1m") for e in runs]
    first: dict[str, Any] = next((e["summary"] for e in runs if e.get("summary")), {})
    out["reader"], out["writer"] = first.get("reader"), first.get("writer")
    executor = [e["summary"].get("executor") for e in runs if e.get("summary", {}).get("executor")]
    out["executor_report"] = executor[0] if executor else None
    return out


def _task_seconds(bench: Bench, key: str, run_no: int) -> float | None:
    """Sum over partitions of the time inside the Ray task (the executor report's per-node ``seconds``)."""
    for e in bench.extra.values():
        if e.get("variant") == key and e.get("phase") == "run" and e.get("run") == run_no:
            report = e.get("summary", {}).get("executor") or {}
            workers = report.get("workers") or {}
            return sum(float(w.get("seconds", 0.0)) for w in workers.values()) if workers else None
    return None


def overhead(bench: Bench, specs: Sequence[Spec]) -> dict[str, Any]:
    """The per-partition overhead, paired within each pass (see the report for the definitions)."""
    walls = {(m.variant, m.run): m.wall_s for m in bench.runner.measurements if m.phase == "run" and m.ok}
    few = {s.nodes: s for s in specs if not s.key.endswith("-many")}
    out: dict[str, Any] = {}
    for many in [s for s in specs if s.key.endswith("-many")]:
        base = few.get(many.nodes)
        if base is None:
            continue
        extra = many.partitions - base.partitions
        runs = [r for (k, r) in walls if k == many.key and (base.key, r) in walls]
        kind = "local" if many.nodes == 0 else "ray"
        out[f"{kind}_pair"] = [base.key, many.key, base.partitions, many.partitions]
        out[f"{kind}_wall_s_per_partition"] = _median(
            [(walls[(many.key, r)] - walls[(base.key, r)]) / extra for r in runs]
        )
        if kind == "ray":
            inside = []
            for r in runs:
                a, b = _task_seconds(bench, base.key, r), _task_seconds(bench, many.key, r)
                if a is not None and b is not None:
                    inside.append((b - a) / extra)
            out["ray_in_task_s_per_partition"] = _median(inside)
            if out["ray_wall_s_per_partition"] is not None and out["ray_in_task_s_per_partition"] is not None:
                out["ray_outside_task_s_per_partition"] = round(
                    out["ray_wall_s_per_partition"] - out["ray_in_task_s_per_partition"], 4
                )
    for spec in [s for s in specs if s.nodes > 0 and not s.key.endswith("-many")]:
        diffs = [w - walls[("local", r)] for (k, r), w in walls.items() if k == spec.key and ("local", r) in walls]
        out[f"{spec.key}_minus_local_s"] = _median(diffs)
    probes = [c["probe"] for c in bench.clusters if c.get("probe")]
    out["cluster_start_failures"] = sum(1 for c in bench.clusters if c.get("failed"))
    if probes:
        out["noop_task_round_trip_ms_median"] = _median([p["noop_task_round_trip_ms"]["median"] for p in probes])
        out["noop_tasks_200_at_once_ms_per_task"] = _median([p["noop_tasks_200_at_once_ms_per_task"] for p in probes])
        out["first_task_s_median"] = _median([p["first_task_s"] for p in probes])
        out["worker_import_s"] = probes[-1]["worker_import_s"]
    out["cluster_start_s"] = [c["start_s"] for c in bench.clusters if "start_s" in c]
    return out


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--rows", type=lambda x: int(x.replace("_", "")), default=1_000_000, help="rows in the table")
    p.add_argument("--runs", type=int, default=3, help="measured passes (the report shows medians)")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes first")
    p.add_argument("--partitions", type=int, default=4, help="source.parallelism of the main variants")
    p.add_argument("--many-partitions", type=int, default=32, help="for the per-partition overhead (0: skip)")
    p.add_argument("--nodes", type=lambda x: [int(n) for n in x.split(",")], default=[1, 2], help="worker nodes")
    p.add_argument("--variants", default=None, help="only these keys (local, ray1, ray2, local-many, ray1-many)")
    p.add_argument("--node-cpus", type=int, default=1, help="task slots (--num-cpus) per worker node")
    p.add_argument("--node-memory-mb", type=int, default=2048, help="--memory (logical) per worker node")
    p.add_argument("--node-object-store-mb", type=int, default=256, help="--object-store-memory per worker node")
    p.add_argument("--pin-cpus", action="store_true", help="pin each worker node to one core (taskset)")
    p.add_argument("--sample-interval", type=float, default=0.2, help="seconds between /proc samples")
    p.add_argument("--name", default="latest", help="results go to benchmarks/results/ray-<name>.{json,md}")
    p.add_argument("--out", type=Path, default=None, help="JSON output instead (+ .md next to it)")
    p.add_argument("--dsn", default=None, help="use this server instead of starting one (needs CREATE on it)")
    p.add_argument("--table", default="public.wide", help="source table (a 5M-row table gets its own name)")
    p.add_argument(
        "--batch-size", type=int, default=EngineConfig.model_fields["batch_size"].default, help="engine.batch_size"
    )
    p.add_argument("--workdir", type=Path, default=None, help="run directories (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep every run directory")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds before a single run is killed")
    p.add_argument(
        "--writer-implementation",
        default=None,
        help="target.writer.implementation for every dativo variant (default: the iceberg connector's writer)",
    )
    p.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE", help="postgresql.conf")
    args = p.parse_args(argv)
    if args.runs < 1 or args.rows < 1 or args.partitions < 2:
        p.error("--runs and --rows must be positive, --partitions at least 2")
    if args.table == "public.wide" and args.rows != 1_000_000:
        args.table = f"public.wide_{args.rows}"  # the same name as run.py's --rows-scaling tables
    return args


@contextlib.contextmanager
def _workdir(args: argparse.Namespace) -> Iterator[Path]:
    own = args.workdir is None
    path = Path(tempfile.mkdtemp(prefix="dativo-raybench-")) if own else args.workdir.resolve()
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        if own and not args.keep:
            shutil.rmtree(path, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 unless it could not run (failed variants are reported, not raised).

    SIGTERM and SIGINT unwind like Ctrl-C: the Ray nodes and the PostgreSQL server this run
    started are stopped on the way out.
    """
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    specs = select_specs(args)
    out = args.out or HERE / "results" / f"ray-{args.name}.json"
    limits = NodeLimits(args.node_cpus, args.node_memory_mb, args.node_object_store_mb, args.pin_cpus)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    with _workdir(args) as workdir, postgres(args) as (dsn, psql, server_note):
        ctx = BenchContext(
            dsn=dsn, psql=psql, python=sys.executable, dativo=dativo_command(), batch_size=args.batch_size
        )
        machine = machine_facts(dsn, psql)
        machine["server"] = server_note
        machine["ray"] = dist_version("ray")
        machine["dativo-postgres-rs"] = dist_version("dativo-postgres-rs")
        machine["workdir_filesystem"] = filesystem_of(workdir)
        machine["rss_measurement_floor_mb"] = rss_measurement_floor(workdir)
        source = ensure_table(dsn, args.table, args.rows)
        source.fingerprint.update(source_checksums(dsn, args.table))
        log("measuring the binary COPY size ...")
        wire = wire_bytes(ctx, args.table)
        runner = Runner(ctx=ctx, workdir=workdir, timeout_s=args.timeout, keep=args.keep, force_tree_rss=False)
        bench = Bench(args, ctx, runner, source, postmaster_pid(dsn), limits)
        for i in range(1, args.warmup + 1):
            bench.run_pass(specs, "warmup", i)
        for i in range(1, args.runs + 1):
            bench.run_pass(specs, "run", i)
        machine["load_average_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    variants: list[dict[str, Any]] = [{"key": "floor", "label": FLOOR.label}] + [
        {"key": s.key, "label": s.label, "partitions": s.partitions, "worker_nodes": s.nodes} for s in specs
    ]
    result: dict[str, Any] = {
        **result_head(
            started_at,
            args,
            partitions=args.partitions,
            many_partitions=args.many_partitions,
            nodes=args.nodes,
            node_limits=limits.describe(),
            sample_interval_s=args.sample_interval,
            workdir=str(workdir) if args.keep else None,
        ),
        "machine": machine,
        "source": asdict(source),
        "wire_bytes": wire,
        "variants": variants,
        "summary": {v["key"]: summarize_variant(bench, v["key"]) for v in variants},
        "verification": runner.verification,
        "data_files": bench.files,
        "clusters": bench.clusters,
        "runs": bench.extra,
        "measurements": [asdict(m) for m in runner.measurements],
    }
    result["overhead"] = overhead(bench, specs)
    result["model_inputs"] = model_inputs(result)
    report = render(result)
    write_results(out, result, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
