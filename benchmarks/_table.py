"""The standard wide table: 50 columns generated server-side, and the fingerprint every copy must reproduce."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from _common import TABLE_VERSION, log


@dataclass(frozen=True)
class Column:
    """One column of the benchmark table: ``expr`` computes it from ``g``, the 1-based row number."""

    name: str
    type: str
    expr: str


def _null_every(n: int, expr: str) -> str:
    """``expr``, but NULL on every ``n``-th row."""
    return f"CASE WHEN g % {n} = 0 THEN NULL ELSE {expr} END"


#: 50 columns: 10 bigint, 10 double precision, 10 text (5 md5 hashes, 5 short), 5 timestamptz,
#: 5 date, 5 boolean, 3 numeric(14,2), 2 uuid. Deterministic in the row number, with some NULLs.
WIDE_COLUMNS: tuple[Column, ...] = (
    Column("id", "bigint", "g"),
    Column("i02", "bigint", "g * 7919 % 1000003"),
    Column("i03", "bigint", "(g * 2654435761) % 4294967296"),
    Column("i04", "bigint", "-g"),
    Column("i05", "bigint", "g / 1000"),
    Column("i06", "bigint", _null_every(10, "g * 31")),
    Column("i07", "bigint", "g % 100"),
    Column("i08", "bigint", "1000000000000 + g"),
    Column("i09", "bigint", "g # 123456789"),
    Column("i10", "bigint", _null_every(3, "(g * g) % 999983")),
    Column("f01", "double precision", "g::float8 * 0.5"),
    Column("f02", "double precision", "sqrt(g::float8)"),
    Column("f03", "double precision", "sin(g::float8)"),
    Column("f04", "double precision", "g::float8 / 7"),
    Column("f05", "double precision", "ln(g::float8 + 1)"),
    Column("f06", "double precision", _null_every(11, "cos(g::float8) * 1000")),
    Column("f07", "double precision", "g::float8 * 1e-3"),
    Column("f08", "double precision", "(g % 1000)::float8 / 3"),
    Column("f09", "double precision", "exp(-(g % 50)::float8)"),
    Column("f10", "double precision", _null_every(5, "g::float8 * 1.1")),
    Column("h01", "text", "md5(g::text)"),
    Column("h02", "text", "md5((g * 2)::text)"),
    Column("h03", "text", "md5('h3-' || g)"),
    Column("h04", "text", "md5(g::text || 'salt')"),
    Column("h05", "text", _null_every(8, "md5((g + 17)::text)")),
    Column("s01", "text", "'row-' || g"),
    Column("s02", "text", "(ARRAY['red', 'green', 'blue', 'amber'])[g % 4 + 1]"),
    Column("s03", "text", "'x' || (g % 97)"),
    Column("s04", "text", _null_every(7, "lpad((g % 1000)::text, 6, '0')")),
    Column("s05", "text", "chr(65 + (g % 26)::int) || chr(97 + ((g / 26) % 26)::int)"),
    Column("t01", "timestamptz", "timestamptz '2020-01-01 00:00:00+00' + g * interval '1 second'"),
    Column("t02", "timestamptz", "timestamptz '2000-01-01 00:00:00+00' + g * interval '1 minute'"),
    Column(
        "t03",
        "timestamptz",
        _null_every(13, "timestamptz '2021-06-15 12:00:00+00' - g * interval '17 seconds'"),
    ),
    Column(
        "t04",
        "timestamptz",
        "timestamptz '1999-12-31 23:59:59+00' + (g % 86400000) * interval '1 millisecond'",
    ),
    Column("t05", "timestamptz", "timestamptz '2024-02-29 00:00:00+00' + g * interval '37 microseconds'"),
    Column("d01", "date", "date '2000-01-01' + (g % 10000)::int"),
    Column("d02", "date", "date '1970-01-01' + (g % 36500)::int"),
    Column("d03", "date", _null_every(9, "date '2023-01-01' - (g % 3650)::int")),
    Column("d04", "date", "date '2020-02-29' + (g % 7)::int"),
    Column("d05", "date", "date '1900-01-01' + (g % 73000)::int"),
    Column("b01", "boolean", "g % 2 = 0"),
    Column("b02", "boolean", "g % 3 = 0"),
    Column("b03", "boolean", _null_every(4, "g % 5 = 0")),
    Column("b04", "boolean", "g % 7 < 3"),
    Column("b05", "boolean", "true"),
    Column("n01", "numeric(14,2)", "(g % 1000000) / 100.0"),
    Column("n02", "numeric(14,2)", "g * 1.25"),
    Column("n03", "numeric(14,2)", _null_every(9, "(g % 99999) * -0.01")),
    Column("u01", "uuid", "md5(g::text || 'u')::uuid"),
    Column("u02", "uuid", _null_every(6, "md5('v' || g)::uuid")),
)


def _check_table_definition() -> None:
    counts: dict[str, int] = {}
    for col in WIDE_COLUMNS:
        counts[col.type] = counts.get(col.type, 0) + 1
    expected = {
        "bigint": 10,
        "double precision": 10,
        "text": 10,
        "timestamptz": 5,
        "date": 5,
        "boolean": 5,
        "numeric(14,2)": 3,
        "uuid": 2,
    }
    if counts != expected or len({c.name for c in WIDE_COLUMNS}) != 50:
        raise AssertionError(f"WIDE_COLUMNS does not match the standard table: {counts}")


_check_table_definition()


@dataclass
class SourceTable:
    """A benchmark table on the server and the fingerprint its copies are checked against."""

    name: str
    rows: int
    size_mb: float = 0.0
    built_s: float | None = None  # None: an existing table was reused
    fingerprint: dict[str, int] = field(default_factory=dict)


def split_table(name: str) -> tuple[str, str]:
    """``schema.table`` -> ``(schema, table)``; ``public`` when no schema is given."""
    schema, _, table = name.rpartition(".")
    return schema or "public", table


def _table_comment(rows: int) -> str:
    return f"dativo benchmark table v{TABLE_VERSION} rows={rows}"


def ensure_table(dsn: str, name: str, rows: int) -> SourceTable:
    """Create ``name`` with ``rows`` rows of :data:`WIDE_COLUMNS` unless it already exists as such.

    The table is generated server-side with ``generate_series`` (no data crosses
    the wire), gets a primary key on ``id`` and is ``VACUUM ANALYZE``d.
    """
    import psycopg
    from psycopg import sql

    schema, table = split_table(name)
    ident = sql.Identifier(schema, table)
    with psycopg.connect(dsn, autocommit=True) as conn:
        regclass = conn.execute("SELECT to_regclass(%s)::text", [f'"{schema}"."{table}"']).fetchone()
        existing = None
        if regclass and regclass[0]:
            comment = conn.execute("SELECT obj_description(%s::regclass, 'pg_class')", [regclass[0]]).fetchone()
            if comment and comment[0] == _table_comment(rows):
                count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ident)).fetchone()
                existing = count[0] if count else None
        built_s: float | None = None
        if existing == rows:
            log(f"reusing {name} ({rows:,} rows)")
        else:
            log(f"building {name} with {rows:,} rows server-side ...")
            started = time.perf_counter()
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
            columns = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type)) for c in WIDE_COLUMNS
            )
            conn.execute(sql.SQL("CREATE TABLE {} ({})").format(ident, columns))
            exprs = sql.SQL(", ").join(sql.SQL(c.expr) for c in WIDE_COLUMNS)
            conn.execute(
                sql.SQL("INSERT INTO {} SELECT {} FROM generate_series(1::bigint, {}::bigint) AS g").format(
                    ident, exprs, sql.Literal(rows)
                )
            )
            conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(ident))
            conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(ident, sql.Literal(_table_comment(rows))))
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(ident))
            built_s = time.perf_counter() - started
            log(f"built {name} in {built_s:.1f}s")
        size = conn.execute("SELECT pg_total_relation_size(%s::regclass)", [f'"{schema}"."{table}"']).fetchone()
        # The fingerprint every copy must reproduce: row count, sum(id) and each column's non-NULL count.
        counts = sql.SQL(", ").join(sql.SQL("count({})").format(sql.Identifier(c.name)) for c in WIDE_COLUMNS)
        fp_row = conn.execute(sql.SQL("SELECT count(*), sum(id)::bigint, {} FROM {}").format(counts, ident)).fetchone()
    assert fp_row is not None
    fingerprint = {"rows": int(fp_row[0]), "sum_id": int(fp_row[1] or 0)}
    fingerprint.update({f"non_null.{c.name}": int(v) for c, v in zip(WIDE_COLUMNS, fp_row[2:], strict=True)})
    return SourceTable(
        name=name,
        rows=rows,
        size_mb=round((size[0] if size else 0) / 1e6, 1),
        built_s=None if built_s is None else round(built_s, 2),
        fingerprint=fingerprint,
    )
