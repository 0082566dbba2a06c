"""Jobs with streams: (SQLite source, Iceberg target): the file format, its errors, the CLI and the Python API."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog import load_catalog

import dativo
from dativo.config.loader import LoadedJob, load_job, load_job_file
from dativo.errors import ConfigError

from support.cli import dativo as cli

JOB = """\
name: lake
defaults:
  source:
    connector: sqlite
    connection: {path: app.db}
  target:
    connector: iceberg
    table: "raw.{table}"
streams:
  "*":
    exclude: [tmp_*]
  customers:
    target: {table: raw.clients}
engine:
  max_concurrent_streams: 2
"""


def make_db(path: Path, tables: dict[str, int]) -> None:
    with sqlite3.connect(path) as db:
        for name, rows in tables.items():
            db.execute(f"CREATE TABLE IF NOT EXISTS {name} (id INTEGER PRIMARY KEY, name TEXT, amount REAL)")
            start = db.execute(f"SELECT COALESCE(MAX(id), 0) FROM {name}").fetchone()[0]
            db.executemany(
                f"INSERT INTO {name} VALUES (?, ?, ?)",
                [(i, f"{name}-{i}", i * 1.5) for i in range(start + 1, start + rows + 1)],
            )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def catalog(job_dir: Path):
    warehouse = job_dir / "warehouse"
    return load_catalog("dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri())


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    make_db(tmp_path / "app.db", {"orders": 7, "order_items": 11, "customers": 5, "tmp_scratch": 3})
    return write(tmp_path, JOB)


def test_streams_file_expands_to_single_table_jobs(lake):
    loaded = load_job_file(lake)
    assert [entry.key for entry in loaded.entries] == ["*", "customers"]
    wildcard, customers = loaded.entries
    assert wildcard.wildcard and wildcard.exclude == ("tmp_*",) and wildcard.templates == {"table": "raw.{table}"}
    assert isinstance(customers.job, LoadedJob)
    assert customers.job.config.source.table == "customers" and customers.job.config.target.table == "raw.clients"
    assert customers.job.config.engine.max_concurrent_streams == 2
    with pytest.raises(ConfigError, match=r"job.yaml:10: streams: this job holds 2 streams"):
        load_job(lake)


def test_wildcards_resolve_against_the_source_with_excludes_and_overrides(lake):
    streams = dativo.list_streams(lake)
    assert [(s.name, s.target_table) for s in streams] == [
        ("order_items", "raw.order_items"),
        ("orders", "raw.orders"),
        ("customers", "raw.clients"),  # the explicit stream wins over the wildcard's match
    ]
    assert [s.name for s in dativo.list_streams(lake, streams=["order*"])] == ["order_items", "orders"]
    with pytest.raises(ConfigError, match=r"--stream ordrs: job.yaml has no such stream \(did you mean 'orders'\?"):
        dativo.list_streams(lake, streams=["ordrs"])


def test_errors_point_at_the_stream_or_the_defaults_line(tmp_path):
    path = write(
        tmp_path,
        """\
        defaults:
          source:
            connector: sqlite
            conection: {path: app.db}
          target: {connector: iceberg, table: "raw.{tabel}"}
        streams:
          orders:
            target: {mdoe: append}
          items: raw.items
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_job_file(path)
    lines = str(info.value).splitlines()
    assert f"{path}:4: defaults.source.conection: unknown key; did you mean 'connection'?" in lines[0]
    assert f"{path}:5: defaults.target.table: bad placeholder 'tabel' in the target name" in lines[1]
    assert f"{path}:8: streams.orders.target.mdoe: unknown key; did you mean 'mode'?" in str(info.value)
    assert len(lines) == len(set(lines)) == 3  # the defaults' problem is listed once, not once per stream


def test_top_level_source_with_streams_is_explained(tmp_path):
    path = write(tmp_path, "source: {connector: sqlite}\ntarget: {connector: iceberg, table: a.b}\nstreams: {t: {}}\n")
    with pytest.raises(ConfigError, match=r"job.yaml:1: source: with streams:, settings shared by the streams go"):
        load_job_file(path)


def test_two_streams_writing_one_table_are_refused(tmp_path):
    make_db(tmp_path / "app.db", {"a": 1, "b": 1})
    path = write(tmp_path, JOB.replace('table: "raw.{table}"', "table: raw.same").replace("  customers:\n", "  x:\n"))
    with pytest.raises(ConfigError, match=r"'a' and 'b' both write raw.same; give the target a name template"):
        dativo.list_streams(path)


def test_cli_runs_every_stream_commits_each_and_reruns_once(lake):
    result = cli("run", lake, "--run-id", "r1", "--summary-json", lake.parent / "s.json")
    assert result.returncode == 0, result.stderr
    assert "3 of 3 streams committed, 23 rows" in result.stdout
    summary = json.loads((lake.parent / "s.json").read_text())
    assert summary["status"] == "succeeded" and summary["rows"] == 23
    assert {s["stream"]: s["rows"] for s in summary["streams"]} == {"orders": 7, "order_items": 11, "customers": 5}
    tables = {name: catalog(lake.parent).load_table(f"raw.{name}") for name in ("orders", "order_items", "clients")}
    assert {name: t.scan().to_arrow().num_rows for name, t in tables.items()} == {
        "orders": 7,
        "order_items": 11,
        "clients": 5,
    }
    assert not catalog(lake.parent).table_exists("raw.tmp_scratch")
    again = cli("run", lake, "--run-id", "r1", "--quiet")
    assert again.returncode == 0, again.stderr
    assert catalog(lake.parent).load_table("raw.orders").scan().to_arrow().num_rows == 7  # not applied twice


def test_one_failed_stream_leaves_the_others_committed(lake):
    text = lake.read_text().replace(
        "    target: {table: raw.clients}\n",
        "    target: {table: raw.clients, mode: merge, merge: {keys: [no_such_column]}}\n",
    )
    lake.write_text(text)
    result = cli("run", lake, "--quiet", "--summary-json", lake.parent / "s.json")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: stream customers: "), result.stderr
    assert "no_such_column" in errors[0]
    summary = json.loads((lake.parent / "s.json").read_text())
    assert summary["failed"] == ["customers"]
    assert catalog(lake.parent).load_table("raw.orders").scan().to_arrow().num_rows == 7
    assert not catalog(lake.parent).table_exists("raw.clients")
    result = dativo.run(lake, streams=["customers", "orders"], run_id="api")
    assert result.failed == ["customers"] and result.stream("orders").ok
    with pytest.raises(dativo.StreamsFailed, match=r"1 of 2 streams of job 'lake' failed \(customers\)") as info:
        result.raise_for_failures()
    assert info.value.result is result


def test_python_api_run_result(lake):
    seen: list[str] = []
    result = dativo.run(
        lake, streams=["orders", "customers"], run_id="api-1", on_stream_done=lambda s: seen.append(s.name)
    )
    assert result.ok and result.failed == [] and result.rows == 12
    assert sorted(seen) == ["customers", "orders"]
    orders = result.stream("orders")
    assert (orders.status, orders.rows, orders.run_id, orders.target) == ("succeeded", 7, "api-1", "raw.orders")
    snapshot = catalog(lake.parent).load_table("raw.orders").current_snapshot()
    assert orders.snapshot_id == snapshot.snapshot_id
    assert orders.state is not None and orders.state["run_id"] == "api-1"
    assert orders.schema is not None and orders.schema.names == ["id", "name", "amount"]
    rerun = dativo.run(dativo.load_job(lake), streams=["orders"], run_id="api-1")
    assert rerun.stream("orders").status == "already committed"
    result.raise_for_failures()  # nothing failed: no error


def test_validate_discover_and_state_per_stream(lake):
    results = dativo.validate(lake)
    assert [(r.name, r.ok, r.reader, r.writer) for r in results] == [
        (name, True, "sqlite", "iceberg") for name in ("order_items", "orders", "customers")
    ]
    found = dativo.discover(lake, streams=["customers"])
    assert [(d.name, d.schema.names, d.target_types) for d in found] == [
        ("customers", ["id", "name", "amount"], {"id": "long", "name": "string", "amount": "double"})
    ]
    ok = cli("validate", lake, "--stream", "orders")
    assert ok.returncode == 0 and "[orders]: reader sqlite, writer iceberg" in ok.stdout, ok.stderr
    cli("run", lake, "--quiet", "--stream", "orders", "--run-id", "s1")
    shown = cli("state", "show", lake, "--stream", "order*")
    assert shown.returncode == 0, shown.stderr
    states = json.loads(shown.stdout)
    assert states["orders"]["run_id"] == "s1" and states["order_items"] is None
    discovered = cli("discover", lake, "--json", "--stream", "orders")
    assert [c["column"] for c in json.loads(discovered.stdout)["orders"]] == ["id", "name", "amount"]
    reset = cli("state", "reset", lake, "--yes", "--stream", "orders")
    assert reset.returncode == 0 and reset.stdout.startswith("orders: state of job 'lake' on raw.orders reset"), reset
    assert json.loads(cli("state", "show", lake, "--stream", "orders").stdout) == {"orders": None}
    offline = cli("validate", lake, "--offline")  # the wildcard stays a pattern: no connection to the source
    assert offline.returncode == 0 and "[*]: reader sqlite" in offline.stdout, offline.stderr


def test_import_dativo_does_not_load_the_engine():
    code = (
        "import sys, dativo; loaded = lambda: [m in sys.modules for m in ('dativo.engine', 'dativo.engine.pipeline')]; "
        "print(*loaded()); dativo.run; print(*loaded()); dativo.api.ProgressSink; print(*loaded())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    # the API loads the engine's planning; the pipeline (pyarrow.compute) only when a run or the sink needs it
    assert out == ["False", "False", "True", "False", "True", "True"]


def test_sigterm_aborts_running_streams_and_keeps_finished_ones(tmp_path):
    plugin = Path(__file__).parent / "support" / "plugins.py"
    marker = tmp_path / "slow-started"
    job = write(
        tmp_path,
        f"""\
        defaults:
          source: {{connector: custom, reader: {{implementation: "{plugin}:GeneratedReader"}}}}
          target: {{connector: iceberg, table: "raw.{{table}}"}}
        streams:
          quick: {{source: {{options: {{rows: 100}}}}}}
          slow: {{source: {{options: {{rows: 1000000, sleep: 0.05, marker_file: "{marker}"}}}}}}
        engine: {{max_concurrent_streams: 2, batch_size: 1000}}
        """,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "dativo", "run", str(job), "--quiet"], stderr=subprocess.PIPE, text=True
    )

    def quick_committed() -> bool:
        try:
            return catalog(tmp_path).table_exists("raw.quick")
        except Exception:  # the slow stream reads before any writer is set up: no embedded catalog yet
            return False

    deadline = time.monotonic() + 120
    while not (marker.exists() and quick_committed()) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # the slow stream has written some batches
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted; streams that finished before stay committed" in stderr
    assert catalog(tmp_path).load_table("raw.quick").scan().to_arrow().num_rows == 100
    assert not catalog(tmp_path).table_exists("raw.slow")


def test_parquet_target_path_template_and_check_per_stream(tmp_path):
    make_db(tmp_path / "app.db", {"orders": 3, "items": 4})
    job = write(
        tmp_path,
        """\
        defaults:
          source: {connector: sqlite, connection: {path: app.db}}
          target: {connector: parquet, path: "lake/{job}/{table}"}
        streams:
          "*": {}
        """,
    )
    checked = cli("check", job, "--stream", "orders")
    assert checked.returncode == 0, checked.stderr
    assert "ok orders source: reachable; 3 columns" in checked.stdout
    result = dativo.run(job)
    assert {s.name: (s.rows, s.target) for s in result.streams} == {
        "items": (4, "lake/job/items"),
        "orders": (3, "lake/job/orders"),
    }
    assert pq.read_table(tmp_path / "lake" / "job" / "orders").num_rows == 3
    assert pq.read_table(tmp_path / "lake" / "job" / "items").num_rows == 4
