"""pytest plugin: a real PostgreSQL server for the whole session, and a fresh database per test.

Registered from ``tests/conftest.py`` with
``pytest_plugins = ["support.pg_fixtures", "support.s3_fixtures"]``.

* ``pg_server`` (session): a started :class:`support.pgserver.PostgresServer`
  (fails, never skips, when the PostgreSQL server binaries are missing).
* ``pg_db`` (function): a :class:`support.pgserver.PostgresDatabase`, a new
  empty database created from ``template0``; dropped after the test.
* ``pg_dsn`` (function): the ``postgresql://`` URI of ``pg_db``, password included.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.pgserver import PostgresDatabase, PostgresServer


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server on 127.0.0.1 for the session; stopped and deleted at the end."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_db(pg_server: PostgresServer) -> Iterator[PostgresDatabase]:
    """A fresh, empty database for one test."""
    db = pg_server.new_database("test")
    try:
        yield db
    finally:
        db.drop()


@pytest.fixture
def pg_dsn(pg_db: PostgresDatabase) -> str:
    """The URI (with password) of the test's fresh database."""
    return pg_db.dsn
