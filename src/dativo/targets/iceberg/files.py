"""Iceberg data files: how they are written (table properties), and their ``DataFile`` entries (footer statistics)."""

from __future__ import annotations

# Before any PyIceberg import: defers its model builds and unused modules (see _pyiceberg).
from dativo.targets.iceberg import _pyiceberg  # noqa: F401

# isort: split

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from pyiceberg.io.pyarrow import (
    MetricModeTypes,
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.schema import Schema
from pyiceberg.typedef import Record

from dativo.errors import ConfigError
from dativo.targets._parquet import ParquetSettings, WrittenFile

__all__ = ["data_file", "parquet_settings"]

_MIB = 1024 * 1024

# Table properties (Iceberg's names) -> the target option that, when given in the job, wins over them.
_PROPERTY_OPTIONS = {
    "write.parquet.compression-codec": "compression",
    "write.parquet.compression-level": "compression_level",
    "write.parquet.row-group-size-bytes": "row_group_size_mb",
    "write.target-file-size-bytes": "target_file_size_mb",
}


def parquet_settings(options: Mapping[str, Any], properties: Mapping[str, str], schema: Schema) -> ParquetSettings:
    """How this table's data files are written: the job's ``options``, else the table's properties, else dativo's.

    Honoured table properties: ``write.parquet.compression-codec`` (``uncompressed``
    is ``none``), ``write.parquet.compression-level``,
    ``write.parquet.row-group-size-bytes``, ``write.target-file-size-bytes`` and
    ``write.parquet.page-size-bytes``. Statistics are written only for the columns
    whose Iceberg metrics mode (``write.metadata.metrics.*``) is not ``none``: no
    reader of an Iceberg table uses the others. Raises ConfigError for an unusable value.
    """
    merged: dict[str, Any] = dict(options)
    for key, option in _PROPERTY_OPTIONS.items():
        value = properties.get(key)
        if value is None or option in merged:
            continue
        if option.endswith("_mb"):
            merged[option] = _int_property(key, value) / _MIB
        elif option == "compression":
            merged[option] = "none" if value.lower() == "uncompressed" else value
        else:
            merged[option] = _int_property(key, value)
    settings = ParquetSettings.from_options(merged)
    page = properties.get("write.parquet.page-size-bytes")
    plan = compute_statistics_plan(schema, dict(properties))
    paths = parquet_path_to_id_mapping(schema)
    wanted = tuple(path for path, field_id in paths.items() if plan[field_id].mode.type != MetricModeTypes.NONE)
    return replace(
        settings,
        data_page_bytes=_int_property("write.parquet.page-size-bytes", page) if page is not None else None,
        statistics=True if len(wanted) == len(paths) else wanted,
    )


def _int_property(key: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise ConfigError(f"iceberg table property {key}={value!r} is not a positive integer; fix or unset it")
    return number


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
