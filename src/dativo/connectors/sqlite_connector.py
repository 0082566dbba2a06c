"""The ``sqlite`` connector's declaration (entry point ``dativo.connectors: sqlite``); light: pydantic only."""

from __future__ import annotations

from dativo.sdk_connectors import Connector, SqlSourceConfig

__all__ = ["CONNECTOR", "SqliteSourceConfig"]


class SqliteSourceConfig(SqlSourceConfig):
    """``source:`` of ``connector: sqlite``: ``connection: {path: data.db}`` (the reader checks it)."""


CONNECTOR = Connector(
    name="sqlite", config=SqliteSourceConfig, reader="sqlite", description="A SQLite database file, read-only"
)
