"""postgres-rs parses connection strings and renders describe parameters without psycopg: checked against libpq.

``dativo_postgres_rs._conninfo`` and ``_describe.literal`` exist so that a postgres-rs run never
imports psycopg; these tests hold them to what libpq (through psycopg, installed in the test
environment) and the real server do, on generated inputs.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest
from dativo_postgres_rs import native_conninfo
from dativo_postgres_rs._conninfo import make_conninfo, parse_conninfo
from dativo_postgres_rs._describe import literal
from dativo_postgres_rs._native import Connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict
from psycopg.conninfo import make_conninfo as libpq_make_conninfo

from dativo.postgres_sdk import build_connection

# Any text libpq can carry in a setting (no NUL), spaces, quotes and backslashes included.
TEXT = st.text(st.characters(exclude_characters="\0", exclude_categories=("Cs",)), max_size=24)
SETTINGS = st.fixed_dictionaries(
    {},
    optional={
        "host": st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True),
        "port": st.integers(1, 65535).map(str),
        "user": TEXT,
        "password": TEXT,
        "dbname": TEXT,
        "application_name": TEXT,
        "options": TEXT,
        "sslmode": st.sampled_from(["disable", "prefer", "require", "verify-ca", "verify-full"]),
        "connect_timeout": st.integers(0, 600).map(str),
    },
)


@given(SETTINGS)
@settings(max_examples=300, deadline=None)
def test_key_value_strings_read_as_libpq_reads_them_both_ways(params: dict[str, str]) -> None:
    assert conninfo_to_dict(make_conninfo(params)) == params  # ours written, libpq reads
    assert parse_conninfo(libpq_make_conninfo("", **params)) == params  # libpq written, ours reads


@given(SETTINGS)
@settings(max_examples=300, deadline=None)
def test_uris_read_as_libpq_reads_them(params: dict[str, str]) -> None:
    userinfo = ""
    if "user" in params:
        userinfo = quote(params["user"], safe="")
        if "password" in params:
            userinfo += ":" + quote(params["password"], safe="")
        userinfo += "@"
    authority = params.get("host", "") + (f":{params['port']}" if "port" in params and "host" in params else "")
    path = "/" + quote(params["dbname"], safe="") if "dbname" in params else ""
    rest = {k: v for k, v in params.items() if k in ("application_name", "options", "sslmode", "connect_timeout")}
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in rest.items())
    uri = f"postgresql://{userinfo}{authority}{path}" + (f"?{query}" if query else "")
    assert parse_conninfo(uri) == conninfo_to_dict(uri)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://",
        "postgres://u@h/d",
        "postgresql://[::1]:5433,h2:5434/db?sslmode=require",
        "postgresql://%2Fvar%2Frun%2Fpostgresql/db",
        "postgresql:///db?host=/tmp&port=5433",
        "postgresql://u:p%40ss@h/d?application_name=a%20b",
        "host=h port=5432 dbname = 'x y' password='it\\'s'",
        "  host=h  ",
    ],
)
def test_examples_read_as_libpq_reads_them(dsn: str) -> None:
    assert parse_conninfo(dsn) == conninfo_to_dict(dsn)


@pytest.mark.parametrize("dsn", ["host", "host='x", "postgresql://h?x", "=x"])
def test_what_libpq_refuses_is_refused(dsn: str) -> None:
    with pytest.raises(ValueError):
        parse_conninfo(dsn)
    with pytest.raises(Exception):  # noqa: B017 - psycopg.ProgrammingError; only that libpq refuses it too
        conninfo_to_dict(dsn)


@pytest.fixture(scope="module")
def native(pg_server):
    info = build_connection({"dsn": pg_server.dsn}, parse=parse_conninfo, make=make_conninfo)
    conn = Connection.connect(native_conninfo(info))
    yield conn
    conn.close()


@given(value=TEXT)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_string_literals_round_trip_through_the_server(native, value: str) -> None:
    _, rows = native.query(f"SELECT {literal(value)}::text, ({literal([1, -2])}::int[])[2]")
    assert rows[0] == (value, -2)
