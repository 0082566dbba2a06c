"""engine.executor: ray failure semantics, each on the session's real multi-process Ray cluster.

The source is the suite's real PostgreSQL (ctid partitions in one exported snapshot);
the reader is the built-in ADBC reader with one misbehaving partition
(tests/support/ray_plugins.py: ChaosPostgresReader), the writer the built-in Parquet
writer that also reports, at commit and abort on the driver, how many sessions hold a
transaction open in the source database (the exported snapshot's). Each test asserts the
table equals the source (or nothing was committed) and that no file beside the
manifest's remains (nothing staged is left behind).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import dativo
from dativo.targets.parquet import read_manifest

from support.ray_jobs import (
    PLUGINS,
    create_items,
    iceberg_table,
    iceberg_target,
    parquet_table,
    parquet_target,
    pg_source,
    source_ids,
    write_job,
)
from support.raycluster import PASSWORD_ENV

pytestmark = [pytest.mark.xdist_group("ray"), pytest.mark.timeout(300)]

ROWS = 3000


@pytest.fixture
def ray_env(ray_cluster, pg_server, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv(PASSWORD_ENV, pg_server.password)
    return ray_cluster.address


def chaos_job(tmp_path: Path, db: Any, mode: str, partition: int) -> Path:
    chaos = tmp_path / "chaos"
    chaos.mkdir()
    options = json.dumps({"chaos": {"mode": mode, "partition": partition, "dir": str(chaos)}})
    source = pg_source(db, reader=f"{PLUGINS}:ChaosPostgresReader", options=options)
    watch = json.dumps({"watch_dsn": db.dsn, "report": str(tmp_path / "snapshot")})
    target = parquet_target(tmp_path / "out", writer=f"{PLUGINS}:SnapshotWatchingParquetWriter", options=watch)
    return write_job(tmp_path, f"chaos-{mode}", source, target)


def open_transactions(db: Any) -> int:
    out = db.psql(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND state = 'idle in transaction' AND pid <> pg_backend_pid()"
    )
    return int(out.split()[0])


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def assert_exact_and_snapshot_held_until_commit(tmp_path: Path, db: Any) -> None:
    table = parquet_table(tmp_path / "out")  # also: no file beside the manifest's (dead attempts removed)
    assert table.column("id").to_pylist() == source_ids(db)
    assert (tmp_path / "snapshot.commit").read_text() == "1"  # the exported snapshot was open at commit
    assert open_transactions(db) == 0  # and released after it


def test_worker_process_sigkilled_mid_partition_is_retried_and_committed_once(tmp_path, pg_db, ray_env):
    create_items(pg_db, 1, ROWS)
    job = chaos_job(tmp_path, pg_db, "kill", 1)
    result = dativo.run(job, executor="ray", address=ray_env)
    result.raise_for_failures()
    assert (tmp_path / "chaos" / "marker-1").exists()  # the first attempt did die
    attempts = [p for p in (tmp_path / "chaos").iterdir() if p.name.startswith("p1-")]
    assert len(attempts) >= 2, attempts  # two processes read partition 1
    executor = result.streams[0].summary["executor"]
    assert executor["retried"] >= 1 and executor["done"] == 3, executor
    assert_exact_and_snapshot_held_until_commit(tmp_path, pg_db)


def test_worker_node_removed_mid_run_is_retried_elsewhere_and_committed_once(tmp_path, pg_db, ray_env, ray_cluster):
    create_items(pg_db, 1, ROWS)
    job = chaos_job(tmp_path, pg_db, "hold", 1)
    results: list[dativo.RunResult] = []
    runner = threading.Thread(target=lambda: results.append(dativo.run(job, executor="ray", address=ray_env)))
    runner.start()
    marker = tmp_path / "chaos" / "marker-1"
    deadline = time.monotonic() + 120
    while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    node = marker.read_text()
    assert node in ray_cluster.alive_workers(), (node, ray_cluster.alive_workers())
    try:
        ray_cluster.kill_worker(node)  # the node holding partition 1 is lost
        (tmp_path / "chaos" / "release").write_text("go")
        runner.join(timeout=180)
        assert not runner.is_alive()
    finally:
        ray_cluster.add_worker()  # the session's later tests keep two worker nodes
    results[0].raise_for_failures()
    attempts = {p.read_text() for p in (tmp_path / "chaos").iterdir() if p.name.startswith("p1-")}
    assert node in attempts and len(attempts) == 2, attempts  # read again on the other node
    assert results[0].streams[0].summary["executor"]["retried"] >= 1
    assert_exact_and_snapshot_held_until_commit(tmp_path, pg_db)


def test_driver_sigkilled_before_commit_commits_nothing_and_the_next_run_commits_once(
    tmp_path, pg_db, ray_env, pg_server
):
    create_items(pg_db, 1, ROWS)
    job = write_job(tmp_path, "driver", pg_source(pg_db), parquet_target(tmp_path / "out"))
    command = [sys.executable, "-m", "dativo", "run", str(job), "--quiet", "--executor", "ray"]
    command += ["--address", ray_env, "--run-id", "nightly-1"]
    env = {**os.environ, PASSWORD_ENV: pg_server.password}
    crashed = subprocess.run(
        command, env={**env, "DATIVO_CRASH_AT": "before_finalize"}, capture_output=True, text=True, timeout=240
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert read_manifest(*_local(tmp_path / "out")) is None  # nothing committed, no state
    assert not any(name.endswith(".parquet") and "/" not in name for name in files_under(tmp_path / "out"))
    summary_json = tmp_path / "summary.json"
    again = subprocess.run([*command, "--summary-json", str(summary_json)], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    executor = json.loads(summary_json.read_text())["executor"]
    assert executor["name"] == "ray" and executor["done"] == executor["partitions"] == 3, executor
    assert sum(node["rows"] for node in executor["workers"].values()) == ROWS
    table = parquet_table(tmp_path / "out")  # the killed run's staged files are gone too
    assert table.column("id").to_pylist() == source_ids(pg_db)
    manifest = read_manifest(*_local(tmp_path / "out"))
    assert manifest is not None
    state = manifest["states"]["driver"]
    assert state["run_id"] == "nightly-1" and state["cursor"] == ROWS, state
    third = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert third.returncode == 0 and parquet_table(tmp_path / "out").num_rows == ROWS  # a run id commits once


def _local(path: Path) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem(), str(path)


def test_terminal_partition_failure_fails_fast_cancels_the_rest_and_leaves_nothing(tmp_path, pg_db, ray_env):
    create_items(pg_db, 1, ROWS)
    job = chaos_job(tmp_path, pg_db, "fail", 0)
    started = time.monotonic()
    result = dativo.run(job, executor="ray", address=ray_env)
    elapsed = time.monotonic() - started
    stream = result.streams[0]
    assert stream.status == "failed" and "terminal test error" in (stream.error or ""), stream.error
    assert elapsed < 50, elapsed  # the other partitions sleep 60 s before reading: they were cancelled
    assert read_manifest(*_local(tmp_path / "out")) is None
    assert files_under(tmp_path / "out") == []  # every staged file removed
    assert (tmp_path / "snapshot.abort").read_text() == "1"  # the snapshot was still held at the abort
    assert open_transactions(pg_db) == 0  # and released after it


# -- into Iceberg -----------------------------------------------------------------------------------


def iceberg_chaos_job(tmp_path: Path, db: Any, mode: str, partition: int, engine: str = "") -> Path:
    chaos = tmp_path / "chaos"
    chaos.mkdir(exist_ok=True)
    options = json.dumps({"chaos": {"mode": mode, "partition": partition, "dir": str(chaos)}})
    source = pg_source(db, reader=f"{PLUGINS}:ChaosPostgresReader", options=options)
    return write_job(tmp_path, f"chaos-{mode}", source, iceberg_target(tmp_path / "warehouse"), engine=engine)


def snapshots(warehouse: Path) -> list[int]:
    from pyiceberg.catalog import load_catalog

    catalog = load_catalog(
        "dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )
    return [s.snapshot_id for s in catalog.load_table("raw.items").snapshots()]


def test_worker_process_sigkilled_mid_partition_into_iceberg_is_committed_once_without_orphans(
    tmp_path, pg_db, ray_env
):
    create_items(pg_db, 1, ROWS)
    job = iceberg_chaos_job(tmp_path, pg_db, "kill", 1)
    result = dativo.run(job, executor="ray", address=ray_env, run_id="ice-kill")
    result.raise_for_failures()
    attempts = [p for p in (tmp_path / "chaos").iterdir() if p.name.startswith("p1-")]
    assert (tmp_path / "chaos" / "marker-1").exists() and len(attempts) >= 2, attempts  # attempt 0 died
    assert result.streams[0].summary["executor"]["retried"] >= 1
    table = iceberg_table(tmp_path / "warehouse")  # every data file on disk is referenced: the dead attempt's went
    assert table.column("id").to_pylist() == source_ids(pg_db)
    assert len(snapshots(tmp_path / "warehouse")) == 1  # one commit
    assert not list((tmp_path / "warehouse").rglob("*ice-kill-p0001-a0*"))


def test_terminal_partition_failures_into_iceberg_commit_nothing_and_leave_no_file(tmp_path, pg_db, ray_env):
    """A terminal error, then a worker killed with no retry left (the files the other partitions staged are swept)."""
    create_items(pg_db, 1, ROWS)
    warehouse = tmp_path / "warehouse"
    day_one = write_job(tmp_path, "day-one", pg_source(pg_db), iceberg_target(warehouse))
    dativo.run(day_one, executor="ray", address=ray_env).raise_for_failures()
    before = snapshots(warehouse)
    failing = iceberg_chaos_job(tmp_path, pg_db, "fail", 0)  # another job name: no state, all 3 partitions
    started = time.monotonic()
    result = dativo.run(failing, executor="ray", address=ray_env)
    elapsed = time.monotonic() - started
    stream = result.streams[0]
    assert stream.status == "failed" and "terminal test error" in (stream.error or ""), stream.error
    assert elapsed < 50, elapsed  # the other partitions were cancelled
    killed = iceberg_chaos_job(tmp_path, pg_db, "kill", 1, engine=", ray: {max_retries: 0}")
    result = dativo.run(killed, executor="ray", address=ray_env, run_id="no-retry")
    stream = result.streams[0]
    assert stream.status == "failed" and "after its retries" in (stream.error or ""), stream.error
    assert (tmp_path / "chaos" / "marker-1").exists()  # partition 1's worker died mid-partition
    assert snapshots(warehouse) == before  # nothing committed by either
    table = iceberg_table(warehouse)  # and no staged file left beside the referenced ones
    assert table.column("id").to_pylist() == source_ids(pg_db)
    assert not list(warehouse.rglob("*no-retry-p*"))
    assert open_transactions(pg_db) == 0
