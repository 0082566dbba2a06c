"""The job schema. Unknown keys are rejected everywhere; see docs/configuration.md."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "SOURCE_CONNECTORS",
    "TARGET_CONNECTORS",
    "EngineConfig",
    "JobConfig",
    "PluginSpec",
    "SourceConfig",
    "TargetConfig",
]

#: Source connector -> the reader used when the job names none (``custom``: a reader is required).
SOURCE_CONNECTORS: dict[str, str | None] = {
    "postgres": "postgres-adbc",
    "sqlite": "sqlite",
    "files": "files",
    "custom": None,
}
#: Target connector -> the writer used when the job names none.
TARGET_CONNECTORS: dict[str, str | None] = {
    "iceberg": "iceberg",
    "parquet": "parquet",
    "custom": None,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PluginSpec(_Strict):
    """``reader:`` / ``writer:`` — which implementation to run and how to host it."""

    type: Literal["custom"] = Field(
        "custom", description="How the plugin is hosted: 'custom' runs Python (or a PyO3 module) in process."
    )
    implementation: str = Field(
        description="'pkg.mod.Class', 'pkg.mod:Class', 'path/to/file.py:Class' (relative to the job file) "
        "or the name of an installed plugin (see 'dativo plugins list')."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Passed to initialize() as config['options'].")

    @field_validator("implementation")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("implementation must not be empty")
        return value.strip()


class SourceConfig(_Strict):
    """``source:`` — where data comes from."""

    connector: str
    connection: dict[str, Any] = Field(default_factory=dict)
    table: str | None = None
    query: str | None = None
    path: str | None = None
    format: str | None = None
    cast_to_text: list[str] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)
    reader: PluginSpec | None = None

    @field_validator("connector")
    @classmethod
    def _known_connector(cls, value: str) -> str:
        if value not in SOURCE_CONNECTORS:
            raise ValueError(f"unknown source connector '{value}' (known: {', '.join(SOURCE_CONNECTORS)})")
        return value

    @model_validator(mode="after")
    def _reader_for_custom(self) -> SourceConfig:
        if self.connector == "custom" and self.reader is None:
            raise ValueError("connector 'custom' has no default reader: name one under 'reader:'")
        if self.table is not None and self.query is not None:
            raise ValueError("give either 'table' or 'query', not both")
        return self


class TargetConfig(_Strict):
    """``target:`` — where data lands."""

    connector: str
    table: str | None = None
    path: str | None = None
    catalog: dict[str, Any] = Field(default_factory=dict)
    connection: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    writer: PluginSpec | None = None

    @field_validator("connector")
    @classmethod
    def _known_connector(cls, value: str) -> str:
        if value not in TARGET_CONNECTORS:
            raise ValueError(f"unknown target connector '{value}' (known: {', '.join(TARGET_CONNECTORS)})")
        return value

    @model_validator(mode="after")
    def _required_fields(self) -> TargetConfig:
        if self.connector == "custom" and self.writer is None:
            raise ValueError("connector 'custom' has no default writer: name one under 'writer:'")
        if self.connector == "iceberg" and not self.table:
            raise ValueError("an iceberg target needs 'table: namespace.table'")
        if self.connector == "parquet" and not self.path:
            raise ValueError("a parquet target needs 'path' (a local folder or s3://bucket/prefix)")
        return self


class EngineConfig(_Strict):
    """``engine:`` — how batches flow."""

    batch_size: int = Field(65_536, gt=0, le=10_000_000, description="Rows per batch asked of the reader.")
    queue_size: int = Field(4, gt=0, le=64, description="Batches the reader may run ahead of the writer.")


class JobConfig(_Strict):
    """A whole job file."""

    version: Literal[1] = 1
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]+$")
    source: SourceConfig
    target: TargetConfig
    engine: EngineConfig = Field(default_factory=EngineConfig)  # type: ignore[arg-type]  # pydantic fills defaults
