"""Several tables from one replication slot in one run (a streams: job with source.cdc), against the real
PostgreSQL server and Iceberg catalog: each table equals its source after every run, across failures of one
table's commit and kill -9 between two tables' commits (issue 17)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dativo import api
from dativo.connectors.postgres.cdc.pgoutput import parse_lsn
from test_cdc import catalog

from support.cli import assert_one_line_error, dativo

TABLES = ("alpha", "beta", "gamma")


def make_tables(db, rows: int = 30) -> None:
    for table in TABLES:
        db.psql(
            f"CREATE TABLE {table} (id int PRIMARY KEY, name text, qty int);"
            f"ALTER TABLE {table} REPLICA IDENTITY FULL;"
            f"INSERT INTO {table} SELECT g, '{table} ' || g, g FROM generate_series(1, {rows}) g;"
        )


def streams_job(
    job_dir: Path, db, *, cdc: str = "{}", overrides: dict[str, str] | None = None, tables: tuple[str, ...] = TABLES
) -> Path:
    path = job_dir / "shop.yaml"
    lines = [
        "name: shop",
        "defaults:",
        "  source:",
        "    connector: postgres",
        f"    connection: {json.dumps(db.connection)}",
        f"    cdc: {cdc}",
        "  target:",
        "    connector: iceberg",
        '    table: "raw.{table}"',
        "streams:",
    ]
    for table in tables:
        lines.append(f"  public.{table}: {(overrides or {}).get(table, '{}')}")
    lines.append("engine: {retry: {max_attempts: 1}}")
    path.write_text("\n".join(lines) + "\n")
    return path


def target(job_dir: Path, table: str) -> list[tuple]:
    name = f"raw.{table}"
    if not catalog(job_dir).table_exists(name):
        return []
    data = catalog(job_dir).load_table(name).scan().to_arrow().sort_by("id").to_pylist()
    return [(r["id"], r["name"], r["qty"]) for r in data]


def source(db, table: str) -> list[tuple]:
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(f"SELECT id, name, qty FROM {table} ORDER BY id").fetchall()]


def assert_equal(job_dir: Path, db) -> None:
    for table in TABLES:
        assert target(job_dir, table) == source(db, table), table


def changes(db, round_: int) -> None:
    """Inserts, updates, deletes (and a key change) in every table, some in one transaction across tables."""
    base = 1000 * round_
    db.psql(
        "BEGIN;"
        f"INSERT INTO alpha VALUES ({base + 1}, 'a new', 1); UPDATE beta SET name = 'b r{round_}' WHERE id % 4 = 0;"
        f"DELETE FROM gamma WHERE id % 7 = {round_ % 7}; COMMIT;"
        f"UPDATE alpha SET qty = qty + {round_} WHERE id % 3 = 0; DELETE FROM alpha WHERE id = {round_};"
        f"INSERT INTO beta SELECT g, 'b ins', g FROM generate_series({base + 10}, {base + 14}) g;"
        f"UPDATE gamma SET id = {base + 500} WHERE id = (SELECT min(id) FROM gamma WHERE id < 1000);"
        f"INSERT INTO gamma VALUES ({base + 2}, 'g new', 2); UPDATE gamma SET name = 'g upd' WHERE id = {base + 2};"
    )


def run(path: Path, crash_at: str | None = None):
    return dativo("run", path, "--quiet", env={"DATIVO_CRASH_AT": crash_at} if crash_at else {})


def summary(path: Path, job_dir: Path) -> dict:
    out = job_dir / "summary.json"
    result = dativo("run", path, "--quiet", "--summary-json", out)
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text())


def slot_lsn(db) -> int:
    return db.execute("SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = 'dativo_shop'")[
        0
    ][0]


def committed_lsns(path: Path) -> dict[str, str]:
    shown = dativo("state", "show", path)
    assert shown.returncode == 0, shown.stderr
    return {name: (state or {}).get("cdc", {}).get("lsn", "") for name, state in json.loads(shown.stdout).items()}


def test_three_tables_from_one_slot_day_after_day(tmp_path, pg_db):
    make_tables(pg_db)
    path = streams_job(tmp_path, pg_db)
    first = summary(path, tmp_path)
    assert first["status"] == "succeeded" and [s["rows"] for s in first["streams"]] == [30, 30, 30]
    assert_equal(tmp_path, pg_db)
    assert pg_db.execute("SELECT count(*) FROM pg_replication_slots") == [(1,)]
    published = pg_db.execute("SELECT tablename FROM pg_publication_tables WHERE pubname = 'dativo_shop' ORDER BY 1")
    assert published == [(t,) for t in TABLES]
    for day in range(1, 4):
        changes(pg_db, day)
        result = summary(path, tmp_path)
        assert result["status"] == "succeeded", result
        assert_equal(tmp_path, pg_db)
        # Every table committed the same position; the slot is there now, never past it.
        positions = {s["target"]["cdc"]["position"]["lsn"] for s in result["streams"]}
        assert len(positions) == 1
        assert {s["target"]["cdc"]["slot_advanced_to"]["lsn"] for s in result["streams"]} == positions
    quiet = summary(path, tmp_path)
    assert [s["target"]["cdc"]["changes"] for s in quiet["streams"]] == [0, 0, 0]
    assert_equal(tmp_path, pg_db)


def test_a_failed_table_reads_again_while_the_others_skip_what_they_committed(tmp_path, pg_db):
    make_tables(pg_db)
    path = streams_job(tmp_path, pg_db, overrides={"beta": "{target: {schema_evolution: {mode: fail}}}"})
    assert run(path).returncode == 0
    changes(pg_db, 1)
    pg_db.psql("ALTER TABLE beta ADD COLUMN extra int; UPDATE beta SET name = 'b after' WHERE id = 2;")
    before = slot_lsn(pg_db)
    failed = summary_failing(path, tmp_path)
    statuses = {s["stream"]: s["status"] for s in failed["streams"]}
    assert statuses == {"public.alpha": "succeeded", "public.beta": "failed", "public.gamma": "succeeded"}
    assert "extra" in next(s["error"] for s in failed["streams"] if s["stream"] == "public.beta")
    # beta's commit failed: the slot stays at what beta committed, so its changes are read again.
    assert slot_lsn(pg_db) == before
    assert target(tmp_path, "alpha") == source(pg_db, "alpha")
    assert target(tmp_path, "beta") != source(pg_db, "beta")
    pg_db.psql("ALTER TABLE beta DROP COLUMN extra;")
    changes(pg_db, 2)
    again = summary(path, tmp_path)
    counts = {s["stream"]: s["target"]["cdc"]["changes"] for s in again["streams"]}
    assert_equal(tmp_path, pg_db)  # alpha and gamma skipped what they had committed: no duplicate, no loss
    assert counts["public.beta"] > counts["public.alpha"]
    assert slot_lsn(pg_db) > before
    assert summary(path, tmp_path)["streams"][1]["target"]["cdc"]["changes"] == 0


def summary_failing(path: Path, job_dir: Path) -> dict:
    out = job_dir / "failed.json"
    result = dativo("run", path, "--quiet", "--summary-json", out)
    assert result.returncode == 1, result.stderr
    return json.loads(out.read_text())


@pytest.mark.parametrize("point", ["cdc_after_commit:1", "cdc_before_commit:2", "after_commit:2", "cdc_after_commit:3"])
def test_kill_9_between_two_tables_commits_then_rerun(tmp_path, pg_db, point):
    make_tables(pg_db)
    path = streams_job(tmp_path, pg_db)
    assert run(path).returncode == 0
    changes(pg_db, 1)
    crashed = run(path, point)
    assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stderr)
    lsns = committed_lsns(path)
    if point == "cdc_after_commit:3":  # every table committed, the slot was not advanced
        assert len(set(lsns.values())) == 1 and slot_lsn(pg_db) < parse_lsn(lsns["public.alpha"])
    else:  # some tables committed the new position, the others not
        assert len(set(lsns.values())) == 2
    changes(pg_db, 2)
    assert run(path).returncode == 0
    assert_equal(tmp_path, pg_db)
    assert len(set(committed_lsns(path).values())) == 1
    changes(pg_db, 3)
    assert run(path).returncode == 0
    assert_equal(tmp_path, pg_db)


def test_kill_9_during_the_first_load_of_several_tables(tmp_path, pg_db):
    make_tables(pg_db)
    path = streams_job(tmp_path, pg_db)
    assert run(path, "cdc_after_commit:2").returncode == -signal.SIGKILL  # alpha and beta loaded, gamma not
    changes(pg_db, 1)
    assert run(path).returncode == 0  # gamma loads from a fresh snapshot; the slot's changes are replayed
    assert_equal(tmp_path, pg_db)
    changes(pg_db, 2)
    assert run(path).returncode == 0
    assert_equal(tmp_path, pg_db)


def test_a_selection_must_take_every_table_of_the_slot(tmp_path, pg_db):
    make_tables(pg_db, 3)
    path = streams_job(tmp_path, pg_db)
    partial = dativo("run", path, "--stream", "public.alpha")
    assert_one_line_error(partial, "read one replication slot and run together", "select all of them or none")
    result = api.run(path, streams=["public.*"])
    assert result.ok
    assert_equal(tmp_path, pg_db)


def test_status_follow_and_drop_cover_every_table_of_the_slot(tmp_path, pg_db):
    make_tables(pg_db, 10)
    path = streams_job(tmp_path, pg_db, cdc="{commit_interval_s: 0.2}")
    command = [sys.executable, "-m", "dativo", "cdc", "follow", str(path), "--interval", "0.2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: all(target(tmp_path, t) == source(pg_db, t) for t in TABLES))
        changes(pg_db, 1)
        wait_for(lambda: all(target(tmp_path, t) == source(pg_db, t) for t in TABLES))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0, process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
    assert "public.gamma: committed" in (process.stdout.read() if process.stdout else "")
    changes(pg_db, 2)
    status = dativo("cdc", "status", path, "--json")
    assert status.returncode == 0, status.stderr
    (slot,) = json.loads(status.stdout)["slots"]
    assert slot["slot"] == "dativo_shop" and set(slot["tables"]) == {f"public.{t}" for t in TABLES}
    assert slot["committed_lsn"] == min(slot["tables"].values(), key=parse_lsn)
    # A table with no change in the last round commits nothing (merge of nothing), so its recorded
    # position may trail the slot's; the slot is never confirmed short of a table's committed one.
    assert parse_lsn(slot["confirmed_lsn"]) >= parse_lsn(slot["committed_lsn"])
    assert slot["lag_bytes"] > 0
    dropped = dativo("cdc", "drop", path, "--yes", "--publication")
    assert dropped.returncode == 0, dropped.stderr
    assert pg_db.execute("SELECT count(*) FROM pg_replication_slots") == [(0,)]
    assert pg_db.execute("SELECT count(*) FROM pg_publication") == [(0,)]


def wait_for(condition, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


def test_a_table_added_to_the_job_later_joins_the_slot(tmp_path, pg_db):
    make_tables(pg_db, 20)
    path = streams_job(tmp_path, pg_db)
    assert run(path).returncode == 0
    changes(pg_db, 1)
    pg_db.psql(
        "CREATE TABLE delta (id int PRIMARY KEY, name text, qty int); ALTER TABLE delta REPLICA IDENTITY FULL;"
        "INSERT INTO delta SELECT g, 'd', g FROM generate_series(1, 50) g; UPDATE delta SET qty = 0 WHERE id < 5;"
    )
    path = streams_job(tmp_path, pg_db, tables=(*TABLES, "delta"))
    assert run(path).returncode == 0  # delta: a fresh snapshot, added to the publication; the others: changes
    assert_equal(tmp_path, pg_db)
    assert target(tmp_path, "delta") == source(pg_db, "delta")
    published = pg_db.execute("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'dativo_shop'")
    assert published == [(4,)]
    changes(pg_db, 2)
    pg_db.psql("UPDATE delta SET name = 'd2' WHERE id % 2 = 0; DELETE FROM delta WHERE id > 45;")
    assert run(path).returncode == 0
    assert_equal(tmp_path, pg_db)
    assert target(tmp_path, "delta") == source(pg_db, "delta")


def test_a_table_that_cannot_start_holds_the_slot_at_what_it_committed(tmp_path, pg_db):
    make_tables(pg_db, 20)
    path = streams_job(tmp_path, pg_db)
    assert run(path).returncode == 0
    changes(pg_db, 1)
    pg_db.psql("ALTER TABLE beta RENAME TO beta_away;")
    before = slot_lsn(pg_db)
    failed = summary_failing(path, tmp_path)
    assert [s["status"] for s in failed["streams"]] == ["succeeded", "failed", "succeeded"]
    assert "does not exist" in failed["streams"][1]["error"]
    assert slot_lsn(pg_db) == before  # beta's changes are still in the slot
    pg_db.psql("ALTER TABLE beta_away RENAME TO beta;")
    changes(pg_db, 2)
    assert run(path).returncode == 0
    assert_equal(tmp_path, pg_db)
    assert slot_lsn(pg_db) > before


def test_a_slot_busy_with_another_reader_is_retried_then_every_table_commits(tmp_path, pg_db):
    make_tables(pg_db, 10)
    path = streams_job(tmp_path, pg_db)
    assert run(path).returncode == 0
    changes(pg_db, 1)

    def hold_slot(seconds: int) -> subprocess.Popen:
        """Another consumer holds the slot (active) for ``seconds``: the shared start fails, transiently."""
        recvlogical = str(pg_db.server.bindir / "pg_recvlogical")
        holder = subprocess.Popen(
            ["timeout", str(seconds), recvlogical, "-d", pg_db.dsn, "--slot", "dativo_shop", "--start",
             "-o", "proto_version=1", "-o", "publication_names=dativo_shop", "-f", "/dev/null"],
        )  # fmt: skip
        wait_for(lambda: pg_db.execute("SELECT active FROM pg_replication_slots") == [(True,)], timeout=30)
        return holder

    holder = hold_slot(60)
    try:
        busy = summary_failing(path, tmp_path)  # one attempt only (max_attempts: 1)
    finally:
        holder.terminate()  # timeout passes SIGTERM on to pg_recvlogical
        holder.wait()
    assert {s["status"] for s in busy["streams"]} == {"failed"}
    assert all("active" in s["error"] for s in busy["streams"]), busy["streams"]
    wait_for(lambda: pg_db.execute("SELECT active FROM pg_replication_slots") == [(False,)], timeout=30)
    path.write_text(path.read_text().replace("max_attempts: 1", "max_attempts: 12, initial_delay_s: 1, max_delay_s: 2"))
    holder = hold_slot(8)  # gone after 8 s, while the run retries (start-up is a few seconds)
    try:
        retried = summary(path, tmp_path)
    finally:
        holder.terminate()  # timeout passes SIGTERM on to pg_recvlogical
        holder.wait()
    assert all(s["attempt"] >= 2 for s in retried["streams"]), [s["attempt"] for s in retried["streams"]]
    assert_equal(tmp_path, pg_db)
