"""Iceberg ``DataFile`` entries for Parquet files dativo wrote (statistics from the Parquet footer)."""

from __future__ import annotations

from collections.abc import Mapping

from pyiceberg.io.pyarrow import (
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.schema import Schema
from pyiceberg.typedef import Record

from dativo.targets._parquet import WrittenFile

__all__ = ["data_file"]


def data_file(
    file: WrittenFile, schema: Schema, properties: Mapping[str, str], partition: Record, spec_id: int
) -> DataFile:
    """The manifest entry for ``file`` in partition ``partition`` of spec ``spec_id``, with column statistics."""
    statistics = data_file_statistics_from_parquet_metadata(
        parquet_metadata=file.metadata,
        stats_columns=compute_statistics_plan(schema, dict(properties)),
        parquet_column_mapping=parquet_path_to_id_mapping(schema),
    )
    return DataFile.from_args(
        content=DataFileContent.DATA,
        file_path=file.path,
        file_format=FileFormat.PARQUET,
        partition=partition,
        file_size_in_bytes=file.size,
        sort_order_id=None,
        spec_id=spec_id,
        equality_ids=None,
        key_metadata=None,
        **statistics.to_serialized_dict(),
    )
