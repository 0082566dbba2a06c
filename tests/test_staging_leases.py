"""A SIGKILLed run's Parquet staging folder on an object store (moto's S3 server) is swept by a later run.

Object stores have no locks, so a live run keeps a lease object fresh (``targets/_lease.py``);
a run whose lease went stale is taken for dead. These tests kill real processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from dativo.config.loader import load_job
from dativo.engine import pipeline
from dativo.engine.plan import build_plan
from dativo.targets import _lease
from dativo.targets._parquet import StagedFolder

from support.cli import dativo

SUPPORT = Path(__file__).parent / "support" / "plugins.py"


def _fs(s3_server) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(
        access_key=s3_server.access_key_id,
        secret_key=s3_server.secret_access_key,
        region=s3_server.region,
        endpoint_override=s3_server.endpoint_url,
        scheme="http",
    )


def _keys(s3_server, bucket: str) -> list[str]:
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        region_name=s3_server.region,
        aws_access_key_id=s3_server.access_key_id,
        aws_secret_access_key=s3_server.secret_access_key,
    )
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", []) if not item["Key"].endswith("/")]


_HOLDER = """
import sys, time
from pyarrow import fs as pafs
from dativo.targets._parquet import StagedFolder
endpoint, key, secret, region, root = sys.argv[1:6]
fs = pafs.S3FileSystem(access_key=key, secret_key=secret, region=region, endpoint_override=endpoint, scheme="http")
folder = StagedFolder(fs, root, "dead-run", root)
folder.prepare("test")
folder.hold()
with fs.open_output_stream(folder.staged_path("part-dead.parquet")) as out:
    out.write(b"staged, never published")
print("held", flush=True)
time.sleep(600)
"""


def test_a_killed_runs_staging_is_swept_once_its_lease_is_stale_and_a_live_runs_never(
    s3_server, s3_bucket, monkeypatch
):
    monkeypatch.setattr(_lease, "LEASE_REFRESH_S", 0.3)
    monkeypatch.setattr(_lease, "LEASE_STALE_S", 3.0)
    fs, root = _fs(s3_server), f"{s3_bucket}/items"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, s3_server.endpoint_url, s3_server.access_key_id,
         s3_server.secret_access_key, s3_server.region, root],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    finally:
        holder.kill()  # SIGKILL: no clean-up runs
        holder.wait(30)
    live = StagedFolder(fs, root, "live-run", root)
    live.prepare("test")
    live.hold()
    with fs.open_output_stream(live.staged_path("part-live.parquet")) as out:
        out.write(b"staged by a live run")
    try:
        early = StagedFolder(fs, root, "early-run", root)
        early.prepare("test")
        early.hold()
        assert early.sweep_dead() == []  # the dead lease is not stale yet
        early.rollback()
        time.sleep(4.5)  # > LEASE_STALE_S (+ the store's 1 s timestamps); the live lease is rewritten meanwhile
        sweeper = StagedFolder(fs, root, "next-run", root)
        sweeper.prepare("test")
        sweeper.hold()
        try:
            assert sweeper.sweep_dead() == [f"{root}/_dativo_tmp_dead-run"]
        finally:
            sweeper.rollback()
        keys = _keys(s3_server, s3_bucket)
        assert "items/_dativo_tmp_dead-run/part-dead.parquet" not in keys
        assert "items/_dativo_leases/dead-run" not in keys
        assert "items/_dativo_tmp_live-run/part-live.parquet" in keys
        assert "items/_dativo_leases/live-run" in keys
    finally:
        live.rollback()
    assert [key for key in _keys(s3_server, s3_bucket) if "_dativo_leases/" in key] == []


def _job(tmp_path: Path, s3_server, bucket: str) -> Path:
    connection = json.dumps(
        {
            "endpoint_url": s3_server.endpoint_url,
            "region": s3_server.region,
            "access_key_id": s3_server.access_key_id,
            "secret_access_key": s3_server.secret_access_key,
        }
    )
    path = tmp_path / "job.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: items
            source:
              connector: custom
              reader:
                implementation: "{SUPPORT}:GeneratedReader"
                options: {{"rows": 3000}}
            target:
              connector: parquet
              path: s3://{bucket}/items
              connection: {connection}
              options: {{target_file_size_mb: 0.0001, row_group_size_mb: 0.001}}
            engine: {{batch_size: 1000}}
            """
        )
    )
    return path


def _rows(s3_server, bucket: str) -> list[int]:
    fs = _fs(s3_server)
    ids: list[int] = []
    for key in _keys(s3_server, bucket):
        if key.startswith("items/part-") and key.endswith(".parquet"):
            with fs.open_input_file(f"{bucket}/{key}") as handle:
                ids += pq.read_table(pa.BufferReader(handle.read())).column("id").to_pylist()
    return sorted(ids)


def test_a_run_killed_before_its_commit_on_s3_leaves_a_staging_folder_the_next_runs_sweep(
    tmp_path, s3_server, s3_bucket, monkeypatch
):
    job = _job(tmp_path, s3_server, s3_bucket)
    killed = dativo("run", job, "--quiet", "--run-id", "killed-1", env={"DATIVO_CRASH_AT": "before_finalize"})
    assert killed.returncode == -9, killed.stderr
    keys = _keys(s3_server, s3_bucket)
    assert "items/_dativo_leases/killed-1" in keys
    assert any(key.startswith("items/_dativo_tmp_killed-1/") for key in keys), keys
    assert _rows(s3_server, s3_bucket) == []

    # The next run within LEASE_STALE_S keeps the folder (its run could be alive) and commits once.
    assert pipeline.run(build_plan(load_job(job))).status == "succeeded"
    assert any(key.startswith("items/_dativo_tmp_killed-1/") for key in _keys(s3_server, s3_bucket))
    assert _rows(s3_server, s3_bucket) == list(range(3000))

    # Day two, once the killed run's lease is stale: its folder and lease go; the rows are appended once.
    monkeypatch.setattr(_lease, "LEASE_STALE_S", 0.0)
    time.sleep(1.1)  # the store's timestamps have 1 s resolution
    assert pipeline.run(build_plan(load_job(job))).status == "succeeded"
    keys = _keys(s3_server, s3_bucket)
    assert not any("killed-1" in key for key in keys), keys
    assert not any("_dativo_tmp_" in key or "_dativo_leases/" in key for key in keys), keys
    assert _rows(s3_server, s3_bucket) == sorted(list(range(3000)) * 2)
