"""The ``jsondir`` connector's declaration.

dativo imports this module whenever it loads a job, to validate ``source:``, so it
imports nothing heavy: pydantic and ``dativo.sdk_connectors`` only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from dativo.sdk_connectors import Connector, ConnectorConfig

__all__ = ["COLUMN_TYPES", "CONNECTOR", "JsonDirConfig"]

#: The column types a job may declare.
COLUMN_TYPES = ("int64", "float64", "string", "bool", "timestamp")


class JsonDirConfig(ConnectorConfig):
    """``source:`` keys of ``connector: jsondir``; unknown keys are rejected at their line."""

    folder: str = Field(description="The folder of JSON documents, relative to the job file.")
    pattern: str = Field("*.json", description="Which files of the folder to read (a glob), in name order.")
    records_key: str | None = Field(
        None, description="Key holding the list of records in each document; unset: the document is that list."
    )
    columns: dict[str, Literal["int64", "float64", "string", "bool", "timestamp"]] = Field(
        min_length=1, description="The columns to read, in order, with their types; other keys are ignored."
    )
    on_missing_folder: Literal["fail", "empty"] = Field(
        "fail", description="fail: a missing folder is an error; empty: it reads as no rows."
    )

    @field_validator("folder")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("folder must name a folder, e.g. folder: data/events")
        return value


CONNECTOR = Connector(
    name="jsondir",
    config=JsonDirConfig,
    reader="jsondir",
    description="A folder of JSON documents (each a list of records, or holding one under records_key)",
)
