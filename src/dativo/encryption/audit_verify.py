"""``dativo audit verify``: check an audit log's keyed chain, its runs, and every data file it records.

Every problem is reported (not only the first): a damaged, edited, deleted,
inserted or reordered record; a record whose HMAC does not match (a forged
record: whoever wrote it could not unwrap the chain key); a run that never
ended and was never closed by a later run; and for every data file the log
knows about, whether it is what the log says: a file of a committed run must
exist with the recorded size and SHA-256, a file of a run that never committed
(or that a later ``overwrite`` replaced) must be gone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyarrow import fs as pafs

from dativo._secrets import redact
from dativo.encryption.audit import CHAIN_KEY_EVENT, GENESIS, canonical, open_chain_key, record_hash
from dativo.encryption.kms import KmsClient, load_kms, scrub
from dativo.errors import ConfigError, DativoError
from dativo.storage import filesystem_for

__all__ = ["Problem", "VerifyResult", "verify", "verify_text"]

_CHUNK = 8 * 1024 * 1024
FileOpener = Callable[[str], tuple[pafs.FileSystem, str]]
KmsSource = Callable[[Mapping[str, Any]], tuple[KmsClient, str | None]]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the log or a file it records; ``line``/``seq`` locate the record."""

    message: str
    line: int | None = None
    seq: int | None = None


@dataclass
class VerifyResult:
    """Outcome of :func:`verify`: every problem found, in log order (files last)."""

    records: int = 0
    runs: int = 0
    files_checked: int = 0
    head: str = GENESIS
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the whole chain and every recorded file are intact."""
        return not self.problems

    @property
    def problem(self) -> str | None:
        """The first problem's message, or None."""
        return self.problems[0].message if self.problems else None

    @property
    def line(self) -> int | None:
        """The line of the first problem."""
        return self.problems[0].line if self.problems else None

    @property
    def seq(self) -> int | None:
        """The seq of the first problem."""
        return self.problems[0].seq if self.problems else None


def verify(
    location: str,
    *,
    check_files: bool = True,
    connection: Mapping[str, Any] | None = None,
    base_dir: Path | None = None,
    kms: KmsClient | None = None,
) -> VerifyResult:
    """Verify the audit log at ``location`` (a local path or ``s3://...``).

    ``kms`` opens the chain key (the job's KMS); without it, the KMS the log
    names in its ``chain_key`` record is used and a note says so. Raises
    ConfigError when the log itself cannot be read.
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

    def kms_for(record: Mapping[str, Any]) -> tuple[KmsClient, str | None]:
        if kms is not None:
            return kms, None
        described = dict(record.get("kms") or {})
        return load_kms(described, base), (
            f"chain key opened with the KMS the log names ({described.get('type')}); "
            "pass --job or --kms-config to verify against your own KMS configuration"
        )

    return verify_text(data, opener if check_files else None, kms_for)


@dataclass
class _Run:
    records: list[dict[str, Any]] = field(default_factory=list)


def verify_text(data: bytes, open_file: FileOpener | None, kms_for: KmsSource) -> VerifyResult:
    """Verify a log's bytes; ``open_file`` maps a recorded path to ``(filesystem, path)`` (None: skip files)."""
    result = VerifyResult()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    else:
        result.notes.append("the log does not end with a newline")
    key = _chain_key(lines, result, kms_for)
    prev_hash, prev_seq, resync = GENESIS, 0, False
    open_runs: dict[str, tuple[int, _Run]] = {}
    expected: dict[str, tuple[bool, int, dict[str, Any]]] = {}  # path -> (present?, line, file record)
    for index, line in enumerate(lines, start=1):
        problems = result.problems
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            problems.append(Problem(f"line {index}: not valid JSON (the record was edited or truncated)", index))
            resync = True
            continue
        if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
            problems.append(Problem(f"line {index}: not an audit record (no 'seq')", index))
            resync = True
            continue
        seq = int(record["seq"])
        where = f"record seq {seq} (line {index}, {record.get('event', '?')})"
        if canonical(record) != line:
            problems.append(Problem(f"{where}: not in canonical form (the line was edited)", index, seq))
        if key is not None and not hmac.compare_digest(str(record.get("hash")), record_hash(record, key)):
            problems.append(
                Problem(f"{where}: its hash does not match its content (the record was edited or forged)", index, seq)
            )
        order = _order_problem(seq, prev_seq, lines, index)
        if order is not None and not resync:
            problems.append(Problem(f"{where}: {order}", index, seq))
        elif order is None and record.get("prev") != prev_hash and not resync:
            problems.append(
                Problem(f"{where}: 'prev' does not match the hash of the record before it (chain broken)", index, seq)
            )
        resync = False
        _track(record, index, open_runs, expected, result)
        prev_hash, prev_seq = str(record.get("hash")), seq
        result.records += 1
    result.head = prev_hash
    for run_id, (line_no, run) in sorted(open_runs.items(), key=lambda item: item[1][0]):
        start = run.records[0]
        result.problems.append(
            Problem(
                f"record seq {start.get('seq')} (line {line_no}, run_start): run {run_id} has no run_end record "
                "(the end of the log was deleted, or the run was killed and no later run closed it)",
                line_no,
                int(start.get("seq", 0)),
            )
        )
    if open_file is not None:
        for path, (present, line_no, rec) in expected.items():
            problem = _check_file(rec, open_file) if present else _check_absent(path, open_file)
            if problem is not None:
                message = f"record seq {rec['seq']} (line {line_no}, file): {problem}"
                result.problems.append(Problem(message, line_no, int(rec["seq"])))
            else:
                result.files_checked += 1
    return result


def _chain_key(lines: list[bytes], result: VerifyResult, kms_for: KmsSource) -> bytes | None:
    try:
        first = json.loads(lines[0]) if lines else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        first = {}
    if not isinstance(first, dict) or first.get("event") != CHAIN_KEY_EVENT:
        result.problems.append(
            Problem("line 1: the log is not keyed (no chain_key record): its hashes prove nothing", 1)
        )
        return None
    try:
        kms, note = kms_for(first)
        try:
            key = open_chain_key(first, kms)
        finally:
            if note is not None:
                kms.close()
    except DativoError as exc:
        result.problems.append(Problem(f"line 1: the chain key cannot be opened: {scrub(str(exc))}", 1, 1))
        return None
    if note is not None:
        result.notes.append(note)
    return key


def _order_problem(seq: int, prev_seq: int, lines: list[bytes], index: int) -> str | None:
    if seq == prev_seq + 1:
        return None
    if seq <= prev_seq:
        return f"comes after seq {prev_seq} (records were reordered or duplicated)"
    expected = re.compile(rb'"seq":%d[,}]' % (prev_seq + 1))
    if any(expected.search(later) for later in lines[index:]):
        return f"comes before seq {prev_seq + 1} (records were reordered)"
    missing = f"seq {prev_seq + 1}" + (f"-{seq - 1}" if seq - 1 > prev_seq + 1 else "")
    return f"{missing} missing before it (a record was deleted)"


def _track(
    record: dict[str, Any],
    index: int,
    open_runs: dict[str, tuple[int, _Run]],
    expected: dict[str, tuple[bool, int, dict[str, Any]]],
    result: VerifyResult,
) -> None:
    """Follow runs through the log; when one closes, decide which of its files must exist."""
    run_id, event = str(record.get("run_id", "")), record.get("event")
    if event == "run_start":
        open_runs[run_id] = (index, _Run([{**record, "_line": index}]))
        result.runs += 1
        return
    closing: str | None = None
    committed = False
    if event == "run_end":
        closing, committed = run_id, record.get("status") == "succeeded"
    elif event == "run_abandoned":
        closing, committed = str(record.get("abandoned_run", "")), record.get("committed") is True
    elif run_id in open_runs:
        open_runs[run_id][1].records.append({**record, "_line": index})
        return
    if closing is None or closing not in open_runs:
        return
    _, run = open_runs.pop(closing)
    for rec in run.records:
        if rec.get("event") == "file":
            expected[str(rec.get("path"))] = (committed, int(rec["_line"]), rec)
    if committed:
        for rec in run.records:
            if rec.get("event") == "commit":
                for path in rec.get("superseded") or []:
                    if path in expected:
                        _, line_no, old = expected[path]
                        expected[path] = (False, line_no, old)


def _check_absent(path: str, open_file: FileOpener) -> str | None:
    try:
        fs, inner = open_file(path)
        info = fs.get_file_info(inner)
    except (OSError, pa.ArrowException, ConfigError) as exc:
        return f"{path} cannot be checked: {redact(str(exc))}"
    if info.type != pafs.FileType.NotFound:
        return f"{path} is still present although its run never committed it (or a later run replaced it)"
    return None


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
