"""The PostgreSQL to Arrow type mapping shared by every PostgreSQL reader.

:func:`describe_source` turns a job's ``table`` / ``query`` / ``cast_to_text``
into a :class:`SourcePlan`: the SQL to run and the canonical Arrow schema,
decided from PostgreSQL's own metadata (type OIDs, typmods and ``pg_type``).
Both built-in readers call it, and the value checks below (numeric fit,
infinite dates, multi-dimensional arrays) are shared too, so the readers
cannot drift. Readers in other languages must implement the same table:

=========================================  ==========================================
PostgreSQL                                 Arrow
=========================================  ==========================================
smallint / integer / bigint                int16 / int32 / int64
real / double precision                    float32 / float64 (NaN and infinities kept)
numeric(p,s), effective p <= 38            decimal128(p,s); s < 0 -> (p-s, 0); s > p -> (s, s)
numeric(p,s), effective p > 38             TypeMappingError (unless in cast_to_text)
numeric (no precision)                     decimal128(38,9); a value that does not fit
                                           exactly (or NaN/Infinity) fails the run
text, varchar, char(n), name               utf8 (char(n) keeps its padding)
json, jsonb, enum types                    utf8 (the server's text form)
boolean                                    bool
date                                       date32
time                                       time64[us]
timestamp / timestamptz                    timestamp[us] / timestamp[us, tz=UTC]
uuid                                       the arrow.uuid extension type (pa.uuid())
bytea                                      binary
one-dimensional array of the above         list<element>; NULL elements kept
domains                                    as their base type
anything else                              TypeMappingError naming the column
=========================================  ==========================================

``numeric`` NaN/Infinity, infinite or out-of-range dates and timestamps and
arrays with more than one dimension fail the run with a :class:`SchemaError`
naming the column; values are never rounded or silently changed.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from dativo.errors import ConfigError, SchemaError, SourceError, TypeMappingError

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "ColumnPlan",
    "Kind",
    "SourcePlan",
    "SourceSpec",
    "check_array_dims",
    "check_temporal_range",
    "decimal_from_strings",
    "describe_source",
    "quote_ident",
    "rebuild_list",
    "split_qualified_name",
    "with_lower_bound",
]

#: How the values of a column (or of its array elements) are represented.
Kind = Literal[
    "int16",
    "int32",
    "int64",
    "float32",
    "float64",
    "numeric",
    "text",
    "bool",
    "date",
    "time",
    "timestamp",
    "timestamptz",
    "uuid",
    "bytea",
]

# Built-in type OIDs (stable across PostgreSQL versions: they are in pg_type.dat).
OID_BOOL = 16
OID_BYTEA = 17
OID_NAME = 19
OID_INT8 = 20
OID_INT2 = 21
OID_INT4 = 23
OID_TEXT = 25
OID_JSON = 114
OID_FLOAT4 = 700
OID_FLOAT8 = 701
OID_BPCHAR = 1042
OID_VARCHAR = 1043
OID_DATE = 1082
OID_TIME = 1083
OID_TIMESTAMP = 1114
OID_TIMESTAMPTZ = 1184
OID_NUMERIC = 1700
OID_UUID = 2950
OID_JSONB = 3802

UNCONSTRAINED_DECIMAL = pa.decimal128(38, 9)
MAX_DECIMAL128_PRECISION = 38

_SCALARS: dict[int, tuple[Kind, pa.DataType]] = {
    OID_INT2: ("int16", pa.int16()),
    OID_INT4: ("int32", pa.int32()),
    OID_INT8: ("int64", pa.int64()),
    OID_FLOAT4: ("float32", pa.float32()),
    OID_FLOAT8: ("float64", pa.float64()),
    OID_TEXT: ("text", pa.string()),
    OID_VARCHAR: ("text", pa.string()),
    OID_BPCHAR: ("text", pa.string()),
    OID_NAME: ("text", pa.string()),
    OID_BOOL: ("bool", pa.bool_()),
    OID_DATE: ("date", pa.date32()),
    OID_TIME: ("time", pa.time64("us")),
    OID_TIMESTAMP: ("timestamp", pa.timestamp("us")),
    OID_TIMESTAMPTZ: ("timestamptz", pa.timestamp("us", tz="UTC")),
    OID_UUID: ("uuid", pa.uuid()),
    OID_BYTEA: ("bytea", pa.binary()),
}
# Read as their text form: the SELECT casts them to text, so every reader
# receives exactly what the server prints.
_AS_TEXT_OIDS = frozenset({OID_JSON, OID_JSONB})

# The range PostgreSQL can store: julian day 0 (4714-11-24 BC) and later. Smaller
# values in a date32/timestamp column can only come from 'infinity' or from
# overflow past Arrow's int64 microseconds (after year 294246).
_PG_MIN_DAYS = -2440588
_PG_MIN_MICROS = _PG_MIN_DAYS * 86_400_000_000

_IDENT_PART = re.compile(r'\s*(?:"((?:[^"]|"")*)"|([^."]+))\s*(?:\.|$)')


@dataclass(frozen=True)
class SourceSpec:
    """What a PostgreSQL reader reads: exactly one of ``table`` / ``query``, plus ``cast_to_text``."""

    table: str | None
    query: str | None
    cast_to_text: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SourceSpec:
        """Read ``table``, ``query`` and ``cast_to_text`` from a reader config.

        Raises :class:`ConfigError` unless exactly one of ``table`` and ``query``
        is a non-empty string, or when ``cast_to_text`` is not a list of names.
        """
        table = config.get("table") or None
        query = config.get("query") or None
        if (table is None) == (query is None):
            raise ConfigError(
                "a PostgreSQL source needs exactly one of 'table' or 'query'"
                + (" (both are set)" if table is not None else ""),
                hint="set source.table: schema.table or source.query: SELECT ...",
            )
        for key, value in (("table", table), ("query", query)):
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"source.{key} must be a string, got {type(value).__name__}")
        raw = config.get("cast_to_text") or []
        if isinstance(raw, str) or not isinstance(raw, Sequence) or not all(isinstance(c, str) for c in raw):
            raise ConfigError("source.cast_to_text must be a list of column names")
        return cls(table=table, query=query, cast_to_text=tuple(raw))

    def describe(self) -> str:
        """``table 'public.orders'`` or ``query``, for messages."""
        return f"table {self.table!r}" if self.table is not None else "query"


@dataclass(frozen=True)
class ColumnPlan:
    """One output column: its canonical Arrow type and how to read and check it."""

    name: str
    #: PostgreSQL's name for the type, e.g. ``numeric(10,2)`` or ``integer[]``.
    pg_type: str
    arrow_type: pa.DataType
    #: Representation of the values, or of the elements for an array.
    kind: Kind
    is_array: bool
    #: True for ``numeric`` without declared precision (mapped to decimal128(38,9)).
    unconstrained_numeric: bool
    #: The expression selected for this column.
    select_expr: str

    @property
    def value_type(self) -> pa.DataType:
        """The Arrow type of the values, or of the elements for an array."""
        return self.arrow_type.value_type if self.is_array else self.arrow_type


@dataclass(frozen=True)
class SourcePlan:
    """The SQL a reader runs and the schema its batches have.

    ``sql`` selects the data columns in ``columns`` order, followed by one
    ``array_ndims`` helper column per array column (``array_columns`` holds
    their indexes in ``columns``); readers check those with
    :func:`check_array_dims` and drop them.
    """

    columns: tuple[ColumnPlan, ...]
    schema: pa.Schema
    sql: str
    array_columns: tuple[int, ...]
    source: str


def quote_ident(name: str) -> str:
    """Quote ``name`` as a PostgreSQL identifier, preserving case."""
    return '"' + name.replace('"', '""') + '"'


def split_qualified_name(text: str) -> list[tuple[str, bool]]:
    """Split ``schema.table`` into ``(part, was_quoted)`` pairs.

    Parts may be double-quoted (``"My Schema"."Orders"``, ``""`` escapes a
    quote). Raises :class:`ConfigError` for an empty or malformed name.
    """
    parts: list[tuple[str, bool]] = []
    pos = 0
    stripped = text.strip()
    while pos < len(stripped):
        m = _IDENT_PART.match(stripped, pos)
        if m is None or m.end() == pos:
            raise ConfigError(f"cannot parse table name {text!r}", hint="write it as schema.table")
        if m.group(1) is not None:
            parts.append((m.group(1).replace('""', '"'), True))
        else:
            parts.append((m.group(2).strip(), False))
        pos = m.end()
        if stripped[m.end() - 1 : m.end()] == "." and pos == len(stripped):
            raise ConfigError(f"cannot parse table name {text!r}: it ends with a dot")
    if not parts or len(parts) > 3 or any(not p for p, _ in parts):
        raise ConfigError(f"cannot parse table name {text!r}", hint="write it as schema.table")
    return parts


def _resolve_table(conn: psycopg.Connection[Any], table: str) -> str:
    """Return the quoted relation for ``table``; case is kept, unquoted parts fall back to lower case."""
    parts = split_qualified_name(table)
    exact = ".".join(quote_ident(p) for p, _ in parts)
    candidates = [exact]
    folded = ".".join(quote_ident(p if quoted else p.lower()) for p, quoted in parts)
    if folded != exact:
        candidates.append(folded)
    with conn.cursor() as cur:
        for candidate in candidates:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (candidate,))
            row = cur.fetchone()
            if row is not None and row[0]:
                return candidate
    raise SourceError(
        f"table {table!r} does not exist (or is not visible to this user){_closest_tables(conn, table)}",
        hint="check source.table; name it schema.table, quoting is not needed for mixed case",
        config_key="source.table",
    )


def _closest_tables(conn: psycopg.Connection[Any], table: str) -> str:
    """``; did you mean 'public.orders'?`` from the tables and views this user can see, or ``""``."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') LIMIT 10000"
        )
        names = [str(row[0]) for row in cur.fetchall()]
    wanted = table.replace('"', "")
    close = difflib.get_close_matches(wanted, names, n=3, cutoff=0.6)
    if not close and "." not in wanted:
        close = difflib.get_close_matches(f"public.{wanted}", names, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(name) for name in close)}?" if close else ""


def _numeric_type(typmod: int) -> tuple[pa.DataType | None, bool]:
    """Decode a numeric typmod into a decimal128 type (None when it cannot fit), and 'unconstrained'."""
    if typmod < 4:
        return UNCONSTRAINED_DECIMAL, True
    precision = ((typmod - 4) >> 16) & 0xFFFF
    scale = (typmod - 4) & 0x7FF
    if scale >= 0x400:  # 11-bit two's complement: PostgreSQL 15+ allows negative scales
        scale -= 0x800
    if scale < 0:
        precision, scale = precision - scale, 0
    elif scale > precision:
        precision = scale
    if precision > MAX_DECIMAL128_PRECISION:
        return None, False
    return pa.decimal128(precision, scale), False


@dataclass(frozen=True)
class _PgTypeRow:
    typtype: str
    typelem: int
    elem_is_array_of: bool
    typbasetype: int
    typtypmod: int
    base_format: str | None


def _load_type_rows(conn: psycopg.Connection[Any], oids: set[int]) -> dict[int, _PgTypeRow]:
    rows: dict[int, _PgTypeRow] = {}
    pending = set(oids)
    with conn.cursor() as cur:
        while pending:
            cur.execute(
                """
                SELECT t.oid::int8, t.typtype::text, t.typelem::int8,
                       coalesce((SELECT e.typarray = t.oid FROM pg_type e WHERE e.oid = t.typelem), false),
                       t.typbasetype::int8, t.typtypmod,
                       CASE WHEN t.typbasetype <> 0 THEN format_type(t.typbasetype, t.typtypmod) END
                FROM pg_type t WHERE t.oid = ANY(%s::oid[])
                """,
                (sorted(pending),),
            )
            for oid, typtype, typelem, is_array, basetype, typmod, base_format in cur.fetchall():
                rows[int(oid)] = _PgTypeRow(typtype, int(typelem), bool(is_array), int(basetype), typmod, base_format)
            nxt: set[int] = set()
            for oid in pending:
                row = rows.get(oid)
                if row is None:
                    continue
                for ref in (row.typelem if row.elem_is_array_of else 0, row.typbasetype):
                    known = ref in _SCALARS or ref in _AS_TEXT_OIDS or ref == OID_NUMERIC or ref in rows
                    if ref and not known:
                        nxt.add(ref)
            pending = nxt - set(rows)
    return rows


@dataclass(frozen=True)
class _Mapped:
    kind: Kind
    arrow_type: pa.DataType
    unconstrained: bool
    cast: str | None  # SQL type to cast the column to, if any


def _map_scalar(oid: int, typmod: int, types: Mapping[int, _PgTypeRow]) -> _Mapped | None:
    """Map a non-array type; None when it has no mapping."""
    if oid in _SCALARS:
        kind, arrow_type = _SCALARS[oid]
        return _Mapped(kind, arrow_type, False, None)
    if oid == OID_NUMERIC:
        dec, unconstrained = _numeric_type(typmod)
        return None if dec is None else _Mapped("numeric", dec, unconstrained, None)
    if oid in _AS_TEXT_OIDS:
        return _Mapped("text", pa.string(), False, "text")
    row = types.get(oid)
    if row is None:
        return None
    if row.typtype == "e":
        return _Mapped("text", pa.string(), False, "text")
    if row.typtype == "d" and row.typbasetype:
        base = _map_scalar(row.typbasetype, row.typtypmod if typmod < 0 else typmod, types)
        if base is None or base.cast is not None:
            return base
        return _Mapped(base.kind, base.arrow_type, base.unconstrained, row.base_format)
    return None


def _map_column(oid: int, typmod: int, types: Mapping[int, _PgTypeRow]) -> tuple[_Mapped, bool] | None:
    """Map a column type; returns (mapping, is_array) or None when it has no mapping."""
    row = types.get(oid)
    if oid not in _SCALARS and row is not None and row.typtype == "b" and row.elem_is_array_of:
        elem = _map_scalar(row.typelem, typmod, types)
        if elem is None:
            return None
        cast = f"{elem.cast}[]" if elem.cast is not None else None
        return _Mapped(elem.kind, pa.list_(elem.arrow_type), elem.unconstrained, cast), True
    scalar = _map_scalar(oid, typmod, types)
    return None if scalar is None else (scalar, False)


def describe_source(conn: psycopg.Connection[Any], spec: SourceSpec, *, numeric_as_text: bool = False) -> SourcePlan:
    """Decide the SQL and canonical Arrow schema for ``spec``, using ``conn`` (psycopg).

    Runs the source with ``LIMIT 0`` and reads the result's type OIDs and
    typmods, then ``pg_type`` for arrays, domains and enums.
    ``numeric_as_text`` makes the SQL select numeric columns as ``::text``
    (the schema is unchanged; the reader must convert with
    :func:`decimal_from_strings`). Raises
    :class:`TypeMappingError` naming every column whose type has no lossless
    mapping (suggesting ``cast_to_text``), :class:`ConfigError` for
    ``cast_to_text`` names the source does not have, duplicate column
    names or a source without columns, and :class:`SourceError` for a missing table. PostgreSQL errors
    (syntax, permissions) propagate as psycopg exceptions for the caller to
    translate.
    """
    if spec.table is not None:
        relation = _resolve_table(conn, spec.table)
    else:
        assert spec.query is not None
        query = spec.query.strip()
        while query.endswith(";"):
            query = query[:-1].rstrip()
        # Newlines keep a trailing "-- comment" in the query from swallowing the alias.
        relation = f"(\n{query}\n) AS dativo_source"

    with conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {relation} LIMIT 0")  # built from quoted identifiers
        if cur.description is None or cur.pgresult is None:
            raise SourceError(f"the {spec.describe()} returns no result set", hint="use a SELECT query")
        names = [d.name for d in cur.description]
        if not names:
            raise ConfigError(f"the {spec.describe()} returns no columns", hint="select at least one column")
        oids = [int(d.type_code) for d in cur.description]
        typmods = [int(cur.pgresult.fmod(i)) for i in range(len(names))]
        cur.execute(
            "SELECT format_type(o, m) FROM unnest(%s::oid[], %s::int4[]) WITH ORDINALITY AS x(o, m, n) ORDER BY n",
            (oids, typmods),
        )
        pg_types = [str(r[0]) for r in cur.fetchall()]

    seen: set[str] = set()
    dupes: list[str] = []
    for n in names:
        if n in seen:
            dupes.append(n)
        seen.add(n)
    if dupes:
        raise ConfigError(
            f"the {spec.describe()} returns more than one column named {dupes[0]!r}",
            hint="give every column of the query a distinct alias",
        )
    missing = [c for c in spec.cast_to_text if c not in seen]
    if missing:
        raise ConfigError(
            f"cast_to_text names column(s) {', '.join(map(repr, missing))} which the {spec.describe()} "
            f"does not return (it returns {', '.join(names)})"
        )

    unknown = {o for o in oids if o not in _SCALARS and o not in _AS_TEXT_OIDS and o != OID_NUMERIC}
    types = _load_type_rows(conn, unknown) if unknown else {}

    columns: list[ColumnPlan] = []
    unmapped: list[str] = []
    as_text = set(spec.cast_to_text)
    for name, oid, typmod, pg_type in zip(names, oids, typmods, pg_types, strict=True):
        ident = quote_ident(name)
        if name in as_text:
            columns.append(ColumnPlan(name, pg_type, pa.string(), "text", False, False, f"{ident}::text"))
            continue
        mapped = _map_column(oid, typmod, types)
        if mapped is None:
            unmapped.append(f"{name!r} ({pg_type})")
            continue
        m, is_array = mapped
        cast = m.cast
        if numeric_as_text and m.kind == "numeric":
            cast = "text[]" if is_array else "text"
        expr = f"{ident}::{cast}" if cast else ident
        columns.append(ColumnPlan(name, pg_type, m.arrow_type, m.kind, is_array, m.unconstrained, expr))
    if unmapped:
        cols = [u.split(" (")[0].strip("'") for u in unmapped]
        raise TypeMappingError(
            f"PostgreSQL column(s) {', '.join(unmapped)} of the {spec.describe()} have no lossless Arrow type",
            hint=f"add them to cast_to_text: [{', '.join(cols)}] to read them as text, "
            "or cast them to a supported type in a query",
        )

    array_columns = tuple(i for i, c in enumerate(columns) if c.is_array)
    select = [c.select_expr for c in columns]
    select += [f"array_ndims({quote_ident(columns[i].name)})" for i in array_columns]
    sql = f"SELECT {', '.join(select)} FROM {relation}"
    schema = pa.schema([pa.field(c.name, c.arrow_type, nullable=True) for c in columns])
    return SourcePlan(tuple(columns), schema, sql, array_columns, spec.describe())


# -- value checks shared by the readers ------------------------------------------


def _numeric_error(column: ColumnPlan, value: object) -> SchemaError:
    dec = column.value_type
    if column.unconstrained_numeric:
        return SchemaError(
            f"column {column.name!r} is numeric without a declared precision and holds {value}, "
            f"which does not fit decimal({dec.precision},{dec.scale}) exactly (values are never rounded)",
            hint=f"declare the type in a query, e.g. {quote_ident(column.name)}::numeric(p,s), "
            f"or list the column in cast_to_text: [{column.name}]",
        )
    return SchemaError(
        f"column {column.name!r} ({column.pg_type}) holds {value}, which decimal({dec.precision},{dec.scale}) "
        "cannot represent",
        hint=f"filter it out in a query or list the column in cast_to_text: [{column.name}]",
    )


def _first_unfit(values: list[Any], dec: pa.Decimal128Type) -> object:
    from decimal import Decimal, InvalidOperation

    for v in values:
        if v is None:
            continue
        try:
            d = Decimal(str(v))
        except InvalidOperation:
            return v
        if not d.is_finite():
            return d  # spelled the same whichever driver produced it
        _, digits, exponent = d.normalize().as_tuple()
        assert isinstance(exponent, int)
        if -exponent > dec.scale or len(digits) + exponent > dec.precision - dec.scale:
            return v
    return "a value"


def decimal_from_strings(values: pa.Array, column: ColumnPlan) -> pa.Array:
    """Cast decimal text (``12.30``, ``nan``) to the column's decimal128 value type, exactly.

    Raises :class:`SchemaError` naming the column (and the value) when any
    value would need rounding, has too many digits, or is NaN/Infinity.
    """
    import pyarrow.compute as pc  # not at module level: planning and validate --offline need none of it

    dec = column.value_type
    try:
        return pc.cast(values, dec)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise _numeric_error(column, _first_unfit(values.to_pylist(), dec)) from exc


def check_temporal_range(values: pa.Array, column: ColumnPlan) -> None:
    """Fail on ``infinity``/``-infinity`` or values beyond Arrow's range in a date/timestamp array.

    Both readers produce the same raw numbers (PostgreSQL's epoch shifted to
    1970 with wrap-around), so one check serves both: a value below
    PostgreSQL's own minimum can only be one of those. Raises
    :class:`SchemaError` naming the column.
    """
    if len(values) == values.null_count:
        return
    import pyarrow.compute as pc

    if pa.types.is_date32(values.type):
        low = pc.min(values.view(pa.int32())).as_py()
        bad = low is not None and low < _PG_MIN_DAYS
    else:
        low = pc.min(values.view(pa.int64())).as_py()
        bad = low is not None and low < _PG_MIN_MICROS
    if bad:
        raise SchemaError(
            f"column {column.name!r} ({column.pg_type}) holds infinity, -infinity or a value after "
            "year 294246, which Arrow cannot represent",
            hint=f"filter or replace those values in a query, or list the column in cast_to_text: [{column.name}]",
        )


def check_array_dims(ndims: pa.Array, column: ColumnPlan) -> None:
    """Fail when the ``array_ndims`` helper column shows a value with more than one dimension."""
    import pyarrow.compute as pc

    top = pc.max(ndims).as_py()
    if top is not None and top > 1:
        raise SchemaError(
            f"column {column.name!r} ({column.pg_type}) holds a {top}-dimensional array; "
            "only one-dimensional arrays are supported",
            hint=f"unnest or flatten it in a query, or list the column in cast_to_text: [{column.name}]",
        )


def rebuild_list(list_type: pa.DataType, lists: pa.Array, values: pa.Array) -> pa.Array:
    """``lists`` with its child replaced by ``values`` (same length), reusing validity and offsets without a copy."""
    return pa.Array.from_buffers(
        list_type,
        len(lists),
        lists.buffers()[:2],
        null_count=lists.null_count,
        offset=lists.offset,
        children=[values],
    )


def with_lower_bound(plan: SourcePlan, column: str, after: Any | None) -> SourcePlan:
    """``plan`` reading only rows whose ``column`` is greater than ``after`` (incremental reads).

    ``after`` is an int, a date or a datetime (aware for timestamptz) and is
    rendered as a typed literal, never interpolated as text; None keeps every row.
    Raises ConfigError when ``column`` is not one of the plan's columns.
    """
    if after is None:
        return plan
    if column not in plan.schema.names:
        raise ConfigError(f"incremental cursor column '{column}' is not selected by the {plan.source}")
    if isinstance(after, bool) or not isinstance(after, int | dt.date):
        raise ConfigError(f"incremental bound {after!r} for column '{column}' is not an integer, date or timestamp")
    if isinstance(after, int):
        literal = str(after)
    elif isinstance(after, dt.datetime):
        literal = f"'{after.isoformat()}'::{'timestamptz' if after.tzinfo else 'timestamp'}"
    else:
        literal = f"'{after.isoformat()}'::date"
    sql = f"SELECT * FROM (\n{plan.sql}\n) AS dativo_incremental WHERE {quote_ident(column)} > {literal}"
    return replace(plan, sql=sql)
