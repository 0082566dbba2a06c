"""Consistent partitioned reads of one PostgreSQL table, shared by the PostgreSQL readers.

A coordinating connection opens a ``REPEATABLE READ`` transaction, exports
its snapshot with ``pg_export_snapshot()`` and measures the table in pages;
the table is split into ``ctid`` page ranges (TID range scans, PostgreSQL
14+, as DuckDB's postgres scanner does). Each partition's reader joins the
snapshot with ``SET TRANSACTION SNAPSHOT`` before it runs its range, so the
union of the partitions is exactly what one ``SELECT`` would have returned at
planning time. The coordinating transaction stays open (keeping the snapshot
importable) until :meth:`SnapshotPartitioner.close`.

The coordinating connection is leased from the run's shared connections (see
``pool.py``): it goes back only after its transaction ended cleanly, at once when the
table is read in one piece. The partitions' own connections, which import the
snapshot, are their readers' and never shared.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from dativo.connectors.postgres.connection import PgConnectionInfo, import_psycopg, translate_error
from dativo.connectors.postgres.pool import Lease, lease_psycopg
from dativo.connectors.postgres.types import SourcePlan, SourceSpec, _resolve_table
from dativo.sdk import ReadPartition

__all__ = ["MIN_PARTITION_BYTES", "SnapshotPartitioner", "ctid_partitions", "read_cores", "snapshot_setup_sql"]

log = logging.getLogger(__name__)

#: With ``parallelism`` unset, one partition per this much table data, up to :func:`read_cores`.
MIN_PARTITION_BYTES = 64 * 1024 * 1024
_MIN_SERVER_VERSION = 140000  # TID range scans
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "0:0:0:0:0:0:0:1"})


def read_cores(host: str | None = None) -> int:
    """The cores an unset ``parallelism`` may read on: this process's CPUs, half of them for a local server.

    ``host`` is the connection's host (comma-separated for several). A server on this machine (a
    loopback address, ``localhost``, or a Unix-socket directory) spends a core per connection
    producing the rows that the client decodes on another, so each partition costs two cores here.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    hosts = [h.strip().lower() for h in (host or "").split(",")] if host else [""]
    if all(h in _LOOPBACK or h.startswith(("/", "@")) or not h for h in hosts):
        cores //= 2
    return max(1, cores)


def snapshot_setup_sql(snapshot: str) -> str:
    """The statements a partition's connection runs before its query to join ``snapshot``."""
    if not snapshot.replace("-", "").isalnum():
        raise ValueError(f"not a snapshot id: {snapshot!r}")
    return f"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot}'"


def ctid_partitions(
    sql: str,
    size: int,
    block: int,
    parallelism: int | None,
    extra: dict[str, Any] | None = None,
    *,
    host: str | None = None,
) -> list[ReadPartition]:
    """Split ``sql`` (``SELECT ... FROM table``) into ctid page ranges of a table of ``size`` bytes.

    ``parallelism`` None picks one range per ``MIN_PARTITION_BYTES``, at most ``read_cores(host)``.
    Returns no partitions when the table is too small to split (read it on one connection).
    Each partition's spec is ``{"sql": ..., **extra}``.
    """
    pages = max(1, math.ceil(size / block))
    if parallelism is None:
        parallelism = min(read_cores(host), max(1, size // MIN_PARTITION_BYTES))
    count = max(1, min(parallelism, pages))
    if count < 2:
        return []
    step = math.ceil(pages / count)
    partitions: list[ReadPartition] = []
    for index, start in enumerate(range(0, pages, step)):
        end = start + step
        last = end >= pages
        # The last range is open-ended: pages added after the size was taken hold no row of the snapshot,
        # but reading them is cheap and keeps the plan correct whatever the size estimate.
        where = f"ctid >= '({start},0)'::tid" + ("" if last else f" AND ctid < '({end},0)'::tid")
        label = f"ctid pages {start}-{'end' if last else end - 1}"
        spec = {"sql": f"{sql} WHERE {where}", **(extra or {})}
        partitions.append(ReadPartition(index=index, label=label, spec=spec))
    return partitions


class SnapshotPartitioner:
    """Plans ctid-range partitions of a ``table`` source inside one exported snapshot.

    :meth:`plan` returns an empty list (meaning: read it in one piece) for a
    query source, a server older than 14, or a table too small to split.
    Connection and server failures raise :class:`dativo.SourceError`.
    """

    def __init__(self, info: PgConnectionInfo, spec: SourceSpec, plan: SourcePlan) -> None:
        self._info = info
        self._spec = spec
        self._plan = plan
        self._lease: Lease | None = None

    def plan(self, parallelism: int | None) -> list[ReadPartition]:
        """Export the snapshot and return the partitions (see the class docstring)."""
        if self._spec.table is None:
            log.info("source.parallelism applies to table sources only; reading the query on one connection")
            return []
        if (read_cores(self._info.host) if parallelism is None else parallelism) < 2:
            # One partition at most (`parallelism: 1`, or unset on 2 cores with a local server):
            # no snapshot, no second connection.
            return []
        psycopg = import_psycopg()
        self._lease = lease_psycopg(self._info, autocommit=True)
        conn = self._lease.conn
        try:
            if conn.info.server_version < _MIN_SERVER_VERSION:
                log.info("PostgreSQL %s has no TID range scans; reading on one connection", conn.info.server_version)
                self.close()
                return []
            relation = _resolve_table(conn, self._spec.table)
            if not self._plan.sql.endswith(f" FROM {relation}"):
                self.close()
                return []
            with conn.cursor() as cur:
                cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                cur.execute("SELECT pg_export_snapshot()")
                row = cur.fetchone()
                assert row is not None
                snapshot = str(row[0])
                cur.execute("SELECT pg_relation_size(%s::regclass), current_setting('block_size')::int8", (relation,))
                size_row = cur.fetchone()
                assert size_row is not None
                size, block = int(size_row[0]), int(size_row[1])
        except psycopg.Error as exc:
            self._end(reusable=False)
            raise translate_error(exc, self._info, table=self._spec.table) from exc
        except BaseException:
            self._end(reusable=False)
            raise
        partitions = ctid_partitions(
            self._plan.sql, size, block, parallelism, {"snapshot": snapshot}, host=self._info.host
        )
        if not partitions:  # read in one piece: the snapshot is not needed, nor the connection
            self.close()
        return partitions

    def close(self) -> None:
        """End the coordinating transaction and give its connection back (closed if that failed); idempotent."""
        self._end(reusable=True)

    def _end(self, *, reusable: bool) -> None:
        leased, self._lease = self._lease, None
        if leased is None:
            return
        if reusable:
            try:
                leased.conn.execute("ROLLBACK")  # autocommit: the explicit BEGIN's transaction ends here
            except Exception:
                reusable = False
        leased.release(reusable=reusable)
