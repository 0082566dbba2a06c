"""A tamper-evident audit trail: an append-only, HMAC-chained JSON-lines log keyed by the job's KMS.

Every record is one line of *canonical* JSON (keys sorted, no spaces, UTF-8)
carrying ``seq`` (1, 2, 3, ... over the whole log), ``prev`` (the ``hash`` of
the previous record; 64 zeros for the first) and ``hash``: HMAC-SHA256, under
the log's *chain key*, of the canonical encoding of the record without its
``hash`` key. The chain key is 32 random bytes drawn when the log is created and
stored only *wrapped* by a master key of the job's KMS, in the log's first
record (``chain_key``). Whoever can edit the log but cannot unwrap that key
cannot produce a valid hash: a record appended with a recomputed hash is caught.

Changing a byte, deleting, inserting or reordering lines breaks the chain at a
record :func:`dativo.encryption.audit_verify.verify` names; a run whose process died is
closed by the next run with a ``run_abandoned`` record (its staged files cleaned
first), so a crash never leaves the log unverifiable.

Events: ``chain_key``, ``run_start`` (job identity, KMS description, key ids),
``file`` (path, size, rows, sha256, key ids), ``commit`` (the dataset listing the
run is about to publish), ``failure`` (a one-line error, scrubbed of secrets),
``run_end`` (status, totals), ``run_abandoned`` (a dead run, whether it
committed, what was cleaned), ``access`` (a decrypt: who, which columns and
files) and ``rewrap`` (keys of files re-wrapped under another master key).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import getpass
import hashlib
import hmac
import json
import os
import re
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
from pyarrow import fs as pafs

from dativo import __version__
from dativo._secrets import redact
from dativo.encryption.kms import KmsClient, register_key_material, scrub
from dativo.errors import ConfigError, TargetError
from dativo.storage import filesystem_for

__all__ = [
    "CHAIN_CONTEXT",
    "GENESIS",
    "AuditLog",
    "DeadRun",
    "Retention",
    "canonical",
    "job_identity",
    "open_chain_key",
    "record_hash",
    "who",
]

#: ``prev`` of the first record of a log.
GENESIS = "0" * 64
#: The KMS encryption context the chain key is wrapped under.
CHAIN_CONTEXT = {"dativo:purpose": "audit-chain"}
CHAIN_KEY_EVENT = "chain_key"


def canonical(record: Mapping[str, Any]) -> bytes:
    """The canonical encoding of ``record``: JSON with sorted keys, no whitespace, UTF-8."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def record_hash(record: Mapping[str, Any], key: bytes) -> str:
    """HMAC-SHA256 (hex) under ``key`` of the canonical encoding of ``record`` without its ``hash`` key."""
    body = canonical({k: v for k, v in record.items() if k != "hash"})
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def who() -> dict[str, str]:
    """The OS user and host running this process (for audit records)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {"user": user, "host": socket.gethostname()}


def job_identity(config: Mapping[str, Any], writer: str) -> dict[str, Any]:
    """Who ran what, for ``run_start``: job name and run id, host, OS user, writer, dativo version. No secrets."""
    job = config.get("job", {})
    return {
        "name": str(job.get("name", "")),
        "run_id": str(job.get("run_id", "")),
        "dir": str(job.get("dir", "")),
        "writer": writer,
        "target": redact(str(config.get("path") or config.get("table") or "")),
        **who(),
        "dativo_version": __version__,
    }


def open_chain_key(record: Mapping[str, Any], kms: KmsClient) -> bytes:
    """Unwrap the chain key of a ``chain_key`` record with ``kms``; raises KmsError / TargetError."""
    if record.get("event") != CHAIN_KEY_EVENT or not isinstance(record.get("wrapped_key"), str):
        raise TargetError("the log is not keyed: its first record is not a 'chain_key' record")
    master = str(record.get("master_key_id") or record.get("master_key") or "")
    key = kms.unwrap_key(str(record["wrapped_key"]), master, CHAIN_CONTEXT)
    register_key_material(key)
    return key


@dataclass(frozen=True)
class Retention:
    """S3 Object Lock retention for the audit copy: ``mode`` GOVERNANCE or COMPLIANCE for ``days``."""

    days: int
    mode: str = "GOVERNANCE"

    @classmethod
    def from_options(cls, audit: Mapping[str, Any]) -> Retention | None:
        """``retention_days`` / ``retention_mode`` of ``options.audit``; raises ConfigError for bad values."""
        days = audit.get("retention_days")
        if days is None:
            return None
        mode = str(audit.get("retention_mode", "GOVERNANCE")).upper()
        if not isinstance(days, int) or isinstance(days, bool) or days <= 0:
            raise ConfigError("encrypted-parquet target: options.audit.retention_days must be a positive number")
        if mode not in ("GOVERNANCE", "COMPLIANCE"):
            raise ConfigError("encrypted-parquet target: options.audit.retention_mode must be GOVERNANCE or COMPLIANCE")
        return cls(days, mode)


@dataclass
class DeadRun:
    """A run that started in the log, never ended, and whose process is gone."""

    run_id: str
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        """Paths of the ``file`` records the run appended."""
        return [str(r.get("path")) for r in self.records if r.get("event") == "file"]


class AuditLog:
    """Appends records of one run to a local log and/or keeps them for a copy on object storage.

    ``local``: the log file (created if missing, appended under an exclusive
    lock so concurrent runs interleave whole records). ``copy_to``: an
    ``s3://bucket/prefix`` (or folder) to which :meth:`publish_copy` uploads the
    log at the end of the run as ``<prefix>/<job>/<run_id>.audit.jsonl`` — the
    whole local log when there is one (so the copy verifies on its own), else
    this run's records chained from :data:`GENESIS`. ``kms`` and
    ``master_key_id`` create the chain key of a new log (an existing log names
    its own master key). Raises ConfigError when neither log is given.
    """

    def __init__(
        self,
        run_id: str,
        *,
        local: Path | None,
        kms: KmsClient,
        master_key_id: str | None = None,
        copy_to: str | None = None,
        connection: Mapping[str, Any] | None = None,
        base_dir: Path = Path("."),
        job_name: str = "job",
        retention: Retention | None = None,
    ) -> None:
        if local is None and copy_to is None:
            raise ConfigError("audit: give 'log' (a local file) and/or 'copy_to' (s3://bucket/prefix or a folder)")
        self.run_id = run_id
        self.local = local
        self.records: list[dict[str, Any]] = []
        self._kms = kms
        self._master_key_id = master_key_id
        self._key: bytes | None = None
        self._memory_head = (0, GENESIS)
        self._run_lock: IO[bytes] | None = None
        self._lock_path: Path | None = None
        self._retention = retention
        self._connection = dict(connection or {})
        self._copy: tuple[pafs.FileSystem, str, str] | None = None
        if copy_to is not None:
            fs, root = filesystem_for(copy_to, connection or {}, base_dir)
            name = f"{job_name}/{run_id}.audit.jsonl"
            shown = f"{copy_to.rstrip('/')}/{name}"
            self._copy = (fs, f"{root}/{name}", redact(shown))
        if retention is not None and not (copy_to or "").startswith("s3://"):
            raise ConfigError("encrypted-parquet target: options.audit.retention_days needs an s3:// copy_to")
        if local is not None:
            try:
                local.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"audit: cannot create the folder of {local} ({exc.strerror})") from None

    @property
    def head(self) -> str:
        """The ``hash`` of the last record this run appended (:data:`GENESIS` before any)."""
        return self.records[-1]["hash"] if self.records else GENESIS

    @property
    def copy_location(self) -> str | None:
        """Where :meth:`publish_copy` puts the log (secrets masked), or None."""
        return self._copy[2] if self._copy else None

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one record and return it.

        Raises TargetError when the local log cannot be written or its last record
        or chain key record is damaged, KmsError when the chain key cannot be made or opened.
        """
        base = {"event": event, "run_id": self.run_id, "ts": _now(), **fields}
        if self.local is None:
            if self._key is None:
                key_record = self._new_chain_key()
                self._memory_head = (1, key_record["hash"])
                self.records.append(key_record)
            seq, prev = self._memory_head
            assert self._key is not None
            record = _seal(base, seq + 1, prev, self._key)
            self._memory_head = (record["seq"], record["hash"])
        else:
            try:
                with _locked_append(self.local) as handle:
                    self._load_key(handle)
                    seq, prev = _tail(handle, self.local)
                    assert self._key is not None
                    record = _seal(base, seq + 1, prev, self._key)
                    _write_line(handle, record)
            except OSError as exc:
                raise TargetError(f"audit log {self.local} cannot be written ({exc.strerror or exc})") from None
        self.records.append(record)
        return record

    def _new_chain_key(self) -> dict[str, Any]:
        if not self._master_key_id:
            where = self.local or self.copy_location
            raise ConfigError(f"audit log {where} does not exist yet and no master key is given to create it")
        key = os.urandom(32)
        register_key_material(key)
        wrapped = self._kms.wrap_key(key, self._master_key_id, CHAIN_CONTEXT)
        base = {
            "event": CHAIN_KEY_EVENT,
            "run_id": self.run_id,
            "ts": _now(),
            "alg": "HMAC-SHA256",
            "master_key_id": self._master_key_id,
            "wrapped_key": wrapped,
            "kms": self._kms.describe(),
        }
        self._key = key
        return _seal(base, 1, GENESIS, key)

    def _load_key(self, handle: IO[bytes]) -> None:
        if self._key is not None:
            return
        handle.seek(0)
        first = handle.readline()
        if not first.strip():
            record = self._new_chain_key()
            handle.seek(0)
            handle.truncate()
            _write_line(handle, record)
            return
        try:
            record = json.loads(first)
        except ValueError:
            raise TargetError(
                f"audit log {self.local}: its first record is damaged; run 'dativo audit verify'"
            ) from None
        if not isinstance(record, dict) or record.get("event") != CHAIN_KEY_EVENT:
            raise TargetError(
                f"audit log {self.local} is not keyed (written by an older dativo); start a new log (options.audit.log)"
            )
        key = open_chain_key(record, self._kms)
        if not hmac.compare_digest(record_hash(record, key), str(record.get("hash"))):
            raise TargetError(f"audit log {self.local}: the chain key record was edited; run 'dativo audit verify'")
        self._key = key

    # -- liveness of runs: a run holds an flock on its own lock file while it lives --

    def begin_run(self) -> None:
        """Mark this run alive (an flock a SIGKILL releases); raises TargetError if the same run id is running."""
        if self.local is None or self._run_lock is not None:
            return
        path = _lock_path(self.local, self.run_id)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+b")  # noqa: SIM115 - held for the whole run
        except OSError as exc:
            raise TargetError(f"audit log {self.local}: cannot create {path} ({exc.strerror})") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise TargetError(f"run {self.run_id} is already running (audit log {self.local}); wait for it") from None
        self._run_lock, self._lock_path = handle, path

    def end_run(self) -> None:
        """Release this run's liveness lock; never raises."""
        handle, path = self._run_lock, self._lock_path
        self._run_lock = self._lock_path = None
        if handle is not None and path is not None:
            with contextlib.suppress(OSError):
                path.unlink()
            handle.close()

    def dead_runs(self) -> list[DeadRun]:
        """Runs in the local log that started, never ended and hold no liveness lock (their process died)."""
        if self.local is None or not self.local.exists():
            return []
        open_runs: dict[str, DeadRun] = {}
        with self.local.open("rb") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # verify names damaged lines; closing runs needs only the intact ones
                if not isinstance(record, dict):
                    continue
                event, run_id = record.get("event"), str(record.get("run_id", ""))
                if event == "run_start":
                    open_runs[run_id] = DeadRun(run_id, [record])
                elif event == "run_end":
                    open_runs.pop(run_id, None)
                elif event == "run_abandoned":
                    open_runs.pop(str(record.get("abandoned_run", "")), None)
                elif run_id in open_runs:
                    open_runs[run_id].records.append(record)
        return [run for run in open_runs.values() if not _alive(self.local, run.run_id)]

    def publish_copy(self) -> str | None:
        """Upload the log to ``copy_to`` (with Object Lock retention when configured); returns where (or None).

        Raises TargetError when the upload fails (for example a bucket without Object Lock and ``retention_days``).
        """
        if self._copy is None:
            return None
        fs, path, shown = self._copy
        if self.local is not None:
            data = self.local.read_bytes()
        else:
            data = b"".join(canonical(record) + b"\n" for record in self.records)
        try:
            if self._retention is not None:
                self._put_locked(path, data)
                return shown
            if isinstance(fs, pafs.LocalFileSystem):
                fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            with fs.open_output_stream(path) as stream:
                stream.write(data)
        except (OSError, pa.ArrowException) as exc:
            raise TargetError(f"audit: cannot copy the log to {shown}: {redact(str(exc))}") from None
        return shown

    def _put_locked(self, path: str, data: bytes) -> None:
        assert self._retention is not None
        bucket, _, key = path.partition("/")
        client = s3_client(self._connection)
        until = datetime.now(UTC) + timedelta(days=self._retention.days)
        try:
            client.put_object(
                Bucket=bucket,
                Key=key,
                Body=data,
                ContentMD5=base64.b64encode(hashlib.md5(data).digest()).decode(),  # S3 requires it with Object Lock
                ObjectLockMode=self._retention.mode,
                ObjectLockRetainUntilDate=until,
            )
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
            raise TargetError(
                f"audit: cannot write the locked copy s3://{bucket}/{key} ({code}: {scrub(str(exc))}); "
                "the bucket must have Object Lock enabled for options.audit.retention_days"
            ) from None


def s3_client(connection: Mapping[str, Any]) -> Any:
    """A boto3 S3 client for a job's ``connection:`` mapping; raises ConfigError without boto3."""
    try:
        import boto3
    except ImportError:
        raise ConfigError("audit retention needs boto3: pip install 'dativo[encryption]'") from None
    kwargs: dict[str, Any] = {"region_name": connection.get("region") or None}
    if connection.get("endpoint_url"):
        kwargs["endpoint_url"] = str(connection["endpoint_url"])
    if connection.get("access_key_id"):
        kwargs["aws_access_key_id"] = str(connection["access_key_id"])
        kwargs["aws_secret_access_key"] = str(connection.get("secret_access_key") or "")
        if connection.get("session_token"):
            kwargs["aws_session_token"] = str(connection["session_token"])
    return boto3.client("s3", **kwargs)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _seal(base: Mapping[str, Any], seq: int, prev: str, key: bytes) -> dict[str, Any]:
    record = {**base, "seq": seq, "prev": prev}
    record["hash"] = record_hash(record, key)
    return record


def _write_line(handle: IO[bytes], record: Mapping[str, Any]) -> None:
    handle.write(canonical(record) + b"\n")
    handle.flush()
    os.fsync(handle.fileno())


def _lock_path(local: Path, run_id: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)
    return local.parent / f".{local.name}.runs" / f"{safe}.lock"


def _alive(local: Path, run_id: str) -> bool:
    path = _lock_path(local, run_id)
    try:
        handle = open(path, "rb")  # noqa: SIM115
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        path.unlink()
    return False


@contextlib.contextmanager
def _locked_append(path: Path) -> Iterator[IO[bytes]]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield handle
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _tail(handle: IO[bytes], path: Path) -> tuple[int, str]:
    """``(seq, hash)`` of the last record of an open log, ``(0, GENESIS)`` when it is empty."""
    end = handle.seek(0, os.SEEK_END)
    if end == 0:
        return 0, GENESIS
    block = b""
    position = end
    while position > 0:
        step = min(65536, position)
        position -= step
        handle.seek(position)
        block = handle.read(step) + block
        lines = block.rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or position == 0:
            try:
                last = json.loads(lines[-1])
                return int(last["seq"]), str(last["hash"])
            except (ValueError, KeyError, TypeError):
                raise TargetError(
                    f"audit log {path}: the last record is damaged; run 'dativo audit verify' on it and start a new log"
                ) from None
    return 0, GENESIS
