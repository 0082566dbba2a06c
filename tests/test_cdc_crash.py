"""Change capture under kill -9 and concurrent writes: nothing lost, nothing applied twice (issue 17)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_cdc import items, job_file, source_rows, target_rows

from support.cli import assert_one_line_error, dativo


def run(path: Path, crash_at: str | None = None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"DATIVO_CRASH_AT": crash_at} if crash_at else {}
    return dativo("run", path, "--quiet", *args, env=env)


def summary_of(path: Path, tmp_path: Path) -> dict:
    out = tmp_path / "summary.json"
    result = dativo("run", path, "--quiet", "--summary-json", out)
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text())


CRASH_POINTS = [
    "cdc_batch:1",
    "files_written",
    "before_commit",
    "cdc_before_commit",
    "after_commit",
    "cdc_after_commit",
]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_9_during_a_change_run_then_rerun_applies_every_change_once(tmp_path, pg_db, point):
    items(pg_db, 50)
    path = job_file(tmp_path, pg_db, cdc="{deletes: soft}")
    assert run(path).returncode == 0
    pg_db.psql(
        "INSERT INTO items VALUES (51, 'a', 1); UPDATE items SET name = 'b' WHERE id <= 5;"
        "DELETE FROM items WHERE id = 6;"
    )
    crashed = run(path, point)
    assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stderr)
    pg_db.psql("INSERT INTO items VALUES (52, 'c', 2); DELETE FROM items WHERE id = 51;")
    summary = summary_of(path, tmp_path)
    committed = point in ("after_commit", "cdc_after_commit")
    # The rerun reads only what the committed position does not cover: 2 new changes, or all 9.
    assert summary["target"]["cdc"]["changes"] == (2 if committed else 9), summary["target"]
    live = [r for r in target_rows(tmp_path, ("id", "name", "amount", "_deleted")) if not r[3]]
    assert [r[:3] for r in live] == source_rows(pg_db)
    again = summary_of(path, tmp_path)
    assert again["target"]["cdc"]["changes"] == 0


def test_kill_9_during_the_initial_load_then_rerun_recreates_the_slot(tmp_path, pg_db):
    items(pg_db, 3000)
    path = job_file(tmp_path, pg_db)
    path.write_text(path.read_text().replace("engine: {", "engine: {batch_size: 500, "))
    crashed = run(path, "cdc_batch:2")
    assert crashed.returncode == -signal.SIGKILL
    assert pg_db.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'dativo_items'") == [(1,)]
    pg_db.psql("UPDATE items SET name = 'after crash' WHERE id % 7 = 0;")
    assert run(path).returncode == 0
    pg_db.psql("DELETE FROM items WHERE id % 5 = 0;")
    assert run(path).returncode == 0
    assert target_rows(tmp_path) == source_rows(pg_db)


def test_writes_during_the_parallel_initial_load_are_neither_lost_nor_doubled(tmp_path, pg_db):
    items(pg_db, 200_000)
    before = source_rows(pg_db)
    path = job_file(tmp_path, pg_db)
    text = path.read_text().replace("engine: {", "engine: {batch_size: 2000, ")
    path.write_text(text.replace("  cdc: {}\n", "  cdc: {}\n  parallelism: 3\n"))  # the parallel initial load
    process = subprocess.Popen([sys.executable, "-m", "dativo", "run", str(path), "--quiet"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not pg_db.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'dativo_items'"):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.02)
    # The slot exists: its snapshot is fixed, so these writes must arrive as changes, not in the load.
    pg_db.psql(
        "UPDATE items SET name = 'during' WHERE id % 1000 = 0; DELETE FROM items WHERE id % 1000 = 1;"
        "INSERT INTO items VALUES (300000, 'new', 1); UPDATE items SET id = 300001 WHERE id = 199999;"
    )
    assert process.poll() is None, "the load finished before the writes: make the table bigger"
    assert process.wait(timeout=300) == 0, process.stderr.read() if process.stderr else ""
    assert target_rows(tmp_path) == before  # exactly the snapshot
    assert run(path).returncode == 0
    assert target_rows(tmp_path) == source_rows(pg_db)


def test_check_lists_what_is_missing(tmp_path, pg_db):
    pg_db.psql(
        "CREATE TABLE items (id int, name text);"
        "DO $$ BEGIN CREATE ROLE cdc_plain LOGIN PASSWORD 'pw'; EXCEPTION WHEN duplicate_object THEN NULL; END $$;"
        "GRANT SELECT ON items TO cdc_plain;"
    )
    path = job_file(tmp_path, pg_db, cdc="{create: false}")
    path.write_text(
        path.read_text()
        .replace(f'"user": "{pg_db.connection["user"]}"', '"user": "cdc_plain"')
        .replace(f'"password": "{pg_db.connection["password"]}"', '"password": "pw"')
    )
    result = dativo("check", path)
    line = assert_one_line_error(
        result, "lacks the REPLICATION attribute", "publication 'dativo_items' does not exist", "no primary key"
    )
    assert "no replica identity" in line
    pg_db.psql("ALTER TABLE items ADD PRIMARY KEY (id); ALTER ROLE cdc_plain REPLICATION;")
    result = dativo("check", path)
    assert_one_line_error(result, "REPLICA IDENTITY FULL", "publication 'dativo_items' does not exist")
    pg_db.psql("ALTER TABLE items REPLICA IDENTITY FULL; CREATE PUBLICATION dativo_items FOR TABLE items;")
    result = dativo("check", path)
    assert result.returncode == 0, result.stderr
    assert "ready for change capture; key (id)" in result.stdout


def wait_for(condition, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("stop", "how"),
    [
        (signal.SIGTERM, ["cdc", "follow", "--interval", "0.2"]),
        (signal.SIGKILL, ["cdc", "follow"]),
        (signal.SIGTERM, ["run", "--follow"]),  # the spelling of the same loop
    ],
)
def test_follow_commits_changes_and_stops_cleanly(tmp_path, pg_db, stop, how):
    items(pg_db, 20)
    path = job_file(tmp_path, pg_db, cdc="{commit_interval_s: 0.2}")
    command = [sys.executable, "-m", "dativo", *how[:2], str(path), *how[2:]]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: target_rows(tmp_path) == source_rows(pg_db))
        for step in range(3):
            pg_db.psql(
                f"UPDATE items SET name = 's{step}' WHERE id % 3 = {step}; DELETE FROM items WHERE id = {step + 1};"
            )
        wait_for(lambda: target_rows(tmp_path) == source_rows(pg_db))
        pg_db.psql("INSERT INTO items VALUES (500, 'last', 5);")
        process.send_signal(stop)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    if stop == signal.SIGTERM:
        assert code == 0, process.stderr.read() if process.stderr else ""
        assert "stopped after a commit" in (process.stdout.read() if process.stdout else "")
    else:
        assert code == -signal.SIGKILL
    assert run(path).returncode == 0  # picks up what the follower had not committed, exactly once
    assert target_rows(tmp_path) == source_rows(pg_db)
