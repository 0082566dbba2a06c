"""Built-in writer: an Apache Iceberg table through PyIceberg.

Data files are written under the table's location while the run streams, and
published by exactly one snapshot at ``finalize``. A table that does not exist
yet is created by that same commit (a staged create), so a failed run leaves
the catalog exactly as it was; ``abort`` deletes the files written so far.

Without a ``catalog:`` block the catalog is embedded: PyIceberg's SQL catalog on
``<job dir>/warehouse/catalog.db`` with data under ``<job dir>/warehouse``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceNotEmptyError,
    NoSuchNamespaceError,
    NoSuchTableError,
)
from pyiceberg.io import load_file_io
from pyiceberg.io.pyarrow import (
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
    schema_to_pyarrow,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.locations import load_location_provider
from pyiceberg.typedef import Record
from pyiceberg.types import DecimalType, DoubleType, FloatType, IcebergType, IntegerType, LongType

from dativo import __version__
from dativo._secrets import redact, register_secret
from dativo.errors import ConfigError, SchemaError, TargetError, TypeMappingError
from dativo.sdk import DataWriter, PluginConfig
from dativo.targets._parquet import ParquetSettings, RollingParquetWriter, WrittenFile

__all__ = ["IcebergWriter", "iceberg_type_of"]

_SECRET_PROPERTY_MARKERS = ("secret", "password", "token", "credential", "key-id")


class IcebergWriter(DataWriter):
    """Appends to an Iceberg table (created if missing) in one snapshot per run."""

    def initialize(self, config: PluginConfig) -> None:
        """Connect to the catalog. Raises ConfigError for a bad table name, TargetError if unreachable."""
        self.config = config
        table = str(config.get("table") or "")
        parts = tuple(part for part in table.split(".") if part)
        if len(parts) < 2:
            raise ConfigError(f"iceberg target: table '{table}' must be 'namespace.table'")
        self._identifier = parts
        self._name = ".".join(parts)
        job = config.get("job", {})
        self._job_dir = Path(job.get("dir", "."))
        self._run_id = str(job.get("run_id", "run"))
        self._job_name = str(job.get("name", ""))
        self._settings = ParquetSettings.from_options(config.get("options") or {})
        self._catalog = _open_catalog(dict(config.get("catalog") or {}), self._job_dir)
        self._rolling: RollingParquetWriter | None = None
        self._io: Any = None
        self._transaction: Any = None
        self._created = False
        self._created_namespace = False

    def check(self) -> None:
        """List the catalog's namespaces and load the table if it exists; raises TargetError otherwise."""
        try:
            self._catalog.list_namespaces()
            self._load_table()
        except TargetError:
            raise
        except Exception as exc:
            raise TargetError(f"iceberg catalog unreachable: {redact(str(exc))}") from None

    def describe_types(self, schema: pa.Schema) -> list[tuple[str, str]]:
        """Return the Iceberg type each column becomes; raises TypeMappingError for one that cannot be mapped."""
        return [(field.name, str(iceberg_type_of(field))) for field in schema]

    def prepare(self, schema: pa.Schema) -> None:
        """Check the schema against the table (or plan its creation) before any data is written.

        Raises TypeMappingError for a column Iceberg cannot hold and SchemaError
        for a column the existing table does not have or cannot take.
        """
        for field in schema:
            iceberg_type_of(field)
        table = self._load_table()
        if table is None:
            self._stage_create(schema)
        else:
            if len(table.spec().fields) > 0:
                raise TargetError(
                    f"iceberg table {self._name} is partitioned; dativo writes unpartitioned tables only for now"
                )
            _check_compatible(self._name, table.schema(), schema)
            self._transaction = table.transaction()
        metadata = self._transaction.table_metadata
        self._iceberg_schema: Schema = metadata.schema()
        self._table_properties = metadata.properties
        self._file_schema = _small_types(schema_to_pyarrow(self._iceberg_schema, include_field_ids=True))
        self._io = load_file_io({**self._catalog.properties, **metadata.properties}, metadata.location)
        self._locations = load_location_provider(metadata.location, metadata.properties)
        self._spec_id = metadata.default_spec_id
        self._rolling = RollingParquetWriter(self._file_schema, self._open_file, self._settings)

    def _open_file(self, index: int) -> tuple[str, Any]:
        path = self._locations.new_data_location(f"00000-{index}-{self._run_id}.parquet")
        return path, self._io.new_output(path).create(overwrite=False)

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Write ``batch`` into a data file of this run (not yet referenced by the table)."""
        assert self._rolling is not None, "prepare() was not called"
        self._rolling.write(_to_file_schema(batch, self._file_schema))

    def finalize(self) -> dict[str, Any]:
        """Commit every data file of the run as one snapshot; returns table, snapshot id, files, rows, bytes.

        Raises TargetError (transient for a concurrent-commit conflict) if the commit fails.
        """
        assert self._rolling is not None and self._transaction is not None, "prepare() was not called"
        written = self._rolling.close()
        properties = {
            "dativo.run-id": self._run_id,
            "dativo.job": self._job_name,
            "dativo.version": __version__,
        }
        snapshot_id = None
        try:
            if written:
                with self._transaction.update_snapshot(snapshot_properties=properties).fast_append() as append:
                    for file in written:
                        append.append_data_file(self._data_file(file))
            if written or self._created:
                table = self._transaction.commit_transaction()
                self._created_namespace = False
                if written:
                    snapshot_id = table.current_snapshot().snapshot_id
        except CommitFailedException as exc:
            raise TargetError(
                f"iceberg table {self._name}: commit conflicted with another writer: {exc}", transient=True
            ) from exc
        except Exception as exc:
            raise TargetError(f"iceberg table {self._name}: commit failed: {redact(str(exc))}") from exc
        return {
            "table": self._name,
            "snapshot_id": snapshot_id,
            "created_table": self._created,
            "files": [file.path for file in written],
            "rows": sum(file.rows for file in written),
            "bytes": sum(file.size for file in written),
        }

    def abort(self) -> None:
        """Delete every data file this run wrote; nothing was committed, so the table is as before."""
        self._drop_created_namespace()
        if self._rolling is None:
            return
        self._rolling.abandon()
        for path in self._rolling.paths:
            with contextlib.suppress(FileNotFoundError):
                self._io.delete(path)
        self._rolling = None

    def _load_table(self) -> Table | None:
        try:
            return self._catalog.load_table(self._identifier)
        except NoSuchTableError:
            return None
        except Exception as exc:
            raise TargetError(f"iceberg table {self._name} cannot be loaded: {redact(str(exc))}") from exc

    def _stage_create(self, schema: pa.Schema) -> None:
        """Stage the table's creation; it becomes visible only with the commit in finalize.

        PyIceberg needs the namespace to exist while staging; one created here
        is dropped again by ``abort`` so a failed run leaves the catalog as it was.
        """
        namespace = self._identifier[:-1]
        try:
            self._transaction = self._catalog.create_table_transaction(self._identifier, schema=schema)
        except NoSuchNamespaceError:
            self._catalog.create_namespace(namespace)
            self._created_namespace = True
            self._transaction = self._catalog.create_table_transaction(self._identifier, schema=schema)
        self._created = True

    def _drop_created_namespace(self) -> None:
        if self._created_namespace:
            # Not empty: another job created a table in it meanwhile, so it stays.
            with contextlib.suppress(NamespaceNotEmptyError, NoSuchNamespaceError):
                self._catalog.drop_namespace(self._identifier[:-1])
            self._created_namespace = False

    def _data_file(self, file: WrittenFile) -> DataFile:
        statistics = data_file_statistics_from_parquet_metadata(
            parquet_metadata=file.metadata,
            stats_columns=compute_statistics_plan(self._iceberg_schema, self._table_properties),
            parquet_column_mapping=parquet_path_to_id_mapping(self._iceberg_schema),
        )
        return DataFile.from_args(
            content=DataFileContent.DATA,
            file_path=file.path,
            file_format=FileFormat.PARQUET,
            partition=Record(),
            file_size_in_bytes=file.size,
            sort_order_id=None,
            spec_id=self._spec_id,
            equality_ids=None,
            key_metadata=None,
            **statistics.to_serialized_dict(),
        )


def iceberg_type_of(field: pa.Field) -> IcebergType:
    """The Iceberg type PyIceberg gives an Arrow field; raises TypeMappingError naming the column."""
    try:
        # PyIceberg's own Arrow -> Iceberg conversion, so created tables match what it would create.
        schema = Catalog._convert_schema_if_needed(pa.schema([field]))
    except Exception as exc:
        raise TypeMappingError(
            f"column '{field.name}': Arrow type {field.type} has no Iceberg equivalent ({exc}); "
            "cast it in the source query or list it under source.cast_to_text"
        ) from None
    return schema.fields[0].field_type


def _open_catalog(properties: dict[str, Any], job_dir: Path) -> Catalog:
    name = str(properties.pop("name", "dativo"))
    properties = {key: str(value) for key, value in properties.items()}
    for key, value in properties.items():
        if any(marker in key.lower() for marker in _SECRET_PROPERTY_MARKERS):
            register_secret(value)
    if not properties or (properties.get("type", "sql") == "sql" and "uri" not in properties):
        warehouse = job_dir / "warehouse"
        warehouse.mkdir(parents=True, exist_ok=True)
        properties = {
            "type": "sql",
            "uri": f"sqlite:///{warehouse / 'catalog.db'}",
            "warehouse": warehouse.as_uri(),
            **properties,
        }
    warehouse_value = properties.get("warehouse", "")
    if warehouse_value and "://" not in warehouse_value:
        local = Path(warehouse_value).expanduser()
        local = local if local.is_absolute() else (job_dir / local).resolve()
        local.mkdir(parents=True, exist_ok=True)
        properties["warehouse"] = local.as_uri()
    try:
        return load_catalog(name, **properties)
    except Exception as exc:
        raise TargetError(f"iceberg catalog '{name}' cannot be opened: {redact(str(exc))}") from None


# Promotions Iceberg allows: a source type may be written into a wider table column.
def _fits(source: IcebergType, table: IcebergType) -> bool:
    if source == table:
        return True
    if isinstance(source, IntegerType) and isinstance(table, LongType):
        return True
    if isinstance(source, FloatType) and isinstance(table, DoubleType):
        return True
    return (
        isinstance(source, DecimalType)
        and isinstance(table, DecimalType)
        and source.scale == table.scale
        and source.precision <= table.precision
    )


def _check_compatible(name: str, table_schema: Schema, source: pa.Schema) -> None:
    table_fields = {field.name: field for field in table_schema.fields}
    for field in source:
        target = table_fields.get(field.name)
        if target is None:
            raise SchemaError(
                f"iceberg table {name} has no column '{field.name}' that the source has; "
                "add it to the table or leave it out of the source query"
            )
        source_type = iceberg_type_of(field)
        if not _fits(source_type, target.field_type):
            raise SchemaError(
                f"iceberg table {name}: column '{field.name}' is {target.field_type} in the table "
                f"but {source_type} at the source"
            )
    names = set(source.names)
    for target in table_schema.fields:
        if target.name not in names and target.required:
            raise SchemaError(f"iceberg table {name}: required column '{target.name}' is missing from the source")


def _small_types(schema: pa.Schema) -> pa.Schema:
    """PyIceberg asks for large string/binary/list; the 32-bit variants store the same and avoid a copy."""
    return pa.schema([_small_field(field) for field in schema], metadata=schema.metadata)


def _small_field(field: pa.Field) -> pa.Field:
    kind = field.type
    if pa.types.is_large_string(kind):
        kind = pa.string()
    elif pa.types.is_large_binary(kind):
        kind = pa.binary()
    elif pa.types.is_large_list(kind) or pa.types.is_list(kind):
        kind = pa.list_(_small_field(kind.value_field))
    elif pa.types.is_struct(kind):
        kind = pa.struct([_small_field(child) for child in kind])
    elif pa.types.is_map(kind):
        kind = pa.map_(_small_field(kind.key_field), _small_field(kind.item_field))
    return field.with_type(kind)


def _to_file_schema(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Cast ``batch`` to the data-file schema (with field ids); table columns the source lacks are null."""
    arrays = []
    for field in schema:
        index = batch.schema.get_field_index(field.name)
        if index < 0:
            arrays.append(pa.nulls(batch.num_rows, field.type))
            continue
        column = batch.column(index)
        arrays.append(column if column.type == field.type else column.cast(field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
