"""A tamper-evident audit trail: an append-only, hash-chained JSON-lines log.

Every record is one line of *canonical* JSON (keys sorted, no spaces, UTF-8)
carrying ``seq`` (1, 2, 3, ... over the whole log), ``prev`` (the ``hash`` of
the previous record; 64 zeros for the first) and ``hash`` (SHA-256 of the
canonical encoding of the record without its ``hash`` key). Changing a byte,
deleting, inserting or reordering lines therefore breaks the chain at a record
:func:`verify` can name; deleting the tail shows as a run without its
``run_end`` record. ``file`` records carry the SHA-256 of each published file,
so :func:`verify` also detects a replaced or modified data file.

Events: ``run_start`` (job identity, KMS description, key ids), ``file``
(path, size, rows, sha256, key ids), ``failure`` (a one-line error, scrubbed
of secrets) and ``run_end`` (status, totals).
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import os
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
from pyarrow import fs as pafs

from dativo import __version__
from dativo._secrets import redact
from dativo.errors import ConfigError, TargetError
from dativo.storage import filesystem_for

__all__ = ["GENESIS", "AuditLog", "VerifyResult", "canonical", "record_hash", "verify", "verify_text"]

#: ``prev`` of the first record of a log.
GENESIS = "0" * 64
_CHUNK = 8 * 1024 * 1024


def canonical(record: Mapping[str, Any]) -> bytes:
    """The canonical encoding of ``record``: JSON with sorted keys, no whitespace, UTF-8."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical encoding of ``record`` without its ``hash`` key."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def job_identity(config: Mapping[str, Any], writer: str) -> dict[str, Any]:
    """Who ran what, for ``run_start``: job name and run id, host, OS user, writer, dativo version. No secrets."""
    job = config.get("job", {})
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {
        "name": str(job.get("name", "")),
        "run_id": str(job.get("run_id", "")),
        "dir": str(job.get("dir", "")),
        "writer": writer,
        "target": redact(str(config.get("path") or config.get("table") or "")),
        "host": socket.gethostname(),
        "user": user,
        "dativo_version": __version__,
    }


class AuditLog:
    """Appends records of one run to a local log and/or keeps them for a copy on object storage.

    ``local``: the log file (created if missing, appended under an exclusive
    lock so concurrent runs interleave whole records). ``copy_to``: an
    ``s3://bucket/prefix`` (or folder) to which :meth:`publish_copy` uploads the
    log at the end of the run as ``<prefix>/<job>/<run_id>.audit.jsonl`` — the
    whole local log when there is one (so the copy verifies on its own), else
    this run's records chained from :data:`GENESIS`.
    """

    def __init__(
        self,
        run_id: str,
        *,
        local: Path | None,
        copy_to: str | None = None,
        connection: Mapping[str, Any] | None = None,
        base_dir: Path = Path("."),
        job_name: str = "job",
    ) -> None:
        if local is None and copy_to is None:
            raise ConfigError("audit: give 'log' (a local file) and/or 'copy_to' (s3://bucket/prefix or a folder)")
        self.run_id = run_id
        self.local = local
        self.records: list[dict[str, Any]] = []
        self._memory_head = (0, GENESIS)
        self._copy: tuple[pafs.FileSystem, str, str] | None = None
        if copy_to is not None:
            fs, root = filesystem_for(copy_to, connection or {}, base_dir)
            name = f"{job_name}/{run_id}.audit.jsonl"
            shown = f"{copy_to.rstrip('/')}/{name}"
            self._copy = (fs, f"{root}/{name}", redact(shown))
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
        """Append one record and return it. Raises TargetError when the local log cannot be written."""
        base = {"event": event, "run_id": self.run_id, "ts": datetime.now(UTC).isoformat(), **fields}
        if self.local is None:
            seq, prev = self._memory_head
            record = self._seal(base, seq + 1, prev)
            self._memory_head = (record["seq"], record["hash"])
        else:
            try:
                with _locked_append(self.local) as handle:
                    seq, prev = _tail(handle, self.local)
                    record = self._seal(base, seq + 1, prev)
                    handle.write(canonical(record) + b"\n")
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as exc:
                raise TargetError(f"audit log {self.local} cannot be written ({exc.strerror or exc})") from None
        self.records.append(record)
        return record

    @staticmethod
    def _seal(base: Mapping[str, Any], seq: int, prev: str) -> dict[str, Any]:
        record = {**base, "seq": seq, "prev": prev}
        record["hash"] = record_hash(record)
        return record

    def publish_copy(self) -> str | None:
        """Upload the log to ``copy_to``; returns where (or None). Raises TargetError when the upload fails."""
        if self._copy is None:
            return None
        fs, path, shown = self._copy
        if self.local is not None:
            data = self.local.read_bytes()
        else:
            data = b"".join(canonical(record) + b"\n" for record in self.records)
        try:
            if isinstance(fs, pafs.LocalFileSystem):
                fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            with fs.open_output_stream(path) as stream:
                stream.write(data)
        except (OSError, pa.ArrowException) as exc:
            raise TargetError(f"audit: cannot copy the log to {shown}: {redact(str(exc))}") from None
        return shown


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


# ---------------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------------


@dataclass
class VerifyResult:
    """Outcome of :func:`verify`. ``ok`` is False at the first problem, which ``problem`` describes."""

    records: int = 0
    runs: int = 0
    files_checked: int = 0
    head: str = GENESIS
    problem: str | None = None
    line: int | None = None
    seq: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the whole chain and every checked file are intact."""
        return self.problem is None


FileOpener = Callable[[str], tuple[pafs.FileSystem, str]]


def verify(
    location: str,
    *,
    check_files: bool = True,
    connection: Mapping[str, Any] | None = None,
    base_dir: Path | None = None,
) -> VerifyResult:
    """Verify the audit log at ``location`` (a local path or ``s3://...``).

    Checks every record's canonical form, its own hash, the chain of ``prev``
    hashes and sequence numbers, that every run that started also ended, and
    (``check_files``) that every file a *succeeded* run published still has the
    recorded size and SHA-256. Stops at the first problem. Raises ConfigError
    when the log itself cannot be read.
    """
    base = base_dir or Path.cwd()
    fs, path = filesystem_for(location, connection or {}, base)
    try:
        with fs.open_input_stream(path) as stream:
            data = stream.read()
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(f"audit log {redact(location)} cannot be read: {redact(str(exc))}") from None

    def opener(file_path: str) -> tuple[pafs.FileSystem, str]:
        return filesystem_for(file_path, connection or {}, base)

    return verify_text(data, opener if check_files else None)


def verify_text(data: bytes, open_file: FileOpener | None) -> VerifyResult:
    """Verify a log's bytes; ``open_file`` maps a recorded path to ``(filesystem, path)`` (None: skip files)."""
    result = VerifyResult()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    else:
        result.notes.append("the log does not end with a newline")
    prev_hash, prev_seq = GENESIS, 0
    open_runs: dict[str, int] = {}
    runs: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for index, line in enumerate(lines, start=1):

        def fail(message: str, seq: int | None = None, line_no: int = index) -> VerifyResult:
            result.problem, result.line, result.seq = message, line_no, seq
            return result

        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return fail(f"line {index}: not valid JSON (the record was edited or truncated)")
        if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
            return fail(f"line {index}: not an audit record (no 'seq')")
        seq = int(record["seq"])
        where = f"record seq {seq} (line {index}, {record.get('event', '?')})"
        if canonical(record) != line:
            return fail(f"{where}: not in canonical form (the line was edited)", seq)
        if record.get("hash") != record_hash(record):
            return fail(f"{where}: its hash does not match its content (the record was edited)", seq)
        if seq != prev_seq + 1:
            if seq <= prev_seq:
                return fail(f"{where}: comes after seq {prev_seq} (records were reordered or duplicated)", seq)
            expected = re.compile(rb'"seq":%d[,}]' % (prev_seq + 1))
            if any(expected.search(later) for later in lines[index:]):
                return fail(f"{where}: comes before seq {prev_seq + 1} (records were reordered)", seq)
            missing = f"seq {prev_seq + 1}" + (f"-{seq - 1}" if seq - 1 > prev_seq + 1 else "")
            return fail(f"{where}: {missing} missing before it (a record was deleted)", seq)
        if record.get("prev") != prev_hash:
            return fail(f"{where}: 'prev' does not match the hash of the record before it (chain broken)", seq)
        run_id = str(record.get("run_id", ""))
        event = record.get("event")
        if event == "run_start":
            open_runs[run_id] = index
            result.runs += 1
        elif event == "run_end":
            open_runs.pop(run_id, None)
        runs.setdefault(run_id, []).append((index, record))
        prev_hash, prev_seq = str(record["hash"]), seq
        result.records += 1
    result.head = prev_hash
    if open_runs:
        run_id, line_no = min(open_runs.items(), key=lambda item: item[1])
        return _fail_open_run(result, run_id, line_no, runs[run_id][0][1])
    if open_file is not None:
        for entries in runs.values():
            ends = [rec for _, rec in entries if rec.get("event") == "run_end"]
            if not ends or ends[-1].get("status") != "succeeded":
                continue
            for line_no, rec in entries:
                if rec.get("event") != "file":
                    continue
                problem = _check_file(rec, open_file)
                if problem is not None:
                    result.problem = f"record seq {rec['seq']} (line {line_no}, file): {problem}"
                    result.line, result.seq = line_no, int(rec["seq"])
                    return result
                result.files_checked += 1
    return result


def _fail_open_run(result: VerifyResult, run_id: str, line_no: int, start: Mapping[str, Any]) -> VerifyResult:
    result.problem = (
        f"record seq {start.get('seq')} (line {line_no}, run_start): run {run_id} has no run_end record "
        "(the end of the log was deleted, or the run was killed)"
    )
    result.line, result.seq = line_no, int(start.get("seq", 0))
    return result


def _check_file(record: Mapping[str, Any], open_file: FileOpener) -> str | None:
    path = str(record.get("path", ""))
    try:
        fs, inner = open_file(path)
        digest = hashlib.sha256()
        size = 0
        with fs.open_input_stream(inner) as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        return f"{path} is missing"
    except (OSError, pa.ArrowException, ConfigError) as exc:
        text = redact(str(exc))
        if "not found" in text.lower() or "does not exist" in text.lower() or "NoSuchKey" in text:
            return f"{path} is missing"
        return f"{path} cannot be read: {text}"
    if size != record.get("size") or digest.hexdigest() != record.get("sha256"):
        return f"{path} does not match its recorded SHA-256 and size (the file was replaced or modified)"
    return None
