"""File formats of the files reader: extensions, compression, per-format options, Arrow type strings."""

from __future__ import annotations

import re

import pyarrow as pa

__all__ = [
    "COMPRESSION_SUFFIXES",
    "FORMAT_ALIASES",
    "FORMAT_EXTENSIONS",
    "FORMAT_OPTIONS",
    "format_of",
    "parse_arrow_type",
]

#: File extensions recognised for each format (matched case-insensitively,
#: optionally followed by one of :data:`COMPRESSION_SUFFIXES` for csv/jsonl).
FORMAT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "csv": (".csv",),
    "parquet": (".parquet", ".pq"),
    "jsonl": (".jsonl", ".ndjson", ".json"),
}
#: Compression suffixes pyarrow detects and decompresses transparently.
COMPRESSION_SUFFIXES: tuple[str, ...] = (".gz", ".bz2", ".lz4", ".zstd")

FORMAT_ALIASES = {"csv": "csv", "parquet": "parquet", "jsonl": "jsonl", "json": "jsonl", "ndjson": "jsonl"}
FORMAT_OPTIONS: dict[str, frozenset[str]] = {
    "csv": frozenset({"schema", "delimiter", "quote_char", "escape_char", "header", "null_values", "encoding"}),
    "parquet": frozenset({"schema"}),
    "jsonl": frozenset({"schema"}),
}

_DECIMAL_TYPE = re.compile(r"(decimal|decimal128|decimal256)\s*\(\s*(\d+)\s*(?:,\s*(-?\d+)\s*)?\)", re.I)
_TIMESTAMP_TYPE = re.compile(r"timestamp\s*\[\s*(s|ms|us|ns)\s*(?:,\s*tz\s*=\s*([^\]]*?)\s*)?\]", re.I)


def parse_arrow_type(text: str) -> pa.DataType:
    """Parse an Arrow type string such as ``int64``, ``timestamp[us, tz=UTC]`` or ``decimal128(14,2)``.

    Accepts every alias of :func:`pyarrow.type_for_alias` (``int8``..``uint64``,
    ``float32``/``float``, ``float64``/``double``, ``bool``, ``string``/``str``/
    ``utf8``, ``large_string``, ``binary``, ``large_binary``, ``date32``,
    ``date64``, ``time32[s|ms]``, ``time64[us|ns]``, ``duration[unit]``,
    ``timestamp[unit]``), ``timestamp[unit, tz=Zone]`` and
    ``decimal(p,s)``/``decimal128(p,s)``/``decimal256(p,s)`` (``decimal`` with
    a precision above 38 becomes ``decimal256``). Case does not matter except in
    the time zone. Nested types are not accepted.

    Raises :class:`ValueError` naming the text when it is not a known type.
    """
    raw = text.strip()
    match = _DECIMAL_TYPE.fullmatch(raw)
    if match:
        kind, precision, scale = match[1].lower(), int(match[2]), int(match[3] or 0)
        if kind == "decimal256" or (kind == "decimal" and precision > 38):
            if not 1 <= precision <= 76:
                raise ValueError(f"decimal precision must be between 1 and 76, got {precision} in {text!r}")
            return pa.decimal256(precision, scale)
        if not 1 <= precision <= 38:
            raise ValueError(f"decimal128 precision must be between 1 and 38, got {precision} in {text!r}")
        return pa.decimal128(precision, scale)
    match = _TIMESTAMP_TYPE.fullmatch(raw)
    if match:
        return pa.timestamp(match[1].lower(), tz=match[2] or None)
    try:
        return pa.type_for_alias(raw.lower())
    except (ValueError, KeyError):
        raise ValueError(
            f"unknown Arrow type {text!r}; use e.g. int64, float64, bool, string, date32, "
            "timestamp[us], timestamp[us, tz=UTC] or decimal128(14,2)"
        ) from None


def format_of(name: str) -> str | None:
    """The format implied by a file name's extension (after stripping a compression suffix), or None."""
    lower = name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if lower.endswith(suffix):
            lower = lower[: -len(suffix)]
            compressed = True
            break
    else:
        compressed = False
    for fmt, extensions in FORMAT_EXTENSIONS.items():
        if lower.endswith(extensions):
            return None if compressed and fmt == "parquet" else fmt
    return None
