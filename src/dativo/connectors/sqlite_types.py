"""SQLite types for the ``sqlite`` reader: declared type -> Arrow type (the affinity rules), value checks and
conversion per column, and type inference from sampled values. The mapping is documented in
:mod:`dativo.connectors.sqlite`.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

__all__ = [
    "PLAIN_TYPES",
    "Column",
    "Misfit",
    "arrow_type_for_declared",
    "converter",
    "infer_type",
    "quote_identifier",
    "storage_class",
]

_DECIMAL = re.compile(r"(?:DECIMAL|NUMERIC)\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)")
_STORAGE_CLASS = {int: "INTEGER", float: "REAL", str: "TEXT", bytes: "BLOB"}


_BINARY = pa.binary()


def arrow_type_for_declared(declared: str, *, untyped: pa.DataType | None = _BINARY) -> pa.DataType | None:
    """Map a SQLite declared column type to an Arrow type by the affinity rules (see :mod:`dativo.connectors.sqlite`).

    Returns ``untyped`` for an empty declared type (``binary``, SQLite's BLOB
    affinity, unless the caller says otherwise) and None when the type must be
    inferred from the values (NUMERIC affinity with no more specific rule).
    """
    text = " ".join(declared.upper().split())
    if not text:
        return untyped
    if "INT" in text:
        return pa.int64()
    if "CHAR" in text or "CLOB" in text or "TEXT" in text:
        return pa.string()
    if "BLOB" in text:
        return pa.binary()
    if "REAL" in text or "FLOA" in text or "DOUB" in text:
        return pa.float64()
    if "BOOL" in text:
        return pa.bool_()
    if "DATETIME" in text or "TIMESTAMP" in text:
        aware = "WITHOUT TIME ZONE" not in text and ("TZ" in text or "WITH TIME ZONE" in text)
        return pa.timestamp("us", tz="UTC" if aware else None)
    if "DATE" in text:
        return pa.date32()
    match = _DECIMAL.fullmatch(text)
    if match:
        precision, scale = int(match[1]), int(match[2] or 0)
        if 1 <= precision <= 38 and scale <= precision:
            return pa.decimal128(precision, scale)
        if 38 < precision <= 76 and scale <= precision:
            return pa.decimal256(precision, scale)
        return None
    if text in ("DECIMAL", "NUMERIC"):
        return pa.float64()
    return None


class Misfit(Exception):
    """A value does not fit its column's Arrow type."""


@dataclass
class Column:
    """One result column: its name, declared SQLite type, Arrow type, and whether that was inferred / is text."""

    name: str
    declared: str
    type: pa.DataType
    inferred: bool = False
    as_text: bool = False


def storage_class(value: Any) -> str:
    """SQLite's name for the storage class of ``value`` (INTEGER, REAL, TEXT, BLOB), for messages."""
    return _STORAGE_CLASS.get(type(value), type(value).__name__)


def _to_int(value: Any) -> Any:
    if type(value) is not int:
        raise Misfit
    return value


def _to_float(value: Any) -> Any:
    if type(value) is float:
        return value
    if type(value) is int and float(value) == value:
        return float(value)
    raise Misfit


def _to_str(value: Any) -> Any:
    if type(value) is not str:
        raise Misfit
    return value


def _to_bytes(value: Any) -> Any:
    if type(value) is not bytes:
        raise Misfit
    return value


def _to_bool(value: Any) -> Any:
    if type(value) is int and value in (0, 1):
        return value == 1
    raise Misfit


def _to_date(value: Any) -> Any:
    if type(value) is not str or len(value) != 10:
        raise Misfit
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise Misfit from None


def _timestamp_converter(aware: bool) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if type(value) is not str:
            raise Misfit
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise Misfit from None
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(dt.UTC)
            return parsed if aware else parsed.replace(tzinfo=None)
        return parsed.replace(tzinfo=dt.UTC) if aware else parsed

    return convert


def _decimal_converter(precision: int, scale: int) -> Callable[[Any], Any]:
    context = decimal.Context(prec=precision + scale + 40, traps=[decimal.InvalidOperation])
    quantum = decimal.Decimal(1).scaleb(-scale)

    def convert(value: Any) -> Any:
        if type(value) is int:
            number = decimal.Decimal(value)
        elif type(value) is float:
            number = decimal.Decimal(repr(value))  # the shortest text that round-trips: 12.34, not 12.339999...
        elif type(value) is str:
            try:
                number = decimal.Decimal(value.strip())
            except decimal.InvalidOperation:
                raise Misfit from None
        else:
            raise Misfit
        if not number.is_finite():
            raise Misfit
        try:
            exact = number.quantize(quantum, context=context)
        except decimal.InvalidOperation:
            raise Misfit from None
        if exact != number or len(exact.as_tuple().digits) > precision:
            raise Misfit
        return exact

    return convert


def _to_text(value: Any) -> Any:
    kind = type(value)
    if kind is str:
        return value
    if kind is int:
        return str(value)
    if kind is float:
        return repr(value)
    if kind is bytes:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise Misfit from None
    raise Misfit


def converter(column: Column) -> Callable[[Any], Any]:
    """The function that checks and converts one value of ``column``; it raises :class:`Misfit` on a misfit."""
    arrow_type = column.type
    if column.as_text:
        return _to_text
    if pa.types.is_int64(arrow_type):
        return _to_int
    if pa.types.is_float64(arrow_type):
        return _to_float
    if pa.types.is_string(arrow_type):
        return _to_str
    if pa.types.is_binary(arrow_type):
        return _to_bytes
    if pa.types.is_boolean(arrow_type):
        return _to_bool
    if pa.types.is_date32(arrow_type):
        return _to_date
    if pa.types.is_timestamp(arrow_type):
        return _timestamp_converter(arrow_type.tz is not None)
    if pa.types.is_decimal(arrow_type):
        return _decimal_converter(arrow_type.precision, arrow_type.scale)
    raise AssertionError(f"no converter for {arrow_type}")  # pragma: no cover - the mapping is closed


#: Columns whose values need no conversion: one Python type check, then pyarrow builds the array.
PLAIN_TYPES = {"int64": int, "string": str, "binary": bytes}


def quote_identifier(name: str) -> str:
    """``name`` as a quoted SQLite identifier."""
    return '"' + name.replace('"', '""') + '"'


def infer_type(values: list[Any]) -> pa.DataType | None:
    """The Arrow type of a sample of one column's values, or None when they mix text with other kinds."""
    kinds = {type(v) for v in values if v is not None}
    if not kinds or kinds == {str}:
        return pa.string()
    if kinds == {int}:
        return pa.int64()
    if kinds <= {int, float}:
        return pa.float64()
    if kinds == {bytes}:
        return pa.binary()
    return None
