"""The engine end to end with the Iceberg and Parquet targets: batches in, one commit out, or nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog import load_catalog
from pyiceberg.schema import Schema
from pyiceberg.types import DoubleType, LongType, NestedField, StringType

from dativo import SDK_API_VERSION
from dativo.config.loader import load_job
from dativo.engine import pipeline
from dativo.engine.plan import build_plan
from dativo.errors import SchemaError, SourceError, TargetError

from support import plugins
from support.cli import assert_one_line_error, dativo

SUPPORT = Path(__file__).parent / "support" / "plugins.py"


def write_job(tmp_path: Path, reader: str = "GeneratedReader", options: dict | None = None, **sections) -> Path:
    target = sections.get("target", "connector: iceberg\n  table: raw.items")
    engine = sections.get("engine", "batch_size: 1000")
    path = tmp_path / "job.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            name: items
            source:
              connector: custom
              reader:
                implementation: "{support}:{reader}"
                options: {options}
            target:
              {target}
            engine: {{{engine}}}
            """
        ).format(support=SUPPORT, reader=reader, options=json.dumps(options or {}), target=target, engine=engine)
    )
    return path


def run_job(path: Path) -> pipeline.RunSummary:
    return pipeline.run(build_plan(load_job(path)))


def catalog(job_dir: Path):
    warehouse = job_dir / "warehouse"
    warehouse.mkdir(exist_ok=True)
    return load_catalog("dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri())


def data_files_on_disk(job_dir: Path) -> set[str]:
    return {str(p) for p in (job_dir / "warehouse").rglob("*.parquet")}


def referenced_files(table) -> set[str]:
    return {task.file.file_path.removeprefix("file://") for task in table.scan().plan_files()}


@pytest.mark.parametrize("form", ["batch", "table", "stream", "array"])
def test_every_batch_form_lands_in_iceberg(tmp_path, form):
    summary = run_job(write_job(tmp_path, options={"rows": 2500, "form": form}))
    assert summary.status == "succeeded"
    assert (summary.rows, summary.batches) == (2500, 3)
    table = catalog(tmp_path).load_table("raw.items")
    data = table.scan().to_arrow().sort_by("id")
    assert data.column("id").to_pylist() == list(range(2500))
    assert data.column("name")[1234].as_py() == "name-1234"
    assert len(table.snapshots()) == 1
    assert summary.target["snapshot_id"] == table.current_snapshot().snapshot_id


def test_second_run_appends_one_more_snapshot_carrying_run_id(tmp_path):
    job = write_job(tmp_path, options={"rows": 100})
    first = run_job(job)
    second = run_job(job)
    table = catalog(tmp_path).load_table("raw.items")
    assert table.scan().to_arrow().num_rows == 200
    snapshots = table.snapshots()
    assert len(snapshots) == 2
    assert snapshots[0].summary["dativo.run-id"] == first.run_id
    assert snapshots[1].summary["dativo.run-id"] == second.run_id
    assert snapshots[1].summary["dativo.job"] == "items"


def test_reader_failure_after_n_batches_leaves_new_table_uncreated(tmp_path):
    job = write_job(tmp_path, options={"rows": 10_000, "fail_after": 3})
    with pytest.raises(SourceError, match="failed after 3 batches: RuntimeError: source exploded at batch 3"):
        run_job(job)
    cat = catalog(tmp_path)
    assert not cat.table_exists("raw.items")
    assert ("raw",) not in cat.list_namespaces()
    assert data_files_on_disk(tmp_path) == set()


def test_reader_failure_leaves_existing_table_without_new_snapshot_or_orphans(tmp_path):
    run_job(write_job(tmp_path, options={"rows": 500}))
    table_before = catalog(tmp_path).load_table("raw.items")
    files_before = data_files_on_disk(tmp_path)
    with pytest.raises(SourceError):
        run_job(write_job(tmp_path, options={"rows": 10_000, "fail_after": 5}, engine="batch_size: 500"))
    table = catalog(tmp_path).load_table("raw.items")
    assert len(table.snapshots()) == 1
    assert table.current_snapshot().snapshot_id == table_before.current_snapshot().snapshot_id
    assert table.scan().to_arrow().num_rows == 500
    assert data_files_on_disk(tmp_path) == files_before == referenced_files(table)


def test_schema_change_mid_stream_names_the_column(tmp_path):
    job = write_job(tmp_path, options={"rows": 5000, "change_schema_at": 2})
    with pytest.raises(SchemaError) as info:
        run_job(job)
    message = str(info.value)
    assert "changed schema mid-stream" in message
    assert "column 'score' is string in batch 2, declared double" in message
    assert not catalog(tmp_path).table_exists("raw.items")


def test_writer_finalize_failure_aborts(tmp_path):
    plugins.FinalizeFailsWriter.aborted = False
    job = write_job(
        tmp_path,
        target=f'connector: custom\n  writer: {{implementation: "{SUPPORT}:FinalizeFailsWriter"}}',
    )
    plan = build_plan(load_job(job))
    writer_cls = plan.writer.ref.cls
    with pytest.raises(TargetError, match=r"failed in finalize\(\): OSError: disk on fire"):
        pipeline.run(plan)
    assert writer_cls.aborted is True


def test_reader_runs_at_most_queue_size_ahead(tmp_path):
    job = write_job(
        tmp_path,
        options={"rows": 60_000},
        target=f'connector: custom\n  writer: {{implementation: "{SUPPORT}:CountingWriter"}}',
        engine="batch_size: 500, queue_size: 3",
    )
    plan = build_plan(load_job(job))
    reader_cls, writer_cls = plan.reader.ref.cls, plan.writer.ref.cls
    reader_cls.produced = 0
    writer_cls.max_ahead = 0
    writer_cls.aheads = []
    summary = pipeline.run(plan)
    assert summary.batches == 120
    # The read starts before the writer is ready: until the first batch is taken the queue may
    # hold 3 x queue_size (the start-up allowance), + one being handed over + one the reader holds.
    assert 0 <= writer_cls.aheads[0] <= 3 * 3 + 2
    # Once that backlog has drained: queue_size batches queued + one handed over + one held.
    assert 1 <= max(writer_cls.aheads[3 * 3 + 2 :]) <= 3 + 2


def test_engine_queue_mb_bounds_the_queue_by_bytes(tmp_path):
    """queue_size 64 would let the reader run far ahead; a byte bound below one batch holds one batch at a time."""
    job = write_job(
        tmp_path,
        options={"rows": 60_000},
        target=f'connector: custom\n  writer: {{implementation: "{SUPPORT}:CountingWriter"}}',
        engine="batch_size: 500, queue_size: 64, queue_mb: 0.001",
    )
    plan = build_plan(load_job(job))
    assert plan.queue_bytes == 1048
    reader_cls, writer_cls = plan.reader.ref.cls, plan.writer.ref.cls
    reader_cls.produced = 0
    writer_cls.max_ahead = 0
    summary = pipeline.run(plan)
    assert summary.batches == 120
    # one batch queued + one being handed over + one the reader holds while it waits for room.
    assert 1 <= writer_cls.max_ahead <= 1 + 2


def test_all_canonical_types_round_trip_through_iceberg(tmp_path):
    run_job(write_job(tmp_path, reader="AllTypesReader"))
    table = catalog(tmp_path).load_table("raw.items")
    got = table.scan().to_arrow()
    expected = plugins.all_types_batch()
    assert str(table.schema().find_field("uid").field_type) == "uuid"
    assert str(table.schema().find_field("dec").field_type) == "decimal(14, 2)"
    assert str(table.schema().find_field("tstz").field_type) == "timestamptz"
    for name in expected.schema.names:
        want = expected.column(name).to_pylist()
        have = got.column(name).to_pylist()
        if name == "f64":  # NaN != NaN
            assert str(have[0]) == "nan" and have[1:] == want[1:]
        else:
            assert have == want, name


def test_files_roll_at_target_size_and_all_are_committed(tmp_path):
    job = write_job(
        tmp_path,
        options={"rows": 200_000},
        target="connector: iceberg\n  table: raw.items\n  options: {target_file_size_mb: 0.2, row_group_size_mb: 0.1}",
        engine="batch_size: 5000",
    )
    summary = run_job(job)
    table = catalog(tmp_path).load_table("raw.items")
    assert summary.files >= 3
    assert referenced_files(table) == data_files_on_disk(tmp_path)
    assert len(referenced_files(table)) == summary.files
    assert table.scan().to_arrow().num_rows == 200_000
    metadata = pq.ParquetFile(next(iter(referenced_files(table)))).metadata
    assert metadata.row_group(0).column(0).compression == "ZSTD"


def test_existing_table_with_incompatible_column_fails_before_data(tmp_path):
    cat = catalog(tmp_path)
    cat.create_namespace("raw")
    cat.create_table(
        "raw.items",
        Schema(
            NestedField(1, "id", StringType(), required=False),
            NestedField(2, "name", StringType(), required=False),
        ),
    )
    with pytest.raises(SchemaError, match="column 'id' is string in the table but long at the source"):
        run_job(write_job(tmp_path, options={"rows": 10}))
    assert catalog(tmp_path).load_table("raw.items").current_snapshot() is None
    assert data_files_on_disk(tmp_path) == set()


def test_table_columns_missing_from_source_are_written_as_null(tmp_path):
    cat = catalog(tmp_path)
    cat.create_namespace("raw")
    cat.create_table(
        "raw.items",
        Schema(
            NestedField(1, "id", LongType(), required=False),
            NestedField(2, "name", StringType(), required=False),
            NestedField(3, "score", DoubleType(), required=False),
            NestedField(4, "extra", StringType(), required=False),
        ),
    )
    run_job(write_job(tmp_path, options={"rows": 10}))
    data = catalog(tmp_path).load_table("raw.items").scan().to_arrow()
    assert data.column("extra").null_count == 10
    assert data.column("id").to_pylist() == list(range(10))


def test_zero_rows_creates_empty_table(tmp_path):
    summary = run_job(write_job(tmp_path, options={"rows": 0}))
    assert summary.rows == 0 and summary.target["created_table"] is True
    table = catalog(tmp_path).load_table("raw.items")
    # The creating commit carries the run's state, so even an empty first run is recorded.
    assert table.current_snapshot().summary["total-records"] == "0"
    assert table.current_snapshot().summary["dativo.run-id"] == summary.run_id
    assert table.scan().to_arrow().num_rows == 0
    assert table.schema().column_names == ["id", "name", "score"]


def test_parquet_dataset_publishes_only_on_success(tmp_path):
    target = "connector: parquet\n  path: out/items\n  options: {target_file_size_mb: 0.2, row_group_size_mb: 0.1}"
    summary = run_job(write_job(tmp_path, options={"rows": 100_000}, target=target, engine="batch_size: 5000"))
    out = tmp_path / "out" / "items"
    files = sorted(out.glob("*.parquet"))
    assert len(files) == summary.files >= 2
    assert [p.name for p in out.iterdir() if p.name.startswith("_")] == ["_dativo"]
    assert pq.read_table(out).num_rows == 100_000

    with pytest.raises(SourceError):
        run_job(
            write_job(
                tmp_path,
                options={"rows": 100_000, "fail_after": 10},
                target=target,
                engine="batch_size: 5000",
            )
        )
    assert sorted(out.glob("*.parquet")) == files
    assert [p.name for p in out.iterdir() if p.name.startswith("_")] == ["_dativo"]


def test_parquet_dataset_on_s3(tmp_path, s3_server, s3_bucket):
    connection = (
        f'{{endpoint_url: "{s3_server.endpoint_url}", region: "{s3_server.region}", '
        f'access_key_id: "{s3_server.access_key_id}", secret_access_key: "{s3_server.secret_access_key}"}}'
    )
    target = f"connector: parquet\n  path: s3://{s3_bucket}/items\n  connection: {connection}"
    summary = run_job(write_job(tmp_path, options={"rows": 3000}, target=target))
    assert summary.target["files"][0].startswith(f"s3://{s3_bucket}/items/part-")
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        region_name=s3_server.region,
        aws_access_key_id=s3_server.access_key_id,
        aws_secret_access_key=s3_server.secret_access_key,
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    # pyarrow's S3 file system leaves zero-byte "folder/" markers when it moves objects; they hold no data.
    data_keys = [key for key in keys if not key.endswith("/") and "/_dativo/" not in key]
    assert len(data_keys) == 1 and data_keys[0].startswith("items/part-")
    body = s3.get_object(Bucket=s3_bucket, Key=data_keys[0])["Body"].read()
    assert pq.read_table(pa.BufferReader(body)).num_rows == 3000

    with pytest.raises(SourceError):
        run_job(write_job(tmp_path, options={"rows": 3000, "fail_after": 2}, target=target))
    keys_after = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert keys_after == keys


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_aborts_and_removes_staged_files(tmp_path, sig):
    marker = tmp_path / "started"
    job = write_job(
        tmp_path,
        options={"rows": 1_000_000, "sleep": 0.05, "marker_file": str(marker)},
        engine="batch_size: 1000",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "dativo", "run", str(job), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A suite started in the background (`cmd &`, nohup) inherits SIGINT ignored, and Python keeps an
        # ignored SIGINT ignored: give the child the disposition a terminal user's dativo has.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # Wait until the engine has taken 10 batches: with a queue of 4, the writer holds some.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (marker.exists() and int(marker.read_text() or 0) >= 10):
        time.sleep(0.05)
    assert int(marker.read_text()) >= 10, "the reader never got going"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted; nothing was committed" in stderr
    assert not catalog(tmp_path).table_exists("raw.items")
    assert data_files_on_disk(tmp_path) == set()


def test_cli_run_writes_summary_json(tmp_path):
    job = write_job(tmp_path, options={"rows": 4321})
    result = dativo("run", job, "--summary-json", tmp_path / "summary.json")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "succeeded"
    assert (summary["rows"], summary["batches"], summary["files"]) == (4321, 5, 1)
    assert summary["target"]["table"] == "raw.items"
    assert summary["target"]["snapshot_id"] == catalog(tmp_path).load_table("raw.items").current_snapshot().snapshot_id
    assert summary["bytes"] > 0 and summary["duration_s"] > 0
    assert "4,321" in result.stdout


def test_cli_failed_run_writes_failed_summary(tmp_path):
    job = write_job(tmp_path, options={"rows": 5000, "fail_after": 1})
    result = dativo("run", job, "--summary-json", tmp_path / "summary.json")
    assert_one_line_error(result, "source exploded at batch 1", code=1)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert "source exploded" in summary["error"]


def test_cli_validate_discover_check(tmp_path):
    job = write_job(tmp_path, reader="AllTypesReader")
    validate = dativo("validate", job)
    assert validate.returncode == 0 and validate.stdout.startswith("ok"), validate.stderr
    discover = dativo("discover", job, "--json")
    assert discover.returncode == 0, discover.stderr
    columns = {row["column"]: row for row in json.loads(discover.stdout)}
    assert columns["i16"]["arrow"] == "int16" and columns["i16"]["target"] == "int"
    assert columns["uid"]["target"] == "uuid"
    assert columns["ints"]["target"].startswith("list<int>")
    check = dativo("check", job)
    assert check.returncode == 0, check.stderr
    assert "ok source" in check.stdout and "ok target" in check.stdout
    assert not catalog(tmp_path).table_exists("raw.items")


def test_cli_version():
    result = dativo("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("dativo ") and f"plugin SDK API {SDK_API_VERSION}" in result.stdout


def test_secrets_never_reach_output(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(
        textwrap.dedent(
            f"""\
            source:
              connector: custom
              connection: {{password: "${{SOURCE_PASSWORD}}"}}
              reader: {{implementation: "{SUPPORT}:EnvPasswordReader"}}
            target: {{connector: iceberg, table: raw.items}}
            """
        )
    )
    result = dativo(
        "--log-level",
        "debug",
        "--log-format",
        "json",
        "run",
        job,
        "--summary-json",
        tmp_path / "s.json",
        env={"SOURCE_PASSWORD": "pa55-w0rd-xyz"},
    )
    assert result.returncode == 1
    everything = result.stdout + result.stderr + (tmp_path / "s.json").read_text()
    assert "login rejected for password ***" in everything
    assert "pa55-w0rd-xyz" not in everything
    assert os.environ.get("SOURCE_PASSWORD") is None


def test_progress_bar_on_a_terminal(tmp_path):
    import pty

    job = write_job(tmp_path, options={"rows": 20_000, "sleep": 0.05}, engine="batch_size: 1000")
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dativo", "run", str(job)],
        stdout=subprocess.PIPE,
        stderr=terminal,
        env={**os.environ, "COLUMNS": "120", "TERM": "xterm"},
    )
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    proc.wait(timeout=60)
    os.close(controller)
    assert proc.returncode == 0
    screen = drawn.decode(errors="replace")
    assert "rows/s" in screen and " MB" in screen and " rows" in screen


def test_structured_json_logs(tmp_path):
    job = write_job(tmp_path, options={"rows": 10})
    result = dativo("--log-format", "json", "--log-level", "info", "run", job, "--quiet")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    started = next(e for e in events if e["msg"] == "run started")
    finished = next(e for e in events if e["msg"] == "run finished")
    assert started["job"] == "items" and started["level"] == "info" and started["logger"] == "dativo.engine"
    assert finished["run_id"] == started["run_id"] and finished["status"] == "succeeded" and finished["rows"] == 10
