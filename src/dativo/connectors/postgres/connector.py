"""The ``postgres`` connector's declaration (entry point ``dativo.connectors: postgres``).

Light on purpose: it is imported whenever a job is loaded, so it needs pydantic only.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from dativo.sdk_connectors import Connector, ConnectorConfig

__all__ = ["CONNECTOR", "PostgresSourceConfig", "SqlSourceConfig"]


class SqlSourceConfig(ConnectorConfig):
    """The keys of a SQL source: a table or a query, columns read as text, a connection."""

    connection: dict[str, Any] = Field(default_factory=dict, description="How to connect (connector-specific).")
    table: str | None = Field(None, description="The table (or view) to read whole.")
    query: str | None = Field(None, description="A SELECT to run instead of a table.")
    cast_to_text: list[str] = Field(default_factory=list, description="Columns read as text instead.")

    @model_validator(mode="after")
    def _table_or_query(self) -> SqlSourceConfig:
        if self.table is not None and self.query is not None:
            raise ValueError("give either 'table' or 'query', not both")
        return self


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
