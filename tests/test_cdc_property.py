"""Property: random inserts, updates and deletes over every type of the type table (NULLs and TOASTed
values included), interleaved with change runs; after every run the Iceberg table equals the source."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dativo.config.loader import load_job
from dativo.engine.retry import run_job
from test_cdc import catalog, job_file

COLUMNS = {
    "i2": "smallint",
    "i8": "bigint",
    "f4": "real",
    "f8": "double precision",
    "num": "numeric(14,3)",
    "t": "text",
    "vc": "varchar(12)",
    "b": "boolean",
    "d": "date",
    "tm": "time",
    "ts": "timestamp",
    "tstz": "timestamptz",
    "u": "uuid",
    "by": "bytea",
    "arr": "int[]",
    "tarr": "text[]",
    "j": "jsonb",
}


def value(column: str, seed: int, big: bool) -> str:
    """A SQL expression for ``column`` from ``seed``; ``big`` makes the text column TOASTed (out of line)."""
    return {
        "i2": f"{seed % 30000 - 15000}",
        "i8": f"{seed}::int8 * 1000000007",
        "f4": f"{seed} / 7.0",
        "f8": f"{seed} / 3.0e5",
        "num": f"{seed} * 1.001",
        "t": "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 300))"
        if big
        else f"'t{seed} ä\\\\ \"q\" ' || chr(9)",
        "vc": f"'v{seed}'",
        "b": f"{seed} % 2 = 0",
        "d": f"date '1999-12-31' + {seed}",
        "tm": f"time '00:00' + {seed} * interval '1.5 second'",
        "ts": f"timestamp '2020-02-29 12:00' + {seed} * interval '1 minute 1.5 second'",
        "tstz": f"timestamptz '2020-02-29 12:00+02' - {seed} * interval '1 day'",
        "u": f"md5('{seed}')::uuid",
        "by": f"decode(md5('{seed}'), 'hex')",
        "arr": f"ARRAY[{seed}, NULL, {seed} + 1]",
        "tarr": f"ARRAY['a{seed}', NULL, 'x,y']",
        "j": f"jsonb_build_object('k', {seed}, 'l', ARRAY[1, 2])",
    }[column]


operation = st.one_of(
    st.tuples(
        st.just("insert"),
        st.integers(1, 25),
        st.integers(0, 5000),
        st.booleans(),
        st.sets(st.sampled_from(list(COLUMNS)), max_size=4),
    ),
    st.tuples(
        st.just("update"),
        st.integers(1, 25),
        st.integers(0, 5000),
        st.booleans(),
        st.sets(st.sampled_from(list(COLUMNS)), min_size=1, max_size=3),
    ),
    st.tuples(st.just("delete"), st.integers(1, 25), st.just(0), st.just(False), st.just(frozenset())),
)


def statement(op: str, key: int, seed: int, big: bool, columns: frozenset[str] | set[str]) -> str:
    if op == "delete":
        return f"DELETE FROM items WHERE id = {key};"
    if op == "update":  # only some columns: the TOASTed text is often left unchanged
        sets = ", ".join(f"{c} = {value(c, seed, big)}" if seed % 5 else f"{c} = NULL" for c in sorted(columns))
        return f"UPDATE items SET {sets} WHERE id = {key};"
    nulls = set(columns)  # the drawn columns are NULL in the new row
    values = ", ".join("NULL" if c in nulls else value(c, seed, big) for c in COLUMNS)
    return f"INSERT INTO items VALUES ({key}, {values}) ON CONFLICT (id) DO NOTHING;"


def rows(job_dir: Path, table: str) -> list[dict]:
    return catalog(job_dir).load_table(table).scan().to_arrow().sort_by("id").to_pylist()


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps=st.lists(st.lists(operation, max_size=10), min_size=1, max_size=4), initial=st.integers(0, 8))
def test_target_equals_source_after_every_change_run(pg_server, steps, initial):
    db = pg_server.new_database("cdcprop")
    try:
        db.psql(
            "CREATE TABLE items (id int PRIMARY KEY, "
            + ", ".join(f"{c} {t}" for c, t in COLUMNS.items())
            + "); ALTER TABLE items REPLICA IDENTITY FULL;"
            + "".join(statement("insert", k, k * 13, k % 3 == 0, set()) for k in range(1, initial + 1))
        )
        with tempfile.TemporaryDirectory() as directory:
            job_dir = Path(directory)
            cdc = job_file(job_dir, db)
            full = job_dir / "full.yaml"
            full.write_text(
                "name: full\nsource:\n  connector: postgres\n"
                f"  connection: {json.dumps(db.connection)}\n  table: public.items\n"
                "  reader: {implementation: postgres-psycopg}\n"
                "target: {connector: iceberg, table: raw.full, mode: overwrite}\n"
            )
            for operations in [[], *steps]:
                if operations:
                    db.psql("".join(statement(*op) for op in operations))
                assert run_job(load_job(cdc)).status == "succeeded"
                run_job(load_job(full))
                got, want = rows(job_dir, "raw.items"), rows(job_dir, "raw.full")
                differing = [(a, b) for a, b in zip(got, want, strict=False) if a != b]
                assert got == want, differing[:1] or (len(got), len(want))
    finally:
        db.drop()
