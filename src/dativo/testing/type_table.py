"""The foundation's type table as Arrow: what readers may produce and what writers must round-trip.

These are the Arrow types of ``docs/types.md`` (PostgreSQL -> Arrow -> Iceberg):
every built-in reader produces only these, and every built-in writer lands all of them.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import pyarrow as pa

__all__ = ["FOUNDATION_TYPES", "is_foundation_type", "sample_table", "storage_type", "type_name"]

#: Every Arrow type of the type table (lists of each are allowed too).
FOUNDATION_TYPES: tuple[pa.DataType, ...] = (
    pa.int16(),
    pa.int32(),
    pa.int64(),
    pa.float32(),
    pa.float64(),
    pa.decimal128(10, 2),  # stands for every decimal128(p, s), p <= 38
    pa.string(),
    pa.bool_(),
    pa.date32(),
    pa.time64("us"),
    pa.timestamp("us"),
    pa.timestamp("us", tz="UTC"),
    pa.uuid(),
    pa.binary(),
)


def type_name(data_type: pa.DataType) -> str:
    """A short name for messages: ``decimal128`` for every precision, ``list<int32>``."""
    if pa.types.is_decimal128(data_type):
        return "decimal128"
    if pa.types.is_list(data_type):
        return f"list<{type_name(data_type.value_type)}>"
    return str(data_type)


def storage_type(data_type: pa.DataType) -> pa.DataType:
    """The type without extension wrappers (``arrow.uuid`` -> ``fixed_size_binary[16]``), lists included."""
    if isinstance(data_type, pa.ExtensionType):
        return storage_type(data_type.storage_type)
    if pa.types.is_list(data_type):
        return pa.list_(storage_type(data_type.value_type))
    return data_type


def is_foundation_type(data_type: pa.DataType) -> bool:
    """True for a type of the table or a one-dimensional list of one."""
    if pa.types.is_list(data_type):
        return not pa.types.is_list(data_type.value_type) and is_foundation_type(data_type.value_type)
    if pa.types.is_decimal128(data_type):
        return bool(data_type.precision <= 38)
    if data_type == pa.uuid() or data_type == pa.binary(16):
        return True
    return any(bool(data_type == known) for known in FOUNDATION_TYPES)


def sample_table() -> pa.Table:
    """Five rows holding every type of the table, a list of two of them, and a NULL in every column but ``id``.

    Deterministic: the same values on every call (writers' round-trips compare against it).
    """
    utc = dt.UTC
    columns: dict[str, tuple[pa.DataType, list[object]]] = {
        "id": (pa.int64(), [1, 2, 3, 4, 5]),
        "small": (pa.int16(), [-32768, 0, 32767, 7, None]),
        "int": (pa.int32(), [-(2**31), 0, 2**31 - 1, 42, None]),
        "big": (pa.int64(), [-(2**63), 0, 2**63 - 1, 42, None]),
        "real": (pa.float32(), [1.5, -0.0, float("inf"), 3.25, None]),
        "double": (pa.float64(), [1e300, -2.5, float("-inf"), 0.1, None]),
        "price": (
            pa.decimal128(10, 2),
            [decimal.Decimal("12345678.90"), decimal.Decimal("-0.01"), decimal.Decimal("0.00"), None, None],
        ),
        "amount": (
            pa.decimal128(38, 9),
            [decimal.Decimal("12345678901234567890123456789.123456789"), decimal.Decimal("-1.5"), None, None, None],
        ),
        "label": (pa.string(), ["plain", "ünïcödé ✓", "", "with\nnewline", None]),
        "flag": (pa.bool_(), [True, False, True, False, None]),
        "day": (
            pa.date32(),
            [dt.date(1, 1, 1), dt.date(1970, 1, 1), dt.date(9999, 12, 31), dt.date(2024, 2, 29), None],
        ),
        "clock": (
            pa.time64("us"),
            [dt.time(0, 0), dt.time(12, 34, 56, 789012), dt.time(23, 59, 59, 999999), None, None],
        ),
        "seen": (
            pa.timestamp("us"),
            [dt.datetime(1900, 1, 1), dt.datetime(2024, 6, 1, 12, 0, 0, 1), dt.datetime(2262, 4, 11), None, None],
        ),
        "seen_tz": (
            pa.timestamp("us", tz="UTC"),
            [dt.datetime(1970, 1, 1, tzinfo=utc), dt.datetime(2024, 6, 1, 12, 0, 0, 1, tzinfo=utc), None, None, None],
        ),
        "uid": (
            pa.uuid(),
            [uuid.UUID(int=0).bytes, uuid.UUID("12345678-1234-5678-1234-567812345678").bytes, None, None, None],
        ),
        "raw": (pa.binary(), [b"\x00\x01\xff", b"", b"bytes", None, None]),
        "ints": (pa.list_(pa.int32()), [[1, None, 3], [], None, [7], None]),
        "tags": (pa.list_(pa.string()), [["a", "b"], [None], [], None, None]),
    }
    arrays: list[pa.Array] = []
    for data_type, values in columns.values():
        if isinstance(data_type, pa.ExtensionType):
            storage = pa.array(values, type=data_type.storage_type)
            arrays.append(pa.ExtensionArray.from_storage(data_type, storage))
        else:
            arrays.append(pa.array(values, type=data_type))
    return pa.Table.from_arrays(arrays, names=list(columns))
