"""Where the Iceberg target keeps a job's state: the summaries of the snapshots it commits."""

from __future__ import annotations

# Before any PyIceberg import: defers its model builds and unused modules (see _pyiceberg).
from dativo.targets.iceberg import _pyiceberg  # noqa: F401

# isort: split

import json
from typing import Any

from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

__all__ = [
    "MAINTENANCE",
    "RESET_PROPERTY",
    "RUN_ID",
    "is_maintenance",
    "job_snapshots",
    "latest_job_state",
    "writer_of",
]

RESET_PROPERTY = "dativo.state-reset."
RUN_ID = "dativo.run-id"
#: ``dativo.maintenance`` in a snapshot summary: written by ``dativo maintain``, not by a job.
MAINTENANCE = "compact"


def job_snapshots(table: Table) -> list[tuple[Snapshot, str | None]]:
    """The table's snapshots on its current branch, newest first, with the dativo job that wrote each (or None)."""
    by_id = {snapshot.snapshot_id: snapshot for snapshot in table.snapshots()}
    chain: list[tuple[Snapshot, str | None]] = []
    snapshot = table.current_snapshot()
    while snapshot is not None:
        chain.append((snapshot, writer_of(snapshot)))
        snapshot = by_id.get(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id is not None else None
    return chain


def is_maintenance(snapshot: Snapshot) -> bool:
    """True for a snapshot ``dativo maintain`` committed (a compaction): it changes no job's data or state."""
    return snapshot.summary is not None and snapshot.summary.get("dativo.maintenance") is not None


def writer_of(snapshot: Snapshot) -> str | None:
    """The dativo job that committed ``snapshot``, or None (another tool, or maintenance)."""
    summary = snapshot.summary
    return summary.get("dativo.job") if summary is not None else None


def latest_job_state(table: Table, job: str) -> tuple[int, dict[str, Any]] | None:
    """``(snapshot id, state)`` of the newest snapshot of ``job`` on the current branch, newer than any reset."""
    reset = table.properties.get(RESET_PROPERTY + job)
    for snapshot, writer in job_snapshots(table):
        if reset is not None and str(snapshot.snapshot_id) == reset:
            return None
        if writer == job and snapshot.summary is not None:
            raw = snapshot.summary.get("dativo.state")
            state = json.loads(raw) if raw else {"run_id": snapshot.summary.get("dativo.run-id")}
            return snapshot.snapshot_id, state
    return None
