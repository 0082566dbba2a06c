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

# Before any PyIceberg import: defers its model builds and unused modules (see _pyiceberg).
from dativo.targets.iceberg import _pyiceberg  # noqa: F401

# isort: split

import contextlib
import json
import logging
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceNotEmptyError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
    ValidationException,
)
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io import load_file_io
from pyiceberg.io.pyarrow import (
    ArrowScan,
    schema_to_pyarrow,
)
from pyiceberg.manifest import DataFile
from pyiceberg.partitioning import PartitionKey, PartitionSpec
from pyiceberg.schema import Schema, assign_fresh_schema_ids
from pyiceberg.table import FileScanTask, Table
from pyiceberg.table.locations import load_location_provider
from pyiceberg.typedef import Record

from dativo import __version__
from dativo.errors import ConfigError, TargetError
from dativo.sdk import PluginConfig, fault_hook, redact
from dativo.targets._merge import MergeKeys, MergeSettings, anti_join
from dativo.targets._parquet import ParquetSettings, RollingParquetWriter, WrittenFile
from dativo.targets.iceberg._pyiceberg import CommitWarmUp
from dativo.targets.iceberg.catalog import ensure_namespace, open_catalog
from dativo.targets.iceberg.commit import COMMIT_ID, find_commit, outcome_unknown, without_library_retries
from dativo.targets.iceberg.files import data_file, parquet_settings
from dativo.targets.iceberg.partitioning import (
    PartitionedFiles,
    build_sort_order,
    build_spec,
    check_writable,
    parse_partition_by,
)
from dativo.targets.iceberg.plugin import IcebergWriter as IcebergWriterEntry
from dativo.targets.iceberg.schema import evolve, iceberg_type_of, small_types, to_file_schema
from dativo.targets.iceberg.staging import IcebergStaging
from dativo.targets.iceberg.state import RESET_PROPERTY, is_maintenance, latest_job_state, writer_of

__all__ = ["IcebergWriter"]

log = logging.getLogger("dativo.targets.iceberg")

_COMMIT_ATTEMPTS = 5


class IcebergWriter(IcebergStaging, IcebergWriterEntry):
    """Appends to, overwrites or merges into an Iceberg table (created if missing) in one commit per run."""

    def initialize(self, config: PluginConfig) -> None:
        """Connect to the catalog. Raises ConfigError for a bad table name, TargetError if unreachable."""
        self.config = config
        self._crash_point = fault_hook(config)
        table = str(config.get("table") or "")
        parts = tuple(part for part in table.split(".") if part)
        if len(parts) < 2:
            raise ConfigError(f"iceberg target: table '{table}' must be 'namespace.table'")
        self._identifier = parts
        self._name = ".".join(parts)
        job = config.get("job", {})
        self._job_dir = Path(job.get("dir", "."))
        self._run_id = self._file_tag = str(job.get("run_id", "run"))
        self._job_name = str(job.get("name", ""))
        self._mode = str(config.get("mode") or "append")
        self._merge = MergeSettings.from_config(config.get("merge")) if self._mode == "merge" else None
        self._evolution = str((config.get("schema_evolution") or {}).get("mode", "evolve"))
        self._options: dict[str, Any] = dict(config.get("options") or {})
        self._settings = ParquetSettings.from_options(self._options)  # checked now; table properties: _start_files
        self._catalog = open_catalog(dict(config.get("catalog") or {}), self._job_dir)
        self._rolling: RollingParquetWriter | PartitionedFiles | None = None
        self._finalized = False
        self._merge_keys: MergeKeys | None = None
        self._deduplicated: list[str] = []
        self._rewritten: list[str] = []
        self._rewrites_opened = 0
        self._io: Any = None
        self._state: dict[str, Any] | None = None
        self._state_snapshot: int | None = None
        self._created_namespace = False
        self._partition_by = [str(entry) for entry in config.get("partition_by") or []]
        self._sort_by = [str(column) for column in config.get("sort_by") or []]
        parse_partition_by(self._partition_by)  # syntax errors now, columns at prepare
        self._placement: dict[str, tuple[Record, int]] = {}  # file path -> (partition, spec id)
        self._files_opened = 0
        self._keep_files = False
        self._state_loaded = False
        self._loaded: tuple[Table | None] | None = None  # the table as load_state found it, until prepare uses it
        self._commit_id = ""
        self._outcome_wait_s = float((config.get("options") or {}).get("commit_outcome_wait_s", 30))
        self._warm_up = CommitWarmUp()  # the commit's PyIceberg models, built once the first row group encodes

    # -- state ------------------------------------------------------------------------------------------

    def load_state(self) -> dict[str, Any] | None:
        """The state in the newest snapshot this job committed (after any reset), or None."""
        table = self._load_table()
        found = latest_job_state(table, self._job_name) if table is not None else None
        self._state_snapshot = found[0] if found else None
        self._state_loaded = True
        self._loaded = (table,)  # prepare starts from this load (issue 15: one load per run, not two)
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
        writers = {writer_of(snapshot) for snapshot in table.snapshots() if not is_maintenance(snapshot)}
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
        """Return the Iceberg type each column becomes.

        Raises TypeMappingError for a column that cannot be mapped, and ConfigError for a
        partition transform (of ``partition_by`` or of the existing table) the writer cannot
        compute, naming the field and the transform.
        """
        types = [(field.name, str(iceberg_type_of(field))) for field in schema]
        try:
            table = self._load_table()
        except TargetError as exc:  # discover needs no reachable catalog; the run checks the table again
            log.debug("partition check skipped: %s", exc)
            table = None
        if table is not None:
            check_writable(table.spec(), table.schema(), f"table {self._name}")
        elif self._partition_by or self._sort_by:
            converted = assign_fresh_schema_ids(Catalog._convert_schema_if_needed(schema))
            build_spec(self._partition_by, converted)
            build_sort_order(self._sort_by, converted)
        return types

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
        self._begin(self._table_as_loaded())

    def _begin(self, table: Table | None) -> None:
        """Open the transaction this run commits: a staged create, or an update of ``table``."""
        if table is None:
            self._stage_create(self._data_schema)
            self._table = None
            self._base_snapshot = None
        else:
            if self._state_loaded:
                # Another run of this job may have committed (even created the table) since load_state.
                self._check_no_other_run(table)
            check_writable(table.spec(), table.schema(), f"table {self._name}")
            table = without_library_retries(table)
            self._transaction = table.transaction()
            evolve(self._name, table.schema(), self._data_schema, self._evolution, self._transaction)
            self._table = table
            self._base_snapshot = table.metadata.current_snapshot_id
        metadata = self._transaction.table_metadata
        schema_changed = self._rolling is not None and metadata.schema() != self._iceberg_schema
        spec_changed = self._rolling is not None and metadata.spec() != self._spec
        if schema_changed or spec_changed:
            what = "schema" if schema_changed else "partition spec"
            raise TargetError(
                f"iceberg table {self._name}: its {what} changed while this run was writing; retry the run",
                transient=True,
            )
        self._iceberg_schema: Schema = metadata.schema()
        self._table_properties = metadata.properties
        self._spec_id = metadata.default_spec_id
        self._spec: PartitionSpec = metadata.spec()
        if self._rolling is None:
            self._start_files(metadata.location, metadata.properties)

    def _start_files(self, location: str, properties: Mapping[str, str]) -> None:
        """Open this run's data file writers for the table at ``location`` (on a worker: from the plan)."""
        self._settings = parquet_settings(self._options, properties, self._iceberg_schema)
        self._file_schema = small_types(schema_to_pyarrow(self._iceberg_schema, include_field_ids=True))
        self._io = load_file_io({**self._catalog.properties, **properties}, location)
        self._locations = load_location_provider(location, dict(properties))
        # Merge resolves duplicates by row order across this run's files: one lane keeps that order.
        lanes = 1 if self._merge is not None else None
        if self._spec.fields:
            self._rolling = PartitionedFiles(
                self._file_schema,
                self._spec,
                self._iceberg_schema,
                self._open_partition_file,
                self._settings,
                self._sort_by,
            )
        else:
            self._rolling = RollingParquetWriter(self._file_schema, self._open_file, self._settings, lanes=lanes)

    def _open_partition_file(self, index: int, key: PartitionKey) -> tuple[str, Any]:
        self._files_opened += 1
        path = self._locations.new_data_location(f"00000-{self._files_opened}-{self._file_tag}.parquet", key)
        self._placement[path] = (key.partition, self._spec_id)
        return path, self._io.new_output(path).create(overwrite=False)

    def _open_file(self, index: int) -> tuple[str, Any]:
        path = self._locations.new_data_location(f"00000-{index}-{self._file_tag}.parquet")
        return path, self._io.new_output(path).create(overwrite=False)

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Write ``batch`` into a data file of this run (not yet referenced by the table).

        Raises TargetError after :meth:`finalize`: the run is committed, a later batch would be lost.
        """
        assert self._rolling is not None, "prepare() was not called"
        if self._finalized:
            raise TargetError(f"iceberg target {self._name}: write_batch() after finalize(); the run is committed")
        if self._merge_keys is not None:
            batch = self._merge_keys.add(batch)
        # last_wins resolves duplicates by arrival order, which sorting would change.
        keeps_order = self._merge is not None and self._merge.last_wins
        if self._sort_by and not self._spec.fields and not keeps_order:
            batch = batch.sort_by([(column, "ascending") for column in self._sort_by])
        self._warm_up.wrote(batch.nbytes, self._settings.row_group_bytes)
        self._rolling.write(to_file_schema(batch, self._file_schema))

    def finalize(self) -> dict[str, Any]:
        """Commit every data file of the run in one snapshot; returns table, snapshot id, files, rows, bytes.

        A commit that conflicts with another writer is retried on the refreshed
        table, unless that writer was another run of the same job (then this run
        fails terminally and commits nothing). Raises TargetError if the commit fails.
        """
        assert self._rolling is not None, "prepare() was not called"
        self._finalized = True
        written = self._rolling.close()
        self._warm_up.join()
        self._crash_point("files_written")
        return self._commit_files(written)

    def _commit_files(self, written: list[WrittenFile]) -> dict[str, Any]:
        """Commit ``written`` (local or staged data files) and the state in one snapshot: the one commit path."""
        drop, written = self._resolve_merge(written)
        if not written and not self._needs_commit(drop):
            return self._result(None, written, 0)
        for attempt in range(1, _COMMIT_ATTEMPTS + 1):
            try:
                removed = self._stage_commit(written, drop)
                self._crash_point("before_commit")
                table = self._transaction.commit_transaction()
                break
            except (CommitFailedException, TableAlreadyExistsError, ValidationException) as exc:
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
                if not outcome_unknown(exc):
                    raise TargetError(f"iceberg table {self._name}: commit failed: {redact(str(exc))}") from exc
                table, snapshot_id = self._resolve_unknown(exc, written)
                self._created_namespace = False
                return self._result(snapshot_id, written, removed)
        self._crash_point("after_commit")
        self._created_namespace = False
        snapshot = table.current_snapshot()
        return self._result(snapshot.snapshot_id if snapshot is not None else None, written, removed)

    def _resolve_unknown(self, exc: BaseException, written: list[WrittenFile]) -> tuple[Table, int]:
        """The commit's answer was lost: succeed if its snapshot shows up, else fail keeping every file."""
        log.warning(
            "the outcome of the commit to %s is unknown (%s); looking for its snapshot (%s=%s) for up to %ss",
            self._name,
            redact(str(exc)),
            COMMIT_ID,
            self._commit_id,
            self._outcome_wait_s,
        )
        found = find_commit(self._load_table, self._commit_id, self._outcome_wait_s)
        if found is not None:
            log.info("the commit to %s landed as snapshot %s", self._name, found[1].snapshot_id)
            return found[0], found[1].snapshot_id
        # The commit may still land later: never delete a file the table might reference.
        self._keep_files = True
        raise TargetError(
            f"iceberg table {self._name}: the outcome of this run's commit is unknown ({redact(str(exc))}) and its "
            f"snapshot ({COMMIT_ID}={self._commit_id}) did not appear within {self._outcome_wait_s:g}s; the run is "
            f"reported failed and its {len(written)} data file(s) are left in place in case the commit lands "
            "later. Check the table's history, then run the job again; `dativo maintain` removes the files "
            "once they are unreferenced and older than its safety age"
        ) from None

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
        self._commit_id = str(uuid.uuid4())
        properties = {
            "dativo.run-id": self._run_id,
            "dativo.job": self._job_name,
            "dativo.version": __version__,
            COMMIT_ID: self._commit_id,
        }
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
        beside: list[WrittenFile] = []
        scan = ArrowScan(self._transaction.table_metadata, self._io, self._iceberg_schema, AlwaysTrue())
        try:
            for task in tasks:
                rows = scan.to_table([task])
                kept = anti_join(rows, drop, keys)
                if kept.num_rows == rows.num_rows:
                    continue
                removed.append(task.file)
                if len(task.file.partition) > 0:
                    beside.extend(self._rewrite_beside(task.file, kept))
                    continue
                for batch in kept.to_batches():
                    rewrite.write(to_file_schema(batch, self._file_schema))
            return removed, [*beside, *rewrite.close()]
        finally:
            self._rewritten = [*rewrite.paths, *(file.path for file in beside)]

    def _rewrite_beside(self, old: DataFile, kept: pa.Table) -> list[WrittenFile]:
        """The surviving rows of a partitioned table's data file, in new files beside it (same partition and spec)."""
        folder = old.file_path.rsplit("/", 1)[0]

        def open_file(index: int) -> tuple[str, Any]:
            self._rewrites_opened += 1
            path = f"{folder}/00001-{self._rewrites_opened}-{self._run_id}.parquet"
            self._placement[path] = (old.partition, old.spec_id)
            self._rewritten.append(path)
            return path, self._io.new_output(path).create(overwrite=False)

        writer = RollingParquetWriter(self._file_schema, open_file, self._settings, lanes=1)
        try:
            for batch in kept.to_batches():
                writer.write(to_file_schema(batch, self._file_schema))
            return writer.close() if kept.num_rows else []
        except BaseException:
            writer.abandon()
            raise

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
        if self._spec.fields:
            raise ConfigError(
                f"iceberg table {self._name} is partitioned: target.merge.duplicates: last_wins is not supported "
                "there; make the key unique in the source (duplicates: fail)"
            )
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

    def _check_no_other_run(self, table: Table) -> None:
        """Raise TargetError if another run of this job committed since this run loaded its state."""
        found = latest_job_state(table, self._job_name)
        latest = found[0] if found else None
        if latest != self._state_snapshot:
            raise TargetError(
                f"another run of job '{self._job_name}' committed to iceberg table {self._name} while this run "
                "was in progress; this run committed nothing (run the job again to continue from that state)"
            )

    def _rebase(self) -> None:
        """After a conflict: reload the table, make sure no other run of this job committed, reopen the transaction."""
        table = self._load_table()
        if table is not None:
            self._check_no_other_run(table)
        if self._table is None and table is not None:
            raise TargetError(
                f"iceberg table {self._name} was created by another writer while this run was in progress; "
                "retry the run to append to it",
                transient=True,
            )
        self._begin(table)

    def abort(self) -> None:
        """Delete every data file this run wrote; nothing was committed, so the table is as before.

        After a commit whose outcome stayed unknown, nothing is deleted: the table may
        reference the files (``dativo maintain`` removes them once they are orphans).
        """
        if self._keep_files:
            if self._rolling is not None:
                self._rolling.abandon()
            self._rolling = None
            return
        self._drop_created_namespace()
        self._sweep_run_files(set())  # a staged run: every attempt's files, dead ones included
        if self._rolling is None:
            return
        self._rolling.abandon()
        self._discard([*self._rolling.paths, *self._deduplicated, *self._rewritten])
        self._rolling = None

    # -- helpers ----------------------------------------------------------------------------------------

    def _table_as_loaded(self) -> Table | None:
        """The table as :meth:`load_state` loaded it in this run (once), else freshly loaded.

        Reusing that load is safe: the transaction opened on it carries PyIceberg's requirements
        (the branch's snapshot, the schema it evolved), which the catalog checks against the
        table's current metadata when committing; a change since then fails the commit with
        ``CommitFailedException``, and :meth:`_commit_files` refreshes (:meth:`_rebase`, which
        also refuses when another run of this job committed) and retries.
        """
        loaded, self._loaded = self._loaded, None
        return loaded[0] if loaded is not None else self._load_table()

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
        converted = assign_fresh_schema_ids(Catalog._convert_schema_if_needed(schema))
        layout: dict[str, Any] = {}
        if self._partition_by:
            layout["partition_spec"] = build_spec(self._partition_by, converted)
        if self._sort_by:
            layout["sort_order"] = build_sort_order(self._sort_by, converted)
        try:
            self._transaction = self._catalog.create_table_transaction(self._identifier, schema=converted, **layout)
        except NoSuchNamespaceError:
            self._created_namespace = ensure_namespace(self._catalog, namespace)
            self._transaction = self._catalog.create_table_transaction(self._identifier, schema=converted, **layout)

    def _drop_created_namespace(self) -> None:
        if self._created_namespace:
            # Not empty: another job created a table in it meanwhile, so it stays.
            with contextlib.suppress(NamespaceNotEmptyError, NoSuchNamespaceError):
                self._catalog.drop_namespace(self._identifier[:-1])
            self._created_namespace = False

    def _data_file(self, file: WrittenFile) -> DataFile:
        if file.path in self._prebuilt:
            return self._prebuilt[file.path]
        partition, spec_id = self._placement.get(file.path, (Record(), self._spec_id))
        return data_file(file, self._iceberg_schema, self._table_properties, partition, spec_id)
