"""A run that reads everything starts its read before the writer is hosted (issue 15, start-up session 6).

The source streams into the pump's bounded queue while the writer imports its libraries and opens
its target; an incremental run, which needs the target's state first, starts reading after it. A
writer that fails to start or to prepare still fails the run with its own error, the early read is
stopped and the reader closed, and nothing is committed.
"""

from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path

import pytest
from pyiceberg.catalog import load_catalog

from dativo.config.loader import load_job
from dativo.engine import pipeline
from dativo.engine.plan import build_plan
from dativo.errors import ConfigError, PluginError, SourceError, TargetError

SUPPORT = Path(__file__).parent / "support" / "plugins.py"

# Plugins that record when things happen; loaded by file path like any custom plugin.
PLUGINS = '''
import os
import time
from typing import Any

from dativo.errors import SourceError
from dativo.sdk import DataWriter, ReadPartition

from support.plugins import GeneratedReader


def wait_for(path: str, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.01)
    return False


class ProbeReader(GeneratedReader):
    """GeneratedReader (marker_file: created when reading starts) that is incremental and records close()."""

    closed = 0
    after: Any = "unset"

    def set_incremental(self, cursor: str, after: Any) -> None:
        type(self).after = after

    def close(self) -> None:
        type(self).closed += 1


class PlanFailsReader(ProbeReader):
    """A partitioned reader whose planning fails."""

    def plan_partitions(self, parallelism):
        raise SourceError("cannot plan partitions: catalog query refused")

    def read_partition(self, partition: ReadPartition, batch_size: int):
        yield from self.read_batch(batch_size)


class ProbeWriter(DataWriter):
    """Keeps the job's state; options: marker_file (the reader's), wait (for it at initialize), fail_at."""

    saw_read_at_initialize = None
    saw_read_at_state = None
    prepared = False
    aborted = False
    rows = 0

    def initialize(self, config: Any) -> None:
        super().initialize(config)
        options = config.get("options") or {}
        self._marker = options["marker_file"]
        type(self).saw_read_at_initialize = wait_for(self._marker) if options.get("wait") else os.path.exists(
            self._marker
        )
        if options.get("fail_at") == "initialize":
            raise RuntimeError("catalog unreachable")

    def load_state(self):
        type(self).saw_read_at_state = os.path.exists(self._marker)
        return None

    def stage_state(self, state) -> None:
        self.state = state

    def reset_state(self, force: bool = False) -> str:
        return "nothing"

    def prepare(self, schema) -> None:
        if (self.config.get("options") or {}).get("fail_at") == "prepare":
            raise ValueError("no room for this table")
        type(self).prepared = True

    def write_batch(self, batch) -> None:
        type(self).rows += batch.num_rows

    def finalize(self) -> dict[str, Any]:
        return {"rows": type(self).rows, "files": []}

    def abort(self) -> None:
        type(self).aborted = True
'''


def write_job(
    tmp_path: Path,
    *,
    rows: int = 5000,
    reader: str = "ProbeReader",
    wait: bool = False,
    fail_at: str | None = None,
    incremental: bool = False,
    engine: str = "batch_size: 500",
    target: str | None = None,
) -> Path:
    plugins = tmp_path / "early_plugins.py"
    plugins.write_text(PLUGINS)
    marker = tmp_path / "read-started"
    writer_options = {"marker_file": str(marker), "wait": wait, "fail_at": fail_at}
    if target is None:
        target = f'connector: custom\n  writer: {{implementation: "{plugins}:ProbeWriter", options: {writer_options}}}'
    incremental_block = "\n  incremental: {cursor: id}" if incremental else ""
    path = tmp_path / "job.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            name: early
            source:
              connector: custom
              reader:
                implementation: "{plugins}:{reader}"
                options: {{rows: {rows}, marker_file: "{marker}"}}{incremental}
            target:
              {target}
            engine: {{{engine}}}
            """
        ).format(
            plugins=plugins,
            reader=reader,
            rows=rows,
            marker=marker,
            incremental=incremental_block,
            target=target,
            engine=engine,
        )
    )
    return path


def plan_of(path: Path):
    plan = build_plan(load_job(path))
    reader, writer = plan.reader.ref.cls, plan.writer.ref.cls
    reader.closed, reader.after, reader.produced = 0, "unset", 0
    if hasattr(writer, "rows"):
        writer.rows, writer.prepared, writer.aborted = 0, False, False
        writer.saw_read_at_initialize = writer.saw_read_at_state = None
    return plan, reader, writer


def reader_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("dativo-reader-")]


def test_a_full_read_streams_while_the_writer_is_being_hosted(tmp_path):
    plan, reader, writer = plan_of(write_job(tmp_path, rows=20_000, wait=True))
    summary = pipeline.run(plan)
    # The writer's initialize waited for the read to start: it did, before the writer existed.
    assert writer.saw_read_at_initialize is True
    assert summary.status == "succeeded" and summary.rows == 20_000 and writer.rows == 20_000
    assert reader.closed == 1 and reader_threads() == []


def test_an_incremental_read_starts_only_after_the_state_is_loaded(tmp_path):
    plan, reader, writer = plan_of(write_job(tmp_path, incremental=True))
    summary = pipeline.run(plan)
    assert writer.saw_read_at_initialize is False and writer.saw_read_at_state is False
    assert reader.after is None  # set_incremental was called (from the state), then the read ran
    assert summary.rows == 5000 and summary.state is not None and summary.state["cursor"] == 4999


@pytest.mark.parametrize(
    ("fail_at", "error", "message"),
    [
        ("initialize", PluginError, r"ProbeWriter': initialize\(\) failed: RuntimeError: catalog unreachable"),
        ("prepare", TargetError, r"failed in prepare\(\): ValueError: no room for this table"),
    ],
)
def test_a_writer_failing_while_the_read_waits_on_a_full_queue_stops_it_and_commits_nothing(
    tmp_path, fail_at, error, message
):
    # 200 batches of 500 rows against a queue of 2: the read is blocked on the full queue when the writer fails.
    job = write_job(tmp_path, rows=100_000, wait=True, fail_at=fail_at, engine="batch_size: 500, queue_size: 2")
    plan, reader, writer = plan_of(job)
    started = time.monotonic()
    with pytest.raises(error, match=message) as caught:
        pipeline.run(plan)
    assert str(caught.value).startswith("writer ")
    assert time.monotonic() - started < 10
    assert writer.saw_read_at_initialize is True  # the read had started
    assert reader.produced < 20  # and stayed within the queue's bound
    assert writer.rows == 0 and writer.aborted is (fail_at == "prepare")  # abort: a writer that was initialized
    assert reader.closed == 1 and reader_threads() == []


def test_a_writer_error_comes_before_a_failure_to_plan_the_read(tmp_path):
    job = write_job(tmp_path, reader="PlanFailsReader", fail_at="prepare")
    plan, reader, _ = plan_of(job)
    with pytest.raises(TargetError, match="no room for this table"):
        pipeline.run(plan)
    assert reader.closed == 1 and reader_threads() == []


def test_a_failure_to_plan_the_read_is_raised_after_prepare_as_before(tmp_path):
    plan, reader, writer = plan_of(write_job(tmp_path, reader="PlanFailsReader"))
    with pytest.raises(SourceError, match="cannot plan partitions"):
        pipeline.run(plan)
    assert writer.prepared is True and writer.aborted is True and writer.rows == 0
    assert reader.closed == 1


def test_a_mode_the_writer_does_not_support_is_reported_with_the_read_already_started(tmp_path):
    job = write_job(tmp_path, wait=True, rows=100_000, engine="batch_size: 500, queue_size: 2")
    text = job.read_text().replace("target:\n", "target:\n  mode: merge\n  merge: {keys: [id]}\n")
    job.write_text(text)
    plan, reader, _ = plan_of(job)
    with pytest.raises(ConfigError, match="does not support mode 'merge'"):
        pipeline.run(plan)
    assert reader.produced < 20 and reader.closed == 1 and reader_threads() == []


def test_an_iceberg_prepare_failure_with_the_read_started_leaves_the_table_as_it_was(tmp_path):
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    catalog = load_catalog(
        "dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )
    from pyiceberg.schema import Schema
    from pyiceberg.types import NestedField, StringType

    catalog.create_namespace("raw")
    catalog.create_table("raw.items", Schema(NestedField(1, "id", StringType(), required=False)))
    job = write_job(tmp_path, rows=100_000, target="connector: iceberg\n  table: raw.items")
    plan, reader, _ = plan_of(job)
    with pytest.raises(Exception, match="column 'id' is string in the table but long at the source"):
        pipeline.run(plan)
    table = catalog.load_table("raw.items")
    assert table.current_snapshot() is None
    assert list(warehouse.rglob("*.parquet")) == []
    assert reader.produced >= 1 and reader.closed == 1 and reader_threads() == []


def test_a_run_already_committed_stops_its_early_read_and_commits_nothing_more(tmp_path):
    job = write_job(tmp_path, rows=50_000, target="connector: iceberg\n  table: raw.items")
    first = pipeline.run(build_plan(load_job(job), run_id="nightly-1"))
    assert first.status == "succeeded" and first.rows == 50_000
    plan = build_plan(load_job(job), run_id="nightly-1")
    reader = plan.reader.ref.cls
    reader.closed, reader.produced = 0, 0
    again = pipeline.run(plan)
    assert again.status == "already committed" and again.rows == 0
    assert reader.closed == 1 and reader_threads() == []
    warehouse = tmp_path / "warehouse"
    catalog = load_catalog(
        "dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )
    table = catalog.load_table("raw.items")
    assert len(table.snapshots()) == 1 and table.scan().to_arrow().num_rows == 50_000
