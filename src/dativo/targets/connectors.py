"""Declarations of the built-in target connectors: iceberg, parquet, encrypted-parquet.

Entry points ``dativo.connectors: iceberg / parquet / encrypted-parquet``. Light on
purpose (pydantic only): it is imported whenever a job is loaded.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from dativo.sdk_connectors import Connector, ConnectorConfig, S3Connection

__all__ = ["ENCRYPTED_PARQUET", "ICEBERG", "PARQUET", "IcebergTargetConfig", "ParquetTargetConfig"]


class IcebergTargetConfig(ConnectorConfig):
    """``target:`` of ``connector: iceberg`` (docs/iceberg.md)."""

    table: str | None = Field(None, description="namespace.table (nested namespaces: a.b.table).")
    catalog: dict[str, Any] = Field(default_factory=dict, description="PyIceberg catalog properties.")
    partition_by: list[str] = Field(
        default_factory=list,
        description="iceberg: partition spec of a new table, e.g. [day(created_at), bucket(16, id), identity(region)].",
    )
    sort_by: list[str] = Field(default_factory=list, description="iceberg: columns each written file is sorted by.")
    connection: S3Connection | None = Field(
        None,
        description="S3 access for the table's files (an s3:// warehouse), as for the other targets; becomes the "
        "catalog's s3.* FileIO properties (a property given under catalog: wins).",
    )

    @model_validator(mode="after")
    def _needs_table(self) -> IcebergTargetConfig:
        if not self.table:
            raise ValueError("an iceberg target needs 'table: namespace.table'")
        if self.connection is not None:
            return self.model_copy(update={"catalog": {**self.connection.iceberg_properties(), **self.catalog}})
        return self


class ParquetTargetConfig(ConnectorConfig):
    """``target:`` of ``connector: parquet`` / ``encrypted-parquet``: a folder, local or on S3."""

    path: str | None = Field(None, description="A local folder or s3://bucket/prefix.")
    connection: S3Connection = Field(default_factory=S3Connection)  # type: ignore[arg-type]  # pydantic fills defaults

    @model_validator(mode="after")
    def _needs_path(self) -> ParquetTargetConfig:
        if not self.path:
            raise ValueError("a parquet target needs 'path' (a local folder or s3://bucket/prefix)")
        return self


ICEBERG = Connector(
    name="iceberg", config=IcebergTargetConfig, writer="iceberg", description="An Apache Iceberg table (PyIceberg)"
)
PARQUET = Connector(
    name="parquet", config=ParquetTargetConfig, writer="parquet", description="A Parquet dataset folder"
)
ENCRYPTED_PARQUET = Connector(
    name="encrypted-parquet",
    config=ParquetTargetConfig,
    writer="encrypted-parquet",
    description="A client-side encrypted Parquet dataset folder (docs/encryption.md)",
)
