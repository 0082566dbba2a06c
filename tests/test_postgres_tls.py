"""postgres-rs over TLS (rustls): sslmode require, verify-ca and verify-full against a real TLS-only server."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from dativo_postgres_rs._native import Connection, ServerError

import dativo
from dativo.errors import SourceError

from support.cli import dativo as dativo_cli
from support.pg_tls import TlsFiles, tls_server
from support.pgserver import PostgresServer


@pytest.fixture(scope="module")
def tls_pg() -> Iterator[tuple[PostgresServer, TlsFiles]]:
    """A PostgreSQL server of its own that accepts TLS connections only (hostssl), with a throw-away CA."""
    folder = Path(tempfile.mkdtemp(prefix="dativo-pg-tls-"))
    server, files = tls_server(folder)
    try:
        yield server, files
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def conninfo(server: PostgresServer, **tls: str) -> str:
    settings = {"host": "127.0.0.1", "port": str(server.port), "user": server.user}
    settings |= {"password": server.password, "dbname": "postgres", **tls}
    return " ".join(f"{key}='{value}'" for key, value in settings.items())


def uses_tls(conn: Connection) -> str | None:
    return conn.query_scalar("SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()")


def test_require_encrypts_without_checking_the_certificate(tls_pg):
    server, _ = tls_pg
    conn = Connection.connect(conninfo(server, sslmode="require"))
    try:
        assert uses_tls(conn) == "true"
    finally:
        conn.close()


def test_prefer_uses_tls_when_offered_and_disable_is_refused_by_a_tls_only_server(tls_pg):
    server, _ = tls_pg
    conn = Connection.connect(conninfo(server))  # no sslmode: prefer, as libpq
    try:
        assert uses_tls(conn) == "true"
    finally:
        conn.close()
    with pytest.raises(ServerError, match=r"no pg_hba\.conf entry"):
        Connection.connect(conninfo(server, sslmode="disable"))


def test_verify_ca_accepts_the_right_ca_and_refuses_another_with_one_clear_error(tls_pg):
    server, files = tls_pg
    conn = Connection.connect(conninfo(server, sslmode="verify-ca", sslrootcert=str(files.ca)))
    try:
        assert uses_tls(conn) == "true"  # 127.0.0.1 is not in the certificate: verify-ca does not check names
    finally:
        conn.close()
    with pytest.raises(ServerError) as caught:
        Connection.connect(conninfo(server, sslmode="verify-ca", sslrootcert=str(files.other_ca)))
    sqlstate, message = caught.value.args
    assert sqlstate is None
    assert message.startswith("SSL/TLS: the server's certificate is not signed by a CA in ")
    assert str(files.other_ca) in message and "sslmode=verify-ca" in message


def test_verify_full_checks_the_host_name(tls_pg):
    server, files = tls_pg
    good = conninfo(server, sslmode="verify-full", sslrootcert=str(files.ca))
    conn = Connection.connect(good.replace("host='127.0.0.1'", "host='localhost' hostaddr='127.0.0.1'"))
    try:
        assert uses_tls(conn) == "true"
    finally:
        conn.close()
    with pytest.raises(ServerError) as caught:
        Connection.connect(good)  # the certificate names localhost, not 127.0.0.1
    assert caught.value.args[1].startswith("SSL/TLS: the server's certificate does not name the host connected to")


def test_require_against_a_server_without_tls_fails_clearly(pg_server):
    with pytest.raises(ServerError) as caught:
        Connection.connect(conninfo(pg_server, sslmode="require"))
    message = caught.value.args[1]
    assert message.startswith("SSL/TLS: the server does not accept TLS connections, but sslmode=require requires TLS")


def test_an_unreadable_root_file_is_named(tls_pg, tmp_path):
    server, _ = tls_pg
    with pytest.raises(ServerError, match=r"SSL/TLS: cannot read sslrootcert '.*missing\.pem'"):
        Connection.connect(conninfo(server, sslmode="verify-ca", sslrootcert=str(tmp_path / "missing.pem")))


def job(tmp_path: Path, connection: dict[str, object]) -> Path:
    path = tmp_path / "job.yaml"
    settings = ", ".join(f"{key}: '{value}'" for key, value in connection.items())
    path.write_text(
        f"name: tls\nsource:\n  connector: postgres\n  connection: {{{settings}}}\n  table: public.items\n"
        "target:\n  connector: iceberg\n  table: demo.items\n"
    )
    return path


def test_a_job_reads_over_verify_full_with_the_default_reader(tls_pg, tmp_path):
    server, files = tls_pg
    db = server.new_database("tls")
    try:
        db.execute("CREATE TABLE items (id bigint PRIMARY KEY, name text)")
        db.execute("INSERT INTO items VALUES (1, 'one'), (2, 'two')")
        connection = {**server.connection_params(db.name), "host": "localhost", "hostaddr": "127.0.0.1"}
        connection |= {"sslmode": "verify-full", "sslrootcert": str(files.ca)}
        path = job(tmp_path, connection)
        assert [(v.reader, v.ok) for v in dativo.validate(path)] == [("postgres-rs", True)]
        found = dativo.discover(path)[0]
        assert (found.reader, found.writer, found.schema.names) == ("postgres-rs", "iceberg", ["id", "name"])
        shown = dativo_cli("discover", path)
        assert shown.returncode == 0 and "reader postgres-rs, writer iceberg" in shown.stdout, shown.stderr
        result = dativo.run(path)
        assert result.ok and result.streams[0].rows == 2
        bad = job(tmp_path, {**connection, "sslrootcert": str(files.other_ca)})
        with pytest.raises(SourceError) as caught:
            dativo.run(bad).raise_for_failures()
        # postgres-rs describes the source on its own (rustls) connection: its words; either way terminal
        message = str(caught.value)
        assert "certificate verify failed" in message or "not signed by a CA" in message, message
        assert not caught.value.transient
    finally:
        db.drop()
