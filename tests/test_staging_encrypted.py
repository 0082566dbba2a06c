"""StagingWriter of ``encrypted-parquet``: partitions encrypted in separate OS processes, audit trail by the driver.

Workers are ``spawn``-ed processes (tests/support/staging.py) that wrap their data keys
through the same KMS (a local key file, or AWS KMS on the suite's moto server) and
write into a local folder or moto S3. ``dativo audit verify`` checks the chain and every
recorded file after staged runs and after an aborted one.
"""

from __future__ import annotations

import json
import pickle
import signal
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from dativo.encryption.kms import load_kms
from dativo.targets.encrypted_parquet import read_encrypted

from support.cli import dativo
from support.kms_fixtures import KmsHelper
from support.s3server import S3Server
from support.staging import attempt_killed, drive_killed, killed_retry, split, stage, stage_all, staged_run, writer_of

REF = "dativo.targets.encrypted_parquet:EncryptedParquetWriter"


def rows(start: int, count: int) -> pa.Table:
    ids = list(range(start, start + count))
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "ssn": pa.array([f"123-45-{i:04d}" for i in ids]),
            "diagnosis": pa.array([f"diagnosis-{i}" for i in ids]),
            "amount": pa.array([i * 1.5 for i in ids]),
        }
    )


def target_of(tmp_path: Path, mode: str = "append", **options: Any) -> dict[str, Any]:
    """A local dataset with a local key file (master keys footer_key and phi_key) and a local audit log."""
    return {
        "path": str(tmp_path / "out"),
        "connection": {},
        "mode": mode,
        "options": {
            "footer_key": "footer_key",
            "column_keys": {"phi_key": ["ssn", "diagnosis"]},
            "kms": {"type": "local", "key_file": "keys.json"},
            "audit": {"log": "audit.jsonl"},
            "target_file_size_mb": 0.01,
            "row_group_size_mb": 0.0001,
            **options,
        },
    }


def config_of(target: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    return {**target, "job": {"name": "phi", "dir": str(tmp_path), "run_id": uuid.uuid4().hex}}


def dataset(tmp_path: Path, target: dict[str, Any]) -> pa.Table:
    kms = load_kms(target["options"]["kms"], tmp_path)
    try:
        return read_encrypted(target["path"], kms, connection=target["connection"], base_dir=tmp_path).sort_by("id")
    finally:
        kms.close()


def verify(tmp_path: Path, target: dict[str, Any]) -> dict[str, Any]:
    """``dativo audit verify --json`` of the job's log (files checked too); asserts it passes."""
    job = tmp_path / "phi.yaml"
    source = {"connector": "files", "path": "none.csv", "format": "csv"}
    job.write_text(
        yaml.safe_dump({"name": "phi", "source": source, "target": {"connector": "encrypted-parquet", **target}})
    )
    result = dativo("audit", "verify", tmp_path / "audit.jsonl", "--job", job, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    verified: dict[str, Any] = json.loads(result.stdout)
    assert verified["ok"]
    return verified


def records(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


def stored(tmp_path: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())


@pytest.mark.parametrize("material", ["internal", "external"])
def test_staged_runs_encrypt_on_workers_and_audit_on_the_driver(
    workers: ProcessPoolExecutor, tmp_path: Path, key_file: Any, material: str
) -> None:
    target = target_of(tmp_path, key_material=material)
    config = config_of(target, tmp_path)
    run_id = config["job"]["run_id"]
    day_one = rows(0, 600)
    driver = writer_of(REF, config)
    driver.load_state()
    driver.prepare(day_one.schema)
    plan = driver.staging_plan()
    parts = split(day_one, 3)
    assert attempt_killed(REF, config, plan, f"{run_id}-p0002-a1", parts[2]) == -signal.SIGKILL
    staged = stage_all(workers, REF, config, plan, parts, attempt=2)
    stage(REF, config, plan, f"{run_id}-p0001-a3", parts[1])  # attempt B of partition 1, not committed
    assert [r["event"] for r in records(tmp_path)] == ["chain_key", "run_start"], "a worker wrote to the audit log"
    driver.stage_state({"run_id": run_id})
    result = driver.commit_staged(staged)
    driver.close()

    assert result["rows"] == 600 and dataset(tmp_path, target).equals(day_one)
    written = [r for r in records(tmp_path) if r["event"] == "file"]
    assert sorted(r["path"] for r in written) == sorted(result["files"])
    assert all(r["run_id"] == run_id and len(r["sha256"]) == 64 for r in written)
    names = stored(tmp_path)
    assert not [n for n in names if "-a1-" in n or "-a3-" in n or n.startswith("_dativo_tmp_")], names
    if material == "external":
        assert len([n for n in names if n.startswith("_KEY_MATERIAL_FOR_")]) == len(written)
    assert verify(tmp_path, target)["files_checked"] == len(written)

    day_two = rows(600, 200)
    staged_run(workers, REF, config_of(target, tmp_path), split(day_two, 2))
    assert dataset(tmp_path, target).equals(pa.concat_tables([day_one, day_two]))
    day_three = rows(900, 100)
    staged_run(workers, REF, config_of(target_of(tmp_path, "overwrite", key_material=material), tmp_path), [day_three])
    assert dataset(tmp_path, target).equals(day_three)
    verified = verify(tmp_path, target)
    assert verified["runs"] == 3
    ends = [r["status"] for r in records(tmp_path) if r["event"] == "run_end"]
    assert ends == ["succeeded"] * 3


def test_aborted_staged_run_leaves_no_file_and_a_verifiable_log(
    workers: ProcessPoolExecutor, tmp_path: Path, key_file: Any
) -> None:
    target = target_of(tmp_path)
    staged_run(workers, REF, config_of(target, tmp_path), [rows(0, 100)])
    before = stored(tmp_path)
    config = config_of(target, tmp_path)
    driver = killed_retry(workers, REF, config, split(rows(100, 300), 2))
    assert len(stored(tmp_path)) > len(before)
    driver.abort()
    driver.close()
    assert stored(tmp_path) == before
    assert dataset(tmp_path, target).equals(rows(0, 100))
    last = records(tmp_path)[-1]
    assert last["event"] == "run_end" and last["status"] == "failed" and last["run_id"] == config["job"]["run_id"]
    assert verify(tmp_path, target)["runs"] == 2


def test_aws_kms_on_s3_plan_holds_no_secret(
    workers: ProcessPoolExecutor, tmp_path: Path, s3_server: S3Server, kms: KmsHelper
) -> None:
    footer, phi = kms.create_key("footer"), kms.create_key("phi")
    kms_config = kms.config()
    target = {
        "path": f"s3://{s3_server.create_bucket()}/phi",
        "connection": s3_server.connection(),
        "mode": "append",
        "options": {
            "footer_key": footer,
            "column_keys": {phi: ["ssn", "diagnosis"]},
            "kms": kms_config,
            "audit": {"log": "audit.jsonl"},
            "target_file_size_mb": 0.01,
        },
    }
    config = config_of(target, tmp_path)
    driver = writer_of(REF, config)
    driver.load_state()
    driver.prepare(rows(0, 1).schema)
    plan = driver.staging_plan()
    blob = pickle.dumps(plan)
    for secret in (kms_config["secret_access_key"], s3_server.connection()["secret_access_key"]):
        assert secret.encode() not in blob
    assert set(plan["key_ids"]) == {footer, phi} and set(plan["mapping"]) == {footer, phi}
    staged = stage_all(workers, REF, config, plan, split(rows(0, 400), 2))
    assert all(secret.encode() not in pickle.dumps(staged) for secret in (kms_config["secret_access_key"],))
    driver.stage_state({"run_id": config["job"]["run_id"]})
    driver.commit_staged(staged)
    driver.close()
    assert dataset(tmp_path, target).equals(rows(0, 400))
    assert verify(tmp_path, target)["files_checked"] >= 2


@pytest.mark.parametrize("point", ["audit_recorded", "files_published"])
def test_driver_killed_during_commit_is_closed_by_the_next_run_which_commits_once(
    workers: ProcessPoolExecutor, tmp_path: Path, key_file: Any, point: str
) -> None:
    target = target_of(tmp_path)
    staged_run(workers, REF, config_of(target, tmp_path), [rows(0, 100)])
    crashed = config_of(target, tmp_path)
    state = {"run_id": crashed["job"]["run_id"]}
    assert drive_killed(REF, crashed, rows(0, 1).schema, split(rows(100, 300), 3), state, point) == -signal.SIGKILL
    assert dataset(tmp_path, target).equals(rows(0, 100))  # nothing of the killed run is visible
    staged_run(workers, REF, config_of(target, tmp_path), split(rows(100, 300), 2))
    assert dataset(tmp_path, target).equals(rows(0, 400))
    assert not [name for name in stored(tmp_path) if crashed["job"]["run_id"] in name], stored(tmp_path)
    abandoned = [r for r in records(tmp_path) if r["event"] == "run_abandoned"]
    assert [(r["abandoned_run"], r["committed"]) for r in abandoned] == [(crashed["job"]["run_id"], False)]
    assert verify(tmp_path, target)["runs"] == 3
