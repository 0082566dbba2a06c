"""The ``postgres`` connector's declaration (entry point ``dativo.connectors: postgres``).

Light on purpose: it is imported whenever a job is loaded, so it needs pydantic only.
"""

from __future__ import annotations

from dativo.sdk_connectors import Connector, SqlSourceConfig

__all__ = ["CONNECTOR", "PostgresSourceConfig"]


class PostgresSourceConfig(SqlSourceConfig):
    """``source:`` of ``connector: postgres``: ``connection`` is ``{dsn}`` or libpq keys (host, port, user...)."""


CONNECTOR = Connector(
    name="postgres",
    config=PostgresSourceConfig,
    reader="postgres-adbc",
    change_reader="postgres-cdc",
    planner="dativo.connectors.postgres.remote:plan_source",
    description="PostgreSQL tables and queries; change data capture with source.cdc",
)
