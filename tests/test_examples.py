"""The README's quickstart and the worked plugin examples of docs/writing-plugins.md, run as a user would."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pyiceberg.catalog import load_catalog

from support.cli import assert_one_line_error, dativo

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A private copy of examples/, so runs never write into the repository."""
    target = tmp_path / "examples"
    shutil.copytree(EXAMPLES, target, ignore=shutil.ignore_patterns("warehouse", "out"))
    return target


def catalog(job_dir: Path):
    warehouse = job_dir / "warehouse"
    return load_catalog("dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri())


def test_quickstart_runs_and_reads_back(examples):
    result = dativo("run", examples / "quickstart" / "job.yaml", "--summary-json", examples / "s.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((examples / "s.json").read_text())["rows"] == 1000
    table = catalog(examples / "quickstart").load_table("demo.orders")
    orders = table.scan().to_arrow()
    assert orders.num_rows == 1000
    assert orders.column("order_id").to_pylist()[:3] == [1, 2, 3]
    read_back = subprocess.run(
        [sys.executable, str(examples / "quickstart" / "read_back.py")], capture_output=True, text=True, check=True
    )
    assert read_back.stdout.startswith("1000 rows in 1 snapshot(s)")


def test_custom_reader_into_iceberg(examples):
    job_dir = examples / "custom_plugins"
    result = dativo("run", job_dir / "logs_to_iceberg.yaml", "--quiet")
    assert result.returncode == 0, result.stderr
    logs = catalog(job_dir).load_table("web.access_log").scan().to_arrow()
    assert logs.num_rows == 500
    assert str(logs.schema.field("requested_at").type) == "timestamp[us, tz=UTC]"
    assert set(logs.column("method").to_pylist()) <= {"GET", "POST"}
    assert logs.column("bytes").null_count > 0  # "-" sizes became NULL


def test_custom_reader_into_custom_writer(examples):
    job_dir = examples / "custom_plugins"
    result = dativo("run", job_dir / "logs_to_jsonl.yaml", "--quiet")
    assert result.returncode == 0, result.stderr
    lines = (job_dir / "out" / "access_log.jsonl").read_text().splitlines()
    assert len(lines) == 500
    assert json.loads(lines[0])["host"].startswith("10.0.")
    assert [p.name for p in (job_dir / "out").iterdir()] == ["access_log.jsonl"]


def test_bad_line_fails_and_custom_writer_aborts(examples):
    job_dir = examples / "custom_plugins"
    log = job_dir / "data" / "access.log"
    log.write_text(log.read_text() + "this is not a log line\n")
    result = dativo("run", job_dir / "logs_to_jsonl.yaml")
    assert_one_line_error(result, "access.log:501: not a Common Log Format line", code=1)
    assert list((job_dir / "out").iterdir()) == []  # the temporary file was removed, nothing published
