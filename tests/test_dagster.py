"""Dagster assets from a dativo job, materialized in process against the real PostgreSQL and Iceberg catalog."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from pyiceberg.catalog import load_catalog

from dativo.errors import PluginError
from dativo.integrations.dagster import DativoJobsComponent, DativoResource, dagster_run_id, dativo_assets

ORDERS = dg.AssetKey(["raw", "orders"])
CUSTOMERS = dg.AssetKey(["raw", "customers"])


@pytest.fixture
def job(tmp_path: Path, pg_db) -> Path:
    # 48 orders, one every hour of 2024-01-01 and 2024-01-02; 5 customers.
    pg_db.psql(
        "CREATE TABLE orders (id int PRIMARY KEY, amount numeric(10,2), updated_at timestamptz);"
        "INSERT INTO orders SELECT g, g * 1.5, timestamptz '2024-01-01 00:30+00' + (g - 1) * interval '1 hour' "
        "FROM generate_series(1, 48) g;"
        "CREATE TABLE customers (id int PRIMARY KEY, name text, updated_at timestamptz);"
        "INSERT INTO customers SELECT g, 'c' || g, timestamptz '2024-01-01 12:00+00' FROM generate_series(1, 5) g;"
    )
    path = tmp_path / "lake.yaml"
    path.write_text(
        "name: lake\n"
        "defaults:\n"
        f"  source: {{connector: postgres, connection: {json.dumps(pg_db.connection)}, "
        "incremental: {cursor: updated_at}}\n"
        '  target: {connector: iceberg, table: "raw.{table}"}\n'
        "streams:\n  public.*: {}\n"
    )
    return path


def table_rows(job: Path, name: str) -> int:
    warehouse = job.parent / "warehouse"
    catalog = load_catalog(
        "dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )
    return catalog.load_table(name).scan().to_arrow().num_rows


def materializations(result, key):
    return [e.materialization for e in result.get_asset_materialization_events() if e.asset_key == key]


def test_one_asset_per_stream_with_metadata_and_checks(job):
    assets = dativo_assets(job=job)
    specs = {spec.key: spec for spec in assets.specs}
    assert set(specs) == {ORDERS, CUSTOMERS}
    assert [dep.asset_key for dep in specs[ORDERS].deps] == [dg.AssetKey(["public", "orders"])]
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([assets], resources={"dativo": DativoResource()}, instance=instance)
    assert result.success
    (orders,) = materializations(result, ORDERS)
    meta = orders.metadata
    assert meta["dagster/row_count"].value == 48 and meta["rows"].value == 48
    warehouse = job.parent / "warehouse"
    catalog = load_catalog(
        "dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )
    assert meta["snapshot_id"].value == str(catalog.load_table("raw.orders").current_snapshot().snapshot_id)
    assert meta["run_id"].value == f"dagster-{result.run_id}"
    assert meta["cursor"].value.startswith("2024-01-02T23:30:00")
    assert [(c.name, c.type) for c in meta["dagster/column_schema"].value.columns] == [
        ("id", "int32"),
        ("amount", "decimal128(10, 2)"),
        ("updated_at", "timestamp[us, tz=UTC]"),
    ]
    assert meta["files"].value == 1 and meta["duration_s"].value > 0
    checks = {(c.asset_key, c.check_name): c for c in result.get_asset_check_evaluations()}
    assert checks[(ORDERS, "rows_committed")].passed
    assert checks[(ORDERS, "schema_unchanged")].passed

    # Materializing one asset runs its stream only, incrementally (nothing new at the source).
    again = dg.materialize([assets], resources={"dativo": DativoResource()}, instance=instance, selection=[ORDERS])
    assert again.success
    assert [m.metadata["rows"].value for m in materializations(again, ORDERS)] == [0]
    assert materializations(again, CUSTOMERS) == []


def test_schema_drift_check_warns(job, pg_db):
    assets = dativo_assets(job=job, streams=["public.customers"])
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([assets], resources={"dativo": DativoResource()}, instance=instance).success
    pg_db.psql("ALTER TABLE customers ADD COLUMN email text;")
    second = dg.materialize([assets], resources={"dativo": DativoResource()}, instance=instance)
    assert second.success
    check = {c.check_name: c for c in second.get_asset_check_evaluations()}["schema_unchanged"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["changes"].value == "added email string"


class FlakyResource(DativoResource):
    """Fails the step once after dativo committed: the retry must not apply the partition again."""

    marker: str

    def run_streams(self, context, job, keys, translator=None):
        results = list(super().run_streams(context, job, keys, translator))
        if not Path(self.marker).exists():
            Path(self.marker).touch()
            raise RuntimeError("worker lost after the commit")
        yield from results


def test_time_partition_is_a_window_and_a_retry_applies_it_once(job, tmp_path):
    daily = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-03")
    assets = dativo_assets(
        job=job, streams=["public.orders"], partitions_def=daily, retry_policy=dg.RetryPolicy(max_retries=1)
    )
    resource = FlakyResource(marker=str(tmp_path / "failed-once"))
    result = dg.materialize([assets], resources={"dativo": resource}, partition_key="2024-01-02")
    assert result.success
    assert (tmp_path / "failed-once").exists()  # the first attempt did fail after committing
    (orders,) = materializations(result, ORDERS)
    assert orders.metadata["run_id"].value == f"dagster-{result.run_id}-2024-01-02"
    assert orders.metadata["status"].value == "already committed"
    assert table_rows(job, "raw.orders") == 24  # 24 hours of 2024-01-02, once
    day_one = dg.materialize([assets], resources={"dativo": DativoResource()}, partition_key="2024-01-01")
    assert day_one.success and table_rows(job, "raw.orders") == 48


def test_failed_stream_fails_the_step_after_committing_the_others(job, pg_db):
    pg_db.psql("ALTER TABLE customers DROP COLUMN updated_at;")  # its cursor is gone
    assets = dativo_assets(job=job)
    result = dg.materialize([assets], resources={"dativo": DativoResource()}, raise_on_error=False)
    assert not result.success
    assert [m.metadata["rows"].value for m in materializations(result, ORDERS)] == [48]
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "public.customers" in failure.event_specific_data.error.message
    assert table_rows(job, "raw.orders") == 48


def test_yaml_component_builds_assets_for_each_job(job):
    component = DativoJobsComponent.resolve_from_yaml(f"jobs: [{job.name}]\nmax_concurrent_streams: 2\n")

    class Context:
        path = job.parent

    defs = component.build_defs(Context())
    keys = {key for assets in defs.assets for key in assets.keys}
    assert keys == {ORDERS, CUSTOMERS}
    assert defs.resources["dativo"].max_concurrent_streams == 2


def test_run_id_of_a_reexecution_is_its_root_run(job):
    class Run:
        root_run_id = "first"
        run_id = "second"

    class Context:
        run = Run()
        has_partition_key = True
        partition_key = "2024-01-02"

    assert dagster_run_id(Context()) == "dagster-first-2024-01-02"


def test_missing_dagster_names_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['dagster'] = None\n"
        "try:\n import dativo.integrations.dagster\nexcept Exception as e: print(type(e).__name__, e)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith(PluginError.__name__) and "pip install 'dativo[dagster]'" in out
