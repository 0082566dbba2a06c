"""pytest fixtures for Iceberg catalogs: the embedded SQL catalog and a real REST catalog server.

Registered in ``tests/conftest.py`` (``pytest_plugins``).

* ``rest_server`` (session): one :class:`support.iceberg_rest.RestCatalogServer` with an S3
  warehouse on the session's moto server.
* ``iceberg_catalog`` (function, parametrized ``embedded``/``rest``): ``(catalog properties for the job
  or {} for embedded, a function job_dir -> PyIceberg Catalog to read back with)``.
* ``proxy`` (function): a :class:`support.iceberg_rest.DropResponseProxy` in front of ``rest_server``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyiceberg.catalog import Catalog, load_catalog

from support.iceberg_rest import DropResponseProxy, RestCatalogServer
from support.s3server import S3Server


@pytest.fixture(scope="session")
def rest_server(s3_server: S3Server) -> Iterator[RestCatalogServer]:
    """Apache Iceberg's REST catalog server on loopback for the session (S3 warehouse on moto)."""
    server = RestCatalogServer(s3_server, s3_server.create_bucket()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def proxy(rest_server: RestCatalogServer) -> Iterator[DropResponseProxy]:
    """A proxy to ``rest_server`` that can drop a response (an unknown commit outcome); stopped after the test."""
    server = DropResponseProxy(rest_server.port).start()
    try:
        yield server
    finally:
        server.stop()


def embedded_catalog(job_dir: Path) -> Catalog:
    """The embedded catalog a job in ``job_dir`` without a ``catalog:`` block uses."""
    warehouse = job_dir / "warehouse"
    warehouse.mkdir(exist_ok=True)
    return load_catalog("dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri())


def rest_catalog(server: RestCatalogServer) -> Catalog:
    properties = server.catalog()
    return load_catalog(properties.pop("name"), **properties)


@pytest.fixture(params=["embedded", "rest"])
def iceberg_catalog(request: pytest.FixtureRequest) -> tuple[dict[str, Any], Callable[[Path], Catalog]]:
    """``(job catalog block, job_dir -> Catalog)`` for the embedded catalog and for the REST server."""
    if request.param == "embedded":
        return {}, embedded_catalog
    server: RestCatalogServer = request.getfixturevalue("rest_server")
    return server.catalog(), lambda _job_dir: rest_catalog(server)
