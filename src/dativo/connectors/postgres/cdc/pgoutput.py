"""A decoder of PostgreSQL's ``pgoutput`` logical replication protocol (version 1), in pure Python.

Only what change capture needs: Begin, Commit, Relation, Insert, Update, Delete
and Truncate; Type, Origin and logical Messages are skipped. Column values arrive
in PostgreSQL's text output format (the ``binary`` option is not used), ``None``
for NULL and :data:`UNCHANGED` for an unchanged TOASTed value that the server
did not send. See "Logical Replication Message Formats" in the PostgreSQL manual.
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass, field

from dativo.errors import SourceError

__all__ = ["UNCHANGED", "Begin", "Change", "Commit", "Decoder", "Relation", "Truncate", "format_lsn", "parse_lsn"]


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"


#: A value the server did not send because it is TOASTed and unchanged by the update.
UNCHANGED = _Unchanged()

Value = str | None | _Unchanged
_PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def parse_lsn(text: str) -> int:
    """``'16/B374D848'`` -> integer; raises ValueError for anything else."""
    high, _, low = text.partition("/")
    if not high or not low:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(value: int) -> str:
    """Integer -> PostgreSQL's ``'16/B374D848'`` form."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


@dataclass(frozen=True)
class Relation:
    """A table as pgoutput describes it: its columns in order, which are key columns, the replica identity."""

    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[str, ...]
    key_columns: tuple[str, ...]
    type_oids: tuple[int, ...] = field(default=())


@dataclass(frozen=True)
class Begin:
    """Start of a transaction: its commit LSN, commit time and xid."""

    final_lsn: int
    commit_time: dt.datetime
    xid: int


@dataclass(frozen=True)
class Commit:
    """End of a transaction; ``end_lsn`` is the position to confirm once it is applied."""

    commit_lsn: int
    end_lsn: int
    commit_time: dt.datetime


@dataclass(frozen=True)
class Change:
    """One row change. ``old`` is the old key (``K``) or old row (``O``, REPLICA IDENTITY FULL), if sent."""

    op: str  # "insert" | "update" | "delete"
    relation: Relation
    new: tuple[Value, ...] | None
    old: tuple[Value, ...] | None
    old_is_key: bool


@dataclass(frozen=True)
class Truncate:
    """``TRUNCATE`` of one or more relations (by oid)."""

    relation_oids: tuple[int, ...]


Message = Begin | Commit | Change | Truncate | None


class Decoder:
    """Decodes one message at a time, remembering Relation messages (they precede the changes that use them).

    Raises SourceError for a message it cannot parse (naming the message type), or for
    a change of a relation it has not been told about.
    """

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}

    def decode(self, data: bytes) -> Message:
        """Decode one message; returns None for messages change capture ignores."""
        try:
            return self._decode(memoryview(data))
        except (struct.error, IndexError, UnicodeDecodeError) as exc:
            kind = chr(data[0]) if data else "?"
            raise SourceError(f"cannot decode a pgoutput message of type '{kind}': {exc}") from None

    def _decode(self, buf: memoryview) -> Message:
        kind = chr(buf[0])
        pos = 1
        if kind == "B":
            final_lsn, ts, xid = struct.unpack_from(">QqI", buf, pos)
            return Begin(final_lsn, _timestamp(ts), xid)
        if kind == "C":
            _flags, commit_lsn, end_lsn, ts = struct.unpack_from(">BQQq", buf, pos)
            return Commit(commit_lsn, end_lsn, _timestamp(ts))
        if kind == "R":
            self._relation(buf, pos)
            return None
        if kind in "IUD":
            (oid,) = struct.unpack_from(">I", buf, pos)
            pos += 4
            relation = self.relations.get(oid)
            if relation is None:
                raise SourceError(f"pgoutput sent a change of relation {oid} before describing it")
            return self._change(kind, relation, buf, pos)
        if kind == "T":
            count, _options = struct.unpack_from(">IB", buf, pos)
            oids = struct.unpack_from(f">{count}I", buf, pos + 5)
            return Truncate(tuple(oids))
        return None  # Y (type), O (origin), M (message)

    def _relation(self, buf: memoryview, pos: int) -> None:
        (oid,) = struct.unpack_from(">I", buf, pos)
        pos += 4
        namespace, pos = _cstring(buf, pos)
        name, pos = _cstring(buf, pos)
        identity = chr(buf[pos])
        (count,) = struct.unpack_from(">H", buf, pos + 1)
        pos += 3
        columns: list[str] = []
        keys: list[str] = []
        types: list[int] = []
        for _ in range(count):
            flags = buf[pos]
            column, pos = _cstring(buf, pos + 1)
            type_oid, _typmod = struct.unpack_from(">Ii", buf, pos)
            pos += 8
            columns.append(column)
            types.append(type_oid)
            if flags & 1:
                keys.append(column)
        self.relations[oid] = Relation(oid, namespace, name, identity, tuple(columns), tuple(keys), tuple(types))

    def _change(self, kind: str, relation: Relation, buf: memoryview, pos: int) -> Change:
        old: tuple[Value, ...] | None = None
        new: tuple[Value, ...] | None = None
        old_is_key = False
        marker = chr(buf[pos])
        if marker in "KO":
            old_is_key = marker == "K"
            old, pos = _tuple(buf, pos + 1)
            marker = chr(buf[pos]) if pos < len(buf) else ""
        if marker == "N":
            new, pos = _tuple(buf, pos + 1)
        op = {"I": "insert", "U": "update", "D": "delete"}[kind]
        return Change(op, relation, new, old, old_is_key)


def _cstring(buf: memoryview, pos: int) -> tuple[str, int]:
    end = bytes(buf[pos:]).index(b"\0") + pos
    return bytes(buf[pos:end]).decode(), end + 1


_INT16 = struct.Struct(">H")
_INT32 = struct.Struct(">i")
_NULL, _UNCHANGED_TOAST, _TEXT, _BINARY = b"n"[0], b"u"[0], b"t"[0], b"b"[0]


def _tuple(buf: memoryview, pos: int) -> tuple[tuple[Value, ...], int]:
    """TupleData: per column 'n' (NULL), 'u' (unchanged TOAST) or 't'/'b' + Int32 length + bytes."""
    (count,) = _INT16.unpack_from(buf, pos)
    pos += 2
    values: list[Value] = []
    append = values.append
    for _ in range(count):
        kind = buf[pos]
        pos += 1
        if kind in (_TEXT, _BINARY):
            (length,) = _INT32.unpack_from(buf, pos)
            pos += 4
            append(str(buf[pos : pos + length], "utf-8"))
            pos += length
        elif kind == _NULL:
            append(None)
        elif kind == _UNCHANGED_TOAST:
            append(UNCHANGED)
        else:
            raise SourceError(f"pgoutput tuple has a column of unknown kind '{chr(kind)}'")
    return tuple(values), pos


def _timestamp(micros: int) -> dt.datetime:
    return _PG_EPOCH + dt.timedelta(microseconds=micros)
