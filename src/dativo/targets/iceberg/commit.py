"""Commits whose outcome is unknown: recognising them, and finding out whether they landed.

A catalog commit can reach the server and change the table while its answer is
lost (a dropped connection, a timeout, a 5xx from a proxy, PyIceberg's
``CommitStateUnknownException``). Deleting the run's files then could delete data
the table now references. Instead the writer reloads the table and looks for the
snapshot carrying this attempt's ``dativo.commit-id``: found, the run succeeded;
not found within a bounded wait, the run fails and its files stay for
``dativo maintain`` (orphan removal, after its safety age) to collect.
"""

from __future__ import annotations

# Before any PyIceberg import: defers its model builds and unused modules (see _pyiceberg).
from dativo.targets.iceberg import _pyiceberg  # noqa: F401

# isort: split

import logging
import time
from collections.abc import Callable

from pyiceberg.exceptions import CommitStateUnknownException, ServerError
from pyiceberg.table import Table, TableProperties
from pyiceberg.table.snapshots import Snapshot

__all__ = ["COMMIT_ID", "find_commit", "outcome_unknown", "without_library_retries"]

log = logging.getLogger("dativo.targets.iceberg")

#: Summary property naming one commit attempt (a fresh UUID per attempt).
COMMIT_ID = "dativo.commit-id"


def outcome_unknown(exc: BaseException) -> bool:
    """True when ``exc`` from a commit call leaves it unknown whether the commit was applied."""
    if isinstance(exc, CommitStateUnknownException | ServerError | TimeoutError | ConnectionError):
        return True
    try:
        import requests
    except ImportError:  # pragma: no cover - PyIceberg's REST catalog depends on it
        return False
    return isinstance(exc, requests.ConnectionError | requests.Timeout)


def find_commit(
    load: Callable[[], Table | None], commit_id: str, wait_s: float, interval_s: float = 1.0
) -> tuple[Table, Snapshot] | None:
    """Reload the table until a snapshot whose summary has ``commit_id`` appears, for at most ``wait_s`` seconds.

    Returns ``(table, snapshot)`` or None. A failing reload (the catalog still
    unreachable) counts as "not seen yet" and is retried until the deadline.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            table = load()
        except Exception as exc:  # the catalog may still be failing; keep looking until the deadline
            log.info("reloading the table to check the commit failed (%s); retrying", exc)
            table = None
        if table is not None:
            for snapshot in table.snapshots():
                if snapshot.summary is not None and snapshot.summary.get(COMMIT_ID) == commit_id:
                    return table, snapshot
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(interval_s, max(0.0, deadline - time.monotonic())))


def without_library_retries(table: Table) -> Table:
    """``table`` whose transactions leave a conflicting commit to the writer's own retry.

    PyIceberg's ``commit_transaction`` retries a conflicting append itself (refresh, rebuild the
    snapshot on top, commit: ``commit.retry.num-retries``), which would put this run's rows on top
    of another run of the same job without the writer checking for one. The setting is 0 in this
    in-memory copy only: the catalog applies the transaction's updates to its own current
    metadata, so the table's properties are unchanged. Never raises.
    """
    properties = {**table.metadata.properties, TableProperties.COMMIT_NUM_RETRIES: "0"}
    metadata = table.metadata.model_copy(update={"properties": properties})
    return Table(table.name(), metadata, table.metadata_location, table.io, table.catalog, table.config)
