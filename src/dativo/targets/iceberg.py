"""Built-in writer: an Apache Iceberg table through PyIceberg.

Data files are written under the table's location while the run streams, and
published by exactly one commit at ``finalize`` — a fast append (``append``), or
one overwrite snapshot that removes the old files and adds the new ones
(``overwrite``, and ``merge`` by copy-on-write). A table that does not exist yet
is created by that same commit, and a schema change goes into it too, so a
failed run leaves the catalog exactly as it was; ``abort`` deletes the files
written so far.

The job's state (cursor, run id, job, dativo version) is written into the
summary of the same snapshot (``dativo.state``), as Flink and the Iceberg Kafka
Connect sink do with their checkpoints: no separate state can disagree with the data.

Without a ``catalog:`` block the catalog is embedded: PyIceberg's SQL catalog on
``<job dir>/warehouse/catalog.db`` with data under ``<job dir>/warehouse``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceNotEmptyError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io import load_file_io
from pyiceberg.io.pyarrow import (
    ArrowScan,
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
    schema_to_pyarrow,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.schema import Schema
from pyiceberg.table import FileScanTask, Table
from pyiceberg.table.locations import load_location_provider
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.typedef import Record
from pyiceberg.types import (
    DecimalType,
    DoubleType,
    FloatType,
    IcebergType,
    IntegerType,
    ListType,
    LongType,
    MapType,
)

from dativo import __version__
from dativo._faults import crash_point
from dativo._secrets import redact, register_secret
from dativo.errors import ConfigError, SchemaError, TargetError, TypeMappingError
from dativo.sdk import DataWriter, PluginConfig
from dativo.targets._merge import MergeKeys, MergeSettings, anti_join
from dativo.targets._parquet import ParquetSettings, RollingParquetWriter, WrittenFile

__all__ = ["IcebergWriter", "iceberg_type_of", "job_snapshots"]

log = logging.getLogger("dativo.targets.iceberg")

_SECRET_PROPERTY_MARKERS = ("secret", "password", "token", "credential", "key-id")
_COMMIT_ATTEMPTS = 5
RESET_PROPERTY = "dativo.state-reset."


class IcebergWriter(DataWriter):
    """Appends to, overwrites or merges into an Iceberg table (created if missing) in one commit per run."""

    supported_modes = frozenset({"append", "overwrite", "merge"})

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
        self._mode = str(config.get("mode") or "append")
        self._merge = MergeSettings.from_config(config.get("merge")) if self._mode == "merge" else None
        self._evolution = str((config.get("schema_evolution") or {}).get("mode", "evolve"))
        self._settings = ParquetSettings.from_options(config.get("options") or {})
        self._catalog = _open_catalog(dict(config.get("catalog") or {}), self._job_dir)
        self._rolling: RollingParquetWriter | None = None
        self._merge_keys: MergeKeys | None = None
        self._deduplicated: list[str] = []
        self._rewritten: list[str] = []
        self._rewrites_opened = 0
        self._io: Any = None
        self._state: dict[str, Any] | None = None
        self._state_snapshot: int | None = None
        self._created_namespace = False

    # -- state ------------------------------------------------------------------------------------------

    def load_state(self) -> dict[str, Any] | None:
        """The state in the newest snapshot this job committed (after any reset), or None."""
        table = self._load_table()
        found = _latest_job_state(table, self._job_name) if table is not None else None
        self._state_snapshot = found[0] if found else None
        return found[1] if found else None

    def stage_state(self, state: dict[str, Any]) -> None:
        """Commit ``state`` in the summary of this run's snapshot."""
        self._state = dict(state)

    def reset_state(self, force: bool = False) -> str:
        """Forget this job's state (the next run starts from ``initial``); returns what was done.

        Refuses with TargetError when other jobs or other tools also write the table,
        unless ``force``: their rows would stay while this job re-reads its own.
        """
        table = self._load_table()
        if table is None:
            return f"table {self._name} does not exist; there is no state to reset"
        writers = {_writer_of(snapshot) for snapshot in table.snapshots()}
        others = sorted(f"job '{w}'" if w else "tools other than dativo" for w in writers if w != self._job_name)
        if others and not force:
            raise TargetError(
                f"iceberg table {self._name} is also written by {', '.join(others)}; resetting job "
                f"'{self._job_name}' would re-ingest its rows next to theirs. Use --force if that is intended"
            )
        current = table.current_snapshot()
        marker = str(current.snapshot_id) if current is not None else "-1"
        with table.transaction() as tx:
            tx.set_properties({RESET_PROPERTY + self._job_name: marker})
        return f"state of job '{self._job_name}' on {self._name} reset at snapshot {marker}"

    # -- checks -----------------------------------------------------------------------------------------

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

    # -- the run ----------------------------------------------------------------------------------------

    def prepare(self, schema: pa.Schema) -> None:
        """Check the schema against the table (or plan its creation) before any data is written.

        Raises TypeMappingError for a column Iceberg cannot hold, ConfigError for
        bad merge keys, and SchemaError for a change the schema-evolution policy
        does not allow (naming the column and both types).
        """
        data_schema = schema
        if self._merge is not None:
            data_schema = self._merge.check(schema)
            self._merge_keys = MergeKeys(self._merge)
        for field in data_schema:
            iceberg_type_of(field)
        self._data_schema = data_schema
        self._begin(self._load_table())

    def _begin(self, table: Table | None) -> None:
        """Open the transaction this run commits: a staged create, or an update of ``table``."""
        if table is None:
            self._stage_create(self._data_schema)
            self._table = None
            self._base_snapshot = None
        else:
            if len(table.spec().fields) > 0:
                raise TargetError(
                    f"iceberg table {self._name} is partitioned; dativo writes unpartitioned tables only for now"
                )
            self._transaction = table.transaction()
            _evolve(self._name, table.schema(), self._data_schema, self._evolution, self._transaction)
            self._table = table
            self._base_snapshot = table.metadata.current_snapshot_id
        metadata = self._transaction.table_metadata
        schema_changed = self._rolling is not None and metadata.schema() != self._iceberg_schema
        if schema_changed:
            raise TargetError(
                f"iceberg table {self._name}: its schema changed while this run was writing; retry the run",
                transient=True,
            )
        self._iceberg_schema: Schema = metadata.schema()
        self._table_properties = metadata.properties
        self._spec_id = metadata.default_spec_id
        if self._rolling is None:
            self._file_schema = _small_types(schema_to_pyarrow(self._iceberg_schema, include_field_ids=True))
            self._io = load_file_io({**self._catalog.properties, **metadata.properties}, metadata.location)
            self._locations = load_location_provider(metadata.location, metadata.properties)
            # Merge resolves duplicates by row order across this run's files: one lane keeps that order.
            lanes = 1 if self._merge is not None else None
            self._rolling = RollingParquetWriter(self._file_schema, self._open_file, self._settings, lanes=lanes)

    def _open_file(self, index: int) -> tuple[str, Any]:
        path = self._locations.new_data_location(f"00000-{index}-{self._run_id}.parquet")
        return path, self._io.new_output(path).create(overwrite=False)

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Write ``batch`` into a data file of this run (not yet referenced by the table)."""
        assert self._rolling is not None, "prepare() was not called"
        if self._merge_keys is not None:
            batch = self._merge_keys.add(batch)
        self._rolling.write(_to_file_schema(batch, self._file_schema))

    def finalize(self) -> dict[str, Any]:
        """Commit every data file of the run in one snapshot; returns table, snapshot id, files, rows, bytes.

        A commit that conflicts with another writer is retried on the refreshed
        table, unless that writer was another run of the same job (then this run
        fails terminally and commits nothing). Raises TargetError if the commit fails.
        """
        assert self._rolling is not None, "prepare() was not called"
        written = self._rolling.close()
        crash_point("files_written")
        drop, written = self._resolve_merge(written)
        if not written and not self._needs_commit(drop):
            return self._result(None, written, 0)
        for attempt in range(1, _COMMIT_ATTEMPTS + 1):
            try:
                removed = self._stage_commit(written, drop)
                crash_point("before_commit")
                table = self._transaction.commit_transaction()
                break
            except (CommitFailedException, TableAlreadyExistsError) as exc:
                if attempt == _COMMIT_ATTEMPTS:
                    raise TargetError(
                        f"iceberg table {self._name}: commit kept conflicting with other writers ({exc})",
                        transient=True,
                    ) from exc
                log.info("commit to %s conflicted (%s); refreshing and retrying", self._name, exc)
                self._rebase()
            except TargetError:
                raise
            except Exception as exc:
                raise TargetError(f"iceberg table {self._name}: commit failed: {redact(str(exc))}") from exc
        crash_point("after_commit")
        self._created_namespace = False
        snapshot = table.current_snapshot()
        return self._result(snapshot.snapshot_id if snapshot is not None else None, written, removed)

    def _needs_commit(self, drop: pa.Table | None) -> bool:
        if self._table is None:
            return True  # create the (empty) table
        if self._mode == "overwrite":
            return True  # an empty source empties the table
        return drop is not None and drop.num_rows > 0

    def _result(self, snapshot_id: int | None, written: list[WrittenFile], removed: int) -> dict[str, Any]:
        return {
            "table": self._name,
            "mode": self._mode,
            "snapshot_id": snapshot_id,
            "created_table": self._table is None,
            "files": [file.path for file in written],
            "files_removed": removed,
            "rows": sum(file.rows for file in written),
            "bytes": sum(file.size for file in written),
        }

    def _summary_properties(self) -> dict[str, str]:
        properties = {"dativo.run-id": self._run_id, "dativo.job": self._job_name, "dativo.version": __version__}
        if self._state is not None:
            properties["dativo.state"] = json.dumps(self._state, sort_keys=True, default=str)
        return properties

    def _stage_commit(self, written: list[WrittenFile], drop: pa.Table | None) -> int:
        """Add this run's snapshot to the open transaction; returns how many old data files it removes."""
        update = self._transaction.update_snapshot(snapshot_properties=self._summary_properties())
        if self._mode == "append" or self._table is None:
            with update.fast_append() as append:
                for file in written:
                    append.append_data_file(self._data_file(file))
            return 0
        removed, rewritten = self._replaced_files(drop)
        with update.overwrite() as overwrite:
            for data_file in removed:
                overwrite.delete_data_file(data_file)
            for file in [*rewritten, *written]:
                overwrite.append_data_file(self._data_file(file))
        return len(removed)

    def _replaced_files(self, drop: pa.Table | None) -> tuple[list[DataFile], list[WrittenFile]]:
        """Old data files to remove and, for merge, their surviving rows rewritten into new files."""
        assert self._table is not None
        tasks = list(self._scan_tasks())
        if self._mode == "overwrite":
            return [task.file for task in tasks], []
        assert self._merge is not None and drop is not None
        keys = list(self._merge.keys)
        removed: list[DataFile] = []
        self._discard(self._rewritten)  # survivors rewritten by an attempt that then conflicted
        rewrite = RollingParquetWriter(self._file_schema, self._open_rewrite, self._settings)
        scan = ArrowScan(self._transaction.table_metadata, self._io, self._iceberg_schema, AlwaysTrue())
        try:
            for task in tasks:
                rows = scan.to_table([task])
                kept = anti_join(rows, drop, keys)
                if kept.num_rows == rows.num_rows:
                    continue
                removed.append(task.file)
                for batch in kept.to_batches():
                    rewrite.write(_to_file_schema(batch, self._file_schema))
            return removed, rewrite.close()
        finally:
            self._rewritten = list(rewrite.paths)

    def _open_rewrite(self, index: int) -> tuple[str, Any]:
        self._rewrites_opened += 1
        path = self._locations.new_data_location(f"00001-{self._rewrites_opened}-{self._run_id}.parquet")
        return path, self._io.new_output(path).create(overwrite=False)

    def _discard(self, paths: list[str]) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                self._io.delete(path)
        paths.clear()

    def _scan_tasks(self) -> Iterator[FileScanTask]:
        metadata = self._transaction.table_metadata
        if metadata.current_snapshot_id is None:
            return iter(())
        table = Table(self._identifier, metadata, "", self._io, self._catalog)
        return iter(table.scan().plan_files())

    def _resolve_merge(self, written: list[WrittenFile]) -> tuple[pa.Table | None, list[WrittenFile]]:
        """For merge: the keys to drop from the table, and this run's files with duplicates resolved."""
        if self._merge_keys is None:
            return None, written
        drop, keep = self._merge_keys.resolve()
        if keep is None:
            return drop, written
        # last_wins: rewrite this run's own files without the superseded rows.
        rewrite = RollingParquetWriter(self._file_schema, self._open_rewrite, self._settings)
        try:
            offset = 0
            for file in written:
                with self._io.new_input(file.path).open() as stream:
                    rows = pq.read_table(stream, schema=self._file_schema)
                mask = keep.slice(offset, rows.num_rows)
                offset += rows.num_rows
                for batch in rows.filter(mask).to_batches():
                    rewrite.write(batch)
            deduplicated = rewrite.close()
        finally:
            self._deduplicated = list(rewrite.paths)
        self._discard([file.path for file in written])
        return drop, deduplicated

    def _rebase(self) -> None:
        """After a conflict: reload the table, make sure no other run of this job committed, reopen the transaction."""
        table = self._load_table()
        if table is not None:
            found = _latest_job_state(table, self._job_name)
            latest = found[0] if found else None
            if latest != self._state_snapshot:
                raise TargetError(
                    f"another run of job '{self._job_name}' committed to iceberg table {self._name} while this run "
                    "was in progress; this run committed nothing (run the job again to continue from that state)"
                )
        if self._table is None and table is not None:
            raise TargetError(
                f"iceberg table {self._name} was created by another writer while this run was in progress; "
                "retry the run to append to it",
                transient=True,
            )
        self._begin(table)

    def abort(self) -> None:
        """Delete every data file this run wrote; nothing was committed, so the table is as before."""
        self._drop_created_namespace()
        if self._rolling is None:
            return
        self._rolling.abandon()
        self._discard([*self._rolling.paths, *self._deduplicated, *self._rewritten])
        self._rolling = None

    # -- helpers ----------------------------------------------------------------------------------------

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
            try:
                self._catalog.create_namespace(namespace)
                self._created_namespace = True
            except Exception:
                # A concurrent run (another stream of the job) created it between the check and the insert.
                self._catalog.load_namespace_properties(namespace)  # raises if it really is missing
            self._transaction = self._catalog.create_table_transaction(self._identifier, schema=schema)

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


def job_snapshots(table: Table) -> list[tuple[Snapshot, str | None]]:
    """The table's snapshots on its current branch, newest first, with the dativo job that wrote each (or None)."""
    by_id = {snapshot.snapshot_id: snapshot for snapshot in table.snapshots()}
    chain: list[tuple[Snapshot, str | None]] = []
    snapshot = table.current_snapshot()
    while snapshot is not None:
        chain.append((snapshot, _writer_of(snapshot)))
        snapshot = by_id.get(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id is not None else None
    return chain


def _writer_of(snapshot: Snapshot) -> str | None:
    summary = snapshot.summary
    return summary.get("dativo.job") if summary is not None else None


def _latest_job_state(table: Table, job: str) -> tuple[int, dict[str, Any]] | None:
    """``(snapshot id, state)`` of the newest snapshot of ``job`` on the current branch, newer than any reset."""
    reset = table.properties.get(RESET_PROPERTY + job)
    for snapshot, writer in job_snapshots(table):
        if reset is not None and str(snapshot.snapshot_id) == reset:
            return None
        if writer == job and snapshot.summary is not None:
            raw = snapshot.summary.get("dativo.state")
            state = json.loads(raw) if raw else {"run_id": snapshot.summary.get("dativo.run-id")}
            return snapshot.snapshot_id, state
    return None


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
    for attempt in range(3):
        try:
            return load_catalog(name, **properties)
        except Exception as exc:
            # Two processes creating a new embedded catalog's tables at once: the loser sees them appear.
            if "already exists" in str(exc) and attempt < 2:
                continue
            raise TargetError(f"iceberg catalog '{name}' cannot be opened: {redact(str(exc))}") from None
    raise AssertionError("unreachable")


# Promotions Iceberg allows: a value of the first type can be stored in a column of the second.
def _fits(source: IcebergType, table: IcebergType) -> bool:
    if source == table:
        return True
    # Nested types compare by structure: the source's element/key/value field ids are new on every run.
    if isinstance(source, ListType) and isinstance(table, ListType):
        return _fits(source.element_type, table.element_type) and (
            source.element_required or not table.element_required
        )
    if isinstance(source, MapType) and isinstance(table, MapType):
        return (
            _fits(source.key_type, table.key_type)
            and _fits(source.value_type, table.value_type)
            and (source.value_required or not table.value_required)
        )
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


def _evolve(name: str, table_schema: Schema, source: pa.Schema, mode: str, transaction: Any) -> None:
    """Apply the schema-evolution policy; stages changes in ``transaction`` (evolve) or raises SchemaError.

    evolve: new source columns are added as optional, and a table column is widened
    where Iceberg allows (int -> long, float -> double, decimal precision up).
    freeze: the table schema is kept; new source columns are not written.
    fail: any change the table would need stops the run.
    Any other type change (text -> int, say) stops the run in every mode.
    """
    table_fields = {field.name: field for field in table_schema.fields}
    added: list[str] = []
    widened: list[str] = []
    for field in source:
        target = table_fields.get(field.name)
        source_type = iceberg_type_of(field)
        if target is None:
            added.append(field.name)
        elif _fits(source_type, target.field_type):
            continue
        elif _fits(target.field_type, source_type):
            widened.append(f"{field.name} ({target.field_type} -> {source_type})")
        else:
            raise SchemaError(
                f"iceberg table {name}: column '{field.name}' is {target.field_type} in the table but "
                f"{source_type} at the source, and Iceberg cannot change one into the other; cast it in the "
                "source query or write to a new table"
            )
    if mode == "fail" and (added or widened):
        changes = [f"new column(s) {', '.join(added)}"] if added else []
        changes += [f"wider type(s) {', '.join(widened)}"] if widened else []
        raise SchemaError(
            f"iceberg table {name}: the source schema differs ({'; '.join(changes)}) and "
            "target.schema_evolution.mode is 'fail'"
        )
    if mode == "freeze":
        if widened:
            raise SchemaError(
                f"iceberg table {name}: {', '.join(widened)} would need a wider column, and "
                "target.schema_evolution.mode is 'freeze'"
            )
        if added:
            log.warning("schema frozen: source column(s) %s are not written to %s", ", ".join(added), name)
        return
    names = set(source.names)
    for target in table_schema.fields:
        if target.name not in names and target.required:
            raise SchemaError(f"iceberg table {name}: required column '{target.name}' is missing from the source")
    if added or widened:
        log.info("evolving %s: added %s; widened %s", name, added or "-", widened or "-")
        with transaction.update_schema() as update:
            update.union_by_name(source)


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
