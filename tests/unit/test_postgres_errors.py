"""Transient vs terminal for PostgreSQL errors: decided by SQLSTATE and exception type, not by message text.

Real driver exception classes (psycopg's per-SQLSTATE classes, ADBC's errors) built
without a server; see dativo.connectors.postgres.connection.
"""

from __future__ import annotations

import psycopg
import psycopg.errors
import pytest
from adbc_driver_manager import AdbcStatusCode, OperationalError, ProgrammingError

from dativo.errors import SourceError
from dativo.postgres_sdk import (
    PgConnectionInfo,
    PostgresDriverError,
    is_transient_error,
    is_transient_sqlstate,
    sqlstate_of,
    translate_error,
)

INFO = PgConnectionInfo(conninfo="host=db.example port=5432 password=s3cr3t-pw", host="db.example", port="5432",
                        user="loader", dbname="shop")  # fmt: skip

TRANSIENT = ["08000", "08003", "08006", "08P01", "40001", "40P01", "53100", "53200", "53300", "55P03",
             "57P01", "57P02", "57P03", "58030"]  # fmt: skip
TERMINAL = ["28000", "28P01", "42601", "42703", "42P01", "42501", "22003", "22P02", "3D000", "57014", "23505", "XX000"]


@pytest.mark.parametrize("code", TRANSIENT)
def test_transient_sqlstates(code):
    assert is_transient_sqlstate(code)
    assert translate_error(psycopg.errors.lookup(code)("server says no"), INFO).transient


@pytest.mark.parametrize("code", TERMINAL)
def test_terminal_sqlstates(code):
    assert not is_transient_sqlstate(code)
    assert not translate_error(psycopg.errors.lookup(code)("server says no"), INFO).transient


def test_the_message_text_does_not_decide_when_there_is_a_sqlstate():
    # Words that once meant "connection lost", on a syntax error: still terminal.
    syntax = psycopg.errors.lookup("42601")("server closed the connection unexpectedly")
    assert not is_transient_error(syntax)
    error = translate_error(syntax, INFO, table="public.items")
    assert not error.transient and "SQLSTATE 42601" in str(error)
    # A terminated backend whose message says nothing about connections: transient.
    shutdown = psycopg.errors.AdminShutdown("bye")
    assert sqlstate_of(shutdown) == "57P01" and translate_error(shutdown, INFO).transient


def test_without_a_sqlstate_the_exception_type_decides():
    assert is_transient_error(psycopg.OperationalError("consuming input failed"))
    assert is_transient_error(psycopg.InterfaceError("the connection is closed"))
    assert not is_transient_error(psycopg.ProgrammingError("the query has 2 placeholders"))
    # What psycopg raises when the backend is terminated mid-FETCH (seen in CI): no SQLSTATE, a lost session.
    assert is_transient_error(psycopg.InternalError("received 2 results from command 'FETCH FORWARD 50'"))
    assert not is_transient_error(psycopg.errors.lookup("XX000")("internal error"))  # the server's, with SQLSTATE
    assert is_transient_error(ConnectionResetError(104, "reset by peer"))
    assert is_transient_error(TimeoutError("timed out"))
    assert not is_transient_error(ValueError("server closed the connection"))
    assert is_transient_error(PostgresDriverError(None, "socket closed", connection_lost=True))
    assert not is_transient_error(PostgresDriverError(None, "could not decode", connection_lost=False))
    assert is_transient_error(PostgresDriverError("40P01", "deadlock detected"))
    assert not is_transient_error(PostgresDriverError("22012", "division by zero"))


def test_adbc_errors_by_sqlstate_then_status():
    terminated = OperationalError(
        "IO: [libpq] FATAL:  terminating connection due to administrator command", status_code=AdbcStatusCode.IO,
        sqlstate="57P01",
    )  # fmt: skip
    assert translate_error(terminated, INFO).transient
    bad = ProgrammingError(
        "INVALID_ARGUMENT: syntax error", status_code=AdbcStatusCode.INVALID_ARGUMENT, sqlstate="42601"
    )
    assert not translate_error(bad, INFO).transient
    io = OperationalError("IO: connection dropped", status_code=AdbcStatusCode.IO)
    assert translate_error(io, INFO).transient


def test_arrow_stream_errors_without_sqlstate_are_the_documented_last_resort():
    fatal = OSError("[libpq] Execution error [PGRES_FATAL_ERROR]: FATAL:  terminating connection due to administrator")
    assert translate_error(fatal, INFO).transient
    error = OSError("[libpq] Execution error [PGRES_FATAL_ERROR]: ERROR:  division by zero")
    assert not translate_error(error, INFO).transient


def test_connecting_without_sqlstate_falls_back_to_libpq_text():
    auth = psycopg.OperationalError(
        'connection failed: connection to server at "db.example", port 5432 failed: '
        'FATAL:  password authentication failed for user "loader"'
    )
    error = translate_error(auth, INFO, connecting=True)
    assert isinstance(error, SourceError) and not error.transient and "authentication failed" in str(error)
    refused = psycopg.OperationalError(
        'connection failed: connection to server at "db.example", port 5432 failed: Connection refused'
    )
    assert translate_error(refused, INFO, connecting=True).transient
    full = psycopg.OperationalError("connection failed: FATAL:  sorry, too many connections for role")
    assert translate_error(full, INFO, connecting=True).transient
    # A SQLSTATE, where the driver has one, wins over the text.
    auth_code = PostgresDriverError("28P01", "password authentication failed")
    assert not translate_error(auth_code, INFO, connecting=True).transient


def test_messages_never_carry_the_password():
    error = translate_error(psycopg.errors.lookup("08006")("lost host=db.example password=s3cr3t-pw"), INFO)
    assert "s3cr3t-pw" not in str(error)
