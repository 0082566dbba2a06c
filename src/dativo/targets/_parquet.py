"""Streaming Parquet files: large row groups, files rolled at a target size (shared by the targets)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from dativo.errors import ConfigError, TargetError
from dativo.sdk import FaultHook, fault_hook, redact
from dativo.targets import _lease

__all__ = ["EncodingChoice", "ParquetSettings", "RollingParquetWriter", "StagedFolder", "WrittenFile", "staged_stem"]

_MIB = 1024 * 1024
#: The lock file a live run holds in its staging folder (local folders); see StagedFolder.hold.
_LOCK = ".alive"
_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


@dataclass(frozen=True)
class ParquetSettings:
    """How Parquet files are written; built from a target's ``options:``."""

    target_file_bytes: int = 512 * _MIB
    row_group_bytes: int = 16 * _MIB
    compression: str = "zstd"
    compression_level: int | None = None
    dictionary: str = "auto"
    #: Columns whose statistics are written (``True``: every column); readers of the files may need them.
    statistics: bool | tuple[str, ...] = True
    #: Parquet data page size in bytes (``None``: Arrow's default, 1 MiB).
    data_page_bytes: int | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ParquetSettings:
        """Read ``target_file_size_mb``, ``row_group_size_mb``, ``compression``, ``compression_level``, ``dictionary``.

        Raises ConfigError for a non-positive size or an unknown codec.
        """
        try:
            settings = cls(
                target_file_bytes=int(float(options.get("target_file_size_mb", 512)) * _MIB),
                row_group_bytes=int(float(options.get("row_group_size_mb", 16)) * _MIB),
                compression=str(options.get("compression", "zstd")).lower(),
                compression_level=(
                    int(options["compression_level"]) if options.get("compression_level") is not None else None
                ),
                dictionary=str(options.get("dictionary", "auto")).lower(),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"target options: {exc}") from None
        if settings.target_file_bytes <= 0 or settings.row_group_bytes <= 0:
            raise ConfigError("target options: target_file_size_mb and row_group_size_mb must be positive")
        if settings.compression not in {"zstd", "snappy", "gzip", "lz4", "brotli", "none"}:
            raise ConfigError(
                f"target options: unknown compression '{settings.compression}' "
                "(use zstd, snappy, gzip, lz4, brotli or none)"
            )
        if settings.dictionary not in {"auto", "strings", "all", "none"}:
            raise ConfigError(
                f"target options: unknown dictionary setting '{settings.dictionary}' (use auto, strings, all or none)"
            )
        return settings

    def use_dictionary(self, schema: pa.Schema, sample: pa.Table | None = None) -> bool | list[str]:
        """Which columns get dictionary encoding (``sample``: the run's first row group, for ``auto``).

        Dictionary pages pay off for repetitive text only: on numbers, timestamps and
        unique keys zstd alone is both faster and smaller (measured on the benchmark
        table: 0.48 s and 56.6 MB without dictionaries, 0.75 s and 63.2 MB with them on
        every column). ``auto`` (the default) dictionary-encodes a text or binary column
        when at most half of the sample's non-null values are distinct; ``strings``
        every text column; ``all`` / ``none`` every column / none.
        """
        if self.dictionary == "all":
            return True
        if self.dictionary == "none":
            return False
        text = [field.name for field in schema if _is_text(field.type)]
        if self.dictionary == "strings" or sample is None:
            return text
        return [name for name in text if _repetitive(sample.column(name))]


#: ``dictionary: auto``: a column is dictionary-encoded when at most this share of its sampled values is distinct.
DICTIONARY_MAX_DISTINCT = 0.5
_SAMPLE_ROWS = 65_536


def _is_text(kind: pa.DataType) -> bool:
    checks = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)
    return any(bool(check(kind)) for check in checks)


def _repetitive(column: pa.ChunkedArray) -> bool:
    """True when at most :data:`DICTIONARY_MAX_DISTINCT` of the first rows' non-null values are distinct."""
    import pyarrow.compute as pc  # not at import time: planning and start-up never need it

    sample = column.slice(0, _SAMPLE_ROWS)
    present = len(sample) - sample.null_count
    if present == 0:
        return False
    distinct = pc.count_distinct(sample, mode="only_valid").as_py()
    return bool(distinct <= DICTIONARY_MAX_DISTINCT * present)


@dataclass
class EncodingChoice:
    """What ``dictionary: auto`` decided from a run's first row group, shared by every writer of the run.

    A partitioned table has a writer per partition; deciding again in each measured
    0.65 s of CPU per 1M rows of the benchmark table over 31-1,000 partitions (21 ms once).
    """

    dictionary: bool | list[str] | None = None


@dataclass(frozen=True)
class WrittenFile:
    """A finished Parquet file."""

    path: str
    size: int
    rows: int
    metadata: pq.FileMetaData


class RollingParquetWriter:
    """Write batches into Parquet files of about ``target_file_bytes`` each.

    Batches are buffered until ``row_group_bytes`` of Arrow data have gathered
    and then written as one row group, so row groups stay large while memory
    stays bounded. ``open_file(index)`` returns ``(path, writable stream)`` for
    the next file; ``file_options(index, path)``, when given, returns extra
    ``pyarrow.parquet.ParquetWriter`` arguments for that file (for example fresh
    ``encryption_properties``). Every path opened is in :attr:`paths`, finished
    or not, so a failed run can delete them all. Writers given the same ``choice``
    (the partitions of one table) share the first row group's dictionary decision.
    """

    def __init__(
        self,
        schema: pa.Schema,
        open_file: Callable[[int], tuple[str, Any]],
        settings: ParquetSettings,
        file_options: Callable[[int, str], Mapping[str, Any]] | None = None,
        lanes: int | None = None,
        choice: EncodingChoice | None = None,
    ) -> None:
        self._schema = schema
        self._open_file = open_file
        self._settings = settings
        self._file_options = file_options
        self._buffer: list[pa.RecordBatch] = []
        self._buffered_bytes = 0
        # Encoding lanes: each has its own open file; row groups go round-robin to
        # the lanes and are encoded on a small thread pool (pyarrow releases the
        # GIL), at most one row group in flight per lane, so memory stays bounded
        # by (lanes + 1) row groups.
        count = max(1, lanes if lanes is not None else default_lanes())
        self._lanes = [_Lane() for _ in range(count)]
        self._next_lane = 0
        self._pool = ThreadPoolExecutor(count, thread_name_prefix="dativo-parquet") if count > 1 else None
        self._lock = threading.Lock()
        self._choice = choice if choice is not None else EncodingChoice()  # decided from the first row group
        self.paths: list[str] = []
        self.files: list[WrittenFile] = []

    @property
    def lanes(self) -> int:
        """How many files are written (and encoded) in parallel."""
        return len(self._lanes)

    def write(self, batch: pa.RecordBatch) -> None:
        """Buffer ``batch``; hand a row group to the next lane once enough data has gathered.

        Raises the error of an earlier row group's encoding or upload, if one failed.
        """
        self._buffer.append(batch)
        self._buffered_bytes += batch.nbytes
        if self._buffered_bytes >= self._settings.row_group_bytes:
            self._flush()

    @property
    def buffered_bytes(self) -> int:
        """Arrow bytes held for the next row group (not yet handed to a lane)."""
        return self._buffered_bytes

    def flush(self) -> None:
        """Write what is buffered as a row group now (the file stays open); a no-op when nothing is buffered.

        Raises the error of an earlier row group's encoding or upload, if one failed.
        """
        self._flush()

    def close(self) -> list[WrittenFile]:
        """Write what is buffered, finish every lane's file and return every file written (in path order).

        Raises the first encoding or I/O error of any lane.
        """
        self._flush()
        for lane in self._lanes:
            self._wait(lane)
        for lane in self._lanes:
            self._finish_file(lane)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        order = {path: i for i, path in enumerate(self.paths)}
        self.files.sort(key=lambda f: order.get(f.path, len(order)))
        return self.files

    def abandon(self) -> None:
        """Drop buffered data and close the open streams without finishing the files (paths stay in ``paths``)."""
        self._buffer.clear()
        self._buffered_bytes = 0
        for lane in self._lanes:
            with contextlib.suppress(Exception):
                self._wait(lane)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for lane in self._lanes:
            writer, stream = lane.writer, lane.stream
            lane.writer = lane.stream = None
            for closable in (writer, stream):
                if closable is not None:
                    # The file is deleted next; a half-written footer does not matter.
                    with contextlib.suppress(Exception):
                        closable.close()

    def _flush(self) -> None:
        if not self._buffer:
            return
        table = pa.Table.from_batches(self._buffer, schema=self._schema)
        self._buffer = []
        self._buffered_bytes = 0
        if self._choice.dictionary is None:
            self._choice.dictionary = self._settings.use_dictionary(self._schema, table)
        lane = self._lanes[self._next_lane]
        self._next_lane = (self._next_lane + 1) % len(self._lanes)
        self._wait(lane)
        if self._pool is None:
            self._write_row_group(lane, table)
        else:
            lane.pending = self._pool.submit(self._write_row_group, lane, table)

    @staticmethod
    def _wait(lane: _Lane) -> None:
        pending, lane.pending = lane.pending, None
        if pending is not None:
            pending.result()

    def _write_row_group(self, lane: _Lane, table: pa.Table) -> None:
        if lane.writer is None:
            self._start_file(lane)
        assert lane.writer is not None
        lane.writer.write_table(table, row_group_size=max(table.num_rows, 1))
        lane.rows += table.num_rows
        if lane.stream.tell() >= self._settings.target_file_bytes:
            self._finish_file(lane)

    def _start_file(self, lane: _Lane) -> None:
        with self._lock:
            index = len(self.paths)
            lane.path, lane.stream = self._open_file(index)
            self.paths.append(lane.path)
        compression = None if self._settings.compression == "none" else self._settings.compression
        decided = self._choice.dictionary
        dictionary = self._settings.use_dictionary(self._schema) if decided is None else decided
        extra = dict(self._file_options(index, lane.path)) if self._file_options is not None else {}
        lane.writer = pq.ParquetWriter(
            lane.stream,
            self._schema,
            compression=compression,
            compression_level=self._settings.compression_level,
            use_dictionary=dictionary,
            write_statistics=(
                list(self._settings.statistics)
                if isinstance(self._settings.statistics, tuple)
                else self._settings.statistics
            ),
            data_page_size=self._settings.data_page_bytes,
            store_decimal_as_integer=True,
            **extra,
        )
        lane.rows = 0

    def _finish_file(self, lane: _Lane) -> None:
        if lane.writer is None:
            return
        lane.writer.close()
        size = lane.stream.tell()
        lane.stream.close()
        written = WrittenFile(lane.path, size, lane.rows, lane.writer.writer.metadata)
        with self._lock:
            self.files.append(written)
        lane.writer = lane.stream = None


def default_lanes() -> int:
    """Parallel Parquet encoders by default: one per core but one, at most 4 (``DATIVO_PARQUET_LANES`` overrides).

    One core is left to the rest of the run (the reader's decoding, and a database on the
    same machine): on 2 cores a second lane measured the same CPU time and ~20 MB more
    peak RSS (each lane holds a row group in flight and its encoder's buffers).
    """
    override = os.environ.get("DATIVO_PARQUET_LANES")
    if override and override.strip().isdigit() and int(override) > 0:
        return int(override)
    return max(1, min(4, (os.cpu_count() or 1) - 1))


@dataclass
class _Lane:
    """One encoding lane of :class:`RollingParquetWriter`: its open file and its row group in flight."""

    writer: pq.ParquetWriter | None = None
    stream: Any = None
    path: str = ""
    rows: int = 0
    pending: Future[None] | None = None


class StagedFolder:
    """A target folder whose new files are written under ``<root>/_dativo_tmp_<run id>/`` and published at once.

    Parquet readers skip names starting with ``_``, so staged files are never
    visible. :meth:`publish` moves each staged file into ``root``;
    :meth:`rollback` deletes what was published and the staging folder.
    ``display`` is the location as the user wrote it, secrets masked.
    """

    def __init__(
        self, fs: pafs.FileSystem, root: str, run_id: str, display: str, crash_point: FaultHook | None = None
    ) -> None:
        self.fs = fs
        self.crash_point: FaultHook = crash_point or fault_hook({})
        self.root = root
        self.run_id = run_id
        self.display = display
        self.staging = f"{root}/_dativo_tmp_{run_id}"
        self.published: list[str] = []
        self._lock: Any = None
        self._lease: _lease.Lease | None = None

    def check(self, what: str) -> None:
        """Create the folder and write and delete a probe; raises TargetError naming the location."""
        probe = f"{self.root}/_dativo_check_{self.run_id}"
        try:
            self.make_dir(self.root)
            with self.fs.open_output_stream(probe) as stream:
                stream.write(b"ok")
            self.fs.delete_file(probe)
        except (OSError, pa.ArrowException) as exc:
            raise TargetError(f"{what} {self.display} is not writable: {redact(str(exc))}") from None

    def prepare(self, what: str) -> None:
        """Create the staging folder; raises TargetError if the location cannot be written."""
        try:
            self.make_dir(self.staging)
        except (OSError, pa.ArrowException) as exc:
            raise TargetError(f"{what} {self.display}: cannot create files: {redact(str(exc))}") from None

    def hold(self) -> None:
        """Mark the staging folder as a live run's, so that :meth:`sweep_dead` of other runs leaves it alone.

        Local folders: an flock that a SIGKILL releases, locked under a temporary name and
        then renamed into place, so :meth:`sweep_dead` never sees it unlocked while this run
        lives. Object stores have no locks: a lease object rewritten while the run lives
        (``targets/_lease.py``). Raises TargetError if either cannot be created.
        """
        if not isinstance(self.fs, pafs.LocalFileSystem):
            self._lease = _lease.Lease(self.fs, self.root, self.run_id, self.display, _lease.LEASE_REFRESH_S)
            self._lease.take()
            return
        temp = f"{self.staging}/{_LOCK}.{os.getpid()}"
        try:
            handle = open(temp, "wb")  # noqa: SIM115 - held open until the staging folder goes
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            os.rename(temp, f"{self.staging}/{_LOCK}")
        except OSError as exc:
            raise TargetError(f"target {self.display}: cannot lock its staging folder: {redact(str(exc))}") from None
        self._lock = handle

    def sweep_dead(self) -> list[str]:
        """Delete the staging folders of runs that died; never raises. Call it after :meth:`hold`.

        Local folders: those whose lock no process holds (a folder without a lock file, a
        run starting this instant, is left alone). Object stores: those whose lease is
        older than ``LEASE_STALE_S`` (``targets/_lease.py``). Returns the folders deleted.
        """
        if not isinstance(self.fs, pafs.LocalFileSystem):
            return self._sweep_expired()
        swept = []
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.root):
                if not entry.name.startswith("_dativo_tmp_") or entry.path == self.staging:
                    continue
                try:
                    with open(f"{entry.path}/{_LOCK}", "rb") as handle:
                        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                        self.fs.delete_dir(entry.path)  # still locked by us: no run can take it meanwhile
                        swept.append(entry.path)
                except (OSError, pa.ArrowException):
                    continue  # no lock file, or a live run holds it
        return swept

    def _sweep_expired(self) -> list[str]:
        swept = []
        for run_id, lease in _lease.dead_runs(self.fs, self.root, _lease.LEASE_STALE_S):
            if run_id == self.run_id:
                continue
            staging = f"{self.root}/_dativo_tmp_{run_id}"
            with contextlib.suppress(OSError, pa.ArrowException):
                if self.fs.get_file_info(staging).type != pafs.FileType.NotFound:
                    self.fs.delete_dir(staging)
                    swept.append(staging)
                self.fs.delete_file(lease)
        return swept

    def staged_path(self, name: str) -> str:
        """Where a new file called ``name`` is written before publishing."""
        return f"{self.staging}/{name}"

    def final_path(self, staged: str) -> str:
        """Where the staged file ``staged`` is published."""
        return f"{self.root}/{staged.rsplit('/', 1)[1]}"

    def publish(self, staged: list[str]) -> list[str]:
        """Move every staged file into the folder and remove the staging folder; returns the final paths.

        Raises (OSError / ArrowException) when a move fails; :meth:`rollback` then undoes the moves made.
        """
        for path in staged:
            final = self.final_path(path)
            self.fs.move(path, final)
            self.published.append(final)
            self.crash_point("file_moved")
        self.remove_staging()
        return list(self.published)

    def rollback(self) -> None:
        """Delete every file published by this run and the staging folder; never raises."""
        for path in self.published:
            with contextlib.suppress(OSError, pa.ArrowException):
                self.fs.delete_file(path)
        self.published.clear()
        self.remove_staging()

    def make_dir(self, path: str) -> None:
        """Create ``path`` on a local file system (object stores have no folders; a marker would linger)."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            self.fs.create_dir(path, recursive=True)

    def remove_staging(self) -> None:
        """Delete the staging folder if it exists and release its lock; never raises."""
        try:
            if self.fs.get_file_info(self.staging).type != pafs.FileType.NotFound:
                self.fs.delete_dir(self.staging)
        except (OSError, pa.ArrowException):
            pass
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def display_path(self, path: str) -> str:
        """``path`` as the user would write it (``s3://`` prefixed for object storage)."""
        return f"s3://{path}" if self.display.startswith("s3://") else path


def staged_stem(run_id: str, key: str, where: str) -> str:
    """The start of the names of the files staged for the attempt ``key`` of run ``run_id``: ``key`` itself
    when it holds the run id (as the SDK asks), else ``<run id>-<key>``, so every staged file names its run.

    Raises TargetError for a key that is not a plain file-name fragment (letters, digits, ``.``, ``_``, ``-``).
    """
    if not _SAFE_KEY.match(key) or ".." in key:
        raise TargetError(
            f"{where}: staging key {key!r} cannot be part of a file name; use letters, digits, '.', '_' and '-' only"
        )
    return key if run_id in key else f"{run_id}-{key}"
