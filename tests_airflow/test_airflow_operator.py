"""DativoOperator in a real Airflow ``dag.test()`` run (SQLite metadata database, no scheduler)."""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from airflow.models.xcom import XComModel
from airflow.sdk import Asset
from airflow.utils.session import create_session
from pyiceberg.catalog import load_catalog

from dativo.integrations.airflow import airflow_run_id

JOB = """\
name: lake
defaults:
  source:
    connector: sqlite
    connection: {path: app.db}
  target: {connector: iceberg, table: "raw.{table}"}
streams:
  "*": {}
"""


@pytest.fixture
def job(tmp_path: Path) -> Path:
    with sqlite3.connect(tmp_path / "app.db") as db:
        for name, rows in (("orders", 30), ("customers", 4)):
            db.execute(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, updated TEXT)")
            # One row an hour from 2026-01-01 00:30 (UTC).
            db.executemany(
                f"INSERT INTO {name} VALUES (?, ?)",
                [(i, f"2026-01-{1 + (i - 1) // 24:02d}T{(i - 1) % 24:02d}:30:00") for i in range(1, rows + 1)],
            )
    path = tmp_path / "lake.yaml"
    path.write_text(JOB)
    return path


def rows(job: Path, table: str) -> int:
    warehouse = job.parent / "warehouse"
    catalog = load_catalog(
        "dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )
    return catalog.load_table(table).scan().to_arrow().num_rows


def load_dag(dag_id: str, body: str):
    """Write a DAG file into the dags folder (dag.test() syncs it from there) and import it."""
    path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / f"{dag_id}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "from datetime import UTC, datetime\n"
        "from airflow.sdk import DAG\n"
        "from dativo.integrations.airflow import DativoOperator\n"
    )
    path.write_text(header + textwrap.dedent(body))
    spec = importlib.util.spec_from_file_location(dag_id, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def test_operator_runs_every_stream_pushes_the_summary_and_declares_tables(job):
    dag = load_dag(
        "dativo_lake",
        f"""
        with DAG("dativo_lake", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC)) as dag:
            DativoOperator(task_id="lake", job={str(job)!r})
        """,
    )
    task = dag.get_task("lake")
    assert {a.uri for a in task.outlets} == {"iceberg://raw/orders", "iceberg://raw/customers"}
    assert all(isinstance(a, Asset) for a in task.outlets)
    dag_run = dag.test()
    assert dag_run.state == "success"
    query = XComModel.get_many(run_id=dag_run.run_id, dag_ids="dativo_lake", task_ids="lake", key="return_value")
    with create_session() as session:
        summary = XComModel.deserialize_value(session.scalars(query).first())
    assert summary["status"] == "succeeded" and summary["rows"] == 34
    assert {s["stream"]: s["rows"] for s in summary["streams"]} == {"orders": 30, "customers": 4}
    assert all(s["run_id"] == f"airflow-dativo_lake-{dag_run.run_id}" for s in summary["streams"])
    assert rows(job, "raw.orders") == 30 and rows(job, "raw.customers") == 4


def test_data_interval_window_reads_one_day(job):
    # The window filters on the incremental cursor column (the SQLite reader itself does not read incrementally).
    job.write_text(
        JOB.replace("connection: {path: app.db}", "connection: {path: app.db}\n    incremental: {cursor: updated}")
    )
    dag = load_dag(
        "dativo_daily",
        f"""
        with DAG("dativo_daily", schedule="@daily", start_date=datetime(2026, 1, 1, tzinfo=UTC)) as dag:
            DativoOperator(task_id="orders", job={str(job)!r}, streams=["orders"], window_from_data_interval=True)
        """,
    )
    # A manual @daily run at 2026-01-02 00:00 covers the day before: [2026-01-01, 2026-01-02).
    dag_run = dag.test(logical_date=datetime(2026, 1, 2, tzinfo=UTC))
    assert dag_run.state == "success"
    assert dag_run.data_interval_start == datetime(2026, 1, 1, tzinfo=UTC)
    assert rows(job, "raw.orders") == 24  # the hours of 2026-01-01 only


def test_run_id_is_stable_across_tries():
    class Dag:
        dag_id = "d"

    assert airflow_run_id({"dag": Dag(), "run_id": "scheduled__2026-01-01"}) == "airflow-d-scheduled__2026-01-01"
