"""The pgoutput decoder (connectors/postgres/cdc/pgoutput.py), on hand-built protocol messages."""

from __future__ import annotations

import struct

import pytest

from dativo.connectors.postgres.cdc.pgoutput import (
    UNCHANGED,
    Begin,
    Change,
    Commit,
    Decoder,
    Truncate,
    format_lsn,
    parse_lsn,
)
from dativo.errors import SourceError


def relation(oid: int = 16384) -> bytes:
    columns = [(1, "id", 23), (0, "name", 25), (0, "doc", 25)]
    body = struct.pack(">I", oid) + b"public\0orders\0" + b"d" + struct.pack(">H", len(columns))
    for flags, name, type_oid in columns:
        body += bytes([flags]) + name.encode() + b"\0" + struct.pack(">Ii", type_oid, -1)
    return b"R" + body


def tuple_data(*values: object) -> bytes:
    out = struct.pack(">H", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value is UNCHANGED:
            out += b"u"
        else:
            data = str(value).encode()
            out += b"t" + struct.pack(">i", len(data)) + data
    return out


def test_lsn_text_round_trips():
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert format_lsn(parse_lsn("0/1A2B")) == "0/1A2B"


def test_a_transaction_decodes_in_order():
    decoder = Decoder()
    begin = decoder.decode(b"B" + struct.pack(">QqI", 100, 0, 7))
    assert isinstance(begin, Begin) and begin.xid == 7
    assert decoder.decode(relation()) is None
    insert = decoder.decode(b"I" + struct.pack(">I", 16384) + b"N" + tuple_data("1", "ann", None))
    assert isinstance(insert, Change) and insert.op == "insert" and insert.new == ("1", "ann", None)
    assert insert.relation.key_columns == ("id",) and insert.relation.name == "orders"
    update = decoder.decode(
        b"U" + struct.pack(">I", 16384) + b"K" + tuple_data("1", None, None) + b"N" + tuple_data("2", "bo", UNCHANGED)
    )
    assert update.op == "update" and update.old_is_key and update.new == ("2", "bo", UNCHANGED)
    delete = decoder.decode(b"D" + struct.pack(">I", 16384) + b"K" + tuple_data("2", None, None))
    assert delete.op == "delete" and delete.new is None and delete.old == ("2", None, None)
    truncate = decoder.decode(b"T" + struct.pack(">IB", 1, 0) + struct.pack(">I", 16384))
    assert isinstance(truncate, Truncate) and truncate.relation_oids == (16384,)
    commit = decoder.decode(b"C" + struct.pack(">BQQq", 0, 100, 120, 0))
    assert isinstance(commit, Commit) and commit.end_lsn == 120


def test_malformed_messages_fail_naming_the_type():
    decoder = Decoder()
    with pytest.raises(SourceError, match="before describing it"):
        decoder.decode(b"I" + struct.pack(">I", 99) + b"N" + tuple_data("1"))
    with pytest.raises(SourceError, match="type 'B'"):
        decoder.decode(b"B\x00\x01")
