"""The ``files`` connector's declaration (entry point ``dativo.connectors: files``); light: pydantic only."""

from __future__ import annotations

from pydantic import Field

from dativo.sdk_connectors import Connector, ConnectorConfig, S3Connection

__all__ = ["CONNECTOR", "FilesSourceConfig"]


class FilesSourceConfig(ConnectorConfig):
    """``source:`` of ``connector: files`` (see :mod:`dativo.connectors.files` for the rules)."""

    path: str | None = Field(None, description="A file, a directory, a glob, or s3://bucket/key-or-prefix.")
    format: str | None = Field(None, description="csv | parquet | jsonl (alias json, ndjson); else from the extension.")
    connection: S3Connection = Field(default_factory=S3Connection)  # type: ignore[arg-type]  # pydantic fills defaults
    cast_to_text: list[str] = Field(default_factory=list, description="Columns read as text instead.")


CONNECTOR = Connector(
    name="files",
    config=FilesSourceConfig,
    reader="files",
    description="CSV, Parquet and JSON-lines files, local or on s3://",
)
