"""encrypted-parquet as a dataset: crashes, re-runs, the keyed audit chain, access records, key rotation.

Every run is the real ``dativo`` command in a subprocess; crashes are real SIGKILLs
at named points (``DATIVO_CRASH_AT``, src/dativo/_faults.py); keys come from a
local key file or moto's KMS over HTTP, objects go to moto's S3.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import uuid
from datetime import UTC, datetime
from pathlib import Path

import botocore.exceptions
import pytest

from dativo.encryption.audit import AuditLog, canonical
from dativo.encryption.kms.aws import AwsKms
from dativo.encryption.kms.local import LocalKeyFileKms
from dativo.targets.encrypted_parquet import read_encrypted
from test_encrypted_parquet import audit_records, aws_target, csv_source, local_target, write_job

from support.cli import assert_one_line_error, dativo
from support.kms_fixtures import write_key_file

ROWS = 3000
ROLLING = {"target_file_size_mb": 0.01, "row_group_size_mb": 0.005}
LANES = {"DATIVO_PARQUET_LANES": "1"}


def rolling_job(tmp_path: Path, **target_options) -> Path:
    target = local_target(**{**ROLLING, **target_options})
    return write_job(tmp_path, csv_source(tmp_path, rows=ROWS), target, engine={"batch_size": 250})


def run(job: Path, crash_at: str | None = None, *args: str):
    env = {**LANES, **({"DATIVO_CRASH_AT": crash_at} if crash_at else {})}
    return dativo("run", job, "--quiet", *args, env=env)


def visible_rows(tmp_path: Path) -> int:
    """Rows of the dataset as its manifest lists it (what ``dativo decrypt`` and any manifest reader see)."""
    if not list((tmp_path / "out" / "_dativo").glob("manifest-*.json")) or not manifest_files(tmp_path):
        return 0  # nothing committed yet (at most the empty folder's baseline manifest)
    kms = LocalKeyFileKms({"type": "local", "key_file": "keys.json"}, tmp_path)
    return read_encrypted(str(tmp_path / "out"), kms).num_rows


def verify(tmp_path: Path, *extra: str):
    return dativo("audit", "verify", tmp_path / "audit.jsonl", "--job", tmp_path / "phi.yaml", *extra)


def manifest_files(tmp_path: Path) -> list[str]:
    latest = sorted((tmp_path / "out" / "_dativo").glob("manifest-*.json"))[-1]
    return sorted(json.loads(latest.read_text())["files"])


def parquet_on_disk(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "out").glob("*.parquet"))


# ---------------------------------------------------------------------------------------------
# Issue 13 item 4: SIGKILL at every publish step leaves nothing or everything visible
# ---------------------------------------------------------------------------------------------

PUBLISH_POINTS = [
    "batch:2",  # mid-stream
    "before_finalize",  # everything staged, nothing recorded
    "audit_recorded",  # file + commit records appended, nothing moved
    "file_moved:1",  # one of several files moved into the folder
    "files_published",  # every file moved, manifest not written
    "after_commit",  # manifest written, run_end not
    "after_finalize",  # everything done but the process exit
]


@pytest.mark.parametrize("point", PUBLISH_POINTS)
def test_sigkill_at_each_publish_step_leaves_nothing_or_everything(tmp_path, key_file, point):
    job = rolling_job(tmp_path)
    assert run(job).returncode == 0
    assert visible_rows(tmp_path) == ROWS
    before = manifest_files(tmp_path)
    assert len(before) >= 2  # several files, so that "one file moved" is a real intermediate state

    crashed = run(job, point)
    assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stderr)
    committed = point in ("after_commit", "after_finalize")
    assert visible_rows(tmp_path) == (2 * ROWS if committed else ROWS)
    if not committed:
        assert manifest_files(tmp_path) == before

    rerun = run(job)
    assert rerun.returncode == 0, rerun.stderr
    assert visible_rows(tmp_path) == (3 if committed else 2) * ROWS
    assert manifest_files(tmp_path) == parquet_on_disk(tmp_path)  # nothing unlisted left behind
    assert not list((tmp_path / "out").glob("_dativo_tmp_*"))  # the dead run's staging folder is gone

    events = [r for r in audit_records(tmp_path / "audit.jsonl") if r["event"] == "run_abandoned"]
    if point == "after_finalize":
        assert events == []  # the run ended in the log before it died
    else:
        (abandoned,) = events
        assert abandoned["committed"] is committed
    result = verify(tmp_path)
    assert result.returncode == 0, result.stderr
    recorded = sum(1 for r in audit_records(tmp_path / "audit.jsonl") if r["event"] == "file")
    assert f"{recorded} files match the log" in result.stdout  # present ones and gone ones alike


@pytest.mark.parametrize("point", ["file_moved:1", "files_published", "after_commit"])
def test_sigkill_with_external_key_material_leaves_no_orphaned_key_files(tmp_path, key_file, point):
    job = rolling_job(tmp_path, key_material="external")
    assert run(job).returncode == 0
    assert run(job, point).returncode == -signal.SIGKILL
    target = local_target(key_material="external")
    target["mode"] = "overwrite"  # the good run also replaces everything: old key material must go too
    write_job(tmp_path, csv_source(tmp_path, rows=ROWS), {**target, "options": {**target["options"], **ROLLING}})
    assert run(job).returncode == 0
    data = parquet_on_disk(tmp_path)
    assert data == manifest_files(tmp_path) and visible_rows(tmp_path) == ROWS
    materials = sorted(p.name for p in (tmp_path / "out").glob("_KEY_MATERIAL_FOR_*.json"))
    assert materials == sorted(f"_KEY_MATERIAL_FOR_{name}.json" for name in data)
    assert verify(tmp_path).returncode == 0


def test_sigkill_during_publish_to_s3_with_aws_kms(tmp_path, s3_server, s3_bucket, kms):
    footer, phi = kms.create_key("footer"), kms.create_key("phi")
    audit = {"log": "audit.jsonl"}
    target = aws_target(s3_server, s3_bucket, footer, {phi: ["ssn"]}, kms.config(), audit=audit, **ROLLING)
    job = write_job(tmp_path, csv_source(tmp_path, rows=ROWS), target, engine={"batch_size": 250})
    client = AwsKms(kms.config(), tmp_path)

    def rows() -> int:
        return read_encrypted(f"s3://{s3_bucket}/phi", client, connection=s3_server.connection()).num_rows

    try:
        assert run(job).returncode == 0
        assert rows() == ROWS
        for point in ("file_moved:1", "files_published"):
            assert run(job, point).returncode == -signal.SIGKILL
            assert rows() == ROWS  # moved objects of an uncommitted run are not part of the dataset
        assert run(job).returncode == 0
        assert rows() == 2 * ROWS
        listed = {f"phi/{name}" for name in _s3_manifest(s3_server, s3_bucket)["files"]}
        stored = {k for k in s3_server.list_keys(s3_bucket, "phi/") if k.endswith(".parquet")}
        assert stored == listed
    finally:
        client.close()
    events = [r["event"] for r in audit_records(tmp_path / "audit.jsonl")]
    assert events.count("run_abandoned") == 2
    result = dativo("audit", "verify", tmp_path / "audit.jsonl", "--job", job)
    assert result.returncode == 0, result.stderr


def _s3_manifest(s3_server, bucket: str) -> dict:
    (key,) = sorted(k for k in s3_server.list_keys(bucket, "phi/_dativo/") if "manifest-" in k)[-1:]
    return json.loads(s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def test_overwrite_mode_replaces_the_dataset_and_verify_follows(tmp_path, key_file):
    target = local_target()
    target["mode"] = "overwrite"
    job = write_job(tmp_path, csv_source(tmp_path), target)
    for _ in range(3):
        assert run(job).returncode == 0
    assert visible_rows(tmp_path) == 5 and len(parquet_on_disk(tmp_path)) == 1
    result = verify(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "3 files match the log" in result.stdout  # 1 present, 2 replaced and gone
    # A replaced file put back is reported: the log says it is no longer part of the dataset.
    first = next(r for r in audit_records(tmp_path / "audit.jsonl") if r["event"] == "file")
    Path(first["path"]).write_bytes(b"stale")
    result = verify(tmp_path)
    assert result.returncode == 1 and "still present" in result.stderr


# ---------------------------------------------------------------------------------------------
# Issue 12 defect 9: a repeated --run-id is "already committed"
# ---------------------------------------------------------------------------------------------


def test_repeated_run_id_is_already_committed_and_rewrites_nothing(tmp_path, key_file):
    job = write_job(tmp_path, csv_source(tmp_path), local_target())
    first = run(job, None, "--run-id", "nightly-2024-05-01")
    assert first.returncode == 0, first.stderr
    (file,) = (tmp_path / "out").glob("*.parquet")
    stat, blob = file.stat(), file.read_bytes()
    again = dativo("run", job, "--run-id", "nightly-2024-05-01", "--summary-json", tmp_path / "s.json")
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "s.json").read_text())["status"] == "already committed"
    assert file.read_bytes() == blob and file.stat().st_mtime_ns == stat.st_mtime_ns
    assert [p.name for p in (tmp_path / "out").glob("*.parquet")] == [file.name]
    assert visible_rows(tmp_path) == 5
    result = verify(tmp_path)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------
# Issue 12 defect 10: killed runs are closed; verify stays green and always checks every file
# ---------------------------------------------------------------------------------------------


def test_verify_stays_green_across_ten_killed_runs(tmp_path, key_file):
    job = rolling_job(tmp_path)
    points = ["batch:1", "before_finalize", "audit_recorded", "file_moved:1", "files_published"] * 2
    for point in points:
        assert run(job, point).returncode == -signal.SIGKILL
    assert visible_rows(tmp_path) == 0
    for _ in range(2):
        result = run(job)
        assert result.returncode == 0, result.stderr
    records = audit_records(tmp_path / "audit.jsonl")
    abandoned = [r for r in records if r["event"] == "run_abandoned"]
    assert len(abandoned) == 10 and not any(r["committed"] for r in abandoned)
    assert sum(len(r["cleaned"]) for r in abandoned) >= 2  # staged and moved files of dead runs were deleted
    assert visible_rows(tmp_path) == 2 * ROWS
    assert manifest_files(tmp_path) == parquet_on_disk(tmp_path)
    result = verify(tmp_path)
    assert result.returncode == 0, result.stderr
    files = sum(1 for r in records if r["event"] == "file")
    assert f"{files} files match the log" in result.stdout  # dead runs' files checked too: all gone

    # Every data file is checked even after crashes, and every problem is reported.
    committed = manifest_files(tmp_path)
    (tmp_path / "out" / committed[0]).unlink()
    (tmp_path / "out" / committed[-1]).write_bytes(b"replaced")
    result = verify(tmp_path)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2, result.stderr
    assert any("is missing" in e for e in errors) and any("replaced or modified" in e for e in errors)


def test_a_running_run_is_not_abandoned_by_another(tmp_path, key_file):
    """A second run of the job while the first is still alive does not close the first as abandoned."""
    job = write_job(tmp_path, csv_source(tmp_path), local_target())
    assert run(job).returncode == 0
    # Hold the liveness lock of an in-flight run, as a live process would.
    kms = LocalKeyFileKms({"type": "local", "key_file": "keys.json"}, tmp_path)
    alive = AuditLog("in-flight", local=tmp_path / "audit.jsonl", kms=kms)
    alive.begin_run()
    alive.append("run_start", job={"name": "phi", "target": "out"})  # this job, this target
    try:
        assert run(job).returncode == 0
        assert not [r for r in audit_records(tmp_path / "audit.jsonl") if r["event"] == "run_abandoned"]
    finally:
        alive.end_run()
    assert run(job).returncode == 0  # now it is dead: closed
    (closed,) = [r for r in audit_records(tmp_path / "audit.jsonl") if r["event"] == "run_abandoned"]
    assert closed["abandoned_run"] == "in-flight" and closed["committed"] is False
    assert verify(tmp_path).returncode == 0


# ---------------------------------------------------------------------------------------------
# Issue 12 defect 11: a keyed chain, forged records caught, decrypt recorded, locked S3 copies
# ---------------------------------------------------------------------------------------------


def _append(log: Path, record: dict) -> None:
    with log.open("ab") as handle:
        handle.write(canonical(record) + b"\n")


def test_a_forged_appended_record_is_detected(tmp_path, key_file):
    job = write_job(tmp_path, csv_source(tmp_path), local_target())
    assert run(job).returncode == 0
    log = tmp_path / "audit.jsonl"
    assert verify(tmp_path).returncode == 0
    pristine = log.read_bytes()
    last = audit_records(log)[-1]
    forged = {"event": "run_start", "run_id": "forged", "ts": last["ts"], "seq": last["seq"] + 1, "prev": last["hash"]}
    # 1. the hash recomputed the way an unkeyed chain would (plain SHA-256)
    plain = dict(forged, hash=hashlib.sha256(canonical(forged)).hexdigest())
    _append(log, plain)
    result = verify(tmp_path)
    assert result.returncode == 1
    assert f"record seq {forged['seq']}" in result.stderr and "edited or forged" in result.stderr
    # 2. an HMAC under a key the forger made up
    log.write_bytes(pristine)
    keyed = dict(forged, hash=hmac.new(b"k" * 32, canonical(forged), hashlib.sha256).hexdigest())
    _append(log, keyed)
    assert "edited or forged" in verify(tmp_path).stderr
    # 3. the whole log rewritten as an unkeyed chain
    records = audit_records(log)[1:]
    prev = "0" * 64
    rewritten = []
    for seq, record in enumerate(records, start=1):
        body = {k: v for k, v in record.items() if k != "hash"} | {"seq": seq, "prev": prev}
        body["hash"] = prev = hashlib.sha256(canonical(body)).hexdigest()
        rewritten.append(canonical(body))
    log.write_bytes(b"\n".join(rewritten) + b"\n")
    result = verify(tmp_path)
    assert result.returncode == 1 and "not keyed" in result.stderr
    # The chain key is stored wrapped only: no key material in the log.
    log.write_bytes(pristine)
    for key in key_file[1].values():
        assert key.hex().encode() not in pristine


def test_decrypt_appends_an_access_record(tmp_path, key_file):
    job = write_job(tmp_path, csv_source(tmp_path), local_target())
    assert run(job).returncode == 0
    result = dativo("decrypt", tmp_path / "out", "--job", job, "--columns", "id,ssn")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 5
    access = [r for r in audit_records(tmp_path / "audit.jsonl") if r["event"] == "access"]
    (record,) = access
    (file,) = (tmp_path / "out").glob("*.parquet")
    assert record["action"] == "decrypt" and record["outcome"] == "ok"
    assert record["columns"] == ["id", "ssn"]
    assert record["user"] and record["host"]
    assert [f["path"] for f in record["files"]] == [str(file)]
    assert record["files"][0]["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    # A refused read is recorded too; a read with no audit log to record it is refused.
    (tmp_path / "kms.yaml").write_text("kms: {type: local, key_file: keys.json}\n")
    refused = dativo("decrypt", tmp_path / "out", "--kms-config", tmp_path / "kms.yaml")
    assert_one_line_error(refused, "--audit-log", code=2)
    assert verify(tmp_path).returncode == 0


def test_audit_copy_is_written_with_object_lock(tmp_path, key_file, s3_server):
    client = s3_server.client()
    locked = f"locked-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=locked, ObjectLockEnabledForBucket=True)
    target = local_target(audit={"log": "audit.jsonl", "copy_to": f"s3://{locked}/audit", "retention_days": 30})
    target["connection"] = s3_server.connection()
    job = write_job(tmp_path, csv_source(tmp_path), target)
    result = dativo("run", job, "--quiet", "--summary-json", tmp_path / "s.json")
    assert result.returncode == 0, result.stderr
    (key,) = s3_server.list_keys(locked, "audit/")
    head = client.head_object(Bucket=locked, Key=key)
    assert head["ObjectLockMode"] == "GOVERNANCE"
    days = (head["ObjectLockRetainUntilDate"] - datetime.now(UTC)).days
    assert 28 <= days <= 30
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):  # the copy cannot be deleted
        client.delete_object(Bucket=locked, Key=key, VersionId=head["VersionId"])
    # A bucket without Object Lock: the run still commits, and says the copy could not be locked.
    plain = s3_server.create_bucket()
    target["options"]["audit"]["copy_to"] = f"s3://{plain}/audit"
    job = write_job(tmp_path, csv_source(tmp_path), target)
    result = dativo("run", job, "--quiet", "--summary-json", tmp_path / "s2.json")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "s2.json").read_text())
    assert "Object Lock" in summary["target"]["audit"]["copy_error"]


# ---------------------------------------------------------------------------------------------
# Issue 12 defect 12: key ids, not aliases, in the files; rotation by moving an alias
# ---------------------------------------------------------------------------------------------


def test_files_still_decrypt_after_the_alias_moves_to_a_new_key(tmp_path, s3_server, s3_bucket, kms):
    footer, phi = kms.create_key("footer"), kms.create_key("phi")
    target = aws_target(s3_server, s3_bucket, footer, {phi: ["ssn"]}, kms.config())
    job = write_job(tmp_path, csv_source(tmp_path), target)
    assert run(job).returncode == 0
    aws = kms.client()
    old_id = aws.describe_key(KeyId=phi)["KeyMetadata"]["KeyId"]
    new_id = aws.create_key(Description="rotated phi")["KeyMetadata"]["KeyId"]
    aws.update_alias(AliasName=phi, TargetKeyId=new_id)
    assert run(job).returncode == 0  # the second run's files use the new key
    client = AwsKms(kms.config(), tmp_path)
    try:
        table = read_encrypted(f"s3://{s3_bucket}/phi", client, connection=s3_server.connection())
    finally:
        client.close()
    assert table.num_rows == 10 and table.column("ssn").to_pylist()[:5] == [f"123-45-{i:04d}" for i in range(5)]
    files = [r for r in audit_records(tmp_path / "phi.audit.jsonl") if r["event"] == "file"]
    assert old_id in files[0]["key_ids"] and new_id in files[1]["key_ids"]
    assert all(phi in f["key_labels"] for f in files)


# ---------------------------------------------------------------------------------------------
# Issue 12 defect 12: dativo kms rewrap re-wraps existing files' keys without touching data
# ---------------------------------------------------------------------------------------------


def test_kms_rewrap_moves_existing_files_to_a_new_master_key(tmp_path, key_file):
    path, keys = key_file
    keys = {**keys, "phi_key_2025": os.urandom(32)}
    write_key_file(path, keys)
    job = write_job(tmp_path, csv_source(tmp_path), local_target(key_material="external"))
    for _ in range(2):
        assert run(job).returncode == 0
    files = sorted((tmp_path / "out").glob("*.parquet"))
    assert len(files) == 2 and len(list((tmp_path / "out").glob("_KEY_MATERIAL_FOR_*.json"))) == 2
    data_before = [f.read_bytes() for f in files]

    result = dativo("kms", "rewrap", tmp_path / "out", "--job", job, "--from", "phi_key", "--to", "phi_key_2025")
    assert result.returncode == 0, result.stderr
    assert "re-wrapped 4 keys in 2 files" in result.stdout  # ssn and diagnosis: one column key each, per file
    assert [f.read_bytes() for f in files] == data_before  # data untouched: same bytes, same SHA-256

    # The old key can go: every file opens with the new one.
    write_key_file(path, {k: v for k, v in keys.items() if k != "phi_key"})
    kms = LocalKeyFileKms({"type": "local", "key_file": "keys.json"}, tmp_path)
    assert read_encrypted(str(tmp_path / "out"), kms).column("ssn").to_pylist()[:2] == ["123-45-0000", "123-45-0001"]
    (record,) = [r for r in audit_records(tmp_path / "audit.jsonl") if r["event"] == "rewrap"]
    assert record["old_key"] == "phi_key" and record["new_key"] == "phi_key_2025"
    assert [f["keys"] for f in record["files"]] == [2, 2]
    assert verify(tmp_path).returncode == 0  # the data files still match the log

    # Files that keep their keys inside are refused with a clear line, and nothing changes.
    inner = write_job(
        tmp_path / "inner",
        csv_source(tmp_path / "inner"),
        local_target(kms={"type": "local", "key_file": str(path)}, column_keys={"phi_key_2025": ["ssn"]}),
    )
    assert run(inner).returncode == 0
    refused = dativo(
        "kms", "rewrap", tmp_path / "inner" / "out", "--job", inner, "--from", "footer_key", "--to", "phi_key_2025"
    )
    assert_one_line_error(refused, "keeps its keys inside the file", "key_material: external", code=1)


def test_kms_rewrap_on_s3_with_aws_kms_then_the_old_key_is_disabled(tmp_path, s3_server, s3_bucket, kms):
    footer, phi, phi_new = kms.create_key("footer"), kms.create_key("phi"), kms.create_key("phi-new")
    options = {"key_material": "external", "audit": {"log": "audit.jsonl"}}
    target = aws_target(s3_server, s3_bucket, footer, {phi: ["ssn"]}, kms.config(), **options)
    job = write_job(tmp_path, csv_source(tmp_path), target)
    assert run(job).returncode == 0
    (data_key,) = [k for k in s3_server.list_keys(s3_bucket, "phi/") if k.endswith(".parquet")]
    blob = s3_server.client().get_object(Bucket=s3_bucket, Key=data_key)["Body"].read()
    result = dativo("kms", "rewrap", f"s3://{s3_bucket}/phi", "--job", job, "--from", phi, "--to", phi_new)
    assert result.returncode == 0, result.stderr
    assert "re-wrapped 1 keys in 1 files" in result.stdout
    # The column key is now wrapped by the new key (moto does not refuse a disabled key, so look at the material).
    aws = kms.client()
    ids = {alias: aws.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"] for alias in (footer, phi, phi_new)}
    material_key = data_key.replace("phi/", "phi/_KEY_MATERIAL_FOR_", 1) + ".json"
    material = json.loads(s3_server.client().get_object(Bucket=s3_bucket, Key=material_key)["Body"].read())
    masters = {json.loads(entry)["masterKeyID"] for entry in material.values()}
    assert masters == {ids[footer], ids[phi_new]}  # the old phi key wraps nothing any more
    kms.disable(phi)
    client = AwsKms(kms.config(), tmp_path)
    try:
        table = read_encrypted(f"s3://{s3_bucket}/phi", client, connection=s3_server.connection())
    finally:
        client.close()
    assert table.column("ssn").to_pylist() == [f"123-45-{i:04d}" for i in range(5)]
    assert s3_server.client().get_object(Bucket=s3_bucket, Key=data_key)["Body"].read() == blob
    assert dativo("audit", "verify", tmp_path / "audit.jsonl", "--job", job).returncode == 0


def test_a_shared_log_leaves_other_jobs_dead_runs_to_them(tmp_path, key_file):
    """Two jobs, one audit log: job B never closes (or cleans up after) job A's killed run; A does, as committed."""
    shared = {"log": str(tmp_path / "audit.jsonl")}
    a = write_job(tmp_path / "a", csv_source(tmp_path / "a"), local_target(path=str(tmp_path / "a-out"), audit=shared))
    b = write_job(tmp_path / "b", csv_source(tmp_path / "b"), local_target(path=str(tmp_path / "b-out"), audit=shared))
    for job in (a, b):
        (job.parent / "keys.json").write_bytes(key_file[0].read_bytes())
        (job.parent / "keys.json").chmod(0o600)
    assert run(a, "after_commit").returncode == -signal.SIGKILL  # committed, no run_end
    committed = sorted((tmp_path / "a-out").glob("*.parquet"))
    assert len(committed) == 1
    assert run(b).returncode == 0
    assert not [r for r in audit_records(tmp_path / "audit.jsonl") if r["event"] == "run_abandoned"]
    assert sorted((tmp_path / "a-out").glob("*.parquet")) == committed
    assert run(a).returncode == 0
    (closed,) = [r for r in audit_records(tmp_path / "audit.jsonl") if r["event"] == "run_abandoned"]
    assert closed["committed"] is True and closed["cleaned"] == []
    assert set(committed) <= set((tmp_path / "a-out").glob("*.parquet"))
    result = dativo("audit", "verify", tmp_path / "audit.jsonl", "--job", a)
    assert result.returncode == 0, result.stderr
