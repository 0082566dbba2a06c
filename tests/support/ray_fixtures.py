"""pytest plugin: the session's Ray cluster (tests/support/raycluster.py), registered in ``tests/conftest.py``.

Fixture ``ray_cluster`` (session, started on first use): a started :class:`support.raycluster.RayCluster`
(a head and two worker nodes) whose ``env`` holds ``DATIVO_RAY_PGPASSWORD`` (the session PostgreSQL
server's password). Ray is imported only to disconnect this process at the end.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from support.raycluster import PASSWORD_ENV, RayCluster


@pytest.fixture(scope="session")
def ray_cluster(pg_server, tmp_path_factory) -> Iterator[RayCluster]:  # type: ignore[no-untyped-def]
    """One head and two worker nodes for the session; this process is disconnected and the nodes stopped at the end."""
    cluster = RayCluster(tmp_path_factory.mktemp("ray"), env={PASSWORD_ENV: pg_server.password})
    try:
        cluster.start()
        yield cluster
    finally:
        if "ray" in sys.modules:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        cluster.stop()
