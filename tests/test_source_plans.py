"""Source plans: a reader asks for one, the source connector's planner makes it at plan time, for every runtime."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dativo._secrets import redact
from dativo.config.loader import load_job
from dativo.engine import pipeline
from dativo.engine.plan import build_plan

from support.cli import assert_one_line_error, dativo
from support.process_plugins import GO_READER, _flight_endpoint

READERS = {
    "in-process (wants_source_plan)": "  reader: {{type: custom, implementation: support.plan_echo:PlanEchoReader}}\n",
    "flight (source_plan: true)": "  reader: {{type: flight, endpoint: '{endpoint}', source_plan: true}}\n",
}


@pytest.mark.parametrize("runtime", list(READERS))
def test_the_postgres_planner_serves_every_runtime(runtime: str, pg_db, tmp_path: Path, caplog) -> None:
    pg_db.execute("CREATE TABLE public.orders (id bigint PRIMARY KEY, amount numeric(10, 2), note text)")
    reader = READERS[runtime].format(endpoint=_flight_endpoint("support.plan_echo:PlanEchoReader"))
    job = tmp_path / "job.yaml"
    job.write_text(
        f"source:\n  connector: postgres\n  connection: {json.dumps(pg_db.connection)}\n  table: public.orders\n"
        f"{reader}target: {{connector: parquet, path: out}}\n"
    )
    plan = build_plan(load_job(job))
    planned = plan.reader.config["postgres_plan"]
    assert pg_db.connection["password"] in planned["conninfo"]
    assert pg_db.connection["password"] not in redact(planned["conninfo"])  # registered for redaction

    with caplog.at_level(logging.DEBUG):
        pipeline.run(plan)
    table = pa.concat_tables(pq.read_table(f) for f in sorted((tmp_path / "out").rglob("*.parquet")))
    assert table.column("name").to_pylist() == ["id", "amount", "note"]
    assert table.column("kind").to_pylist() == ["int64", "numeric", "text"]
    assert "public" in table.column("sql")[0].as_py() and "orders" in table.column("sql")[0].as_py()
    assert pg_db.connection["password"] not in caplog.text


def test_a_reader_that_does_not_ask_gets_no_plan_and_the_source_is_not_contacted(tmp_path: Path) -> None:
    # Port 1 has no server: planning would fail if the planner ran.
    job = tmp_path / "job.yaml"
    job.write_text(
        "source:\n  connector: postgres\n  connection: {host: 127.0.0.1, port: 1}\n  table: public.orders\n"
        "  reader: {type: flight, endpoint: 'grpc://127.0.0.1:1'}\ntarget: {connector: parquet, path: out}\n"
    )
    assert "postgres_plan" not in build_plan(load_job(job)).reader.config


def test_the_go_reader_without_source_plan_says_what_to_add(pg_db, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE public.orders (id bigint)")
    job = tmp_path / "job.yaml"
    job.write_text(
        f"source:\n  connector: postgres\n  connection: {json.dumps(pg_db.connection)}\n  table: public.orders\n"
        f"  reader: {{type: process, command: ['{GO_READER}'], sandbox: {{network: true}}}}\n"
        "target: {connector: parquet, path: out}\n"
    )
    line = assert_one_line_error(dativo("run", job), "'source_plan: true' in its reader: block")
    assert pg_db.connection["password"] not in line


def test_a_transient_planning_failure_is_retried_like_a_run(tmp_path: Path) -> None:
    import socket

    from dativo.engine.retry import run_job
    from dativo.errors import SourceError

    with socket.socket() as sock:  # a port nobody listens on: the planner's connection is refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    job = tmp_path / "job.yaml"
    job.write_text(
        f"source:\n  connector: postgres\n  connection: {{host: 127.0.0.1, port: {port}, password: pw-planner-77}}\n"
        "  table: public.orders\n  reader: {type: custom, implementation: support.plan_echo:PlanEchoReader}\n"
        "target: {connector: parquet, path: out}\n"
        "engine: {retry: {max_attempts: 3, initial_delay_s: 0, max_delay_s: 0}}\n"
    )
    retries: list[int] = []
    with pytest.raises(SourceError) as info:
        run_job(load_job(job), on_retry=lambda attempt, *_: retries.append(attempt))
    assert info.value.transient and retries == [1, 2]
    assert "pw-planner-77" not in str(info.value)
