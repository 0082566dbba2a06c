"""Where the files reader's files are: local paths or ``s3://``, a file, a directory or a glob.

:class:`FileLocation` opens the file system (S3 through the shared
:class:`dativo.sdk_connectors.S3Connection`), expands the path into a sorted list of
files and settles their format; its errors name the path with secrets masked and are
transient exactly when :func:`dativo.connectors.files.errors.is_transient` says so.
"""

from __future__ import annotations

import os.path
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from dativo.connectors.files.errors import is_transient, one_line
from dativo.connectors.files.formats import FORMAT_EXTENSIONS, format_of
from dativo.errors import ConfigError, PluginError, SourceError
from dativo.sdk_connectors import S3Connection

__all__ = ["FileLocation", "glob_regex", "is_hidden"]

GLOB_CHARS = frozenset("*?[")
_ERRORS: tuple[type[BaseException], ...] = (pa.ArrowException, OSError, ValueError)


def is_hidden(relative: str) -> bool:
    """Whether a listed path has a part starting with ``.`` or ``_`` (``_SUCCESS``, ``.crc``): skipped."""
    return any(part.startswith((".", "_")) for part in relative.split("/") if part)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Translate a glob to a regex: ``*``, ``?`` and ``[...]`` stay in one path segment, ``**`` spans them."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (close := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : close]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = close + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


class FileLocation:
    """The file system of one ``source.path`` and the files it names.

    Failure behaviour: :meth:`open` raises ConfigError for a malformed path or S3
    connection; :meth:`list_files` raises SourceError for a path that does not
    exist or matches no file (transient for network failures), ConfigError when
    the format cannot be settled.
    """

    def __init__(self) -> None:
        self._fs: pafs.FileSystem | None = None
        self.scheme = ""

    def close(self) -> None:
        """Forget the file system; idempotent."""
        self._fs = None

    def open(self, path: str, connection: Any, job: Mapping[str, Any]) -> str:
        """Create the file system for ``path`` and return the path in that file system's terms.

        ``connection`` is validated as an S3Connection even for a local path (a typo is a
        typo); raises ConfigError for it, a bucket-less or wildcard-bucket ``s3://`` path,
        or an unsupported URL scheme.
        """
        s3 = S3Connection.parse(connection, "files reader")  # checked for local paths too: a typo is a typo
        if path.startswith("s3://"):
            location = path[len("s3://") :].strip("/")
            if not location:
                raise ConfigError(f"files reader: {path!r} names no bucket", hint="use s3://bucket/prefix")
            if GLOB_CHARS & set(location.split("/")[0]):
                raise ConfigError(f"files reader: the bucket name in {path!r} cannot contain wildcards")
            self._fs = s3.filesystem()
            self.scheme = "s3://"
            return location
        if "://" in path:
            raise ConfigError(
                f"files reader: unsupported URL scheme in {path!r}",
                hint="use a local path or s3://bucket/prefix",
            )
        local = Path(path).expanduser()
        if not local.is_absolute():
            local = Path(str(job.get("dir") or ".")) / local
        self._fs = pafs.LocalFileSystem()
        self.scheme = ""
        # abspath normalises "..", keeps glob characters and does not resolve symlinks.
        return Path(os.path.abspath(local)).as_posix()

    def display(self, path: str) -> str:
        """``path`` as the user wrote it (``s3://`` prefixed again for S3)."""
        return self.scheme + path

    def fs(self) -> pafs.FileSystem:
        """The open file system; raises PluginError before :meth:`open` or after :meth:`close`."""
        if self._fs is None:
            raise PluginError("files reader: used before initialize() or after close()")
        return self._fs

    def file_info(self, path: str) -> Any:
        """pyarrow ``FileInfo`` of ``path``; raises SourceError (transient for network failures)."""
        try:
            return self.fs().get_file_info(path)
        except _ERRORS as exc:
            raise self.access_error(path, exc) from None

    def access_error(self, path: str, exc: BaseException) -> SourceError:
        """The SourceError for a failed access to ``path`` (secrets masked, transient per :func:`is_transient`)."""
        hint = (
            "check the bucket name, the credentials and connection.endpoint_url"
            if self.scheme
            else "check that the path exists and is readable"
        )
        return SourceError(
            f"files reader: cannot access {self.display(path)}: {one_line(exc)}",
            hint=hint,
            transient=is_transient(exc),
        )

    def missing(self, path: str) -> SourceError:
        """The SourceError for a ``path`` that does not exist, naming a missing bucket as such."""
        if self.scheme:
            bucket = path.split("/")[0]
            info = self.file_info(bucket)
            if info.type == pafs.FileType.NotFound:
                return SourceError(
                    f"files reader: bucket {bucket!r} of {self.display(path)} does not exist "
                    "or is not visible with these credentials",
                    hint="check the bucket name, connection.endpoint_url and the credentials",
                )
        return SourceError(
            f"files reader: {self.display(path)} does not exist",
            hint="check source.path (relative paths are resolved against the job file's directory)",
        )

    def list_files(self, location: str, declared_format: str | None) -> tuple[list[str], str]:
        """Expand ``location`` (file, directory or glob) into sorted files and settle the format."""
        is_glob = bool(GLOB_CHARS & set(location))
        if is_glob:
            parts = location.split("/")
            first_glob = next(i for i, part in enumerate(parts) if GLOB_CHARS & set(part))
            base = "/".join(parts[:first_glob]) or "/"
            if self.file_info(base).type != pafs.FileType.Directory:
                raise self.missing(base)
            pattern = glob_regex(location)
            entries = self.select(base)
            candidates = [
                e.path
                for e in entries
                if e.type == pafs.FileType.File and pattern.fullmatch(e.path) and not is_hidden(e.path[len(base) :])
            ]
            kind = "glob"
        else:
            info = self.file_info(location)
            if info.type == pafs.FileType.File:
                candidates, kind = [location], "file"
            elif info.type == pafs.FileType.Directory:
                entries = self.select(location)
                candidates = [
                    e.path for e in entries if e.type == pafs.FileType.File and not is_hidden(e.path[len(location) :])
                ]
                kind = "directory"
            else:
                raise self.missing(location)
        files = sorted(candidates)
        if kind == "directory":
            formats = {f: format_of(f) for f in files}
            if declared_format is None:
                found = sorted({fmt for fmt in formats.values() if fmt})
                if len(found) > 1:
                    raise ConfigError(
                        f"files reader: {self.display(location)} holds {' and '.join(found)} files",
                        hint="set source.format to the one to read, or point path at a glob",
                    )
                declared_format = found[0] if found else None
            files = [f for f in files if declared_format and formats[f] == declared_format]
            if not files or declared_format is None:
                wanted = declared_format or "csv, parquet or jsonl"
                raise SourceError(
                    f"files reader: no {wanted} files under {self.display(location)}",
                    hint="recognised extensions: " + ", ".join(e for exts in FORMAT_EXTENSIONS.values() for e in exts),
                )
            return files, declared_format
        if not files:
            raise SourceError(
                f"files reader: no file matches {self.display(location)}",
                hint="check the glob; names starting with '.' or '_' are skipped",
            )
        if declared_format is not None:
            return files, declared_format
        formats = {f: format_of(f) for f in files}
        unknown = [f for f, fmt in formats.items() if fmt is None]
        if unknown:
            raise ConfigError(
                f"files reader: cannot tell the format of {self.display(unknown[0])} from its extension",
                hint="set source.format to csv, parquet or jsonl",
            )
        found = sorted({fmt for fmt in formats.values() if fmt})
        if len(found) > 1:
            raise ConfigError(
                f"files reader: {self.display(location)} matches {' and '.join(found)} files",
                hint="set source.format or narrow the glob",
            )
        return files, found[0]

    def select(self, base: str) -> list[Any]:
        """Every entry under ``base``, recursively; raises SourceError like :meth:`file_info`."""
        try:
            return list(self.fs().get_file_info(pafs.FileSelector(base, recursive=True)))
        except _ERRORS as exc:
            raise self.access_error(base, exc) from None
