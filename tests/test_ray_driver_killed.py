"""engine.executor: ray with the driver SIGKILLed while its partition tasks run, into Parquet and Iceberg.

The driver is a real ``dativo run`` subprocess on the session's 3-node Ray cluster
(tests/support/raycluster.py), reading the suite's real PostgreSQL with the built-in
ADBC reader whose partition 1 holds (tests/support/ray_plugins.py: ChaosPostgresReader,
``hold``) while partitions 0 and 2 stage their files; then the driver is SIGKILLed. The
test asserts what Ray does with the running task (ended with its driver), that nothing
is committed, what the killed run left in the target, and that the next runs (a new run
id, as a scheduler retries; then day two, run twice) commit every row exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pyiceberg.catalog import load_catalog

import dativo
from dativo.targets.iceberg.maintain import MaintainOptions, maintain
from dativo.targets.parquet import read_manifest

from support.cli import dativo as dativo_cli
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
KILLED = "killed-1"


@pytest.fixture
def ray_env(ray_cluster, pg_server, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv(PASSWORD_ENV, pg_server.password)
    return ray_cluster.address


def wait_for(what: str, check: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def dead(pid: int) -> bool:
    """The process is gone (or a zombie its parent has not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


def files_of(folder: Path, run_id: str) -> list[Path]:
    """Parquet files under ``folder`` whose names carry ``run_id`` (staged by that run)."""
    return sorted(p for p in folder.rglob("*.parquet") if f"{run_id}-p" in p.name)


def kill_driver_mid_run(tmp_path: Path, job: Path, address: str, password: str, staged: Path) -> int:
    """Start the driver, wait until partition 1 holds and partitions 0 and 2 staged files, SIGKILL it.

    Returns the pid of the Ray worker process that was running partition 1.
    """
    command = [sys.executable, "-m", "dativo", "run", str(job), "--quiet", "--executor", "ray"]
    command += ["--address", address, "--run-id", KILLED]
    env = {**os.environ, PASSWORD_ENV: password}
    env.pop("PYTHONWARNINGS", None)
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    chaos = tmp_path / "chaos"
    try:
        wait_for("partition 1 to hold", lambda: (chaos / "marker-1").exists())
        partitions = {"p0000", "p0002"}
        wait_for(
            "partitions 0 and 2 to stage",
            lambda: {p.name.split(f"{KILLED}-")[1][:5] for p in files_of(staged, KILLED)} >= partitions,
        )
        time.sleep(1.0)  # their tasks return and the driver gathers them: it is mid-run, waiting for partition 1
        assert driver.poll() is None, driver.communicate()
        (holder,) = [int(p.name.split("-")[1]) for p in chaos.iterdir() if p.name.startswith("p1-")]
        assert not dead(holder)
        driver.send_signal(signal.SIGKILL)
        driver.communicate(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == -signal.SIGKILL
    return holder


def chaos_source(tmp_path: Path, db: Any) -> str:
    chaos = tmp_path / "chaos"
    chaos.mkdir()
    options = json.dumps({"chaos": {"mode": "hold", "partition": 1, "dir": str(chaos)}})
    return pg_source(db, reader=f"{PLUGINS}:ChaosPostgresReader", options=options)


def run_twice_more(job: Path, db: Any, address: str) -> None:
    """The next run (a new run id) commits everything once; day two: new rows, run, and the same run id again."""
    first = dativo.run(job, executor="ray", address=address, run_id="next-1")
    first.raise_for_failures()
    assert first.streams[0].rows == ROWS
    create_items(db, ROWS + 1, ROWS + 300, create=False)
    second = dativo.run(job, executor="ray", address=address, run_id="next-2")
    second.raise_for_failures()
    assert second.streams[0].rows == 300  # only past the committed cursor
    again = dativo.run(job, executor="ray", address=address, run_id="next-2")
    assert again.streams[0].status == "already committed", again.streams[0].error


def test_driver_sigkilled_mid_run_parquet_the_next_run_removes_its_staging_folder_and_commits_once(
    tmp_path, pg_db, pg_server, ray_env
):
    import pyarrow.fs as pafs

    create_items(pg_db, 1, ROWS)
    out = tmp_path / "out"
    job = write_job(tmp_path, "killed", chaos_source(tmp_path, pg_db), parquet_target(out))
    holder = kill_driver_mid_run(tmp_path, job, ray_env, pg_server.password, out)
    wait_for("Ray to end the dead driver's task", lambda: dead(holder), timeout=60)
    assert read_manifest(pafs.LocalFileSystem(), str(out)) is None  # nothing committed, no state
    left = files_of(out, KILLED)
    assert left and all(p.parent.name == f"_dativo_tmp_{KILLED}" for p in left), left  # staged, invisible
    run_twice_more(job, pg_db, ray_env)
    table = parquet_table(out)  # asserts no file beside the manifest's: the dead run's folder is gone
    assert table.column("id").to_pylist() == source_ids(pg_db)
    assert not (out / f"_dativo_tmp_{KILLED}").exists()


def test_driver_sigkilled_mid_run_iceberg_commits_nothing_and_maintain_removes_what_it_staged(
    tmp_path, pg_db, pg_server, ray_env
):
    create_items(pg_db, 1, ROWS)
    warehouse = tmp_path / "warehouse"
    job = write_job(tmp_path, "killed", chaos_source(tmp_path, pg_db), iceberg_target(warehouse))
    holder = kill_driver_mid_run(tmp_path, job, ray_env, pg_server.password, warehouse)
    wait_for("Ray to end the dead driver's task", lambda: dead(holder), timeout=60)
    catalog = load_catalog(
        "dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )
    assert not catalog.table_exists("raw.items")  # its creation was staged with the data: nothing committed
    left = files_of(warehouse, KILLED)
    assert left and all(p.parent.name == "data" for p in left), left  # data files no metadata references
    run_twice_more(job, pg_db, ray_env)
    # A new run id does not delete another run's unreferenced files (it cannot tell a dead run from a live
    # one): they stay, unreferenced, until `dativo maintain` removes orphans past its safety age.
    assert files_of(warehouse, KILLED) == left
    loaded = catalog.load_table("raw.items")
    referenced = {Path(t.file.file_path.removeprefix("file://")) for t in loaded.scan().plan_files()}
    assert not referenced & set(left)
    assert sorted(loaded.scan().to_arrow().column("id").to_pylist()) == source_ids(pg_db)
    kept = maintain(lambda: catalog.load_table("raw.items"), "raw.items", MaintainOptions(expire=False, compact=False))
    assert kept.orphans == [] and files_of(warehouse, KILLED) == left  # younger than the default safety age (3d)
    swept = dativo_cli("maintain", job, "--no-expire", "--no-compact", "--orphan-age", "0s", "--json")
    assert swept.returncode == 0, swept.stdout + swept.stderr
    assert set(map(str, left)) <= {p.removeprefix("file://") for p in json.loads(swept.stdout)["orphan_files"]}
    table = iceberg_table(warehouse)  # asserts every data file on disk is referenced
    assert table.column("id").to_pylist() == source_ids(pg_db)
