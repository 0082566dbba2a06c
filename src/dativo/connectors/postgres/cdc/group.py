"""The start of a change run for every table one slot serves: the slot is read once (docs/cdc.md).

:func:`begin_together` is called with the ``postgres-cdc`` readers of every table of a
slot (one for a single-table job) and each table's committed position, and decides,
per table:

* **no slot yet**: create it over a replication connection with its snapshot exported;
  every table is loaded from that snapshot, positioned at the slot's consistent point;
* **a slot but no committed position** (a slot the user made, with ``create: false``, or
  a table added to the job later): the table is loaded from a *fresh* snapshot taken after
  reading the slot's confirmed position ``C``, and positioned at ``C``. The changes between
  ``C`` and the snapshot are in the slot and are read again by the next change run; applying
  them again is harmless, since the merge keeps the last change of each key (a delete
  included), so the table ends equal to the source;
* **a committed position**: its changes from the slot, up to the WAL position ``upto`` taken
  at the start — decoded once for all tables, routed to each table by relation oid, and
  each table skips the transactions its own committed position covers.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from dativo.connectors.postgres.cdc.pgoutput import Begin, Change, Commit, Decoder, Truncate, format_lsn, parse_lsn
from dativo.connectors.postgres.cdc.slot import (
    ExportedSlot,
    HeldSnapshot,
    drop_slot,
    ensure_publication,
    slot_info,
)
from dativo.connectors.postgres.connection import import_psycopg, translate_error
from dativo.connectors.postgres.types import quote_ident
from dativo.errors import ConfigError, SourceError

__all__ = ["begin_together"]

log = logging.getLogger("dativo.connectors.postgres.cdc")

_CHUNK_ROWS = 5000


@dataclass
class _Member:
    reader: Any  # PostgresChangeReader (not imported: it imports this module)
    committed: int | None
    keys: list[str]
    start: dict[str, Any] = field(default_factory=dict)
    spill: _Spill | None = None
    replace: bool = False


def begin_together(
    members: Sequence[tuple[Any, Mapping[str, Any] | None, Sequence[str]]], held: Sequence[Mapping[str, Any]] = ()
) -> list[dict[str, Any]]:
    """Start a change run of every table ``(reader, committed position, keys)`` of one slot; one start each.

    ``held``: committed positions of the slot's tables not run now; the slot is not moved past them.

    Each start is ``{"position", "replace", "snapshot", ...}`` as ``ChangeReader.begin_changes``
    returns it. The first reader owns the slot (its connections read and advance it).
    Raises ConfigError when the readers name different slots or publications, or a committed
    position names another slot; SourceError listing every missing prerequisite, for a lost
    slot (with how to load again), or (transient) for a slot in use by another run.
    """
    group = [_Member(reader, _committed(reader, committed), list(keys)) for reader, committed, keys in members]
    owner = group[0].reader
    settings = owner._settings
    for member in group[1:]:
        other = member.reader._settings
        if (other.slot, other.publication) != (settings.slot, settings.publication):
            raise ConfigError(
                f"tables read together must share one slot and publication; {member.reader._relation} has "
                f"'{other.slot}'/'{other.publication}', {owner._relation} '{settings.slot}'/'{settings.publication}'"
            )
    found = [problem for member in group for problem in member.reader.check_changes(member.keys)]
    if found:
        tables = ", ".join(m.reader._relation for m in group)
        raise SourceError(f"change capture of {tables} cannot start: " + "; ".join(dict.fromkeys(found)))
    for member in group:
        member.reader._change_keys = list(member.keys)
    owner._guard(lambda: ensure_publication(owner._side, [m.reader._relation for m in group], settings))
    info = owner._guard(lambda: slot_info(owner._side, settings.slot))
    committed = [m for m in group if m.committed is not None]
    lost = info is None or info.wal_status == "lost"
    if lost and committed:
        state = "was invalidated (its WAL was removed)" if info is not None else "does not exist"
        lsns = ", ".join(f"{format_lsn(m.committed or 0)} ({m.reader._relation})" for m in committed)
        raise SourceError(
            f"replication slot '{settings.slot}' {state}: the changes after LSN {lsns} are "
            "lost; run 'dativo cdc drop' and 'dativo state reset', then run the job to load the table again"
        )
    if info is not None and not committed and settings.create:
        _drop_stale_slot(owner, bool(info.active))  # a first run that failed: start again with a new slot
        info = None
    if info is None:
        if not settings.create:
            raise ConfigError(
                f"replication slot '{settings.slot}' does not exist and source.cdc.create is false; create it "
                f"(SELECT pg_create_logical_replication_slot('{settings.slot}', 'pgoutput')) or set create: true"
            )
        exported = ExportedSlot(owner._info, settings.slot)
        owner._held.append(exported)
        for member in group:
            member.start = member.reader._start_snapshot(exported, exported.consistent_lsn)
        return [m.start for m in group]
    if committed:
        low = min([*(m.committed or 0 for m in committed), *(parse_lsn(str(h["lsn"])) for h in held)])
        if info.confirmed_lsn is None or parse_lsn(info.confirmed_lsn) < low:
            # An earlier run committed every table but did not advance the slot (killed in between).
            owner.confirm({"lsn": format_lsn(low)})
    fresh = [m for m in group if m.committed is None]
    if fresh:
        _start_fresh(owner, fresh)
    if committed:
        _read_changes(owner, committed)
    return [m.start for m in group]


def _committed(reader: Any, committed: Mapping[str, Any] | None) -> int | None:
    if committed is None:
        return None
    if committed.get("slot") != reader._settings.slot:
        raise ConfigError(
            f"the committed change position of {reader._relation} is for slot '{committed.get('slot')}', not "
            f"'{reader._settings.slot}'; run 'dativo state reset' to load the table again through the new slot"
        )
    return parse_lsn(str(committed["lsn"]))


def _drop_stale_slot(owner: Any, active: bool) -> None:
    slot = owner._settings.slot
    if active:
        raise SourceError(f"replication slot '{slot}' is in use by another session", transient=True)
    log.warning("replication slot '%s' has no committed position (an earlier first run failed); recreating", slot)
    owner._guard(lambda: drop_slot(owner._side, slot))


def _start_fresh(owner: Any, fresh: list[_Member]) -> None:
    """Load ``fresh`` tables from a snapshot taken after reading the slot's confirmed position."""
    slot = owner._settings.slot
    info = owner._guard(lambda: slot_info(owner._side, slot))  # read *before* the snapshot is taken
    if info is None or info.confirmed_lsn is None:
        raise SourceError(f"replication slot '{slot}' disappeared or has no confirmed position; run the job again")
    held = owner._guard(lambda: HeldSnapshot(owner._info))
    owner._held.append(held)
    log.info(
        "initial load of %s in a fresh snapshot; changes since %s (slot %s) are applied again by the next run",
        ", ".join(m.reader._relation for m in fresh),
        info.confirmed_lsn,
        slot,
    )
    for member in fresh:
        member.start = member.reader._start_snapshot(held, info.confirmed_lsn)


def flush_point(owner: Any) -> int:
    """A WAL position such that every transaction committing before it is flushed and decodable.

    ``upto`` is the WAL insert position (async commits may not be written yet); a transactional
    logical message committed synchronously after it makes the server flush past it. The
    flush position is then checked, so a server that flushes otherwise still cannot lose a change.
    """
    side = owner._side

    def flush() -> int:
        with side.transaction():
            side.execute("SET LOCAL synchronous_commit = on")
            row = side.execute("SELECT (pg_current_wal_insert_lsn() - '0/0')::int8").fetchone()
            side.execute("SELECT pg_logical_emit_message(true, 'dativo', 'flush')")
        assert row is not None
        upto = int(row[0])
        deadline = time.monotonic() + 30
        while True:
            flushed = side.execute("SELECT (pg_current_wal_flush_lsn() - '0/0')::int8").fetchone()
            if flushed is not None and int(flushed[0]) >= upto:
                return upto
            if time.monotonic() > deadline:
                raise SourceError("PostgreSQL did not flush its WAL within 30 s", transient=True)
            time.sleep(0.01)

    return int(owner._guard(flush))


def _read_changes(owner: Any, members: list[_Member]) -> None:
    """Read the slot once up to ``upto`` and spill each table's changes; sets every member's start."""
    upto = flush_point(owner)
    psycopg = import_psycopg()
    for member in members:
        member.reader._workdir = Path(tempfile.mkdtemp(prefix="dativo-cdc-"))
        member.spill = _Spill(member.reader, member.reader._workdir)
    conns = [owner._conn, *(m.reader._conn for m in members if m.reader is not owner)]
    try:
        end, capped = _decode(owner, members, upto)
        for conn in conns:
            conn.commit()
    except psycopg.Error as exc:
        error = translate_error(exc, owner._info)
        if getattr(exc, "sqlstate", None) == "55006":  # object in use: another run holds the slot
            error = SourceError(str(error), transient=True)
        raise error from exc
    finally:
        for member in members:
            assert member.spill is not None
            member.spill.close()
    for member in members:
        assert member.spill is not None and member.committed is not None
        member.reader._spill = member.spill.path
        # Stopped early by max_rows: only the transactions read so far are covered.
        reached = max(end, member.committed) if capped else max(upto, end, member.committed)
        position = {"slot": owner._settings.slot, "lsn": format_lsn(reached)}
        log.info("%d change(s) of %s up to %s", member.spill.rows, member.reader._relation, position["lsn"])
        member.start = {
            "position": position,
            "replace": member.replace,
            "snapshot": False,
            "changes": member.spill.rows,
            "more": capped,
        }


def _decode(owner: Any, members: list[_Member], upto: int) -> tuple[int, bool]:
    """Decode the slot's transactions before ``upto`` into each member's spill, routed by relation oid.

    Returns the end of the last transaction read and whether ``max_rows`` stopped the read early
    (at a transaction boundary). A member skips the transactions its committed position covers.
    """
    for member in members:
        member.reader._prepare_stage()
    route = {oid: member for member in members for oid in member.reader._oids}
    settings = owner._settings
    decoder = Decoder()
    cursor = owner._conn.cursor(name="dativo_cdc_changes")
    limit = settings.max_rows  # counted in pgoutput messages; decoding stops at the next commit
    cursor.execute(
        "SELECT (lsn - '0/0')::int8, data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, %s, "
        "'proto_version', '1', 'publication_names', %s)",
        (settings.slot, format_lsn(upto), limit, quote_ident(settings.publication)),
    )
    messages = 0
    final, stamp, end = 0, None, 0
    while rows := cursor.fetchmany(2000):
        messages += len(rows)
        for lsn, data in rows:
            message = decoder.decode(bytes(data))
            if isinstance(message, Begin):
                final, stamp = message.final_lsn, message.commit_time
            elif isinstance(message, Commit):
                end = max(end, message.end_lsn)
            elif isinstance(message, Truncate):
                for oid in message.relation_oids:
                    emptied = route.get(oid)
                    # Transactions before a table's committed position were applied by an earlier run.
                    if emptied is not None and final >= (emptied.committed or 0):
                        assert emptied.spill is not None
                        emptied.spill.reset()  # the table is emptied: only what follows matters
                        emptied.replace = True
            elif isinstance(message, Change):
                changed = route.get(message.relation.oid)
                if changed is not None and final >= (changed.committed or 0):
                    assert changed.spill is not None
                    for op, values in changed.reader._rows_of(message):
                        changed.spill.add(op, values, int(lsn), stamp)
    cursor.close()
    for member in members:
        assert member.spill is not None
        member.spill.flush()
    return end, limit is not None and messages >= limit


class _Spill:
    """Converted change rows of one table in a local Arrow IPC file, in source commit order."""

    def __init__(self, reader: Any, workdir: Path) -> None:
        self._reader = reader
        self._schema = reader.get_schema()
        self.path = workdir / "changes.arrow"
        self._pending: list[tuple[str, list[Any], int, datetime | None]] = []
        self.rows = 0
        self._writer = pa.ipc.new_file(str(self.path), self._schema)

    def add(self, op: str, values: list[Any], lsn: int, stamp: datetime | None) -> None:
        self._pending.append((op, values, lsn, stamp))
        if len(self._pending) >= _CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        arrays = self._reader._convert([values for _, values, _, _ in pending])
        arrays += [
            pa.array([p[0] for p in pending], pa.string()),
            pa.array([p[2] for p in pending], pa.int64()),
            pa.array([p[3] for p in pending], pa.timestamp("us", tz="UTC")),
        ]
        self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self._schema))
        self.rows += len(pending)

    def reset(self) -> None:
        """Forget everything so far (a TRUNCATE)."""
        self._writer.close()
        self._pending = []
        self.rows = 0
        self._writer = pa.ipc.new_file(str(self.path), self._schema)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
