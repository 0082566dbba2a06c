"""``dativo maintain``: orphans of killed runs, compaction, snapshot expiry, dry runs and concurrent runs (issue 11)."""

from __future__ import annotations

import json
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from dativo.config.loader import load_job
from dativo.engine import pipeline
from dativo.engine.plan import build_plan
from dativo.engine.retry import run_job
from dativo.targets.iceberg import maintain as maintenance
from dativo.targets.iceberg.maintain import MaintainOptions, referenced_files

from support.cli import assert_one_line_error, dativo
from support.iceberg_fixtures import embedded_catalog


@pytest.fixture
def items(pg_db: Any) -> Any:
    pg_db.psql(
        "CREATE TABLE items (id int PRIMARY KEY, name text);"
        "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 1000) g;"
    )
    return pg_db


def write_job(job_dir: Path, db: Any) -> Path:
    path = job_dir / "items.yaml"
    path.write_text(
        "name: items\nsource:\n  connector: postgres\n"
        f"  connection: {json.dumps(db.connection)}\n  table: public.items\n  incremental: {{cursor: id}}\n"
        "target: {connector: iceberg, table: raw.items}\n"
        "engine: {batch_size: 200, retry: {max_attempts: 1}}\n"
    )
    return path


def add_rows(db: Any, first: int, last: int) -> None:
    db.psql(f"INSERT INTO items SELECT g, 'item ' || g FROM generate_series({first}, {last}) g")


def files_on_disk(job_dir: Path) -> set[str]:
    data = job_dir / "warehouse" / "raw" / "items"
    return {"/" + str(path).lstrip("/") for path in data.rglob("*") if path.is_file()}


def table_ids(job_dir: Path) -> list[int]:
    table = embedded_catalog(job_dir).load_table("raw.items")
    return sorted(table.scan().to_arrow().column("id").to_pylist())


def test_maintain_removes_the_orphans_of_a_sigkilled_run(tmp_path, items):
    job = write_job(tmp_path, items)
    assert dativo("run", job, "--quiet").returncode == 0
    add_rows(items, 1001, 1500)
    killed = dativo("run", job, "--quiet", env={"DATIVO_CRASH_AT": "files_written"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    table = embedded_catalog(tmp_path).load_table("raw.items")
    orphans = files_on_disk(tmp_path) - referenced_files(table)
    killed_files = {path for path in orphans if path.endswith(".parquet")}
    assert killed_files, "the killed run left data files behind"

    young = dativo("maintain", job, "--no-compact", "--no-expire", "--json")  # default safety age: 3 days
    assert young.returncode == 0, young.stderr
    assert json.loads(young.stdout)["orphan_files"] == []
    assert files_on_disk(tmp_path) >= killed_files

    dry = dativo("maintain", job, "--orphan-age", "0s", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    listed = {
        line.split("would delete orphan file ", 1)[1].removeprefix("file://")
        for line in dry.stdout.splitlines()
        if "would delete orphan file" in line
    }
    assert killed_files <= {"/" + path.lstrip("/") for path in listed}
    assert "dry run, nothing changed" in dry.stdout
    assert files_on_disk(tmp_path) >= killed_files  # a dry run deletes nothing

    done = dativo("maintain", job, "--orphan-age", "0s", "--json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["orphan_files"]) >= len(killed_files)
    table = embedded_catalog(tmp_path).load_table("raw.items")
    assert files_on_disk(tmp_path) == files_on_disk(tmp_path) & referenced_files(table)  # no orphan left
    assert referenced_files(table) & {p for p in referenced_files(table) if p.endswith(".parquet")} <= files_on_disk(
        tmp_path
    )
    assert table_ids(tmp_path) == list(range(1, 1001))  # reads back equal to what was committed
    rerun = dativo("run", job, "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    assert table_ids(tmp_path) == list(range(1, 1501))


def test_compaction_and_expiry_keep_the_data_and_the_job_state(tmp_path, items):
    job = write_job(tmp_path, items)
    for first in range(1001, 1401, 100):
        run_job(load_job(job))
        add_rows(items, first, first + 99)
    run_job(load_job(job))  # five runs, five small files
    table = embedded_catalog(tmp_path).load_table("raw.items")
    assert len(list(table.scan().plan_files())) == 5
    state_before = pipeline.load_state(build_plan(load_job(job)))

    dry = dativo("maintain", job, "--expire-older-than", "0s", "--retain-last", "1", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert len(planned["compacted_files"]) == 5
    assert embedded_catalog(tmp_path).load_table("raw.items").metadata_location == table.metadata_location

    done = dativo("maintain", job, "--expire-older-than", "0s", "--retain-last", "1", "--orphan-age", "0s", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["compacted_into"] == 1
    table = embedded_catalog(tmp_path).load_table("raw.items")
    assert len(list(table.scan().plan_files())) == 1
    assert table.current_snapshot().summary["dativo.maintenance"] == "compact"
    # The snapshot holding the job's latest state survives expiry; everything older is gone.
    assert report["expired_snapshots"] and len(table.snapshots()) == 2
    assert pipeline.load_state(build_plan(load_job(job))) == state_before
    assert table_ids(tmp_path) == list(range(1, 1401))
    assert files_on_disk(tmp_path) <= referenced_files(table)  # the replaced small files were removed
    add_rows(items, 1401, 1450)
    assert run_job(load_job(job)).rows == 50  # the next incremental run continues from the state
    assert table_ids(tmp_path) == list(range(1, 1451))


def test_compaction_racing_a_run_retries_on_the_refreshed_table(tmp_path, items, monkeypatch):
    job = write_job(tmp_path, items)
    for first in (1001, 1101):
        run_job(load_job(job))
        add_rows(items, first, first + 99)
    original = maintenance._commit_compaction
    calls = []

    def run_meanwhile(*args: Any, **kwargs: Any) -> None:
        if not calls:  # a dativo run commits between the compaction's planning and its commit
            calls.append(run_job(load_job(job)))
        original(*args, **kwargs)

    monkeypatch.setattr(maintenance, "_commit_compaction", run_meanwhile)
    catalog = embedded_catalog(tmp_path)
    report = maintenance.maintain(
        lambda: catalog.load_table("raw.items"),
        "raw.items",
        MaintainOptions(expire=False, orphans=False, target_file_bytes=64 * 1024 * 1024),
    )
    assert calls and calls[0].rows == 100
    assert len(report.compacted) == 2 and report.compacted_into == 1
    table = catalog.load_table("raw.items")
    assert [s.summary.get("dativo.maintenance") for s in table.snapshots()][-2:] == [None, "compact"]
    assert table_ids(tmp_path) == list(range(1, 1201))  # the concurrent run's rows and the compacted ones, once


def test_maintain_refuses_a_parquet_target(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("source: {connector: files, path: in.csv}\ntarget: {connector: parquet, path: out}\n")
    result = dativo("maintain", path)
    assert_one_line_error(result, "maintain works on iceberg targets", code=2)


def test_maintain_bad_duration_names_the_option(tmp_path, items):
    result = dativo("maintain", write_job(tmp_path, items), "--orphan-age", "soon")
    assert_one_line_error(result, "--orphan-age: 'soon' is not a duration", code=2)


def test_expiry_racing_a_run_keeps_the_run_and_its_state(tmp_path, items, monkeypatch):
    job = write_job(tmp_path, items)
    for first in (1001, 1101, 1201):
        run_job(load_job(job))
        add_rows(items, first, first + 99)
    original = maintenance.expirable
    ran = []

    def run_meanwhile(*args: Any, **kwargs: Any) -> list[int]:
        ids = original(*args, **kwargs)
        if not ran:  # a run commits after the expiry planned and before it commits
            ran.append(run_job(load_job(job)))
        return ids

    monkeypatch.setattr(maintenance, "expirable", run_meanwhile)
    catalog = embedded_catalog(tmp_path)
    report = maintenance.maintain(
        lambda: catalog.load_table("raw.items"),
        "raw.items",
        MaintainOptions(compact=False, retain_last=1, older_than=timedelta(0), orphan_age=timedelta(0)),
    )
    assert ran and ran[0].rows == 100 and len(report.expired) == 2
    table = catalog.load_table("raw.items")
    assert table.current_snapshot().summary["dativo.run-id"] == ran[0].run_id  # the concurrent run is current
    assert table_ids(tmp_path) == list(range(1, 1301))
    assert pipeline.load_state(build_plan(load_job(job)))["cursor"] == 1300
