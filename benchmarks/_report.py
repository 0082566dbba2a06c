"""Summaries, the performance targets and the Markdown report."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import log
from _runner import Measurement
from _table import WIDE_COLUMNS
from _variants import Variant
from peers import DLT_BACKENDS

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
    mine = dativo_reference(summary)
    ratio = summary.get(mine, {}).get("median_ratio_to_floor")
    targets.append(
        {
            "target": f"default reader ({mine}) <= {TARGET_RATIO_TO_FLOOR}x floor",
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
    if fastest_peer and summary.get(mine, {}).get("median_wall_s"):
        slowdown = round(fastest_peer / summary[mine]["median_wall_s"], 2)
    targets.append(
        {
            "target": f"dlt's fastest backend takes >= {TARGET_PEER_SLOWDOWN}x dativo's ({mine}) time",
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


def fmt(value: Any, spec: str = "") -> str:
    """``value`` formatted with ``spec``; ``-`` for None."""
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


def dativo_reference(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """The variant peers and targets are compared with: ``default`` (what a user gets) when measured, else ``adbc``."""
    return "default" if summary.get("default", {}).get("median_wall_s") else "adbc"


def _ratio_to(summary: Mapping[str, Mapping[str, Any]], v: Variant, key: str) -> float | None:
    """``v``'s median wall over variant ``key``'s (peers and baselines only; None when either is missing)."""
    mine, theirs = summary.get(v.key, {}).get("median_wall_s"), summary.get(key, {}).get("median_wall_s")
    if v.role not in ("peer", "baseline") or not mine or not theirs:
        return None
    return round(mine / theirs, 2)


def verification_table(verification: Mapping[str, Mapping[str, Any]], width: int) -> str:
    """The correctness table: each ``variant@table`` checked, its rows, the mismatches (cut at ``width``)."""
    rows = [
        [
            key,
            "ok" if v.get("ok") else "MISMATCH",
            fmt(v.get("rows"), ","),
            json.dumps(v.get("mismatches") or v.get("error") or "")[:width],
        ]
        for key, v in verification.items()
    ]
    return markdown_table(["variant@table", "check", "rows", "details"], rows, "llrl") if rows else "(nothing verified)"


def result_head(started_at: str, args: argparse.Namespace, **config: Any) -> dict[str, Any]:
    """The first keys of a benchmark's JSON: when it ran, its command, its configuration (the common keys first)."""
    return {
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "config": {
            "rows": args.rows,
            "runs": args.runs,
            "warmup": args.warmup,
            "batch_size": args.batch_size,
            **config,
        },
    }


def write_results(out: Path, result: Mapping[str, Any], report: str) -> None:
    """Write ``result`` as JSON to ``out`` and ``report`` next to it (``.md``), print the report."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(report)
    print(report)
    log(f"wrote {out} and {out.with_suffix('.md')}")


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
        rss = fmt(s["max_peak_rss_mb"], ".0f")
        if s.get("max_tree_rss_mb") is not None:
            rss += f" (tree {s['max_tree_rss_mb']:.0f})"
        rows.append(
            [
                v.label,
                fmt(s["median_wall_s"], ".2f"),
                f"{s['min_wall_s']:.2f} / {s['max_wall_s']:.2f}",
                "1.00" if v.role == "floor" else fmt(s["median_ratio_to_floor"], ".2f"),
                fmt(_ratio_to(result["summary"], v, dativo_reference(result["summary"])), ".2f"),
                rss,
                "-" if v.role == "startup" else fmt(s["rows_per_s"], ",.0f"),
                fmt(s["median_cpu_s"], ".2f"),
                fmt(s["median_engine_s"], ".2f"),
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
        f"- *x dativo*: median wall / the median wall of dativo's `{dativo_reference(result['summary'])}` variant "
        "(`default` when measured: no reader named, default settings); above 1 is slower than dativo.",
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
                fmt(row.get("median_wall_s"), ".2f"),
                "1.00" if row["variant"] == "floor" else fmt(row.get("median_ratio_to_floor"), ".2f"),
                fmt(row.get("median_peak_rss_mb"), ".0f"),
                fmt(row.get("max_peak_rss_mb"), ".0f"),
                "-"
                if not row.get("median_peak_rss_mb") or not base.get(row["variant"])
                else f"{row['median_peak_rss_mb'] / base[row['variant']] - 1:+.1%}",
                fmt(row.get("median_cpu_s"), ".2f"),
                fmt(row.get("rows_per_s"), ",.0f"),
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
    parts.append(verification_table(result["verification"], 200))
    parts += ["", "## Targets", ""]
    trows = [
        [t["target"], fmt(t["value"]), {True: "met", False: "NOT met", None: "not measured"}[t["met"]]]
        for t in result["targets"]
    ]
    parts.append(markdown_table(["target", "value", "status"], trows, "lrl"))
    parts += ["", "## Machine", ""]
    parts += [f"- {k}: {v}" for k, v in meta.items()]
    parts.append("")
    return "\n".join(parts)
