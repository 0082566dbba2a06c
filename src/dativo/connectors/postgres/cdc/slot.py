"""Server-side pieces of change capture: prerequisites, publication, slot, exported snapshot, status.

Every function takes an open psycopg connection (autocommit unless stated) and
raises psycopg errors for the caller to translate, except where it says otherwise.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dativo.connectors.postgres.connection import PgConnectionInfo, import_psycopg, translate_error
from dativo.connectors.postgres.types import quote_ident
from dativo.errors import ConfigError, SourceError

__all__ = [
    "CdcSettings",
    "ExportedSlot",
    "HeldSnapshot",
    "SlotInfo",
    "drop_slot",
    "ensure_publication",
    "primary_key",
    "problems",
    "slot_info",
]

_NAME = re.compile(r"[^a-z0-9_]+")


@dataclass(frozen=True)
class CdcSettings:
    """``source.cdc`` as the reader sees it, with the job-derived defaults filled in."""

    slot: str
    publication: str
    create: bool
    deletes: str
    retained_wal_warning_mb: int
    max_rows: int | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CdcSettings:
        """Read ``config['cdc']``; the slot and publication default to ``dativo_<job name>``.

        Raises ConfigError when the section is missing.
        """
        cdc = config.get("cdc")
        if not isinstance(cdc, Mapping):
            raise ConfigError("the postgres-cdc reader needs a source.cdc section (see docs/cdc.md)")
        job = str((config.get("job") or {}).get("name") or "job")
        default = ("dativo_" + _NAME.sub("_", job.lower()))[:63]
        return cls(
            slot=str(cdc.get("slot") or default),
            publication=str(cdc.get("publication") or default),
            create=bool(cdc.get("create", True)),
            deletes=str(cdc.get("deletes") or "hard"),
            retained_wal_warning_mb=int(cdc.get("retained_wal_warning_mb") or 1024),
            max_rows=int(cdc["max_rows"]) if cdc.get("max_rows") else None,
        )


@dataclass(frozen=True)
class SlotInfo:
    """A row of ``pg_replication_slots`` plus the server's WAL position."""

    name: str
    plugin: str | None
    database: str | None
    active: bool
    confirmed_lsn: str | None
    restart_lsn: str | None
    wal_status: str | None
    current_lsn: str
    lag_bytes: int | None
    retained_bytes: int | None


def slot_info(conn: Any, slot: str) -> SlotInfo | None:
    """The slot's row, or None when it does not exist."""
    row = conn.execute(
        "SELECT slot_name, plugin, database, active, confirmed_flush_lsn::text, restart_lsn::text, wal_status, "
        "pg_current_wal_lsn()::text, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8, "
        "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 "
        "FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    if row is None:
        return None
    name, plugin, database, active, confirmed, restart, wal_status, current, lag, retained = row
    return SlotInfo(name, plugin, database, bool(active), confirmed, restart, wal_status, current, lag, retained)


def primary_key(conn: Any, relation: str) -> list[str]:
    """The primary-key columns of ``relation`` (a quoted name), in key order; empty when there is none."""
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey::int2[]) WHERE i.indrelid = %s::regclass AND i.indisprimary "
        "ORDER BY array_position(i.indkey::int2[], a.attnum)",
        (relation,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def problems(conn: Any, relation: str, settings: CdcSettings, keys: list[str]) -> list[str]:
    """Everything that stops change capture of ``relation``, each with what to do; empty when ready.

    Checked: wal_level, the REPLICATION attribute, the publication (when ``create`` is off,
    or when it exists without the table), the replica identity (updates and deletes must
    identify the row; unchanged TOASTed values need REPLICA IDENTITY FULL), the key, and a
    slot of the same name made for another plugin or database.
    """
    found: list[str] = []
    wal_level = str(conn.execute("SHOW wal_level").fetchone()[0])
    if wal_level != "logical":
        found.append(
            f"wal_level is '{wal_level}' (set wal_level = logical in postgresql.conf or with ALTER SYSTEM, "
            "then restart PostgreSQL)"
        )
    user, privileged = conn.execute(
        "SELECT current_user, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    if not privileged:
        found.append(f"user '{user}' lacks the REPLICATION attribute (ALTER ROLE {quote_ident(user)} REPLICATION)")
    pub = conn.execute(
        "SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate, "
        "EXISTS (SELECT 1 FROM pg_publication_rel r WHERE r.prpubid = p.oid AND r.prrelid = %s::regclass) "
        "OR puballtables FROM pg_publication p WHERE pubname = %s",
        (relation, settings.publication),
    ).fetchone()
    if pub is None and not settings.create:
        found.append(
            f"publication '{settings.publication}' does not exist (CREATE PUBLICATION "
            f"{quote_ident(settings.publication)} FOR TABLE {relation}, or set source.cdc.create: true)"
        )
    elif pub is not None and not pub[1] and not settings.create:
        found.append(
            f"publication '{settings.publication}' does not include {relation} "
            f"(ALTER PUBLICATION {quote_ident(settings.publication)} ADD TABLE {relation})"
        )
    elif pub is not None and not pub[0]:
        found.append(f"publication '{settings.publication}' does not publish all of insert, update, delete, truncate")
    identity, toastable = conn.execute(
        "SELECT c.relreplident, array_agg(a.attname ORDER BY a.attnum) FILTER (WHERE a.attstorage <> 'p') "
        "FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
        "WHERE c.oid = %s::regclass GROUP BY c.relreplident",
        (relation,),
    ).fetchone()
    has_pk = bool(primary_key(conn, relation))
    fix = f"ALTER TABLE {relation} REPLICA IDENTITY FULL"
    if identity == "n" or (identity == "d" and not has_pk):
        found.append(f"table {relation} has no replica identity, so updates and deletes cannot be captured ({fix})")
    elif identity != "f" and toastable:
        found.append(
            f"table {relation} has columns whose unchanged TOASTed values updates do not carry "
            f"({', '.join(toastable)}); dativo keeps them only with REPLICA IDENTITY FULL ({fix})"
        )
    if not keys:
        found.append(f"table {relation} has no primary key (add one, or name the row key in target.merge.keys)")
    info = slot_info(conn, settings.slot)
    if info is not None and (info.plugin != "pgoutput" or info.database != conn.info.dbname):
        found.append(
            f"replication slot '{settings.slot}' exists for plugin '{info.plugin}' in database '{info.database}' "
            "(choose another source.cdc.slot)"
        )
    return found


def ensure_publication(conn: Any, relations: Sequence[str], settings: CdcSettings) -> bool:
    """Make the publication cover ``relations`` when ``create`` is on: create it, or add the tables it lacks.

    Returns True if anything changed. With ``create`` off nothing is touched (``problems`` reports
    what is missing). A table added to an existing publication is published from that moment on:
    its earlier changes are not decoded, so it is loaded from a snapshot taken after this.
    """
    if not settings.create:
        return False
    name = quote_ident(settings.publication)
    exists = conn.execute("SELECT puballtables FROM pg_publication WHERE pubname = %s", (settings.publication,))
    row = exists.fetchone()
    if row is None:
        conn.execute(f"CREATE PUBLICATION {name} FOR TABLE {', '.join(relations)}")
        return True
    if row[0]:
        return False
    missing = [
        relation
        for relation in relations
        if conn.execute(
            "SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid "
            "WHERE p.pubname = %s AND r.prrelid = %s::regclass",
            (settings.publication, relation),
        ).fetchone()
        is None
    ]
    if missing:
        conn.execute(f"ALTER PUBLICATION {name} ADD TABLE {', '.join(missing)}")
    return bool(missing)


def drop_slot(conn: Any, slot: str) -> bool:
    """Drop the slot; False when it did not exist. An active slot raises (psycopg ObjectInUse)."""
    if slot_info(conn, slot) is None:
        return False
    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    return True


class ExportedSlot:
    """A new logical slot created over a replication connection, with its snapshot exported.

    The snapshot stays importable (``SET TRANSACTION SNAPSHOT``) until :meth:`close`;
    everything committed before ``consistent_lsn`` is in it, and the slot yields
    exactly the transactions committed after. Raises SourceError when the slot cannot be created.
    """

    def __init__(self, info: PgConnectionInfo, slot: str) -> None:
        psycopg = import_psycopg()
        try:
            self._conn = psycopg.connect(info.conninfo, replication="database", autocommit=True)
        except psycopg.Error as exc:
            raise translate_error(exc, info, connecting=True) from exc
        try:
            row = self._conn.execute(f"CREATE_REPLICATION_SLOT {quote_ident(slot)} LOGICAL pgoutput EXPORT_SNAPSHOT")
            name, lsn, snapshot, _plugin = row.fetchone()
        except psycopg.Error as exc:
            self.close()
            raise SourceError(f"cannot create replication slot '{slot}' at {info.address}: {exc}") from None
        self.slot = str(name)
        self.consistent_lsn = str(lsn)
        self.snapshot = str(snapshot)

    def close(self) -> None:
        """Close the replication connection (the slot stays; the snapshot is no longer importable)."""
        with contextlib.suppress(Exception):
            self._conn.close()


class HeldSnapshot:
    """A fresh snapshot of the database, held open on a connection of its own and exported.

    Used for a table whose slot already exists (made by the user, or serving other tables):
    no exported snapshot of the slot is available, so the table is read in a snapshot taken
    *after* reading the slot's confirmed position, and the changes between the two are
    replayed by the next change run (idempotent: the last change of each key wins).
    Raises the connection's translated error when it cannot be taken.
    """

    def __init__(self, info: PgConnectionInfo) -> None:
        psycopg = import_psycopg()
        try:
            self._conn = psycopg.connect(info.conninfo, autocommit=False)
        except psycopg.Error as exc:
            raise translate_error(exc, info, connecting=True) from exc
        try:
            self._conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row = self._conn.execute("SELECT pg_export_snapshot()").fetchone()
        except psycopg.Error as exc:
            self.close()
            raise translate_error(exc, info) from exc
        self.snapshot = str(row[0])

    def close(self) -> None:
        """End the transaction holding the snapshot; idempotent."""
        with contextlib.suppress(Exception):
            self._conn.close()
