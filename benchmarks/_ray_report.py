"""The Markdown report and the scale-out model's inputs of ``ray_scale.py`` (pure functions of its result)."""

from __future__ import annotations

import json
from typing import Any

from _report import fmt, markdown_table, verification_table
from _table import WIDE_COLUMNS


def render(result: dict[str, Any]) -> str:
    """The Markdown report."""
    src, cfg, s, inputs = result["source"], result["config"], result["summary"], result["model_inputs"]
    lines = [
        "# dativo on Ray: local executor vs Ray worker nodes (PostgreSQL -> Iceberg)",
        "",
        f"{src['rows']:,} rows x {len(WIDE_COLUMNS)} columns from `{src['name']}` ({src['size_mb']:,} MB on the "
        f"server); median of {cfg['runs']} interleaved passes after {cfg['warmup']} warm-up pass(es); "
        f"worker nodes: {cfg['node_limits']}; the head node has no task slots (driver only). "
        f"Reader: {', '.join(sorted({str(x.get('reader')) for x in s.values() if x.get('reader')})) or '-'}; "
        f"writer: {', '.join(sorted({str(x.get('writer')) for x in s.values() if x.get('writer')})) or '-'}.",
        "",
        "**2 cores cannot show a speed-up.** Every worker node, the driver and the PostgreSQL server share the "
        "same two cores (with other jobs on this machine); a second worker node adds task slots but no CPU. "
        "These figures measure what Ray *costs* (memory, CPU, time per partition), not how it scales; "
        "docs/scale-out.md turns them into a model.",
        "",
    ]
    loads = [x for e in result["runs"].values() for x in e.get("load_1m") or []]
    if loads:
        lines += [
            f"Load average (1 min) when runs started and ended: {min(loads):.1f}-{max(loads):.1f} on "
            f"{result['machine'].get('cores')} cores"
            + (" — **a busy machine: wall times are noisy; CPU seconds less so.**" if max(loads) >= 1.0 else "."),
            "",
        ]
    rows = []
    for v in result["variants"]:
        x = s.get(v["key"], {})
        if not x.get("ok_runs"):
            rows.append([v["label"], "failed", *["-"] * 8])
            continue
        nodes = x.get("nodes", {})
        workers = [
            f"{n[7:]}: {f['max_rss_mb']:.0f}/{fmt(f['max_pss_mb'], '.0f')}"
            for n, f in nodes.items()
            if n.startswith("worker-")
        ]
        head = nodes.get("head")
        rows.append(
            [
                v["label"],
                fmt(x["median_wall_s"], ".2f"),
                f"{x['min_wall_s']:.2f} / {x['max_wall_s']:.2f}",
                "1.00" if v["key"] == "floor" else fmt(x.get("median_ratio_to_floor"), ".2f"),
                f"{x['max_peak_rss_mb']:.0f} (tree {fmt(x.get('max_tree_rss_mb'), '.0f')})",
                "-" if head is None else f"{head['max_rss_mb']:.0f}/{fmt(head['max_pss_mb'], '.0f')}",
                "; ".join(workers) or "-",
                fmt(x.get("median_driver_cpu_s"), ".1f"),
                fmt(x.get("median_worker_nodes_cpu_s"), ".1f"),
                fmt(x.get("median_server_cpu_s"), ".1f"),
            ]
        )
    lines.append(
        markdown_table(
            [
                "variant",
                "median wall s",
                "min / max s",
                "x floor",
                "driver peak RSS MB",
                "head node RSS/PSS MB",
                "worker nodes peak RSS/PSS MB",
                "driver CPU s",
                "worker nodes CPU s",
                "server CPU s",
            ],
            rows,
            "lrrrrrlrrr",
        )
    )
    ov = result["overhead"]
    lines += [
        "",
        "- *x floor*: median over passes of (wall / the floor's wall in the same pass).",
        "- *driver*: the `dativo run` process (`wait4` `ru_maxrss` of its largest process; *tree*: sampled sum of its "
        "process tree). *head/worker node*: peak over runs of the sampled sum of RSS (shared pages counted per "
        "process) / PSS (shared pages shared out) of every process of that `ray start` tree: gcs_server, raylet, "
        "agents, log monitor, workers. *CPU s*: user+system of every process of the tree, sampled from /proc "
        "(driver: exact, from `wait4`).",
        "- *server CPU s*: the PostgreSQL postmaster's tree (backends included) during the run.",
        "",
        "## Per-partition overhead",
        "",
        f"Measured on one task slot (1 worker node), where partitions run one after another: "
        f"*per partition, wall* = (wall with {cfg['many_partitions']} partitions - wall with "
        f"{cfg['partitions']}) / {(cfg['many_partitions'] or 0) - cfg['partitions']}, paired within a pass; "
        "*inside the task* = the same difference of the summed time the tasks spent in `run_partition` (the "
        "executor's report): dativo's own work per partition on the worker (reader and writer hosted, a "
        "connection that joins the exported snapshot, a ctid range scan started, files opened, closed and "
        "described); *outside the task* = the rest: what Ray adds per partition (submission, scheduling, "
        "dispatch to the worker, returning the staged description, the driver's wait loop). The probe (a "
        "driver of its own) measures Ray's bare per-task cost with no-op tasks. The local executor runs all "
        "its partitions at once (one thread and connection each), so its per-partition figure mixes in the "
        "cost of that concurrency on 2 cores.",
        "",
        markdown_table(
            ["figure", "value"],
            [
                ["Ray, 1 slot: per partition, wall, s", fmt(ov.get("ray_wall_s_per_partition"), ".3f")],
                ["Ray: per partition, inside the task, s", fmt(ov.get("ray_in_task_s_per_partition"), ".3f")],
                ["**Ray: per partition, outside the task, s**", fmt(ov.get("ray_outside_task_s_per_partition"), ".3f")],
                ["local executor: per partition, wall, s", fmt(ov.get("local_wall_s_per_partition"), ".3f")],
                *[
                    [f"{k[: -len('_minus_local_s')]} wall minus local wall, same partitions, s", fmt(v, ".2f")]
                    for k, v in ov.items()
                    if k.endswith("_minus_local_s")
                ],
                ["no-op task round trip (submit -> result), ms, median", fmt(ov.get("noop_task_round_trip_ms_median"))],
                ["200 no-op tasks at once, ms per task", fmt(ov.get("noop_tasks_200_at_once_ms_per_task"))],
                ["first task of a new driver (worker lease/start), s", fmt(ov.get("first_task_s_median"))],
                ["imports on a fresh worker, s", json.dumps(ov.get("worker_import_s"))],
                ["cluster start (head + nodes, ready), s", json.dumps(ov.get("cluster_start_s"))],
            ],
            "lr",
        ),
        "",
        "## Inputs for docs/scale-out.md",
        "",
        markdown_table(["input", "value"], [[k, fmt(v)] for k, v in inputs.items()], "lr"),
        "",
        "## Correctness (read back with PyIceberg)",
        "",
    ]
    lines.append(verification_table(result["verification"], 300))
    lines += [
        "",
        "Checked: row count, sum(id), non-NULL count of each of the 50 columns, the snapshot's "
        "total-records, and exact checksums of i03, i08 (bigint), f01 (double), n02 (numeric), "
        "t01 (timestamptz, as microseconds) and h01 (md5 text, first 8 hex digits).",
        "",
    ]
    failed_clusters = [c for c in result["clusters"] if c.get("failed")]
    if failed_clusters:
        lines += [
            f"**{len(failed_clusters)} Ray cluster start(s) failed** (each retried up to 3 times; the pass's Ray "
            f"variants are missing when all failed): {failed_clusters[0]['failed'][-300:]}",
            "",
        ]
    failures = {k: x["errors"] for k, x in s.items() if x.get("errors")}
    for key, errors in failures.items():
        lines += [f"**{key} failed**: {errors[0][:600]}", ""]
    lines += ["## Executor reports (first run of each Ray variant)", ""]
    for key, x in s.items():
        if x.get("executor_report"):
            lines.append(f"- `{key}`: {json.dumps(x['executor_report'])}")
    lines += ["", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in result["machine"].items()]
    lines.append("")
    return "\n".join(lines)


def model_inputs(result: dict[str, Any]) -> dict[str, Any]:
    """The measured figures docs/scale-out.md uses (per core, per row, per partition)."""
    s, src, rows = result["summary"], result["source"], result["source"]["rows"]
    out: dict[str, Any] = {
        "rows": rows,
        "server_bytes_per_row": round(src["size_mb"] * 1e6 / rows, 1),
        "wire_bytes_per_row (binary COPY)": round(result["wire_bytes"] / rows, 1),
    }
    for key, f in result["data_files"].items():
        if f.get("data_file_bytes", -1) > 0:
            out[f"{key}: Parquet bytes per row (Iceberg data files, {f['data_files']} files)"] = round(
                f["data_file_bytes"] / rows, 1
            )
    floor = s.get("floor", {})
    if floor.get("median_server_cpu_s"):
        out["server rows per CPU-s, COPY binary (floor)"] = round(rows / floor["median_server_cpu_s"])
        out["server MB/s per core, COPY binary (floor)"] = round(
            result["wire_bytes"] / 1e6 / floor["median_server_cpu_s"], 1
        )
    for key, x in s.items():
        if key == "floor" or not x.get("ok_runs"):
            continue
        client = x.get("median_worker_nodes_cpu_s") or x.get("median_driver_cpu_s")
        if client:
            what = "worker nodes" if x.get("median_worker_nodes_cpu_s") else "driver"
            out[f"{key}: rows per client CPU-s ({what})"] = round(rows / client)
        if x.get("median_server_cpu_s"):
            out[f"{key}: server rows per CPU-s"] = round(rows / x["median_server_cpu_s"])
        if x.get("median_wall_s"):
            out[f"{key}: rows/s wall"] = round(rows / x["median_wall_s"])
    ov = result["overhead"]
    out["Ray per partition outside the task, s"] = ov.get("ray_outside_task_s_per_partition")
    out["dativo per partition inside a Ray task, s"] = ov.get("ray_in_task_s_per_partition")
    return out
