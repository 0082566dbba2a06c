"""Local and object-storage file systems for readers and writers (pyarrow.fs)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pyarrow import fs as pafs

from dativo._secrets import redact, register_secret
from dativo.errors import ConfigError

__all__ = ["S3_CONNECTION_KEYS", "filesystem_for"]

#: Keys a job may give under ``connection:`` for s3:// paths.
S3_CONNECTION_KEYS = {
    "endpoint_url",
    "region",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "anonymous",
    "allow_http",
}


def filesystem_for(location: str, connection: Mapping[str, Any], base_dir: Path) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path within it)`` for a local path or an ``s3://bucket/prefix`` URI.

    Local relative paths resolve against ``base_dir``. For S3, credentials come
    from ``connection`` when given, else from the standard AWS environment and
    credential chain. Raises ConfigError for an unsupported scheme or unknown key.
    """
    if location.startswith("s3://"):
        unknown = set(connection) - S3_CONNECTION_KEYS
        if unknown:
            raise ConfigError(
                f"unknown S3 connection key(s) {', '.join(sorted(unknown))} "
                f"(allowed: {', '.join(sorted(S3_CONNECTION_KEYS))})"
            )
        return _s3(connection), location.removeprefix("s3://").rstrip("/")
    if "://" in location and not location.startswith("file://"):
        raise ConfigError(f"unsupported storage location {redact(location)} (use a local path or s3://bucket/prefix)")
    path = Path(location.removeprefix("file://")).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    return pafs.LocalFileSystem(), str(path.resolve())


def _s3(connection: Mapping[str, Any]) -> pafs.S3FileSystem:
    # Delayed open: nothing is sent until data is, and small files go up in one PutObject.
    options: dict[str, Any] = {"allow_delayed_open": True}
    endpoint = connection.get("endpoint_url")
    if endpoint:
        endpoint = str(endpoint)
        scheme, _, rest = endpoint.partition("://")
        options["endpoint_override"] = rest if rest else endpoint
        options["scheme"] = scheme if rest else "https"
    if connection.get("region"):
        options["region"] = str(connection["region"])
    if connection.get("access_key_id"):
        options["access_key"] = str(connection["access_key_id"])
        options["secret_key"] = str(connection.get("secret_access_key", ""))
        register_secret(options["secret_key"])
        if connection.get("session_token"):
            options["session_token"] = str(connection["session_token"])
            register_secret(options["session_token"])
    if connection.get("anonymous"):
        options["anonymous"] = True
    return pafs.S3FileSystem(**options)
