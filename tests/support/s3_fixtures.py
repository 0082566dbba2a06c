"""pytest plugin: a real S3 endpoint (moto's HTTP server) for the whole session.

Registered from ``tests/conftest.py`` with
``pytest_plugins = ["support.pg_fixtures", "support.s3_fixtures"]``.

* ``s3_server`` (session): a started :class:`support.s3server.S3Server`.
* ``s3_bucket`` (function): the name of a new, empty bucket on that server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.s3server import S3Server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server on 127.0.0.1 for the session; stopped at the end."""
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket (unique name) for one test."""
    return s3_server.create_bucket()
