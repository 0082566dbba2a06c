"""Built-in writer ``encrypted-parquet``: client-side encrypted Parquet with KMS-managed keys and an audit trail.

Written against the public :class:`dativo.DataWriter` SDK like any user's
plugin, so it doubles as the reference example of a serious custom writer.

* Parquet Modular Encryption (``pyarrow.parquet.encryption``) with envelope
  encryption: a random data key per file and per column key, wrapped by master
  keys held in a KMS (:mod:`dativo.kms`); footer encrypted by default. Columns
  named under ``column_keys`` use those master keys; every other column is
  encrypted with the footer key (``encrypt_other_columns: false`` leaves them
  plain). Every file gets fresh encryption properties.
* Files are Parquet-encrypted as they are produced: only ciphertext modules ever
  reach the output stream, so the plaintext never touches disk or the network.
  Files are staged under ``<path>/_dativo_tmp_<run>/`` and published at
  ``finalize`` (local folder or ``s3://``), exactly like the ``parquet`` target.
* Every run appends to a hash-chained audit log (:mod:`dativo.audit`): run start,
  each file (path, size, rows, SHA-256 of the ciphertext, key ids), failures,
  run end. ``dativo audit verify LOG`` checks it.

Read the files back with :func:`read_encrypted` or ``dativo decrypt``.
"""

from __future__ import annotations

import gc
import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe
from pyarrow import fs as pafs

from dativo._secrets import redact
from dativo.audit import AuditLog, job_identity
from dativo.errors import ConfigError, DativoError, SourceError, TargetError
from dativo.kms import KmsClient, KmsError, load_kms, scrub
from dativo.sdk import DataWriter, PluginConfig
from dativo.storage import filesystem_for
from dativo.targets._parquet import ParquetSettings, RollingParquetWriter, StagedFolder

__all__ = ["EncryptedParquetWriter", "EncryptionSettings", "read_encrypted"]

log = logging.getLogger("dativo.targets.encrypted_parquet")
T = TypeVar("T")

WRITER_NAME = "encrypted-parquet"
_PARQUET_OPTIONS = {"target_file_size_mb", "row_group_size_mb", "compression", "compression_level", "dictionary"}
_ENCRYPTION_OPTIONS = {
    "footer_key",
    "column_keys",
    "encrypt_other_columns",
    "plaintext_footer",
    "double_wrapping",
    "data_key_length_bits",
}
_KNOWN_OPTIONS = _PARQUET_OPTIONS | _ENCRYPTION_OPTIONS | {"kms", "audit"}


@dataclass(frozen=True)
class EncryptionSettings:
    """Which master key protects what; built from the target's ``options:``."""

    footer_key: str
    column_keys: dict[str, list[str]]
    encrypt_other_columns: bool = True
    plaintext_footer: bool = False
    double_wrapping: bool = True
    data_key_length_bits: int = 256

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> EncryptionSettings:
        """Read ``footer_key``, ``column_keys`` and the switches; raises ConfigError naming the bad key."""
        footer = options.get("footer_key")
        if not isinstance(footer, str) or not footer.strip():
            raise ConfigError("encrypted-parquet target: options.footer_key is required (a master key id)")
        raw = options.get("column_keys") or {}
        if not isinstance(raw, Mapping):
            raise ConfigError("encrypted-parquet target: options.column_keys must map a master key id to column names")
        column_keys: dict[str, list[str]] = {}
        owner: dict[str, str] = {}
        for key_id, columns in raw.items():
            if not isinstance(columns, list) or not all(isinstance(c, str) and c for c in columns):
                raise ConfigError(
                    f"encrypted-parquet target: options.column_keys.{key_id} must be a list of column names"
                )
            for column in columns:
                if column in owner:
                    raise ConfigError(
                        f"encrypted-parquet target: column '{column}' is under two master keys "
                        f"('{owner[column]}' and '{key_id}'); give each column one key"
                    )
                owner[column] = str(key_id)
            column_keys[str(key_id)] = list(columns)
        bits = options.get("data_key_length_bits", 256)
        if bits not in (128, 192, 256):
            raise ConfigError("encrypted-parquet target: options.data_key_length_bits must be 128, 192 or 256")
        switches = {}
        for name, default in (("encrypt_other_columns", True), ("plaintext_footer", False), ("double_wrapping", True)):
            value = options.get(name, default)
            if not isinstance(value, bool):
                raise ConfigError(f"encrypted-parquet target: options.{name} must be true or false")
            switches[name] = value
        return cls(footer_key=footer.strip(), column_keys=column_keys, data_key_length_bits=int(bits), **switches)

    @property
    def master_key_ids(self) -> list[str]:
        """Every master key id this job uses, footer key first."""
        return list(dict.fromkeys([self.footer_key, *self.column_keys]))

    def resolve(self, schema: pa.Schema) -> dict[str, list[str]]:
        """Master key -> top-level columns it encrypts, for ``schema``; raises ConfigError for an unknown column."""
        names = set(schema.names)
        for key_id, columns in self.column_keys.items():
            missing = [c for c in columns if c not in names]
            if missing:
                raise ConfigError(
                    f"encrypted-parquet target: options.column_keys.{key_id} names column(s) "
                    f"{', '.join(repr(c) for c in missing)} that the source does not have "
                    f"(it has: {', '.join(schema.names)})"
                )
        mapping = {key_id: list(columns) for key_id, columns in self.column_keys.items() if columns}
        if self.encrypt_other_columns:
            listed = {c for columns in self.column_keys.values() for c in columns}
            others = [name for name in schema.names if name not in listed]
            if others:
                mapping.setdefault(self.footer_key, []).extend(others)
        if not mapping:
            raise ConfigError(
                "encrypted-parquet target: no column would be encrypted "
                "(list columns under options.column_keys or set encrypt_other_columns: true)"
            )
        return mapping

    def configuration(self, mapping: Mapping[str, list[str]]) -> pe.EncryptionConfiguration:
        """The pyarrow ``EncryptionConfiguration`` for one file."""
        return pe.EncryptionConfiguration(
            footer_key=self.footer_key,
            column_keys={key_id: list(columns) for key_id, columns in mapping.items()},
            encryption_algorithm="AES_GCM_V1",
            plaintext_footer=self.plaintext_footer,
            double_wrapping=self.double_wrapping,
            data_key_length_bits=self.data_key_length_bits,
            cache_lifetime=None,
        )


class _PyarrowKms(pe.KmsClient):  # type: ignore[misc]  # pyarrow ships no type information
    """Adapts a :class:`KmsClient` to pyarrow's callback interface, binding one file's context."""

    def __init__(self, client: KmsClient, context: Mapping[str, str] | None) -> None:
        super().__init__()
        self._client = client
        self._context = dict(context) if context is not None else None

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        return self._client.wrap_key(bytes(key_bytes), master_key_identifier, self._context or {})

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        return self._client.unwrap_key(wrapped_key, master_key_identifier, self._context)


def _crypto_factory(client: KmsClient, context: Mapping[str, str] | None) -> pe.CryptoFactory:
    # A new factory per file: pyarrow caches KMS clients and key-encryption keys per factory, and
    # each file's keys must be wrapped under that file's own context.
    def make(_config: pe.KmsConnectionConfig) -> pe.KmsClient:
        return _PyarrowKms(client, context)

    return pe.CryptoFactory(make)


def _connection_config(client: KmsClient) -> pe.KmsConnectionConfig:
    return pe.KmsConnectionConfig(kms_instance_id=f"dativo-{client.type_name}")


class _HashingSink:
    """A write-only file object that hashes and counts what passes through to ``out`` (already ciphertext)."""

    def __init__(self, out: Any) -> None:
        self._out = out
        self._sha = hashlib.sha256()
        self._size = 0
        self.closed = False

    def write(self, data: bytes | memoryview) -> int:
        self._sha.update(data)
        self._out.write(data)
        self._size += len(data)
        return len(data)

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        """Nothing to do: the underlying stream buffers and uploads on close."""

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._out.close()

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


class EncryptedParquetWriter(DataWriter):
    """Client-side encrypted Parquet files, published atomically, with a hash-chained audit log.

    Configuration (``target:``): ``path`` (folder or ``s3://bucket/prefix``),
    ``connection`` (S3 settings), and under ``options``: ``footer_key``,
    ``column_keys``, ``kms`` (``type: local | aws-kms | ...``), ``audit`` (``log``,
    ``copy_to``), plus the Parquet options of the ``parquet`` target. See
    docs/encryption.md. Every failure before ``finalize`` returns leaves the
    target untouched and is recorded in the audit log.
    """

    requires: ClassVar[Mapping[str, str]] = {"cryptography": "pip install 'dativo[encryption]'"}

    def initialize(self, config: PluginConfig) -> None:
        """Validate the options, open the KMS client and the audit log; raises ConfigError naming the bad key."""
        self.config = config
        self._kms: KmsClient | None = None
        self._audit: AuditLog | None = None
        self._rolling: RollingParquetWriter | None = None
        self._ended = False
        options = dict(config.get("options") or {})
        unknown = set(options) - _KNOWN_OPTIONS
        if unknown:
            raise ConfigError(
                f"encrypted-parquet target: unknown option(s) {', '.join(sorted(unknown))} "
                f"(known: {', '.join(sorted(_KNOWN_OPTIONS))})"
            )
        location = config.get("path")
        if not location:
            raise ConfigError("encrypted-parquet target: 'path' is required (a local folder or s3://bucket/prefix)")
        job = config.get("job", {})
        self._job_name = str(job.get("name", "job"))
        self._run_id = str(job.get("run_id", "run"))
        self._base_dir = Path(job.get("dir", "."))
        connection = config.get("connection") or {}
        fs, root = filesystem_for(str(location), connection, self._base_dir)
        self._folder = StagedFolder(fs, root, self._run_id, redact(str(location)))
        parquet_options = {k: v for k, v in options.items() if k in _PARQUET_OPTIONS}
        parquet_options.setdefault("target_file_size_mb", 128)
        self._settings = ParquetSettings.from_options(parquet_options)
        self._encryption = EncryptionSettings.from_options(options)
        self._kms = load_kms(options.get("kms") or {}, self._base_dir)
        self._audit = self._open_audit(options.get("audit"), connection)
        self._sinks: dict[str, _HashingSink] = {}
        self._mapping: dict[str, list[str]] = {}

    def _open_audit(self, raw: Any, connection: Mapping[str, Any]) -> AuditLog:
        audit = {} if raw is None else raw
        if not isinstance(audit, Mapping) or set(audit) - {"log", "copy_to"}:
            raise ConfigError("encrypted-parquet target: options.audit takes 'log' (local file) and 'copy_to'")
        local_raw = audit.get("log", f"{self._job_name}.audit.jsonl")
        local = None
        if local_raw:
            local = Path(str(local_raw)).expanduser()
            local = local if local.is_absolute() else self._base_dir / local
        copy_to = str(audit["copy_to"]) if audit.get("copy_to") else None
        return AuditLog(
            self._run_id,
            local=local,
            copy_to=copy_to,
            connection=connection if copy_to and copy_to.startswith("s3://") else {},
            base_dir=self._base_dir,
            job_name=self._job_name,
        )

    def check(self) -> None:
        """Verify the folder is writable and every master key wraps and unwraps; raises TargetError / KmsError."""
        self._folder.check("encrypted-parquet target")
        assert self._kms is not None
        self._kms.check(self._encryption.master_key_ids)

    def prepare(self, schema: pa.Schema) -> None:
        """Record the run start, check the KMS and every master key, create the staging folder.

        Raises ConfigError for a column key naming an unknown column, KmsError
        when a master key is unknown, disabled, denied or the KMS unreachable —
        all before any file is written.
        """
        assert self._kms is not None and self._audit is not None
        self._audit.append(
            "run_start",
            job=job_identity(self.config, WRITER_NAME),
            kms=self._kms.describe(),
            footer_key=self._encryption.footer_key,
            column_keys=self._encryption.column_keys,
            encrypt_other_columns=self._encryption.encrypt_other_columns,
            encrypted_footer=not self._encryption.plaintext_footer,
        )
        kms = self._kms
        self._guarded("prepare", lambda: self._prepare(schema, kms))

    def _prepare(self, schema: pa.Schema, kms: KmsClient) -> None:
        self._mapping = self._encryption.resolve(schema)
        kms.check(self._encryption.master_key_ids)
        self._folder.prepare("encrypted-parquet target")
        self._rolling = RollingParquetWriter(schema, self._open_file, self._settings, self._file_options)

    def _open_file(self, index: int) -> tuple[str, Any]:
        path = self._folder.staged_path(f"part-{self._run_id[:12]}-{index:05d}.parquet")
        sink = _HashingSink(self._folder.fs.open_output_stream(path))
        self._sinks[path] = sink
        return path, sink

    def _file_options(self, index: int, path: str) -> Mapping[str, Any]:
        assert self._kms is not None
        context = {
            "dativo:job": self._job_name,
            "dativo:run": self._run_id,
            "dativo:file": path.rsplit("/", 1)[1],
        }
        factory = _crypto_factory(self._kms, context)
        properties = factory.file_encryption_properties(
            _connection_config(self._kms), self._encryption.configuration(self._mapping)
        )
        return {"encryption_properties": properties}

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Encrypt and stage ``batch``; raises KmsError / TargetError (recorded in the audit log)."""
        rolling = self._rolling
        assert rolling is not None, "prepare() was not called"
        self._guarded("write_batch", lambda: rolling.write(batch))

    def finalize(self) -> dict[str, Any]:
        """Finish the last file, publish every file at once, record them; returns what the audit log records.

        Returns ``{path, files, rows, bytes, encryption, audit, file_records}``;
        ``file_records`` are the audit log's ``file`` records (path, size, rows,
        sha256, key ids). Raises (and records a failure) when closing, moving or
        auditing fails; the engine then calls :meth:`abort`.
        """
        return self._guarded("finalize", self._finalize)

    def _finalize(self) -> dict[str, Any]:
        assert self._rolling is not None and self._audit is not None and self._kms is not None
        written = self._rolling.close()
        self._folder.publish([file.path for file in written])
        records: list[dict[str, Any]] = []
        for file in written:
            path = self._folder.display_path(self._folder.final_path(file.path))
            key_ids = [key_id for key_id, columns in self._mapping.items() if columns]
            record = self._audit.append(
                "file",
                path=path,
                size=file.size,
                rows=file.rows,
                sha256=self._sinks[file.path].sha256,
                footer_key=self._encryption.footer_key,
                key_ids=sorted({self._encryption.footer_key, *key_ids}),
            )
            records.append({k: record[k] for k in ("path", "size", "rows", "sha256", "key_ids", "seq", "hash")})
        rows, nbytes = sum(f.rows for f in written), sum(f.size for f in written)
        end = self._audit.append("run_end", status="succeeded", rows=rows, files=len(written), bytes=nbytes)
        self._ended = True
        copy = self._audit.publish_copy()
        return {
            "path": self._folder.display,
            "files": [record["path"] for record in records],
            "rows": rows,
            "bytes": nbytes,
            "encryption": {
                "kms": self._kms.describe(),
                "footer_key": self._encryption.footer_key,
                "column_keys": self._encryption.column_keys,
                "encrypt_other_columns": self._encryption.encrypt_other_columns,
                "encrypted_footer": not self._encryption.plaintext_footer,
            },
            "audit": {
                "log": str(self._audit.local) if self._audit.local else None,
                "copy": copy,
                "head": end["hash"],
            },
            "file_records": records,
        }

    def abort(self) -> None:
        """Delete staged and published files; record the run's end as failed. Never raises for unstarted work."""
        if self._rolling is not None:
            self._rolling.abandon()
        folder = getattr(self, "_folder", None)
        if folder is not None:
            folder.rollback()
        audit = getattr(self, "_audit", None)
        if audit is not None and audit.records:
            try:
                audit.append("run_end", status="failed", rows=0, files=0, bytes=0)
                self._ended = True
                audit.publish_copy()
            except DativoError:
                log.warning("could not record the failed run in the audit log")

    def close(self) -> None:
        """Close the KMS client."""
        kms = getattr(self, "_kms", None)
        if kms is not None:
            kms.close()
            self._kms = None
        # Free pyarrow's per-file encryption objects (reference cycles) while S3 is still up; see read_encrypted.
        self._rolling = None
        gc.collect()

    def _guarded(self, stage: str, action: Callable[[], T]) -> T:
        try:
            return action()
        except DativoError as exc:
            self._record_failure(stage, str(exc))
            raise
        except (OSError, pa.ArrowException) as exc:
            message = f"encrypted-parquet target {self._folder.display}: {stage} failed: {scrub(str(exc))}"
            self._record_failure(stage, message)
            raise TargetError(message) from None

    def _record_failure(self, stage: str, message: str) -> None:
        audit = getattr(self, "_audit", None)
        if audit is None or not audit.records:
            return
        try:
            audit.append("failure", stage=stage, error=scrub(message))
        except DativoError:
            log.warning("could not record a failure in the audit log")


# ---------------------------------------------------------------------------------------------------
# Reading it back
# ---------------------------------------------------------------------------------------------------


def read_encrypted(
    location: str,
    kms: KmsClient,
    *,
    connection: Mapping[str, Any] | None = None,
    base_dir: Path | None = None,
    columns: list[str] | None = None,
) -> pa.Table:
    """Decrypt and read one file or every ``*.parquet`` file of a folder (local or ``s3://``).

    Each file's keys are unwrapped through ``kms`` with the file's name as the
    expected context (a key copied from another file is refused). Raises
    SourceError when a file cannot be read (no access to a column's key, wrong
    key, corrupt file) with a message free of key material, and KmsError when
    the KMS refuses.
    """
    fs, root = filesystem_for(location, connection or {}, base_dir or Path.cwd())
    shown = redact(location)
    try:
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.Directory:
            selector = pafs.FileSelector(root, recursive=False)
            paths = sorted(
                entry.path
                for entry in fs.get_file_info(selector)
                if entry.type == pafs.FileType.File
                and entry.base_name.endswith(".parquet")
                and not entry.base_name.startswith(("_", "."))
            )
        elif info.type == pafs.FileType.File:
            paths = [root]
        else:
            raise SourceError(f"decrypt: {shown} does not exist")
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"decrypt: cannot list {shown}: {scrub(str(exc))}") from None
    tables = []
    factory = properties = None
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        factory = _crypto_factory(kms, {"dativo:file": name})
        properties = factory.file_decryption_properties(_connection_config(kms), pe.DecryptionConfiguration())
        try:
            # Whole-object reads: one GET per file, and no S3 reads left running on pyarrow's I/O threads.
            with fs.open_input_stream(path) as stream:
                data = stream.read()
            tables.append(pq.ParquetFile(pa.BufferReader(data), decryption_properties=properties).read(columns=columns))
        except KmsError:
            raise
        except (OSError, pa.ArrowException, ValueError) as exc:
            raise SourceError(
                f"decrypt: cannot read {name}: {scrub(str(exc))} "
                "(is it encrypted with keys this KMS configuration can unwrap, and do you have every column's key?)"
            ) from None
    # pyarrow's decryption objects end up in reference cycles; left to the interpreter's final
    # collection they are destroyed after pyarrow has shut S3 down, which aborts the process
    # ("terminate called without an active exception"). Collect them now.
    del factory, properties
    gc.collect()
    if not tables:
        raise SourceError(f"decrypt: no Parquet files in {shown}")
    return pa.concat_tables(tables)
