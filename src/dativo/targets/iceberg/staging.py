"""Staged (distributed) runs of the ``iceberg`` writer: :class:`dativo.StagingWriter` (SDK 1.5).

The driver prepares the run exactly as a local run does (the table's schema, with
any evolution the policy allows, or the creation of a missing table, staged in the
run's transaction) and hands workers a plan: the table's schema and partition spec
(with their field ids, as JSON), the table location and its ``write.*`` properties.
A worker writes its partition's data files into the table's data location through
the writer's own write path, named ``00000-N-<key>.parquet``, and describes each
file with the Iceberg metrics the driver needs to build its ``DataFile`` (partition
values, column sizes, counts and bounds from the Parquet footer it just wrote), so
the driver re-reads nothing. For ``merge`` a worker also writes the keys it saw (a
small ``keys-<key>.parquet``); the driver resolves the merge from them.

The driver then commits exactly the described files through the writer's one
commit path (one snapshot with the job's state; conflicts retried; an unknown
outcome found by its commit id). Afterwards, and on ``abort``, files in the data
location whose names carry this run's id and that the commit does not reference
are deleted: attempts that were not committed, dead ones included. That sweep lists
the table's data location once per run (recursively).
"""

from __future__ import annotations

# Before any PyIceberg import: defers its model builds and unused modules (see _pyiceberg).
from dativo.targets.iceberg import _pyiceberg  # noqa: F401

# isort: split

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs
from pyiceberg.io.pyarrow import (
    PyArrowFileIO,
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.typedef import Record

from dativo.errors import DativoError, TargetError
from dativo.sdk import redact
from dativo.targets._merge import MergeKeys
from dativo.targets._parquet import WrittenFile, staged_stem

if TYPE_CHECKING:
    from dativo.targets.iceberg.writer import IcebergWriter

__all__ = ["IcebergStaging"]

log = logging.getLogger("dativo.targets.iceberg")


class IcebergStaging:
    """The StagingWriter methods of :class:`dativo.targets.iceberg.writer.IcebergWriter` (a mixin)."""

    #: ``DataFile`` entries built from staged descriptions, by path (empty on a local run).
    _prebuilt: Mapping[str, DataFile] = {}
    #: True on the driver once :meth:`staging_plan` was handed out: commit and abort then sweep the run's files.
    _staged_run: bool = False
    #: What names this writer's data files: the run id (driver) or the attempt's key (worker).
    _file_tag: str = ""

    def staging_plan(self) -> dict[str, Any]:
        """On the driver, after ``prepare``: schema and spec (JSON, with field ids), location, ``write.*`` properties.

        Holds no credential: workers open the catalog's file IO from their own config.
        """
        return _staging_plan(cast("IcebergWriter", self))

    def stage_partition(self, plan: Mapping[str, Any], key: str, batches: Iterator[pa.RecordBatch]) -> dict[str, Any]:
        """On a worker: write ``batches`` as data files of the table (not yet referenced by it); describe them.

        Returns ``{key, rows, bytes, files, data_files, merge_keys}``. Raises TargetError for
        a plan of another run or table, or when writing fails (transient for an I/O error);
        files already written stay for the driver's ``commit_staged`` or ``abort`` to remove.
        """
        return _stage_partition(cast("IcebergWriter", self), plan, key, batches)

    def commit_staged(self, staged: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """On the driver: add exactly the data files of ``staged`` in one snapshot with the job's state.

        Merge is resolved here from the staged keys (in the order of ``staged``). Then
        every other file of this run in the data location (attempts not committed) is
        deleted. Raises TargetError like :meth:`finalize`; the engine then calls ``abort``.
        """
        return _commit_staged(cast("IcebergWriter", self), staged)

    def _sweep_run_files(self, keep: set[str]) -> list[str]:
        """Delete the files of this run in the data location that ``keep`` does not name (staged runs only).

        Never raises: a file that cannot be listed or deleted is left to ``dativo maintain``.
        """
        return _sweep_run_files(cast("IcebergWriter", self), keep)


def _staging_plan(writer: IcebergWriter) -> dict[str, Any]:
    assert writer._rolling is not None, "prepare() was not called"
    writer._staged_run = True
    metadata = writer._transaction.table_metadata
    return {
        "format": "iceberg",
        "run_id": writer._run_id,
        "table": writer._name,
        "schema": writer._iceberg_schema.model_dump_json(),
        "spec": writer._spec.model_dump_json(),
        "spec_id": writer._spec_id,
        "location": metadata.location,
        "properties": {k: v for k, v in metadata.properties.items() if k.startswith("write.")},
    }


def _stage_partition(
    writer: IcebergWriter, plan: Mapping[str, Any], key: str, batches: Iterator[pa.RecordBatch]
) -> dict[str, Any]:
    where = f"iceberg table {writer._name}"
    if plan.get("format") != "iceberg" or plan.get("run_id") != writer._run_id or plan.get("table") != writer._name:
        raise TargetError(
            f"{where}: the staging plan is for {plan.get('format')} table {plan.get('table')} run "
            f"{plan.get('run_id')}, not run {writer._run_id}; initialize workers with the driver's config"
        )
    writer._file_tag = staged_stem(writer._run_id, key, where)
    writer._iceberg_schema = Schema.model_validate_json(plan["schema"])
    writer._spec = PartitionSpec.model_validate_json(plan["spec"])
    writer._spec_id = int(plan["spec_id"])
    writer._table_properties = dict(plan["properties"])
    writer._merge_keys = MergeKeys(writer._merge) if writer._merge is not None else None
    try:
        writer._start_files(str(plan["location"]), writer._table_properties)
        for batch in batches:
            writer.write_batch(batch)
        assert writer._rolling is not None
        written = writer._rolling.close()
        keys = _write_keys(writer) if writer._merge_keys is not None else None
    except BaseException as exc:
        if writer._rolling is not None:
            writer._rolling.abandon()
        if isinstance(exc, DativoError) or not isinstance(exc, OSError | pa.ArrowException):
            raise
        raise TargetError(
            f"{where}: staging partition {key} failed: {redact(str(exc))}", transient=isinstance(exc, OSError)
        ) from None
    finally:
        writer._finalized = True  # this instance stages once
    return {
        "key": key,
        "rows": sum(file.rows for file in written),
        "bytes": sum(file.size for file in written),
        "files": [file.path for file in written],
        "data_files": [_describe(writer, file) for file in written],
        "merge_keys": keys,
    }


def _describe(writer: IcebergWriter, file: WrittenFile) -> dict[str, Any]:
    partition, spec_id = writer._placement.get(file.path, (Record(), writer._spec_id))
    statistics = data_file_statistics_from_parquet_metadata(
        parquet_metadata=file.metadata,
        stats_columns=compute_statistics_plan(writer._iceberg_schema, writer._table_properties),
        parquet_column_mapping=parquet_path_to_id_mapping(writer._iceberg_schema),
    )
    return {
        "path": file.path,
        "size": file.size,
        "rows": file.rows,
        "partition": [partition[i] for i in range(len(partition))],
        "spec_id": spec_id,
        "statistics": statistics.to_serialized_dict(),
    }


def _write_keys(writer: IcebergWriter) -> str:
    """The merge keys (and delete markers) of this attempt, in a small Parquet file beside its data files."""
    assert writer._merge_keys is not None
    path = writer._locations.new_data_location(f"keys-{writer._file_tag}.parquet")
    with writer._io.new_output(path).create(overwrite=False) as stream:
        pq.write_table(writer._merge_keys.recorded(), stream)
    return path


def _commit_staged(writer: IcebergWriter, staged: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    assert writer._rolling is not None, "prepare() was not called"
    if writer._finalized:
        raise TargetError(f"iceberg target {writer._name}: commit_staged() after the run was committed")
    writer._finalized = True
    writer._staged_run = True
    keys = [str(description["key"]) for description in staged]
    if len(set(keys)) != len(keys):
        raise TargetError(f"iceberg table {writer._name}: commit_staged() got the same attempt twice")
    prebuilt: dict[str, DataFile] = {}
    written: list[WrittenFile] = []
    for description in staged:
        for entry in description["data_files"]:
            path = str(entry["path"])
            prebuilt[path] = DataFile.from_args(
                content=DataFileContent.DATA,
                file_path=path,
                file_format=FileFormat.PARQUET,
                partition=Record(*entry["partition"]),
                file_size_in_bytes=int(entry["size"]),
                sort_order_id=None,
                spec_id=int(entry["spec_id"]),
                equality_ids=None,
                key_metadata=None,
                **entry["statistics"],
            )
            # No footer travels: the DataFile above carries its metrics.
            written.append(WrittenFile(path, int(entry["size"]), int(entry["rows"]), cast(Any, None)))
        if writer._merge_keys is not None:
            with writer._io.new_input(str(description["merge_keys"])).open() as stream:
                writer._merge_keys.adopt(pq.read_table(stream))
    _check_staged(writer, [file.path for file in written])
    writer._prebuilt = prebuilt
    writer._crash_point("files_written")
    result = writer._commit_files(written)
    writer._sweep_run_files({*result["files"], *writer._rewritten})
    return result


def _sweep_run_files(writer: IcebergWriter, keep: set[str]) -> list[str]:
    if not writer._staged_run or writer._keep_files or not isinstance(writer._io, PyArrowFileIO):
        return []
    io = writer._io
    scheme, netloc, root = io.parse_location(writer._locations.data_path, io.properties)
    kept = {io.parse_location(location, io.properties)[2] for location in keep}
    deleted: list[str] = []
    try:
        fs = io.fs_by_scheme(scheme, netloc)
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except (OSError, pa.ArrowException) as exc:
        log.warning("could not list %s to remove uncommitted staged files: %s", root, redact(str(exc)))
        return []
    for info in infos:
        if info.type == pafs.FileType.File and writer._run_id in info.base_name and info.path not in kept:
            with contextlib.suppress(OSError, pa.ArrowException):
                fs.delete_file(info.path)
                deleted.append(info.path)
    return deleted


def _check_staged(writer: IcebergWriter, paths: list[str]) -> None:
    """Raise TargetError unless every path is a file of this run in the table's data location, present in storage."""
    where = f"iceberg table {writer._name}"
    root = writer._locations.data_path.rstrip("/") + "/"
    for path in paths:
        if not path.startswith(root) or writer._run_id not in path.rsplit("/", 1)[-1]:
            raise TargetError(
                f"{where}: {path} is not a data file staged by run {writer._run_id}; nothing was committed"
            )
    io = writer._io
    if isinstance(io, PyArrowFileIO) and paths:
        scheme, netloc, _ = io.parse_location(paths[0], io.properties)
        located = [io.parse_location(path, io.properties)[2] for path in paths]
        infos = io.fs_by_scheme(scheme, netloc).get_file_info(located)
        present = [info.type == pafs.FileType.File for info in infos]
    else:
        present = [io.new_input(path).exists() for path in paths]
    missing = [path for path, found in zip(paths, present, strict=True) if not found]
    if missing:
        raise TargetError(
            f"{where}: {len(missing)} staged data file(s) are missing ({missing[0]}); nothing was committed "
            "(run the job again)"
        )
