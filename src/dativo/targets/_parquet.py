"""Streaming Parquet files: large row groups, files rolled at a target size (shared by the targets)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dativo.errors import ConfigError

__all__ = ["ParquetSettings", "RollingParquetWriter", "WrittenFile"]

_MIB = 1024 * 1024


@dataclass(frozen=True)
class ParquetSettings:
    """How Parquet files are written; built from a target's ``options:``."""

    target_file_bytes: int = 512 * _MIB
    row_group_bytes: int = 64 * _MIB
    compression: str = "zstd"
    compression_level: int | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ParquetSettings:
        """Read ``target_file_size_mb``, ``row_group_size_mb``, ``compression``, ``compression_level``.

        Raises ConfigError for a non-positive size or an unknown codec.
        """
        try:
            settings = cls(
                target_file_bytes=int(float(options.get("target_file_size_mb", 512)) * _MIB),
                row_group_bytes=int(float(options.get("row_group_size_mb", 64)) * _MIB),
                compression=str(options.get("compression", "zstd")).lower(),
                compression_level=(
                    int(options["compression_level"]) if options.get("compression_level") is not None else None
                ),
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
        return settings


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
    the next file. Every path opened is in :attr:`paths`, finished or not, so a
    failed run can delete them all.
    """

    def __init__(
        self,
        schema: pa.Schema,
        open_file: Callable[[int], tuple[str, Any]],
        settings: ParquetSettings,
    ) -> None:
        self._schema = schema
        self._open_file = open_file
        self._settings = settings
        self._buffer: list[pa.RecordBatch] = []
        self._buffered_bytes = 0
        self._writer: pq.ParquetWriter | None = None
        self._stream: Any = None
        self._path = ""
        self._rows_in_file = 0
        self.paths: list[str] = []
        self.files: list[WrittenFile] = []

    def write(self, batch: pa.RecordBatch) -> None:
        """Buffer ``batch``; write a row group once enough data has gathered."""
        self._buffer.append(batch)
        self._buffered_bytes += batch.nbytes
        if self._buffered_bytes >= self._settings.row_group_bytes:
            self._flush()

    def close(self) -> list[WrittenFile]:
        """Write what is buffered, finish the current file and return every file written."""
        self._flush()
        self._finish_file()
        return self.files

    def abandon(self) -> None:
        """Drop buffered data and close the open stream without finishing the file (its path stays in ``paths``)."""
        self._buffer.clear()
        self._buffered_bytes = 0
        writer, stream = self._writer, self._stream
        self._writer = self._stream = None
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
        if self._writer is None:
            self._start_file()
        assert self._writer is not None
        self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self._rows_in_file += table.num_rows
        if self._stream.tell() >= self._settings.target_file_bytes:
            self._finish_file()

    def _start_file(self) -> None:
        self._path, self._stream = self._open_file(len(self.paths))
        self.paths.append(self._path)
        compression = None if self._settings.compression == "none" else self._settings.compression
        self._writer = pq.ParquetWriter(
            self._stream,
            self._schema,
            compression=compression,
            compression_level=self._settings.compression_level,
            store_decimal_as_integer=True,
        )
        self._rows_in_file = 0

    def _finish_file(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        size = self._stream.tell()
        self._stream.close()
        self.files.append(WrittenFile(self._path, size, self._rows_in_file, self._writer.writer.metadata))
        self._writer = self._stream = None
