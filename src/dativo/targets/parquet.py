"""Built-in writer: a folder of Parquet files, local or on object storage.

Files are written under ``<path>/_dativo_tmp_<run id>/`` (a name Parquet
readers skip) and moved into ``<path>`` only at ``finalize``; ``abort`` deletes
the temporary folder.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyarrow import fs as pafs

from dativo._secrets import redact
from dativo.errors import ConfigError, TargetError
from dativo.sdk import DataWriter, PluginConfig
from dativo.storage import filesystem_for
from dativo.targets._parquet import ParquetSettings, RollingParquetWriter

__all__ = ["ParquetDatasetWriter"]


class ParquetDatasetWriter(DataWriter):
    """Writes zstd Parquet files, rolled at ``target_file_size_mb``, into a folder published at finalize."""

    def initialize(self, config: PluginConfig) -> None:
        """Resolve the target folder and its file system; raises ConfigError for a missing or bad ``path``."""
        self.config = config
        location = config.get("path")
        if not location:
            raise ConfigError("parquet target: 'path' is required (a local folder or s3://bucket/prefix)")
        job = config.get("job", {})
        self._fs, self._root = filesystem_for(str(location), config.get("connection") or {}, Path(job.get("dir", ".")))
        self._display = redact(str(location))
        self._run_id = str(job.get("run_id", "run"))
        self._staging = f"{self._root}/_dativo_tmp_{self._run_id}"
        self._settings = ParquetSettings.from_options(config.get("options") or {})
        self._rolling: RollingParquetWriter | None = None
        self._published: list[str] = []

    def check(self) -> None:
        """Verify the folder can be created and written to; raises TargetError naming the location."""
        probe = f"{self._root}/_dativo_check_{self._run_id}"
        try:
            self._make_dir(self._root)
            with self._fs.open_output_stream(probe) as stream:
                stream.write(b"ok")
            self._fs.delete_file(probe)
        except (OSError, pa.ArrowException) as exc:
            raise TargetError(f"parquet target {self._display} is not writable: {redact(str(exc))}") from None

    def prepare(self, schema: pa.Schema) -> None:
        """Create the staging folder; raises TargetError if the location cannot be written."""
        try:
            self._make_dir(self._staging)
        except (OSError, pa.ArrowException) as exc:
            raise TargetError(f"parquet target {self._display}: cannot create files: {redact(str(exc))}") from None
        self._rolling = RollingParquetWriter(schema, self._open_file, self._settings)

    def _open_file(self, index: int) -> tuple[str, Any]:
        path = f"{self._staging}/part-{self._run_id[:12]}-{index:05d}.parquet"
        return path, self._fs.open_output_stream(path)

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Stage ``batch`` in the temporary folder."""
        assert self._rolling is not None, "prepare() was not called"
        self._rolling.write(batch)

    def finalize(self) -> dict[str, Any]:
        """Move every staged file into the folder; returns ``{path, files, rows, bytes}``."""
        assert self._rolling is not None, "prepare() was not called"
        written = self._rolling.close()
        for file in written:
            final = f"{self._root}/{file.path.rsplit('/', 1)[1]}"
            self._fs.move(file.path, final)
            self._published.append(final)
        self._remove_staging()
        return {
            "path": self._display,
            "files": [self._display_path(path) for path in self._published],
            "rows": sum(file.rows for file in written),
            "bytes": sum(file.size for file in written),
        }

    def abort(self) -> None:
        """Delete the staging folder and any file this run already moved into place."""
        if self._rolling is not None:
            self._rolling.abandon()
        for path in self._published:
            with contextlib.suppress(OSError, pa.ArrowException):
                self._fs.delete_file(path)
        self._remove_staging()

    def _make_dir(self, path: str) -> None:
        # Object stores have no folders; creating one would leave an empty marker object behind.
        if isinstance(self._fs, pafs.LocalFileSystem):
            self._fs.create_dir(path, recursive=True)

    def _remove_staging(self) -> None:
        try:
            if self._fs.get_file_info(self._staging).type != pafs.FileType.NotFound:
                self._fs.delete_dir(self._staging)
        except (OSError, pa.ArrowException):
            pass

    def _display_path(self, path: str) -> str:
        return f"s3://{path}" if self._display.startswith("s3://") else path
