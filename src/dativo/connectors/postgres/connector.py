"""The ``postgres`` connector's declaration (entry point ``dativo.connectors: postgres``).

Light on purpose: it is imported whenever a job is loaded, so it needs pydantic only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dativo.sdk_connectors import Connector, SqlSourceConfig

__all__ = ["CONNECTOR", "PostgresSourceConfig", "choose_reader"]


class PostgresSourceConfig(SqlSourceConfig):
    """``source:`` of ``connector: postgres``: ``connection`` is ``{dsn}`` or libpq keys (host, port, user...)."""


def choose_reader(config: Mapping[str, Any]) -> str:
    """The default reader: ``postgres-rs`` where installed and able to honour the connection, else ADBC."""
    from dativo.connectors.postgres.native import choose_default_reader

    connection = config.get("connection")
    return choose_default_reader(connection if isinstance(connection, Mapping) else {})[0]


CONNECTOR = Connector(
    name="postgres",
    config=PostgresSourceConfig,
    reader="postgres-adbc",
    change_reader="postgres-cdc",
    planner="dativo.connectors.postgres.remote:plan_source",
    choose_reader="dativo.connectors.postgres.connector:choose_reader",
    description="PostgreSQL tables and queries; change data capture with source.cdc",
)
