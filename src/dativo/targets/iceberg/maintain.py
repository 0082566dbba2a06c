"""Table maintenance for Iceberg targets: expire snapshots, remove orphan files, compact small files.

Each step is one optimistic catalog commit (or none) and is safe while dativo runs
write the same table:

* **expire** removes old snapshots from the metadata (keeping the newest
  ``retain_last``, every snapshot newer than ``older_than``, every branch/tag head,
  and the whole history back to the oldest snapshot holding a job's latest state,
  so ``dativo state`` and incremental runs still find it). Files only those
  snapshots referenced become orphans, removed by the next step.
* **orphans** deletes files under the table's location that no snapshot or metadata
  file references and that are older than ``orphan_age`` — the files of killed
  runs, of commits that failed or stayed unknown, and of expired snapshots. A run
  in progress writes only young files, and the references are read again just
  before deleting.
* **compact** rewrites, per partition, data files smaller than ``small_file_bytes``
  into files of about ``target_file_bytes``, and swaps them in one snapshot. A
  conflict with a concurrent commit is retried on the refreshed table if every
  file it replaces is still live; otherwise that group is skipped.

``dry_run`` computes and reports the same actions and changes nothing.
"""

from __future__ import annotations

# Before any PyIceberg import: defers its model builds and unused modules (see _pyiceberg).
from dativo.targets.iceberg import _pyiceberg  # noqa: F401

# isort: split

import contextlib
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pyarrow.fs as pafs
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import ArrowScan, schema_to_pyarrow
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table

from dativo import __version__
from dativo.errors import TargetError
from dativo.targets._parquet import ParquetSettings, RollingParquetWriter, WrittenFile
from dativo.targets.iceberg.files import data_file
from dativo.targets.iceberg.schema import small_types, to_file_schema
from dativo.targets.iceberg.state import MAINTENANCE, job_snapshots, latest_job_state

__all__ = ["MaintainOptions", "MaintainReport", "maintain"]

log = logging.getLogger("dativo.targets.iceberg")

_ATTEMPTS = 5


@dataclass(frozen=True)
class MaintainOptions:
    """What ``dativo maintain`` does; every step can be switched off."""

    expire: bool = True
    retain_last: int = 10
    older_than: timedelta = timedelta(days=7)
    orphans: bool = True
    orphan_age: timedelta = timedelta(days=3)
    compact: bool = True
    target_file_bytes: int = 512 * 1024 * 1024
    small_file_bytes: int | None = None  # default: half the target size
    dry_run: bool = False


@dataclass
class MaintainReport:
    """What was done (or, with ``dry_run``, would be done)."""

    table: str
    dry_run: bool
    expired: list[int] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    compacted: list[str] = field(default_factory=list)
    compacted_into: int = 0
    skipped: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable lines, one per action."""
        verb = "would " if self.dry_run else ""
        lines = [f"{verb}expire snapshot {snapshot_id}" for snapshot_id in self.expired]
        lines += [f"{verb}delete orphan file {path}" for path in self.orphans]
        lines += [f"{verb}compact {path}" for path in self.compacted]
        if self.compacted:
            files = "files" if self.dry_run else f"{self.compacted_into} files"
            lines.append(f"{verb}rewrite {len(self.compacted)} small files into {files} in one snapshot")
        lines += [f"skipped: {reason}" for reason in self.skipped]
        summary = (
            f"{self.table}: {len(self.expired)} snapshots expired, {len(self.orphans)} orphan files removed, "
            f"{len(self.compacted)} small files compacted"
        )
        return [*lines, ("dry run, nothing changed — " if self.dry_run else "") + summary]

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "dry_run": self.dry_run,
            "expired_snapshots": self.expired,
            "orphan_files": self.orphans,
            "compacted_files": self.compacted,
            "compacted_into": self.compacted_into,
            "skipped": self.skipped,
        }


def maintain(load: Any, name: str, options: MaintainOptions) -> MaintainReport:
    """Run the enabled steps on the table ``load()`` returns (compact, expire, then orphans).

    Raises TargetError when the table does not exist or a commit keeps conflicting.
    """
    table = _load(load, name)
    report = MaintainReport(table=name, dry_run=options.dry_run)
    if options.compact:
        _compact(load, name, table, options, report)
        table = _load(load, name)
    if options.expire:
        _expire(load, name, table, options, report)
        table = _load(load, name)
    if options.orphans:
        _remove_orphans(load, name, table, options, report)
    return report


def _load(load: Any, name: str) -> Table:
    table: Table | None = load()
    if table is None:
        raise TargetError(f"iceberg table {name} does not exist; there is nothing to maintain")
    return table


# -- expire -----------------------------------------------------------------------------------------------


def expirable(table: Table, retain_last: int, older_than: timedelta) -> list[int]:
    """Snapshot ids that may be expired now (see the module docstring for what is always kept)."""
    chain = [snapshot for snapshot, _writer in job_snapshots(table)]
    keep = {snapshot.snapshot_id for snapshot in chain[: max(retain_last, 1)]}
    keep |= {ref.snapshot_id for ref in table.metadata.refs.values()}
    positions = {snapshot.snapshot_id: index for index, snapshot in enumerate(chain)}
    jobs = {writer for _snapshot, writer in job_snapshots(table) if writer}
    deepest = 0
    for job in jobs:
        found = latest_job_state(table, job)
        if found is not None:
            deepest = max(deepest, positions.get(found[0], 0))
    keep |= {snapshot.snapshot_id for snapshot in chain[: deepest + 1]}
    cutoff_ms = int((time.time() - older_than.total_seconds()) * 1000)
    return sorted(
        snapshot.snapshot_id
        for snapshot in table.snapshots()
        if snapshot.snapshot_id not in keep and snapshot.timestamp_ms < cutoff_ms
    )


def _expire(load: Any, name: str, table: Table, options: MaintainOptions, report: MaintainReport) -> None:
    for attempt in range(1, _ATTEMPTS + 1):
        ids = expirable(table, options.retain_last, options.older_than)
        report.expired = ids
        if not ids or options.dry_run:
            return
        try:
            table.maintenance.expire_snapshots().by_ids(ids).commit()
            return
        except CommitFailedException as exc:
            if attempt == _ATTEMPTS:
                raise TargetError(f"iceberg table {name}: expiring snapshots kept conflicting ({exc})") from exc
            table = _load(load, name)


# -- orphans ----------------------------------------------------------------------------------------------


def referenced_files(table: Table) -> set[str]:
    """Every file the table's metadata references: metadata files, manifest lists, manifests, data/delete files."""
    io = table.io
    files = {table.metadata_location, *(entry.metadata_file for entry in table.metadata.metadata_log)}
    files |= {statistics.statistics_path for statistics in table.metadata.statistics}
    files |= {statistics.statistics_path for statistics in table.metadata.partition_statistics}
    seen_manifests: set[str] = set()
    for snapshot in table.snapshots():
        files.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(io):
            if manifest.manifest_path in seen_manifests:
                continue
            seen_manifests.add(manifest.manifest_path)
            files.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(io, discard_deleted=False):
                files.add(entry.data_file.file_path)
    return {_key(path) for path in files}


def _key(location: str) -> str:
    """A location without its scheme, so file:///a, file:/a and /a compare equal."""
    rest = location.split("://", 1)[1] if "://" in location else location.removeprefix("file:")
    return "/" + rest.lstrip("/")


def _filesystem(table: Table) -> tuple[pafs.FileSystem, str]:
    io = table.io
    scheme, netloc, path = io.parse_location(table.location(), io.properties)  # type: ignore[attr-defined]
    return io.fs_by_scheme(scheme, netloc), path  # type: ignore[attr-defined]


def orphan_files(table: Table, orphan_age: timedelta) -> list[str]:
    """Locations under the table's folder that nothing references and that are older than ``orphan_age``."""
    fs, root = _filesystem(table)
    scheme = table.location().split("://", 1)[0] if "://" in table.location() else "file"
    referenced = referenced_files(table)
    cutoff = time.time() - orphan_age.total_seconds()
    found = []
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise TargetError(f"iceberg table location {table.location()} cannot be listed: {exc}") from exc
    for info in infos:
        if info.type != pafs.FileType.File or info.base_name == "version-hint.text":
            continue
        mtime = info.mtime.timestamp() if info.mtime is not None else time.time()
        if mtime >= cutoff:
            continue
        location = f"{scheme}://{info.path}" if scheme != "file" else f"file://{info.path}"
        if _key(location) not in referenced:
            found.append(location)
    return sorted(found)


def _remove_orphans(load: Any, name: str, table: Table, options: MaintainOptions, report: MaintainReport) -> None:
    candidates = orphan_files(table, options.orphan_age)
    if candidates and not options.dry_run:
        # A commit may have landed since: read the references again right before deleting.
        still = referenced_files(_load(load, name))
        candidates = [path for path in candidates if _key(path) not in still]
        fs, _root = _filesystem(table)
        for location in candidates:
            _scheme, _netloc, path = table.io.parse_location(location, table.io.properties)  # type: ignore[attr-defined]
            try:
                fs.delete_file(path)
            except FileNotFoundError:
                continue
    report.orphans = candidates


# -- compaction -------------------------------------------------------------------------------------------


def small_file_groups(table: Table, small_file_bytes: int) -> list[list[DataFile]]:
    """Live data files smaller than ``small_file_bytes``, grouped by (spec, partition); groups of two or more."""
    if table.current_snapshot() is None:
        return []
    groups: dict[tuple[Any, ...], list[DataFile]] = defaultdict(list)
    for task in table.scan().plan_files():
        if task.delete_files or task.file.file_size_in_bytes >= small_file_bytes:
            continue
        groups[(task.file.spec_id, repr(task.file.partition))].append(task.file)
    return [files for files in groups.values() if len(files) >= 2]


def _compact(load: Any, name: str, table: Table, options: MaintainOptions, report: MaintainReport) -> None:
    small = options.small_file_bytes or options.target_file_bytes // 2
    groups = small_file_groups(table, small)
    report.compacted = sorted(file.file_path for group in groups for file in group)
    if not groups or options.dry_run:
        return
    schema = table.schema()
    file_schema = small_types(schema_to_pyarrow(schema, include_field_ids=True))
    settings = ParquetSettings.from_options({"target_file_size_mb": options.target_file_bytes / (1024 * 1024)})
    run = uuid.uuid4().hex
    written: list[tuple[DataFile, WrittenFile]] = []
    opened: list[str] = []
    try:
        scan = ArrowScan(table.metadata, table.io, schema, AlwaysTrue())
        tasks = {task.file.file_path: task for task in table.scan().plan_files()}
        for index, group in enumerate(groups):
            folder = group[0].file_path.rsplit("/", 1)[0]

            def open_file(n: int, folder: str = folder, index: int = index) -> tuple[str, Any]:
                path = f"{folder}/00002-{index}-{n}-{run}.parquet"
                opened.append(path)
                return path, table.io.new_output(path).create(overwrite=False)

            writer = RollingParquetWriter(file_schema, open_file, settings, lanes=1)
            for old in group:
                for batch in scan.to_table([tasks[old.file_path]]).to_batches():
                    writer.write(to_file_schema(batch, file_schema))
            written += [(group[0], file) for file in writer.close()]
        _commit_compaction(load, name, table, groups, written)
        report.compacted_into = len(written)
    except BaseException:
        for path in opened:
            with contextlib.suppress(FileNotFoundError):
                table.io.delete(path)
        raise


def _commit_compaction(
    load: Any, name: str, table: Table, groups: list[list[DataFile]], written: list[tuple[DataFile, WrittenFile]]
) -> None:
    removed = {file.file_path for group in groups for file in group}
    properties = {"dativo.maintenance": MAINTENANCE, "dativo.version": __version__}
    for attempt in range(1, _ATTEMPTS + 1):
        live = {task.file.file_path for task in table.scan().plan_files()} if table.current_snapshot() else set()
        if not removed <= live:
            raise TargetError(
                f"iceberg table {name}: a concurrent commit replaced files this compaction was rewriting; "
                "nothing was compacted, run maintain again"
            )
        try:
            with table.transaction() as tx, tx.update_snapshot(snapshot_properties=properties).overwrite() as swap:
                for group in groups:
                    for old in group:
                        swap.delete_data_file(old)
                for like, file in written:
                    swap.append_data_file(
                        data_file(file, table.schema(), table.metadata.properties, like.partition, like.spec_id)
                    )
            return
        except (CommitFailedException, ValidationException) as exc:
            # ValidationException: PyIceberg's own retry saw files added meanwhile; ours re-checks what we replace.
            if attempt == _ATTEMPTS:
                raise TargetError(f"iceberg table {name}: compaction kept conflicting ({exc})", transient=True) from exc
            log.info("compaction of %s conflicted (%s); retrying on the refreshed table", name, exc)
            table = _load(load, name)
