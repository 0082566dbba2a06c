"""Built-in writer ``encrypted-parquet``: the ``parquet`` dataset writer with an encrypting file step.

Written against the public :class:`dativo.DataWriter` SDK like any user's
plugin, so it doubles as the reference example of a serious custom writer.

* It *is* the ``parquet`` dataset writer (:class:`ParquetDatasetWriter`): files
  staged under ``<path>/_dativo_tmp_<run>/``, published by a manifest written
  last (``_dativo/manifest-N.json``), write modes ``append``/``overwrite``, the
  job's state kept with its data (a repeated ``--run-id`` is "already
  committed"), and crash recovery: a SIGKILL at any point leaves the dataset as
  the last manifest lists it. Only the file-encoding step differs.
* That step is Parquet Modular Encryption (``pyarrow.parquet.encryption``) with
  envelope encryption: a random data key per file and per column key, wrapped by
  master keys held in a KMS (:mod:`dativo.encryption.kms`); files record the master key's
  resolved id (an ARN, not the alias). Only ciphertext reaches the output
  stream, hashed on the way (SHA-256 for the audit record).
* Every run appends to a KMS-keyed, HMAC-chained audit log (:mod:`dativo.encryption.audit`):
  run start, each file, the commit, failures, run end; a run that died is closed
  by the next run with ``run_abandoned``. ``dativo audit verify LOG`` checks it.

Staged (distributed) runs (:class:`dativo.StagingWriter`): workers encrypt their
partitions with data keys wrapped through the same KMS (each worker opens it from the
job's config) and hash the ciphertext; the plan carries only the column-to-key mapping
and the master keys' resolved ids. The audit log is written by the driver alone: run
start at ``prepare``, a ``file`` record per staged file and the commit at
``commit_staged``, the failure and run end at ``abort``.

Read the files back with :func:`read_encrypted` or ``dativo decrypt``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pyarrow as pa
from pyarrow import fs as pafs

from dativo.encryption.audit import AuditLog, DeadRun, Retention, job_identity
from dativo.encryption.kms import KmsClient, load_kms, scrub
from dativo.errors import ConfigError, DativoError, TargetError
from dativo.sdk import PluginConfig
from dativo.targets._encryption import (
    EncryptionSettings,
    HashingSink,
    connection_config,
    crypto_factory,
    key_material_path,
    read_encrypted,
    read_encrypted_files,
)
from dativo.targets._parquet import ParquetSettings, WrittenFile
from dativo.targets.parquet import ParquetDatasetWriter, read_manifest

__all__ = [
    "EncryptedParquetWriter",
    "EncryptionSettings",
    "read_back",
    "read_encrypted",
    "read_encrypted_files",
]

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
    "key_material",
}
_KNOWN_OPTIONS = _PARQUET_OPTIONS | _ENCRYPTION_OPTIONS | {"kms", "audit"}
_AUDIT_KEYS = {"log", "copy_to", "retention_days", "retention_mode"}


class EncryptedParquetWriter(ParquetDatasetWriter):
    """Client-side encrypted Parquet dataset with a manifest commit and a KMS-keyed audit log.

    Configuration (``target:``): ``path`` (folder or ``s3://bucket/prefix``),
    ``connection`` (S3 settings), ``mode`` (``append``/``overwrite``), and under
    ``options``: ``footer_key``, ``column_keys``, ``kms`` (``type: local |
    aws-kms | ...``), ``audit`` (``log``, ``copy_to``, ``retention_days``,
    ``retention_mode``), plus the Parquet options of the ``parquet`` target. See
    docs/encryption.md. Every failure before the manifest commit leaves the
    dataset untouched and is recorded in the audit log.
    """

    requires: ClassVar[Mapping[str, str]] = {"cryptography": "pip install 'dativo[encryption]'"}
    label: ClassVar[str] = WRITER_NAME  # type: ignore[misc]

    def initialize(self, config: PluginConfig) -> None:
        """Validate the options, open the KMS client and the audit log; raises ConfigError naming the bad key."""
        self._kms: KmsClient | None = None
        self._audit: AuditLog | None = None
        self._committed_run = False
        self._sinks: dict[str, HashingSink] = {}
        self._staged_hashes: dict[str, str] = {}
        self._mapping: dict[str, list[str]] = {}
        self._key_ids: dict[str, str] = {}
        options = dict(config.get("options") or {})
        unknown = set(options) - _KNOWN_OPTIONS
        if unknown:
            raise ConfigError(
                f"encrypted-parquet target: unknown option(s) {', '.join(sorted(unknown))} "
                f"(known: {', '.join(sorted(_KNOWN_OPTIONS))})"
            )
        super().initialize(config)
        job = config.get("job", {})
        self._run_id = self._folder.run_id
        self._base_dir = Path(job.get("dir", "."))
        self._encryption = EncryptionSettings.from_options(options)
        self._kms = load_kms(options.get("kms") or {}, self._base_dir)
        self._audit = self._open_audit(options.get("audit"), config.get("connection") or {})

    def parquet_settings(self, options: dict[str, Any]) -> ParquetSettings:
        """The ``parquet`` target's file options, with files rolled at 128 MB by default."""
        parquet_options = {k: v for k, v in options.items() if k in _PARQUET_OPTIONS}
        parquet_options.setdefault("target_file_size_mb", 128)
        return ParquetSettings.from_options(parquet_options)

    def _open_audit(self, raw: Any, connection: Mapping[str, Any]) -> AuditLog:
        audit = {} if raw is None else raw
        if not isinstance(audit, Mapping) or set(audit) - _AUDIT_KEYS:
            raise ConfigError(f"encrypted-parquet target: options.audit takes {', '.join(sorted(_AUDIT_KEYS))}")
        local_raw = audit.get("log", f"{self._job or 'job'}.audit.jsonl")
        local = None
        if local_raw:
            local = Path(str(local_raw)).expanduser()
            local = local if local.is_absolute() else self._base_dir / local
        copy_to = str(audit["copy_to"]) if audit.get("copy_to") else None
        assert self._kms is not None
        return AuditLog(
            self._run_id,
            local=local,
            kms=self._kms,
            master_key_id=self._encryption.footer_key,
            copy_to=copy_to,
            connection=connection if copy_to and copy_to.startswith("s3://") else {},
            base_dir=self._base_dir,
            job_name=self._job or "job",
            retention=Retention.from_options(audit),
        )

    def check(self) -> None:
        """Verify the folder is writable and every master key wraps and unwraps; raises TargetError / KmsError."""
        super().check()
        assert self._kms is not None
        self._kms.check(self._encryption.master_key_ids)

    def load_state(self) -> dict[str, Any] | None:
        """Close the runs that died (``run_abandoned``), then return this job's committed state, or None."""
        self._close_dead_runs()
        return super().load_state()

    def prepare(self, schema: pa.Schema) -> None:
        """Close dead runs, record the run start, check the KMS and every master key, create the staging folder.

        Raises ConfigError for a column key naming an unknown column, KmsError
        when a master key is unknown, disabled, denied or the KMS unreachable —
        all before any file is written.
        """
        assert self._kms is not None and self._audit is not None
        self._close_dead_runs()
        self._audit.begin_run()
        self._audit.append(
            "run_start",
            job=job_identity(self.config, WRITER_NAME),
            kms=self._kms.describe(),
            mode=self._mode,
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
        self._key_ids = {key_id: kms.resolve_key_id(key_id) for key_id in self._encryption.master_key_ids}
        super().prepare(schema)

    def _close_dead_runs(self) -> None:
        """Close every run of this job and target whose process died: clean what it left, append ``run_abandoned``.

        Runs of other jobs sharing the log are left to those jobs (only they know their target).
        """
        audit = self._audit
        if audit is None:
            return
        ours = job_identity(self.config, WRITER_NAME)
        for dead in audit.dead_runs():
            started = dead.records[0].get("job") or {}
            if started.get("name") != ours["name"] or started.get("target") != ours["target"]:
                continue
            committed = self._run_committed(dead)
            cleaned = self._clean_up(dead, committed)
            audit.append("run_abandoned", abandoned_run=dead.run_id, committed=committed, cleaned=cleaned)
            log.warning(
                "run %s of job %s died without ending; recorded as abandoned (%s)",
                dead.run_id,
                self._job,
                "its commit stands" if committed else "nothing of it was committed",
            )

    def _run_committed(self, dead: DeadRun) -> bool:
        manifest = read_manifest(self._folder.fs, self._folder.root)
        if manifest is None:
            return False
        names = {path.rsplit("/", 1)[-1] for path in dead.files}
        state = manifest.get("states", {}).get(self._job) or {}
        return (
            manifest.get("run_id") == dead.run_id
            or state.get("run_id") == dead.run_id
            or (bool(names) and names <= set(manifest.get("files", [])))
        )

    def _clean_up(self, dead: DeadRun, committed: bool) -> list[str]:
        """Delete what a dead run left: its staging folder and, unless it committed, the files it moved in.

        Before the dataset's first manifest the plain writer would adopt every file in the folder,
        so the dead run's own files (known from its ``file`` records) are deleted by name.
        """
        fs = self._folder.fs
        staging = f"{self._folder.root}/_dativo_tmp_{dead.run_id}"
        cleaned = [self._folder.display_path(path) for path in self._recover()]
        doomed = [] if committed else [shown.removeprefix("s3://") for shown in dead.files]
        for path in [*doomed, *(key_material_path(p.removeprefix("s3://")) for p in [*doomed, *cleaned])]:
            shown = self._folder.display_path(path)
            if shown in cleaned or fs.get_file_info(path).type == pafs.FileType.NotFound:
                continue
            with contextlib.suppress(OSError, pa.ArrowException):
                fs.delete_file(path)
                cleaned.append(shown)
        try:
            infos = fs.get_file_info(pafs.FileSelector(staging, allow_not_found=True, recursive=True))
            cleaned += [self._folder.display_path(i.path) for i in infos if i.type == pafs.FileType.File]
            if fs.get_file_info(staging).type != pafs.FileType.NotFound:
                fs.delete_dir(staging)
        except (OSError, pa.ArrowException) as exc:
            log.warning("could not clean the staging folder of run %s: %s", dead.run_id, scrub(str(exc)))
        return cleaned

    # -- the encoding step --

    def encode_stream(self, path: str, stream: Any) -> Any:
        """Hash the ciphertext on its way to ``stream`` (for the audit record)."""
        sink = HashingSink(stream)
        self._sinks[path] = sink
        return sink

    def file_options(self, index: int, path: str) -> dict[str, Any]:
        """Fresh encryption properties per file, each key bound to the job, the run and the file name."""
        assert self._kms is not None
        context = {"dativo:job": self._job or "job", "dativo:run": self._run_id, "dativo:file": path.rsplit("/", 1)[1]}
        factory = crypto_factory(self._kms, context)
        configuration = self._encryption.configuration(self._mapping, self._key_ids)
        if self._encryption.external_key_material:  # written beside the file: _KEY_MATERIAL_FOR_<name>.json
            properties = factory.file_encryption_properties(
                connection_config(self._kms), configuration, path, self._folder.fs
            )
        else:
            properties = factory.file_encryption_properties(connection_config(self._kms), configuration)
        return {"encryption_properties": properties}

    def companion_files(self, written: list[WrittenFile]) -> list[str]:
        """External key material files, published with their data files."""
        if not self._encryption.external_key_material:
            return []
        return [key_material_path(file.path) for file in written]

    # -- staged runs: the plan carries the key mapping, descriptions the ciphertext hashes --

    def plan_extras(self) -> dict[str, Any]:
        """Which master key encrypts which columns, and each master key's resolved id (no key material)."""
        return {"mapping": self._mapping, "key_ids": self._key_ids}

    def adopt_plan(self, plan: Mapping[str, Any]) -> None:
        """On a worker: encrypt with the driver's column mapping and resolved key ids."""
        self._mapping = {str(label): list(columns) for label, columns in plan["mapping"].items()}
        self._key_ids = dict(plan["key_ids"])

    def describe_part(self, file: WrittenFile) -> dict[str, Any]:
        """The SHA-256 of the staged file's ciphertext, for the driver's audit record."""
        return {"sha256": self._sinks[file.path].sha256}

    def adopt_part(self, path: str, part: Mapping[str, Any]) -> None:
        """On the driver: remember the staged file's hash for its ``file`` record."""
        self._staged_hashes[path] = str(part["sha256"])

    def commit_staged(self, staged: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Record every staged file and the commit, publish through the manifest, record the end (driver only).

        Returns what :meth:`finalize` returns; raises (and records a failure) like it.
        """
        return self._guarded("commit", lambda: super(EncryptedParquetWriter, self).commit_staged(staged))

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Encrypt and stage ``batch``; raises KmsError / TargetError (recorded in the audit log)."""
        self._guarded("write_batch", lambda: super(EncryptedParquetWriter, self).write_batch(batch))

    def finalize(self) -> dict[str, Any]:
        """Record every file and the commit, publish through the manifest, record the end.

        Returns the ``parquet`` writer's result plus ``encryption``, ``audit`` and
        ``file_records`` (path, size, rows, sha256, key ids). Raises (and records
        a failure) when closing, moving, committing or auditing fails before the
        commit; the engine then calls :meth:`abort`.
        """
        return self._guarded("finalize", super().finalize)

    def before_publish(self, written: list[WrittenFile], manifest: dict[str, Any], files: list[str]) -> None:
        """Append a ``file`` record per file and a ``commit`` record, before anything becomes visible."""
        assert self._audit is not None
        labels = sorted({self._encryption.footer_key, *(k for k, columns in self._mapping.items() if columns)})
        self._records: list[dict[str, Any]] = []
        for file in written:
            record = self._audit.append(
                "file",
                path=self._folder.display_path(self._folder.final_path(file.path)),
                size=file.size,
                rows=file.rows,
                sha256=self._staged_hashes.get(file.path) or self._sinks[file.path].sha256,
                footer_key=self._encryption.footer_key,
                footer_key_id=self._key_ids.get(self._encryption.footer_key, self._encryption.footer_key),
                key_ids=sorted({self._key_ids.get(label, label) for label in labels}),
                key_labels=labels,
            )
            self._records.append(
                {k: record[k] for k in ("path", "size", "rows", "sha256", "key_ids", "key_labels", "seq", "hash")}
            )
        root = self._folder.display_path(self._folder.root)
        superseded = sorted(f"{root}/{name}" for name in set(manifest["files"]) - set(files))
        sequence = int(manifest.get("sequence", 0)) + 1
        self._audit.append("commit", manifest=sequence, files=len(files), superseded=superseded)
        self._superseded = [path.removeprefix("s3://") for path in superseded]
        self._crash_point("audit_recorded")

    def after_commit(self, result: dict[str, Any]) -> dict[str, Any]:
        """Record the run's end; a failing audit copy is reported, not raised (the commit stands)."""
        assert self._audit is not None and self._kms is not None
        self._committed_run = True
        if self._encryption.external_key_material:  # the key material of files an overwrite removed
            for path in self._superseded:
                with contextlib.suppress(OSError, pa.ArrowException):
                    self._folder.fs.delete_file(key_material_path(path))
        end = self._audit.append(
            "run_end", status="succeeded", rows=result["rows"], files=len(result["files"]), bytes=result["bytes"]
        )
        copy: str | None = None
        copy_error: str | None = None
        try:
            copy = self._audit.publish_copy()
        except DativoError as exc:
            copy_error = str(exc)
            log.warning("%s", scrub(copy_error))
        return {
            **result,
            "files": [record["path"] for record in self._records],
            "encryption": {
                "kms": self._kms.describe(),
                "footer_key": self._encryption.footer_key,
                "column_keys": self._encryption.column_keys,
                "key_ids": dict(self._key_ids),
                "encrypt_other_columns": self._encryption.encrypt_other_columns,
                "encrypted_footer": not self._encryption.plaintext_footer,
            },
            "audit": {
                "log": str(self._audit.local) if self._audit.local else None,
                "copy": copy,
                "copy_error": copy_error,
                "head": end["hash"],
            },
            "file_records": self._records,
        }

    def abort(self) -> None:
        """Delete staged and published files (unless the commit happened); record the run's end as failed."""
        if self._committed_run:
            return  # the manifest lists this run: its files stay, and run_end is already written
        super().abort()
        audit = getattr(self, "_audit", None)
        if audit is not None and any(r.get("event") == "run_start" for r in audit.records):
            try:
                audit.append("run_end", status="failed", rows=0, files=0, bytes=0)
                audit.publish_copy()
            except DativoError:
                log.warning("could not record the failed run in the audit log")

    def close(self) -> None:
        """Release the run's liveness lock and close the KMS client."""
        audit = getattr(self, "_audit", None)
        if audit is not None:
            audit.end_run()
        kms = getattr(self, "_kms", None)
        if kms is not None:
            kms.close()
            self._kms = None
        # Free pyarrow's per-file encryption objects (reference cycles) while S3 is still up; see read_encrypted.
        self._rolling = None
        with contextlib.suppress(Exception):
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
        if audit is None or not any(r.get("event") == "run_start" for r in audit.records):
            return
        try:
            audit.append("failure", stage=stage, error=scrub(message))
        except DativoError:
            log.warning("could not record a failure in the audit log")


def read_back(files: list[str], config: Mapping[str, Any]) -> pa.Table:
    """Decrypt ``files`` with the KMS of a writer's ``config`` (its ``options.kms``, ``connection`` and job dir).

    The ``read_back`` with which ``dativo plugins certify`` checks this writer's round trip
    (``writer: {read_back: "dativo.targets.encrypted_parquet:read_back"}`` in a scenario
    file). Raises what :func:`read_encrypted` raises (SourceError, KmsError).
    """
    base_dir = Path(str((config.get("job") or {}).get("dir", ".")))
    connection = config.get("connection") or {}
    kms = load_kms((config.get("options") or {}).get("kms") or {}, base_dir)
    try:
        tables = [read_encrypted(file, kms, connection=connection, base_dir=base_dir) for file in files]
    finally:
        kms.close()
    return pa.concat_tables(tables)
