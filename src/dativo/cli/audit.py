"""The encrypted writer's tools: ``audit verify``, ``decrypt``, ``kms new-key-file``, ``kms rewrap``.

Registered on the main ``dativo`` app by :mod:`dativo.cli`. Errors print as one
line (``error: ...``), exit code 1 for a failed check or read, 2 for a bad
command line or job file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import typer

from dativo._secrets import redact
from dativo.cli.common import err, fail, guard, out
from dativo.config.loader import load_job
from dativo.encryption.audit_verify import verify
from dativo.encryption.kms import load_kms, scrub
from dativo.encryption.kms.local import new_key_file
from dativo.errors import ConfigError, DativoError
from dativo.storage import S3_CONNECTION_KEYS

__all__ = ["audit_app", "decrypt", "kms_app"]

T = TypeVar("T")

audit_app = typer.Typer(help="Check audit logs written by the encrypted-parquet writer.", no_args_is_help=True)
kms_app = typer.Typer(help="Key management helpers for the encrypted-parquet writer.", no_args_is_help=True)

JobOpt = Annotated[
    Path | None,
    typer.Option(
        "--job", help="A job file whose target's 'connection' (and 'options.kms') to use.", show_default=False
    ),
]
KmsConfigOpt = Annotated[
    Path | None, typer.Option(help="A YAML/JSON file holding the 'kms:' mapping (instead of the job's).")
]
EndpointOpt = Annotated[str | None, typer.Option(help="S3 endpoint URL (else the job's or AWS's default).")]
RegionOpt = Annotated[str | None, typer.Option(help="S3 region (else the job's or AWS's default).")]


def _fail(exc: BaseException) -> NoReturn:
    fail(exc, scrub)


def _guard(action: Callable[[], T]) -> T:
    return guard(action, scrub)


def _target(job: Path | None) -> tuple[Mapping[str, Any], Mapping[str, Any], Path]:
    """``(connection, options, job dir)`` of a job file's target, or empty ones."""
    if job is None:
        return {}, {}, Path.cwd()
    loaded = load_job(job)
    return loaded.config.target.connection, loaded.config.target.options, loaded.dir


def _connection(base: Mapping[str, Any], endpoint_url: str | None, region: str | None) -> dict[str, Any]:
    connection = {k: v for k, v in base.items() if k in S3_CONNECTION_KEYS}
    if endpoint_url:
        connection["endpoint_url"] = endpoint_url
    if region:
        connection["region"] = region
    return connection


@audit_app.command("verify")
def audit_verify(
    log: Annotated[str, typer.Argument(help="The audit log: a local file or s3://bucket/key.", show_default=False)],
    files: Annotated[bool, typer.Option(help="Also check every data file the log records.")] = True,
    job: JobOpt = None,
    kms_config: KmsConfigOpt = None,
    endpoint_url: EndpointOpt = None,
    region: RegionOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Verify an audit log's keyed chain, its runs and (by default) its files; name every problem."""
    base, options, job_dir = _guard(lambda: _target(job))
    connection = _connection(base, endpoint_url, region)
    kms_mapping, kms_dir = _guard(lambda: _kms_mapping(options, job_dir, kms_config))
    kms = _guard(lambda: load_kms(kms_mapping, kms_dir)) if kms_mapping else None
    try:
        result = _guard(lambda: verify(log, check_files=files, connection=connection, base_dir=job_dir, kms=kms))
    finally:
        if kms is not None:
            kms.close()
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "ok": result.ok,
                    "records": result.records,
                    "runs": result.runs,
                    "files_checked": result.files_checked,
                    "head": result.head,
                    "problem": result.problem,
                    "line": result.line,
                    "seq": result.seq,
                    "problems": [vars(problem) for problem in result.problems],
                    "notes": result.notes,
                }
            )
        )
        if not result.ok:
            raise typer.Exit(1)
        return
    for note in result.notes:
        err.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    if not result.ok:
        count = len(result.problems)
        for problem in result.problems:
            err.print(
                f"error: audit log {redact(log)} is broken ({count} problem{'s' if count > 1 else ''}): "
                f"{problem.message}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        raise typer.Exit(1)
    checked = f"{result.files_checked} files match the log" if files else "files not checked"
    out.print(
        f"ok {redact(log)}: {result.records} records, {result.runs} runs, {checked}; head {result.head}",
        highlight=False,
        soft_wrap=True,
    )


def _kms_mapping(options: Mapping[str, Any], job_dir: Path, kms_config: Path | None) -> tuple[Any, Path]:
    """The ``kms:`` mapping from ``--kms-config`` or the job's target options, and the folder it is relative to."""
    if kms_config is None:
        return options.get("kms"), job_dir
    import yaml

    try:
        mapping = yaml.safe_load(kms_config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--kms-config {kms_config} cannot be read: {exc}") from None
    mapping = mapping.get("kms", mapping) if isinstance(mapping, dict) else mapping
    return mapping, kms_config.resolve().parent


def decrypt(
    location: Annotated[str, typer.Argument(help="An encrypted Parquet file or folder (local or s3://).")],
    job: JobOpt = None,
    kms_config: KmsConfigOpt = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the plaintext here (.parquet, .csv or .jsonl); else JSON lines."),
    ] = None,
    columns: Annotated[str | None, typer.Option(help="Comma-separated columns to read (default: all).")] = None,
    audit_log: Annotated[
        Path | None, typer.Option(help="The audit log that records this read (default: the job's audit log).")
    ] = None,
    endpoint_url: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """Decrypt files written by the encrypted-parquet writer; the read is recorded in the audit log."""
    from dativo.cli.access import job_audit_log, record_access
    from dativo.targets.encrypted_parquet import read_encrypted_files

    def run() -> None:
        base, options, job_dir = _target(job)
        kms_mapping, kms_dir = _kms_mapping(options, job_dir, kms_config)
        if not kms_mapping:
            raise ConfigError("decrypt: give --job JOB (with target.options.kms) or --kms-config FILE")
        kms = load_kms(kms_mapping, kms_dir)
        wanted = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
        try:
            audit = job_audit_log(options, job, job_dir, audit_log, kms, base)
            try:
                table, read = read_encrypted_files(
                    location,
                    kms,
                    connection=_connection(base, endpoint_url, region),
                    base_dir=job_dir,
                    columns=wanted,
                )
            except DativoError as exc:
                record_access(audit, location, wanted, [], error=str(exc))
                raise
            record_access(audit, location, wanted or table.column_names, read)
        finally:
            kms.close()
        _emit(table, output)

    _guard(run)


def _emit(table: pa.Table, output: Path | None) -> None:
    if output is None:
        for row in table.to_pylist():
            sys.stdout.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
        return
    suffix = output.suffix.lower()
    if suffix == ".parquet":
        pq.write_table(table, output, compression="zstd")
    elif suffix == ".csv":
        pacsv.write_csv(table, output)
    elif suffix in (".jsonl", ".json"):
        with output.open("w", encoding="utf-8") as handle:
            for row in table.to_pylist():
                handle.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
    else:
        raise ConfigError(f"--output {output}: use a .parquet, .csv or .jsonl file name")
    err.print(f"wrote {table.num_rows:,} rows to {output} (plaintext)", highlight=False, soft_wrap=True)


@kms_app.command("new-key-file")
def kms_new_key_file(
    path: Annotated[Path, typer.Argument(help="The key file to create (mode 0600).", show_default=False)],
    key: Annotated[list[str], typer.Option("--key", "-k", help="A master key id; repeat for several.")],
    bits: Annotated[int, typer.Option(help="Key length: 128, 192 or 256.")] = 256,
) -> None:
    """Create a key file for the 'local' KMS with a fresh random master key per --key (development only)."""
    _guard(lambda: new_key_file(path, key, bits // 8))
    out.print(f"created {path} with keys {', '.join(key)} (mode 0600)", highlight=False, soft_wrap=True)


@kms_app.command("rewrap")
def kms_rewrap(
    location: Annotated[str, typer.Argument(help="An encrypted-parquet dataset folder (local or s3://).")],
    job: Annotated[Path, typer.Option("--job", help="The job that writes it (its KMS, S3 settings, audit log).")],
    old_key: Annotated[str, typer.Option("--from", help="The master key whose wraps to replace.")],
    new_key: Annotated[str, typer.Option("--to", help="The master key to wrap under instead.")],
    endpoint_url: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """Re-wrap the keys of existing files under another master key, without re-encrypting data; audited."""
    from dativo.cli.access import job_audit_log
    from dativo.targets._encryption import rewrap_dataset

    def run() -> list[dict[str, Any]]:
        base, options, job_dir = _target(job)
        if not options.get("kms"):
            raise ConfigError(f"kms rewrap: job {job} has no target.options.kms")
        kms = load_kms(options["kms"], job_dir)
        try:
            audit = job_audit_log(options, job, job_dir, None, kms, base)
            connection = _connection(base, endpoint_url, region)
            try:
                done = rewrap_dataset(location, kms, old_key, new_key, connection=connection, base_dir=job_dir)
            except DativoError as exc:
                audit.append(
                    "rewrap", location=redact(location), old_key=old_key, new_key=new_key, error=scrub(str(exc))
                )
                raise
            audit.append(
                "rewrap",
                location=redact(location),
                old_key=old_key,
                new_key=new_key,
                new_key_id=kms.resolve_key_id(new_key),
                files=done,
            )
            audit.publish_copy()
            return done
        finally:
            kms.close()

    done = _guard(run)
    keys = sum(int(entry["keys"]) for entry in done)
    out.print(
        f"re-wrapped {keys} keys in {len(done)} files of {redact(location)} from {old_key} to {new_key}",
        highlight=False,
        soft_wrap=True,
    )
