"""Local and object-storage file systems for readers and writers (pyarrow.fs)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pyarrow import fs as pafs

from dativo._secrets import redact
from dativo.errors import ConfigError
from dativo.sdk_connectors import S3Connection

__all__ = ["S3_CONNECTION_KEYS", "filesystem_for"]

#: Keys a job may give under ``connection:`` for s3:// paths (the fields of :class:`S3Connection`).
S3_CONNECTION_KEYS = frozenset(S3Connection.model_fields)


def filesystem_for(location: str, connection: Mapping[str, Any], base_dir: Path) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path within it)`` for a local path or an ``s3://bucket/prefix`` URI.

    Local relative paths resolve against ``base_dir``. For S3, credentials come
    from ``connection`` when given, else from the standard AWS environment and
    credential chain; ``connection`` is validated as an :class:`~dativo.sdk_connectors.S3Connection`
    (``allow_http`` honoured). Raises ConfigError for an unsupported scheme, an unknown key
    or an inconsistent connection.
    """
    if location.startswith("s3://"):
        # Delayed open: nothing is sent until data is, and small files go up in one PutObject.
        s3 = S3Connection.parse(connection, "storage")
        return s3.filesystem(allow_delayed_open=True), location.removeprefix("s3://").rstrip("/")
    if "://" in location and not location.startswith("file://"):
        raise ConfigError(f"unsupported storage location {redact(location)} (use a local path or s3://bucket/prefix)")
    path = Path(location.removeprefix("file://")).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    return pafs.LocalFileSystem(), str(path.resolve())
