"""The real Iceberg REST catalog server: commits whose response is lost never lose or duplicate data (issue 11)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from dativo.config.loader import load_job
from dativo.engine.retry import run_job
from dativo.errors import TargetError

from support.cli import dativo
from support.iceberg_fixtures import rest_catalog
from support.iceberg_rest import RestCatalogServer


@pytest.fixture
def items(pg_db: Any) -> Any:
    pg_db.psql("CREATE TABLE items AS SELECT g AS id, 'item ' || g AS name FROM generate_series(1, 100) g")
    return pg_db


def job(job_dir: Path, db: Any, catalog: dict[str, Any], table: str, wait_s: float = 30) -> Path:
    path = job_dir / "job.yaml"
    target = {
        "connector": "iceberg",
        "table": table,
        "catalog": catalog,
        "options": {"commit_outcome_wait_s": wait_s},
    }
    path.write_text(
        "name: items\nsource:\n  connector: postgres\n"
        f"  connection: {json.dumps(db.connection)}\n  table: public.items\n"
        f"target: {json.dumps(target)}\n"
    )
    return path


def data_objects(server: RestCatalogServer, table: Any) -> set[str]:
    """Every object under the table's data/ folder on the S3 warehouse."""
    bucket, _, prefix = table.location().removeprefix("s3://").partition("/")
    client = server.s3.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/data/")
    keys = (item["Key"] for page in pages for item in page.get("Contents", []))
    return {f"s3://{bucket}/{key}" for key in keys if not key.endswith("/")}  # not pyarrow's folder markers


def referenced(table: Any) -> set[str]:
    return {task.file.file_path for task in table.scan().plan_files()}


@pytest.mark.parametrize("status", [None, 502], ids=["dropped", "bad-gateway"])
def test_dropped_commit_response_commits_exactly_once_and_deletes_nothing(tmp_path, items, rest_server, proxy, status):
    name = f"lost_{uuid.uuid4().hex[:8]}.items"
    path = job(tmp_path, items, rest_server.catalog(proxy.uri), name)
    first = run_job(load_job(path))
    assert first.rows == 100
    proxy.arm(status=status)  # the next commit reaches the server; its answer never reaches dativo
    second = run_job(load_job(path))
    assert proxy.dropped == 1
    assert second.rows == 100
    table = rest_catalog(rest_server).load_table(name)
    assert second.target["snapshot_id"] == table.current_snapshot().snapshot_id
    run_ids = [snapshot.summary["dativo.run-id"] for snapshot in table.snapshots()]
    assert len(run_ids) == 2 and len(set(run_ids)) == 2  # exactly one snapshot per run: committed once
    files = referenced(table)
    assert set(second.target["files"]) <= files
    assert files <= data_objects(rest_server, table)  # nothing the table references was deleted
    assert sorted(row["id"] for row in table.scan().to_arrow().to_pylist()) == sorted(list(range(1, 101)) * 2)


def test_commit_lost_before_the_server_fails_clearly_and_keeps_the_files(tmp_path, items, rest_server, proxy):
    name = f"lost_{uuid.uuid4().hex[:8]}.items"
    path = job(tmp_path, items, rest_server.catalog(proxy.uri), name, wait_s=1.5)
    run_job(load_job(path))
    table = rest_catalog(rest_server).load_table(name)
    before = data_objects(rest_server, table)
    proxy.arm(forward=False)
    with pytest.raises(TargetError, match=r"outcome of this run's commit is unknown .* left in place") as failure:
        run_job(load_job(path))
    assert not failure.value.transient  # a blind retry could duplicate rows if the commit lands late
    table = rest_catalog(rest_server).load_table(name)
    assert len(table.snapshots()) == 1  # the table is as it was
    assert table.scan().to_arrow().num_rows == 100
    left = data_objects(rest_server, table) - before
    assert left, "the run's data files must stay for maintenance, not be deleted"
    assert not left & referenced(table)


def test_maintain_on_the_rest_catalog_with_an_s3_warehouse(tmp_path, items, rest_server):
    name = f"maint_{uuid.uuid4().hex[:8]}.items"
    path = job(tmp_path, items, rest_server.catalog(), name)
    for _ in range(3):
        run_job(load_job(path))
    table = rest_catalog(rest_server).load_table(name)
    assert len(referenced(table)) == 3
    result = dativo("maintain", path, "--expire-older-than", "0s", "--retain-last", "1", "--orphan-age", "0s", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["compacted_files"]) == 3 and report["compacted_into"] == 1
    table = rest_catalog(rest_server).load_table(name)
    assert len(referenced(table)) == 1
    assert sorted(row["id"] for row in table.scan().to_arrow().to_pylist()) == sorted(list(range(1, 101)) * 3)
    # The snapshot holding the job's state still references the small files; once the job commits
    # again, the next maintain expires it and deletes them from S3.
    assert len(data_objects(rest_server, table)) == 4
    run_job(load_job(path))
    again = dativo(
        "maintain", path, "--no-compact", "--expire-older-than", "0s", "--retain-last", "1", "--orphan-age", "0s"
    )
    assert again.returncode == 0, again.stderr
    table = rest_catalog(rest_server).load_table(name)
    assert data_objects(rest_server, table) == referenced(table)  # replaced files deleted, nothing else
    assert sorted(row["id"] for row in table.scan().to_arrow().to_pylist()) == sorted(list(range(1, 101)) * 4)
