"""engine.executor: ray on a real multi-node Ray cluster: the same tables as local runs, exactly once, no secret sent.

Every run here is a real Ray run on the session's cluster (tests/support/raycluster.py: a
head and two worker nodes, each its own process tree); the driver is this process (the
Python API) or a `dativo` subprocess. Sources are the suite's real PostgreSQL, real files
and a custom PartitionedReader; targets the built-in Parquet writer (and Iceberg).
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pytest

import dativo

from support.cli import assert_one_line_error
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
    without_metadata,
    write_job,
)
from support.raycluster import PASSWORD_ENV

pytestmark = [pytest.mark.xdist_group("ray"), pytest.mark.timeout(300)]


@pytest.fixture
def ray_env(ray_cluster, pg_server, monkeypatch):  # type: ignore[no-untyped-def]
    """The cluster's address; the driver (this process) sees the password reference's variable as the workers do."""
    monkeypatch.setenv(PASSWORD_ENV, pg_server.password)
    return ray_cluster.address


TARGETS = ["parquet", "iceberg"]


def target_of(kind: str, folder: Path) -> str:
    return parquet_target(folder) if kind == "parquet" else iceberg_target(folder)


def table_of(kind: str, folder: Path) -> pa.Table:
    return without_metadata(parquet_table(folder) if kind == "parquet" else iceberg_table(folder))


def run_both(job: Path, address: str, run_id: str | None = None) -> tuple[dativo.RunResult, dativo.RunResult]:
    local = dativo.run(job.with_name(job.stem + "-local.yaml"), executor="local")
    ray_run = dativo.run(job, executor="ray", address=address, run_id=run_id)
    local.raise_for_failures()
    ray_run.raise_for_failures()
    return local, ray_run


def twin(job: Path, replace: tuple[str, str]) -> None:
    """The same job writing elsewhere, for the local run."""
    Path(replace[1]).mkdir(parents=True, exist_ok=True)
    job.with_name(job.stem + "-local.yaml").write_text(job.read_text().replace(*replace))


@pytest.mark.parametrize("kind", TARGETS)
def test_postgres_parallel_table_same_tables_local_and_ray_two_days(tmp_path, pg_db, ray_env, kind):
    create_items(pg_db, 1, 3000)
    job = write_job(tmp_path, "pg", pg_source(pg_db), target_of(kind, tmp_path / "ray-out"))
    twin(job, (str(tmp_path / "ray-out"), str(tmp_path / "local-out")))
    local, ray_run = run_both(job, ray_env)
    executor = ray_run.streams[0].summary["executor"]
    assert executor["name"] == "ray" and executor["partitions"] == 3 and executor["done"] == 3
    assert sum(w["rows"] for w in executor["workers"].values()) == 3000
    assert len(executor["workers"]) == 2, executor  # both worker nodes read
    assert "executor" not in local.streams[0].summary
    create_items(pg_db, 3001, 3400, create=False)  # day two: the incremental cursor moves on
    run_both(job, ray_env)
    ray_table, local_table = table_of(kind, tmp_path / "ray-out"), table_of(kind, tmp_path / "local-out")
    assert ray_table.column("id").to_pylist() == source_ids(pg_db)
    assert ray_table.equals(local_table)


@pytest.mark.parametrize("kind", TARGETS)
def test_files_by_file_same_tables_local_and_ray(tmp_path, ray_env, kind):
    data = tmp_path / "in"
    data.mkdir()
    for day in range(4):
        ids = list(range(day * 250, day * 250 + 250))
        pcsv.write_csv(pa.table({"id": ids, "name": [f"n{i}" for i in ids]}), data / f"part-{day}.csv")
    source = f"source:\n  connector: files\n  path: {data}\n  format: csv\n  parallelism: 4\n"
    job = write_job(tmp_path, "files", source, target_of(kind, tmp_path / "ray-out"))
    twin(job, (str(tmp_path / "ray-out"), str(tmp_path / "local-out")))
    _, ray_run = run_both(job, ray_env)
    assert ray_run.streams[0].summary["executor"]["partitions"] == 4  # one task per file
    run_both(job, ray_env)  # day two: the same files appended again
    ray_table, local_table = table_of(kind, tmp_path / "ray-out"), table_of(kind, tmp_path / "local-out")
    assert ray_table.num_rows == 2000
    assert ray_table.equals(local_table)


@pytest.mark.parametrize("kind", TARGETS)
def test_custom_partitioned_reader_same_tables_and_a_run_id_commits_once(tmp_path, ray_env, kind):
    source = (
        f"source:\n  connector: custom\n  reader: {{implementation: '{PLUGINS}:RangeReader'}}\n"
        "  parallelism: 5\n  options: {rows: 4000, partitions: 5}\n"
    )
    job = write_job(tmp_path, "custom", source, target_of(kind, tmp_path / "ray-out"))
    twin(job, (str(tmp_path / "ray-out"), str(tmp_path / "local-out")))
    _, ray_run = run_both(job, ray_env, run_id="day-1")
    assert ray_run.streams[0].status == "succeeded"
    again = dativo.run(job, executor="ray", address=ray_env, run_id="day-1")
    assert again.streams[0].status == "already committed", again.streams[0].error
    ray_table, local_table = table_of(kind, tmp_path / "ray-out"), table_of(kind, tmp_path / "local-out")
    assert ray_table.column("id").to_pylist() == list(range(4000))
    assert ray_table.equals(local_table)


def test_incremental_merge_on_ray_equals_local_and_keeps_the_state_with_the_data(tmp_path, pg_db, ray_env):
    create_items(pg_db, 1, 2000)
    merge = iceberg_target(tmp_path / "ray-out", mode="merge", merge="{keys: [id]}")
    job = write_job(tmp_path, "merge", pg_source(pg_db), merge)
    twin(job, (str(tmp_path / "ray-out"), str(tmp_path / "local-out")))
    run_both(job, ray_env, run_id="m-1")
    pg_db.psql("INSERT INTO items SELECT g, 'late ' || g, g, 'y' FROM generate_series(2001, 2300) g")
    _, ray_run = run_both(job, ray_env, run_id="m-2")
    assert ray_run.streams[0].summary["rows"] == 300  # only past the committed cursor
    assert dativo.run(job, executor="ray", address=ray_env, run_id="m-2").streams[0].status == "already committed"
    ray_table, local_table = table_of("iceberg", tmp_path / "ray-out"), table_of("iceberg", tmp_path / "local-out")
    assert ray_table.column("id").to_pylist() == source_ids(pg_db)
    assert ray_table.equals(local_table)


def test_task_arguments_carry_references_not_the_password(tmp_path, pg_db, pg_server, ray_env):
    """What travels to the workers (the pickled PartitionTask) holds ${DATIVO_RAY_PGPASSWORD}, never its value."""
    from dativo.engine import pipeline
    from dativo.engine.plan import build_plan
    from dativo.executors import ray as ray_module  # noqa: F401  (the executor's run module)
    from dativo.executors._ray_task import PartitionTask
    from dativo.executors.ray import _tasks

    create_items(pg_db, 1, 3000)
    job = write_job(tmp_path, "secret", pg_source(pg_db), parquet_target(tmp_path / "out"))
    plan = build_plan(dativo.load_job(job).loaded)  # type: ignore[arg-type]
    assert pg_server.password in repr(plan.reader.config)  # the driver holds it resolved
    summary = pipeline.new_summary(plan)
    from dativo.engine.executor import Execution

    execution = Execution(plan, None, None, pa.schema([]), None, summary)  # type: ignore[arg-type]
    tasks: list[PartitionTask] = _tasks(execution, [None], {"run_id": plan.run_id})
    sent = pickle.dumps(tasks)
    assert pg_server.password.encode() not in sent
    assert ("${" + PASSWORD_ENV + "}").encode() in sent
    # and the run itself succeeds: the workers resolve the reference from their own environment
    dativo.run(job, executor="ray", address=ray_env).raise_for_failures()
    assert parquet_table(tmp_path / "out").num_rows == 3000


def test_validate_and_run_refuse_a_writer_that_cannot_stage_with_one_line(tmp_path):
    source = f"source:\n  connector: custom\n  reader: {{implementation: '{PLUGINS}:RangeReader'}}\n"
    source += "  options: {rows: 10, partitions: 2}\n"
    target = f"target:\n  connector: custom\n  writer: {{implementation: '{PLUGINS}:PlainWriter'}}\n"
    job = write_job(tmp_path, "plain", source, target, engine=", executor: ray")
    for command in (("validate", job), ("validate", "--offline", job), ("run", job, "--quiet")):
        result = dativo_cli(*command)
        assert_one_line_error(result, "does not implement dativo.StagingWriter", code=2)
    staging = write_job(tmp_path, "staging", source, parquet_target(tmp_path / "out"))
    ok = dativo_cli("validate", staging, "--executor", "ray")
    assert ok.returncode == 0 and "ok" in ok.stdout, ok.stderr


def test_without_ray_the_executor_names_the_install_step(tmp_path):
    source = f"source:\n  connector: custom\n  reader: {{implementation: '{PLUGINS}:RangeReader'}}\n"
    source += "  options: {rows: 10, partitions: 2}\n"
    job = write_job(tmp_path, "noray", source, parquet_target(tmp_path / "out"))
    hide = str(Path(__file__).parent / "support" / "hide_modules")
    env = {"PYTHONPATH": hide, "DATIVO_TEST_HIDE": "ray"}
    result = dativo_cli("run", job, "--quiet", "--executor", "ray", env=env)
    assert_one_line_error(result, "pip install 'dativo[ray]'", code=2)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


VERSION_PROBE = """
import runpy, sys
sys.argv = ["dativo", "--version"]
try:
    runpy.run_module("dativo", run_name="__main__")
except SystemExit:
    pass
print("ray" in sys.modules, "dativo.executors.ray" in sys.modules)
"""


def test_version_never_imports_ray():
    out = subprocess.run([sys.executable, "-c", VERSION_PROBE], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "False False", out.stdout + out.stderr
