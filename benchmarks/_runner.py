"""Running passes: each variant once per pass, interleaved, every run measured, its output verified once."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import Phase, log
from _measure import run_measured
from _table import WIDE_COLUMNS, SourceTable
from _variants import BenchContext, Invocation, Outcome, Variant


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
