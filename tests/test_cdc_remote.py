"""Change readers out of process (issue 17, item 5): the built-in postgres-cdc reader over the process protocol
and Arrow Flight, against the real PostgreSQL server and Iceberg catalog; exactly once across plugin crashes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from dativo.config.loader import load_job
from dativo.connectors.postgres.cdc.pgoutput import parse_lsn
from dativo.engine.retry import run_job
from test_cdc import catalog, items, job_file, source_rows, target_rows

from support.cli import dativo

PY = sys.executable
SERVE = [PY, "-m", "dativo.runtimes.serve", "process", "postgres-cdc"]
GARBAGE = str(Path(__file__).parent / "support" / "change_plugins.py")


def with_reader(path: Path, reader: dict) -> Path:
    """Give the job's source a ``reader:`` block (JSON is YAML)."""
    text = path.read_text().replace("  cdc: ", f"  reader: {json.dumps(reader)}\n  cdc: ", 1)
    path.write_text(text)
    return path


def process_reader(*, env: dict | None = None, command: list[str] | None = None) -> dict:
    return {
        "type": "process",
        "command": command or SERVE,
        "sandbox": {"network": True},
        "env": env or {},
        "timeouts": {"startup_s": 60},
    }


def changes(db, step: int) -> None:
    base = 1000 * step
    db.psql(
        f"INSERT INTO items SELECT g, 'new ' || g, g FROM generate_series({base + 1}, {base + 5}) g;"
        f"UPDATE items SET name = 'changed {step}' WHERE id % 7 = {step};"
        f"DELETE FROM items WHERE id % 11 = {step};"
        f"UPDATE items SET amount = amount + 1 WHERE id = {base + 2};"
    )


def three_runs(tmp_path: Path, db, path: Path) -> None:
    """Initial load and two change runs (inserts, updates, deletes): the target equals the source each time."""
    first = run_job(load_job(path))
    assert first.status == "succeeded", first.error
    assert first.target["cdc"]["replaced"] is True and first.target["cdc"]["confirmed"] is True
    assert target_rows(tmp_path) == source_rows(db)
    for step in (1, 2):
        changes(db, step)
        summary = run_job(load_job(path))
        assert summary.status == "succeeded", summary.error
        assert summary.target["cdc"]["replaced"] is False and summary.target["cdc"]["confirmed"] is True
        assert summary.rows > 5  # the changes, not a re-read of the 40 rows
        assert target_rows(tmp_path) == source_rows(db)
    slot = db.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots")
    assert slot[0][0] == summary.target["cdc"]["position"]["lsn"]


def test_postgres_cdc_served_as_a_process_plugin(tmp_path, pg_db):
    items(pg_db, 40)
    path = with_reader(job_file(tmp_path, pg_db), process_reader())
    three_runs(tmp_path, pg_db, path)


def start_flight(implementation: str = "postgres-cdc", env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """``dativo serve flight IMPLEMENTATION`` on a free port; the server and its endpoint."""
    server = subprocess.Popen(
        [PY, "-m", "dativo", "serve", "flight", implementation, "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert server.stderr is not None
    line = server.stderr.readline()
    assert f"serving {implementation} on grpc://" in line, line
    return server, line.rsplit(" ", 1)[-1].strip()


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
    server.wait(30)  # SIGTERM ends the server; on a loaded machine its shutdown can take seconds


@pytest.fixture
def flight_server():
    server, endpoint = start_flight()
    try:
        yield endpoint
    finally:
        stop(server)


def test_postgres_cdc_served_over_flight(tmp_path, pg_db, flight_server):
    items(pg_db, 40)
    path = with_reader(job_file(tmp_path, pg_db), {"type": "flight", "endpoint": flight_server})
    three_runs(tmp_path, pg_db, path)


def test_plugin_killed_after_the_commit_before_confirming(tmp_path, pg_db):
    """SIGKILL of the plugin between dativo's commit and the slot's confirmation: rerun, nothing lost or doubled."""
    items(pg_db, 40)
    plain = job_file(tmp_path, pg_db, cdc="{deletes: soft}")
    text = plain.read_text()
    path = with_reader(plain, process_reader())
    assert run_job(load_job(path)).status == "succeeded"
    confirmed = pg_db.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots")
    changes(pg_db, 1)
    plain.write_text(text)
    with_reader(plain, process_reader(env={"DATIVO_CRASH_AT": "serve_confirm"}))
    crashed = run_job(load_job(path))
    assert crashed.status == "succeeded", crashed.error  # the data is committed; the position is not confirmed
    assert crashed.target["cdc"]["confirmed"] is False
    assert "SIGKILL" in crashed.target["cdc"]["confirm_error"]
    assert pg_db.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots") == confirmed
    plain.write_text(text)
    with_reader(plain, process_reader())
    changes(pg_db, 2)
    rerun = run_job(load_job(path))
    assert rerun.status == "succeeded", rerun.error
    assert rerun.target["cdc"]["confirmed"] is True
    live = [r for r in target_rows(tmp_path, ("id", "name", "amount", "_deleted")) if not r[3]]
    assert [r[:3] for r in live] == source_rows(pg_db)
    ops = catalog(tmp_path).load_table("raw.items").scan().to_arrow()
    assert ops.num_rows == len(set(ops["id"].to_pylist()))  # one row per key: no change applied twice


@pytest.mark.parametrize(
    ("mode", "where", "message"),
    [
        ("garbage_confirm", "after", "answered 'confirm' with"),
        ("die_at_confirm", "after", "exited with code 9"),
        ("die_at_begin", "before", "exited with code 9"),
        ("garbage_begin", "before", "is not a JSON line"),
    ],
)
def test_a_change_plugin_that_breaks_the_protocol(tmp_path, pg_db, mode, where, message):
    items(pg_db, 20)
    plain = job_file(tmp_path, pg_db)
    text = plain.read_text()
    path = with_reader(plain, process_reader())
    assert run_job(load_job(path)).status == "succeeded"
    table = catalog(tmp_path).load_table("raw.items")
    before = table.current_snapshot().snapshot_id
    expected_before = source_rows(pg_db)
    changes(pg_db, 1)
    plain.write_text(text)
    with_reader(plain, process_reader(command=[PY, GARBAGE, mode]))
    result = dativo("run", path, "--quiet")
    after = catalog(tmp_path).load_table("raw.items").current_snapshot().snapshot_id
    if where == "before":
        assert result.returncode != 0
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0] and "reader plugin" in lines[0], result.stderr
        assert after == before and target_rows(tmp_path) == expected_before  # the target keeps its last commit
    else:
        # The data committed; the unconfirmed position is one warning line, and the next run confirms it.
        assert result.returncode == 0, result.stderr
        warnings = [line for line in result.stderr.splitlines() if "could not confirm" in line]
        assert len(warnings) == 1 and message in warnings[0], result.stderr
        assert after != before and target_rows(tmp_path) == source_rows(pg_db)
    plain.write_text(text)
    with_reader(plain, process_reader())
    rerun = run_job(load_job(path))
    assert rerun.status == "succeeded", rerun.error
    assert rerun.target["cdc"]["confirmed"] is True
    assert target_rows(tmp_path) == source_rows(pg_db)


def test_an_old_reader_plugin_is_refused_for_cdc(tmp_path, pg_db):
    items(pg_db, 5)
    path = with_reader(job_file(tmp_path, pg_db), process_reader(command=[PY, GARBAGE, "plain"]))
    result = dativo("run", path, "--quiet")
    assert result.returncode != 0
    assert "cannot read changes" in result.stderr and "'changes' capability" in result.stderr, result.stderr


def test_flight_server_killed_after_the_commit_before_confirming(tmp_path, pg_db):
    items(pg_db, 30)
    plain = job_file(tmp_path, pg_db)
    server, endpoint = start_flight()
    try:
        path = with_reader(plain, {"type": "flight", "endpoint": endpoint})
        assert run_job(load_job(path)).status == "succeeded"
    finally:
        stop(server)
    confirmed = pg_db.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots")
    changes(pg_db, 1)
    server, endpoint2 = start_flight(env={"DATIVO_CRASH_AT": "serve_confirm"})
    try:
        path.write_text(path.read_text().replace(endpoint, endpoint2))
        crashed = run_job(load_job(path))
        assert server.wait(10) == -9  # SIGKILL, with dativo's commit done and the slot not advanced
    finally:
        stop(server)
    assert crashed.status == "succeeded", crashed.error
    assert crashed.target["cdc"]["confirmed"] is False
    assert pg_db.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots") == confirmed
    assert target_rows(tmp_path) == source_rows(pg_db)
    changes(pg_db, 2)
    server, endpoint3 = start_flight()
    try:
        path.write_text(path.read_text().replace(endpoint2, endpoint3))
        rerun = run_job(load_job(path))
    finally:
        stop(server)
    assert rerun.status == "succeeded", rerun.error
    assert rerun.target["cdc"]["confirmed"] is True
    assert target_rows(tmp_path) == source_rows(pg_db)
    assert (
        pg_db.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots")[0][0]
        == (rerun.target["cdc"]["position"]["lsn"])
    )


def test_a_flight_server_without_a_change_reader_is_refused(tmp_path, pg_db):
    items(pg_db, 5)
    server, endpoint = start_flight("postgres-psycopg")
    try:
        path = with_reader(job_file(tmp_path, pg_db), {"type": "flight", "endpoint": endpoint})
        result = dativo("run", path, "--quiet")
    finally:
        stop(server)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot read changes" in lines[0], result.stderr


def test_check_through_a_process_change_reader(tmp_path, pg_db):
    items(pg_db, 5)
    path = with_reader(job_file(tmp_path, pg_db), process_reader())
    ready = dativo("check", path)
    assert ready.returncode == 0, ready.stderr
    assert "ready for change capture; key (id)" in ready.stdout, ready.stdout
    pg_db.psql("ALTER TABLE items REPLICA IDENTITY NOTHING; ALTER TABLE items DROP CONSTRAINT items_pkey;")
    missing = dativo("check", path)
    assert missing.returncode != 0
    assert "has no primary key" in missing.stderr or "replica identity" in missing.stderr.lower(), missing.stderr


def test_several_tables_of_one_slot_through_one_process_plugin(tmp_path, pg_db):
    """The streams form: the first table's plugin reads the slot once for every table (changes_together)."""
    from test_cdc_streams import TABLES, assert_equal, make_tables, streams_job
    from test_cdc_streams import changes as stream_changes

    make_tables(pg_db, 20)
    path = streams_job(tmp_path, pg_db)
    text = path.read_text().replace("    cdc: {}\n", f"    cdc: {{}}\n    reader: {json.dumps(process_reader())}\n", 1)
    path.write_text(text)
    for round_ in range(3):
        if round_:
            stream_changes(pg_db, round_)
        result = dativo("run", path, "--quiet", "--summary-json", tmp_path / "summary.json")
        assert result.returncode == 0, result.stderr
        assert_equal(tmp_path, pg_db)
        summary = json.loads((tmp_path / "summary.json").read_text())
        facts = [stream["target"]["cdc"] for stream in summary["streams"]]
        assert len(facts) == len(TABLES) and all(f["confirmed"] for f in facts), facts
    slot = pg_db.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots")
    assert slot[0][0] == min((f["position"]["lsn"] for f in facts), key=parse_lsn)


MEMORY = f"{Path(__file__).parent / 'support' / 'memory_changes.py'}:MemoryChangeReader"


def talk(*lines: dict) -> tuple[list[dict], bytes, int, str]:
    """Run ``dativo serve process`` on the in-memory change reader with the given command lines."""
    handshake = {"dativo": "handshake", "protocol": 1, "protocols": [1], "kind": "reader", "config": {}}
    stdin = b"".join(json.dumps(line).encode() + b"\n" for line in (handshake, *lines))
    done = subprocess.run([PY, "-m", "dativo.runtimes.serve", "process", MEMORY], input=stdin, capture_output=True)
    answers, rest = [], done.stdout
    while rest.startswith(b"{"):
        line, _, rest = rest.partition(b"\n")
        answers.append(json.loads(line))
    return answers, rest, done.returncode, done.stderr.decode()


def test_the_change_commands_on_the_wire():
    answers, stream, code, stderr = talk(
        {"command": "change_keys"},
        {"command": "check_changes", "keys": ["name"]},
        {"command": "begin_changes", "committed": {"lsn": 1}, "keys": ["id"]},
        {"command": "read", "batch_size": 10},
    )
    assert code == 0, stderr  # stdin ended after the stream: no confirm, a clean exit
    assert answers[0]["capabilities"] == ["changes"]  # no begin_changes_together: not 'changes_together'
    assert answers[1:] == [
        {"dativo": "change_keys", "keys": ["id"]},
        {"dativo": "change_problems", "problems": ["key ['name'] is not ['id']"]},
        {"dativo": "started", "start": {"position": {"lsn": 3}, "replace": False, "snapshot": False}},
    ]
    assert pa.ipc.open_stream(stream).read_all()["id"].to_pylist() == [2, 3]


def test_confirm_after_the_stream_then_exit():
    handshake_and = [{"command": "begin_changes", "committed": None, "keys": ["id"]}, {"command": "read"}]
    _answers, rest, code, stderr = talk(*handshake_and, {"command": "confirm", "position": {"lsn": 3}})
    assert code == 0, stderr
    table_end = rest.rfind(b"\xff\xff\xff\xff\x00\x00\x00\x00") + 8
    assert json.loads(rest[table_end:]) == {"dativo": "confirmed", "facts": {"confirmed_lsn": 3}}


def test_an_ordinary_read_of_a_change_reader_exits_after_its_stream():
    answers, stream, code, stderr = talk({"command": "read", "batch_size": 10}, {"command": "change_keys"})
    assert code == 0, stderr
    assert pa.ipc.open_stream(stream).read_all().num_rows == 3
    assert len(answers) == 1  # the hello only: the command after the stream was never read


def test_a_malformed_change_command_is_one_error_record():
    _answers, _, code, stderr = talk({"command": "begin_changes", "committed": "yesterday", "keys": ["id"]})
    assert code == 1
    record = json.loads(stderr.strip().splitlines()[-1])
    assert record["error"] == "PluginError" and "'committed', an object or null" in record["message"]


@pytest.mark.parametrize("point", ["cdc_batch:1", "cdc_before_commit", "cdc_after_commit"])
def test_dativo_killed_with_a_process_change_reader_then_rerun(tmp_path, pg_db, point):
    """kill -9 of dativo (its plugin dies with it) before or after the commit: the rerun applies each change once."""
    items(pg_db, 30)
    path = with_reader(job_file(tmp_path, pg_db, cdc="{deletes: soft}"), process_reader())
    assert run_job(load_job(path)).status == "succeeded"
    changes(pg_db, 1)
    crashed = dativo("run", path, "--quiet", env={"DATIVO_CRASH_AT": point})
    assert crashed.returncode == -9, (crashed.returncode, crashed.stderr)
    changes(pg_db, 2)
    rerun = run_job(load_job(path))
    assert rerun.status == "succeeded", rerun.error
    live = [r for r in target_rows(tmp_path, ("id", "name", "amount", "_deleted")) if not r[3]]
    assert [r[:3] for r in live] == source_rows(pg_db)
    ids = catalog(tmp_path).load_table("raw.items").scan().to_arrow()["id"].to_pylist()
    assert len(ids) == len(set(ids))  # one row per key: no change applied twice
    assert pg_db.execute("SELECT active FROM pg_replication_slots") == [(False,)]  # no plugin left holding it
