"""The audit log of the key tools, and the ``access`` record of ``dativo decrypt`` (who read what, when)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dativo._secrets import redact
from dativo.encryption.audit import AuditLog
from dativo.encryption.kms import KmsClient, scrub
from dativo.errors import ConfigError
from dativo.targets._encryption import ReadFile

__all__ = ["job_audit_log", "record_access"]


def job_audit_log(
    options: Mapping[str, Any],
    job: Path | None,
    job_dir: Path,
    audit_log: Path | None,
    kms: KmsClient,
    connection: Mapping[str, Any],
) -> AuditLog:
    """The audit log a decrypt or rewrap is recorded in: ``--audit-log``, else the job's ``options.audit``.

    Raises ConfigError when there is none (a read of protected data is never unrecorded).
    """
    run_id = f"decrypt-{uuid.uuid4().hex[:12]}"
    if audit_log is not None:
        return AuditLog(run_id, local=audit_log, kms=kms, base_dir=job_dir)
    if job is None:
        raise ConfigError("decrypt: give --job JOB (its audit log records the read) or --audit-log LOG")
    audit = options.get("audit") or {}
    if not isinstance(audit, Mapping):
        raise ConfigError("decrypt: the job's target.options.audit must be a mapping")
    name = job.stem
    local_raw = audit.get("log", f"{name}.audit.jsonl")
    local = None
    if local_raw:
        local = Path(str(local_raw)).expanduser()
        local = local if local.is_absolute() else job_dir / local
    copy_to = str(audit["copy_to"]) if audit.get("copy_to") else None
    footer = options.get("footer_key")
    return AuditLog(
        run_id,
        local=local,
        kms=kms,
        master_key_id=str(footer) if footer else None,
        copy_to=copy_to,
        connection=connection if copy_to and copy_to.startswith("s3://") else {},
        base_dir=job_dir,
        job_name=name,
    )


def record_access(
    log: AuditLog,
    location: str,
    columns: Sequence[str] | None,
    files: Sequence[ReadFile],
    error: str | None = None,
) -> None:
    """Append one ``access`` record (and refresh the log's copy); raises TargetError / KmsError when it cannot."""
    from dativo.encryption.audit import who

    log.append(
        "access",
        action="decrypt",
        **who(),
        location=redact(location),
        columns=list(columns) if columns is not None else None,
        files=[{"path": f.path, "sha256": f.sha256, "size": f.size, "rows": f.rows} for f in files],
        outcome="failed" if error else "ok",
        **({"error": scrub(error)} if error else {}),
    )
    log.publish_copy()
