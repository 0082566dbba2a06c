"""``create: false`` with a slot and publication the user made: the initial load reads a fresh snapshot
positioned at the slot's confirmed LSN, and the next run replays the changes between the two, idempotently
(issue 17). Against the real PostgreSQL server, with writes before and during the initial load."""

from __future__ import annotations

import subprocess
import sys
import time
from decimal import Decimal

from test_cdc import items, job_file, source_rows, target_rows

from support.cli import dativo

PREMADE = "{slot: mine, publication: mine, create: false}"


def premade(db) -> None:
    db.psql("CREATE PUBLICATION mine FOR TABLE items;")
    db.execute("SELECT pg_create_logical_replication_slot('mine', 'pgoutput')")


def confirmed(db) -> str:
    return db.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'mine'")[0][0]


def test_a_premade_slot_with_writes_before_and_during_the_initial_load(tmp_path, pg_db):
    items(pg_db, 200_000)
    premade(pg_db)
    # Changes after the slot's position, before the load: in the snapshot *and* in the slot.
    pg_db.psql(
        "UPDATE items SET name = 'before' WHERE id % 500 = 0; DELETE FROM items WHERE id % 500 = 1;"
        "INSERT INTO items VALUES (400000, 'ins-del', 1); DELETE FROM items WHERE id = 400000;"
        "UPDATE items SET id = 400001 WHERE id = 199998; INSERT INTO items VALUES (400002, 'kept', 2);"
    )
    start = confirmed(pg_db)
    before = source_rows(pg_db)
    path = job_file(tmp_path, pg_db, cdc=PREMADE)
    text = path.read_text().replace("engine: {", "engine: {batch_size: 2000, ")
    path.write_text(text.replace("  cdc: ", "  parallelism: 3\n  cdc: "))
    process = subprocess.Popen([sys.executable, "-m", "dativo", "run", str(path), "--quiet"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not pg_db.execute("SELECT 1 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_export_snapshot()%'"):
        assert time.monotonic() < deadline and process.poll() is None, process.stderr.read() if process.stderr else ""
        time.sleep(0.02)
    # The snapshot is taken: these writes must come from the slot, not the load.
    pg_db.psql(
        "UPDATE items SET name = 'during' WHERE id % 1000 = 0; DELETE FROM items WHERE id % 1000 = 3;"
        "INSERT INTO items VALUES (300000, 'new', 1); UPDATE items SET id = 300001 WHERE id = 199999;"
    )
    assert process.poll() is None, "the load finished before the writes: make the table bigger"
    assert process.wait(timeout=300) == 0, process.stderr.read() if process.stderr else ""
    assert target_rows(tmp_path) == before  # exactly the fresh snapshot
    state = dativo("state", "show", path)
    assert f'"lsn": "{start}"' in state.stdout  # positioned at the slot's confirmed LSN, before the snapshot
    assert confirmed(pg_db) == start  # the slot was not moved, nor recreated
    assert pg_db.execute("SELECT count(*) FROM pg_replication_slots") == [(1,)]
    # The change run replays everything since the slot's position: before, during and after the load.
    pg_db.psql("UPDATE items SET name = 'after' WHERE id % 999 = 0; DELETE FROM items WHERE id = 400002;")
    assert dativo("run", path, "--quiet").returncode == 0
    assert target_rows(tmp_path) == source_rows(pg_db)
    pg_db.psql("INSERT INTO items VALUES (500000, 'day three', 3); UPDATE items SET amount = 0 WHERE id < 50;")
    assert dativo("run", path, "--quiet").returncode == 0
    assert target_rows(tmp_path) == source_rows(pg_db)
    assert pg_db.execute("SELECT count(*) FROM pg_publication") == [(1,)]


def test_a_truncate_between_the_slot_and_the_snapshot_is_replayed(tmp_path, pg_db):
    items(pg_db, 20)
    premade(pg_db)
    pg_db.psql("UPDATE items SET name = 'gone' WHERE id = 1; TRUNCATE items; INSERT INTO items VALUES (5, 'a', 1);")
    path = job_file(tmp_path, pg_db, cdc=PREMADE)
    assert dativo("run", path, "--quiet").returncode == 0
    assert target_rows(tmp_path) == [(5, "a", Decimal("1.00"))]
    pg_db.psql("INSERT INTO items VALUES (6, 'b', 2); UPDATE items SET name = 'c' WHERE id = 5;")
    assert dativo("run", path, "--quiet").returncode == 0
    assert target_rows(tmp_path) == source_rows(pg_db) == [(5, "c", Decimal("1.00")), (6, "b", Decimal("2.00"))]


def test_create_false_without_the_slot_says_how_to_make_it(tmp_path, pg_db):
    items(pg_db, 3)
    pg_db.psql("CREATE PUBLICATION mine FOR TABLE items;")
    path = job_file(tmp_path, pg_db, cdc=PREMADE)
    result = dativo("run", path)
    assert result.returncode != 0
    assert "replication slot 'mine' does not exist and source.cdc.create is false" in result.stderr
    assert "pg_create_logical_replication_slot('mine', 'pgoutput')" in result.stderr
    assert pg_db.execute("SELECT count(*) FROM pg_replication_slots") == [(0,)]
