"""StagingWriter of the ``parquet`` dataset writer: partitions staged in separate OS processes, one commit.

Workers are ``spawn``-ed processes (tests/support/staging.py), the target a local
folder or a bucket on the suite's moto S3 server. Every test reads the dataset back
through its manifest and compares it with the source rows exactly.
"""

from __future__ import annotations

import pickle
import signal
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import fs as pafs

from dativo.errors import TargetError
from dativo.storage import filesystem_for
from dativo.targets.parquet import read_manifest

from support.s3server import S3Server
from support.staging import attempt_killed, drive_killed, killed_retry, split, stage, stage_all, writer_of
from support.staging import staged_run as run_staged

REF = "dativo.targets.parquet:ParquetDatasetWriter"


@pytest.fixture(params=["local", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The target section of a job (without ``job``): a local folder or a prefix in a fresh moto bucket."""
    if request.param == "local":
        return {"path": str(tmp_path / "out"), "connection": {}}
    server: S3Server = request.getfixturevalue("s3_server")
    return {"path": f"s3://{server.create_bucket()}/out", "connection": server.connection()}


def rows(start: int, count: int) -> pa.Table:
    ids = list(range(start, start + count))
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "name": pa.array([f"row {i}" for i in ids]),
            "amount": pa.array([i * 1.5 for i in ids]),
        }
    )


def config_for(
    target: dict[str, Any], tmp_path: Path, mode: str = "append", run_id: str | None = None
) -> dict[str, Any]:
    return {
        **target,
        "mode": mode,
        # Tiny files and row groups: every few batches reach storage, so a killed attempt leaves files behind.
        "options": {"target_file_size_mb": 0.01, "row_group_size_mb": 0.0001},
        "job": {"name": "orders", "dir": str(tmp_path), "run_id": run_id or uuid.uuid4().hex},
    }


def storage(config: dict[str, Any]) -> tuple[pafs.FileSystem, str]:
    return filesystem_for(config["path"], config["connection"], Path(config["job"]["dir"]))


def everything(config: dict[str, Any]) -> list[str]:
    fs, root = storage(config)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True, recursive=True))
    return sorted(info.path.removeprefix(root + "/") for info in infos if info.type == pafs.FileType.File)


def dataset(config: dict[str, Any]) -> pa.Table:
    """The dataset as its newest manifest lists it, sorted by id; the folder holds no other data file."""
    fs, root = storage(config)
    manifest = read_manifest(fs, root)
    assert manifest is not None
    data = {name for name in everything(config) if name.endswith(".parquet") and "/" not in name}
    assert data == set(manifest["files"]), "data files in the folder differ from the manifest's listing"
    tables = [pq.read_table(f"{root}/{name}", filesystem=fs) for name in manifest["files"]]
    return pa.concat_tables(tables).sort_by("id")


def staged_run(
    workers: ProcessPoolExecutor, config: dict[str, Any], parts: list[pa.Table], state: dict[str, Any] | None = None
) -> dict[str, Any]:
    return run_staged(workers, REF, config, parts, state)


def test_union_of_staged_partitions_is_committed_once_then_day_two_in_each_mode(
    workers: ProcessPoolExecutor, target: dict[str, Any], tmp_path: Path
) -> None:
    day_one = rows(0, 600)
    config = config_for(target, tmp_path)
    driver = writer_of(REF, config)
    driver.load_state()
    driver.prepare(day_one.schema)
    plan = driver.staging_plan()
    run_id = config["job"]["run_id"]
    parts = split(day_one, 3)
    # A dead attempt of partition 1 (SIGKILLed mid-write) and a second attempt B of partition 0.
    assert attempt_killed(REF, config, plan, f"{run_id}-p0001-a1", parts[1]) == -signal.SIGKILL
    dead = [name for name in everything(config) if f"{run_id}-p0001-a1" in name]
    assert dead or config["path"].startswith("s3://"), "the killed attempt wrote nothing before it died"
    staged = stage_all(workers, REF, config, plan, parts, attempt=2)
    attempt_b = stage(REF, config, plan, f"{run_id}-p0000-a3", parts[0])
    assert attempt_b["rows"] == parts[0].num_rows and len(attempt_b["files"]) >= 1
    driver.stage_state({"run_id": run_id, "cursor": 599})
    result = driver.commit_staged(staged)
    driver.close()

    assert result["rows"] == 600 and result["mode"] == "append"
    assert dataset(config).equals(day_one)
    left = everything(config)
    assert not [name for name in left if run_id in name and "/" in name], left  # staging folder gone
    assert not [name for name in left if "-a1-" in name or "-a3-" in name], "an uncommitted attempt's file remains"

    again = writer_of(REF, config)
    assert again.load_state() == {"run_id": run_id, "cursor": 599}  # a rerun of this run id: "already committed"
    again.close()

    day_two = rows(600, 300)
    staged_run(workers, config_for(target, tmp_path), split(day_two, 2))
    assert dataset(config).equals(pa.concat_tables([day_one, day_two]))

    day_three = rows(1000, 200)
    result = staged_run(workers, config_for(target, tmp_path, "overwrite"), split(day_three, 2))
    assert result["mode"] == "overwrite"
    assert dataset(config).equals(day_three)


def test_abort_removes_every_staged_file_including_a_dead_attempts(
    workers: ProcessPoolExecutor, target: dict[str, Any], tmp_path: Path
) -> None:
    first = config_for(target, tmp_path)
    staged_run(workers, first, [rows(0, 100)])
    before = everything(first)
    config = config_for(target, tmp_path)
    driver = killed_retry(workers, REF, config, split(rows(100, 400), 2))
    assert len(everything(config)) > len(before)
    driver.abort()
    driver.close()
    assert everything(config) == before
    assert dataset(config).equals(rows(0, 100))


def test_commit_of_attempt_a_deletes_attempt_b_and_refuses_a_missing_file(
    workers: ProcessPoolExecutor, target: dict[str, Any], tmp_path: Path
) -> None:
    config = config_for(target, tmp_path)
    run_id = config["job"]["run_id"]
    driver = writer_of(REF, config)
    driver.prepare(rows(0, 1).schema)
    plan = driver.staging_plan()
    attempt_a = stage(REF, config, plan, f"{run_id}-p0000-a1", rows(0, 200))
    attempt_b = stage(REF, config, plan, f"{run_id}-p0000-a2", rows(0, 200))
    fs, _root = storage(config)
    broken = {**attempt_b, "parts": [{**attempt_b["parts"][0], "size": attempt_b["parts"][0]["size"] + 1}]}
    with pytest.raises(TargetError, match="described as"):
        _commit_fresh(config, [broken])
    driver.commit_staged([attempt_a])
    driver.close()
    assert dataset(config).equals(rows(0, 200))
    names = everything(config)
    assert any("-a1-" in name for name in names) and not any("-a2-" in name for name in names)
    assert all(not fs.get_file_info(path.removeprefix("s3://")).is_file for path in attempt_b["files"])


def _commit_fresh(config: dict[str, Any], staged: list[dict[str, Any]]) -> dict[str, Any]:
    driver = writer_of(REF, config)
    try:
        driver.prepare(rows(0, 1).schema)
        return dict(driver.commit_staged(staged))
    finally:
        driver.close()


@pytest.mark.parametrize("point", ["file_moved", "files_published", "after_commit"])
def test_driver_killed_during_commit_leaves_all_or_nothing_and_the_next_run_commits_once(
    workers: ProcessPoolExecutor, target: dict[str, Any], tmp_path: Path, point: str
) -> None:
    day_one = rows(0, 300)
    staged_run(workers, config_for(target, tmp_path), split(day_one, 2))
    day_two = rows(300, 300)
    crashed = config_for(target, tmp_path)
    code = drive_killed(REF, crashed, day_two.schema, split(day_two, 3), {"run_id": crashed["job"]["run_id"]}, point)
    assert code == -signal.SIGKILL
    committed = point == "after_commit"
    state = writer_of(REF, crashed).load_state()
    assert (state == {"run_id": crashed["job"]["run_id"]}) is committed
    if not committed:  # the next run (a new run id) stages and commits day two exactly once
        retry = config_for(target, tmp_path)
        staged_run(workers, retry, split(day_two, 2))
    assert dataset(crashed).equals(pa.concat_tables([day_one, day_two]))


def test_plan_is_small_and_holds_no_secret(target: dict[str, Any], tmp_path: Path) -> None:
    config = config_for(target, tmp_path)
    driver = writer_of(REF, config)
    driver.prepare(rows(0, 1).schema)
    blob = pickle.dumps(driver.staging_plan())
    driver.abort()
    driver.close()
    assert len(blob) < 4096
    for name in ("access_key_id", "secret_access_key"):
        secret = (config["connection"] or {}).get(name)
        assert secret is None or secret.encode() not in blob
    assert plan_keys(blob) == {"format", "run_id", "schema"}


def plan_keys(blob: bytes) -> set[str]:
    return set(pickle.loads(blob))
