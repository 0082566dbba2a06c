"""StagingWriter of the ``iceberg`` writer: data files staged in separate OS processes, one snapshot on the driver.

Workers are ``spawn``-ed processes (tests/support/staging.py); catalogs are the
embedded PyIceberg SQL catalog (local warehouse) and the real REST catalog server
with its S3 warehouse on moto. Every test reads the table back and compares it with
the source rows exactly, and checks which of the run's files remain in storage.
"""

from __future__ import annotations

import pickle
import signal
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyarrow import fs as pafs
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError
from pyiceberg.table import Table

from dativo.errors import SchemaError, TargetError

from support.iceberg_fixtures import embedded_catalog, rest_catalog
from support.iceberg_rest import DropResponseProxy, RestCatalogServer
from support.staging import attempt_killed, drive_killed, killed_retry, split, stage, stage_all, staged_run, writer_of

REF = "dativo.targets.iceberg.writer:IcebergWriter"
Catalogs = tuple[dict[str, Any], Callable[[Path], Catalog]]


def rows(start: int, count: int, name: str = "row", extra: dict[str, list[Any]] | None = None) -> pa.Table:
    ids = list(range(start, start + count))
    columns: dict[str, Any] = {
        "id": pa.array(ids, pa.int64()),
        "name": pa.array([f"{name} {i}" for i in ids]),
        "category": pa.array([f"c{i % 3}" for i in ids]),
        "amount": pa.array([i * 1.5 for i in ids]),
    }
    return pa.table({**columns, **(extra or {})})


def config_for(
    catalog: dict[str, Any], tmp_path: Path, table: str, mode: str = "append", **extra: Any
) -> dict[str, Any]:
    return {
        "table": table,
        "catalog": catalog,
        "mode": mode,
        # Tiny files and row groups: several files per partition, and a killed attempt leaves files behind.
        "options": {"target_file_size_mb": 0.01, "row_group_size_mb": 0.0001},
        "job": {"name": "orders", "dir": str(tmp_path), "run_id": uuid.uuid4().hex},
        **extra,
    }


def contents(table: Table, columns: list[str] | None = None) -> list[dict[str, Any]]:
    got = table.scan().to_arrow().sort_by("id")
    return got.select(columns or got.column_names).to_pylist()


def stored(table: Table) -> set[str]:
    """Every file in the table's data location, as a file-system path."""
    io = table.io
    scheme, netloc, root = io.parse_location(f"{table.location()}/data", io.properties)  # type: ignore[attr-defined]
    fs = io.fs_by_scheme(scheme, netloc)  # type: ignore[attr-defined]
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return {info.path for info in infos if info.type == pafs.FileType.File}


def referenced(table: Table) -> set[str]:
    io = table.io
    files = (task.file.file_path for task in table.scan().plan_files())
    return {io.parse_location(path, io.properties)[2] for path in files}  # type: ignore[attr-defined]


def run_ids(table: Table) -> list[str]:
    return [snapshot.summary["dativo.run-id"] for snapshot in table.snapshots() if snapshot.summary]


def test_union_is_one_snapshot_then_day_two_in_each_mode(
    workers: ProcessPoolExecutor, iceberg_catalog: Catalogs, tmp_path: Path
) -> None:
    block, open_catalog = iceberg_catalog
    name = f"staged_{uuid.uuid4().hex[:8]}.orders"
    config = config_for(block, tmp_path, name)
    run_id = config["job"]["run_id"]
    day_one = rows(0, 600)
    driver = writer_of(REF, config)
    assert driver.load_state() is None
    driver.prepare(day_one.schema)  # the table does not exist: its creation is staged in the run's commit
    plan = driver.staging_plan()
    parts = split(day_one, 3)
    assert attempt_killed(REF, config, plan, f"{run_id}-p0001-a1", parts[1]) == -signal.SIGKILL
    if not block:  # local files: the killed attempt's partial files are there (S3 never shows an unfinished upload)
        assert list((tmp_path / "warehouse").rglob(f"*{run_id}-p0001-a1*"))
    staged = stage_all(workers, REF, config, plan, parts, attempt=2)
    attempt_b = stage(REF, config, plan, f"{run_id}-p0000-a3", parts[0])
    with pytest.raises(NoSuchTableError):
        open_catalog(tmp_path).load_table(name)  # nothing is visible before the commit
    driver.stage_state({"run_id": run_id, "cursor": 599})
    result = driver.commit_staged(staged)
    driver.close()

    table = open_catalog(tmp_path).load_table(name)
    assert result["created_table"] and result["rows"] == 600
    assert contents(table) == day_one.sort_by("id").to_pylist()
    assert run_ids(table) == [run_id]
    assert stored(table) == referenced(table), "a file of an uncommitted attempt (dead, or B) remains"
    assert not referenced(table) & {p.split("://")[-1] for p in attempt_b["files"]}
    again = writer_of(REF, config)
    assert again.load_state() == {"run_id": run_id, "cursor": 599}  # a rerun of this run id: "already committed"
    again.close()

    day_two = rows(600, 300)
    staged_run(workers, REF, config_for(block, tmp_path, name), split(day_two, 2))
    table = open_catalog(tmp_path).load_table(name)
    assert contents(table) == pa.concat_tables([day_one, day_two]).to_pylist()

    day_three = rows(1000, 200)
    result = staged_run(workers, REF, config_for(block, tmp_path, name, "overwrite"), split(day_three, 2))
    table = open_catalog(tmp_path).load_table(name)
    assert result["files_removed"] >= 2 and contents(table) == day_three.to_pylist()

    # merge: update 1000-1049, delete 1100-1109, insert 2000-2049, staged as three partitions
    updates = rows(1000, 50, "updated", {"deleted": [False] * 50})
    deletes = rows(1100, 10, "gone", {"deleted": [True] * 10})
    inserts = rows(2000, 50, "new", {"deleted": [False] * 50})
    merge = config_for(block, tmp_path, name, "merge", merge={"keys": ["id"], "delete_column": "deleted"})
    staged_run(workers, REF, merge, [updates, deletes, inserts])
    table = open_catalog(tmp_path).load_table(name)
    expected = {row["id"]: row for row in day_three.to_pylist() if not 1000 <= row["id"] < 1050}
    expected = {k: v for k, v in expected.items() if not 1100 <= k < 1110}
    for row in [*updates.drop_columns(["deleted"]).to_pylist(), *inserts.drop_columns(["deleted"]).to_pylist()]:
        expected[row["id"]] = row
    assert contents(table) == [expected[k] for k in sorted(expected)]
    assert len(run_ids(table)) == 4 and len(set(run_ids(table))) == 4  # one snapshot per run
    assert stored(table) >= referenced(table)
    assert not [path for path in stored(table) if "keys-" in path], "the staged merge keys must be removed"


def test_partitioned_table_and_schema_evolution_decided_on_the_driver(
    workers: ProcessPoolExecutor, tmp_path: Path
) -> None:
    name = f"staged_{uuid.uuid4().hex[:8]}.orders"
    partitioned = {"partition_by": ["category", "bucket(4, id)"]}
    day_one = rows(0, 400)
    staged_run(workers, REF, config_for({}, tmp_path, name, **partitioned), split(day_one, 3))
    table = embedded_catalog(tmp_path).load_table(name)
    assert contents(table) == day_one.to_pylist()
    tasks = list(table.scan().plan_files())
    assert len(tasks) >= 12 and all(len(task.file.partition) == 2 for task in tasks)
    assert {task.file.partition[0] for task in tasks} == {"c0", "c1", "c2"}

    # Day two brings a new column: the driver evolves the schema at prepare; workers write its field ids.
    day_two = rows(400, 200, extra={"note": [f"n{i}" for i in range(200)]})
    staged_run(workers, REF, config_for({}, tmp_path, name, **partitioned), split(day_two, 2))
    table = embedded_catalog(tmp_path).load_table(name)
    assert table.schema().find_field("note").field_id > table.schema().find_field("amount").field_id
    got = contents(table)
    assert got[:400] == [{**row, "note": None} for row in day_one.to_pylist()]
    assert got[400:] == day_two.to_pylist()
    assert stored(table) == referenced(table)


def test_abort_removes_every_staged_file_including_a_dead_attempts(
    workers: ProcessPoolExecutor, tmp_path: Path
) -> None:
    name = f"staged_{uuid.uuid4().hex[:8]}.orders"
    staged_run(workers, REF, config_for({}, tmp_path, name), [rows(0, 100)])
    table = embedded_catalog(tmp_path).load_table(name)
    before, snapshots = stored(table), run_ids(table)

    config = config_for({}, tmp_path, name)
    driver = killed_retry(workers, REF, config, split(rows(100, 400), 2))
    assert list((tmp_path / "warehouse").rglob("*-p0001-a2*")), "the killed attempt left no file to clean"
    assert len(stored(table)) > len(before) + 2
    driver.abort()
    driver.close()
    table = embedded_catalog(tmp_path).load_table(name)
    assert stored(table) == before and run_ids(table) == snapshots
    assert contents(table) == rows(0, 100).to_pylist()

    # A merge whose key repeats across two partitions fails on the driver; nothing is committed or left.
    merge = config_for({}, tmp_path, name, "merge", merge={"keys": ["id"]})
    with pytest.raises(SchemaError, match="appears 2 times"):
        staged_run(workers, REF, merge, [rows(5, 10), rows(10, 10)])
    table = embedded_catalog(tmp_path).load_table(name)
    assert stored(table) == before and run_ids(table) == snapshots

    # A run that would have created the table and its namespace leaves neither.
    namespace = f"fresh_{uuid.uuid4().hex[:8]}"
    config = config_for({}, tmp_path, f"{namespace}.orders")
    driver = writer_of(REF, config)
    driver.prepare(rows(0, 1).schema)
    plan = driver.staging_plan()
    stage_all(workers, REF, config, plan, split(rows(0, 100), 2))
    driver.abort()
    driver.close()
    with pytest.raises(NoSuchNamespaceError):
        embedded_catalog(tmp_path).list_tables(namespace)
    leftovers = [p for p in (tmp_path / "warehouse").rglob("*.parquet") if config["job"]["run_id"] in p.name]
    assert not leftovers


@pytest.mark.parametrize("point", ["files_written", "before_commit", "after_commit"])
def test_driver_killed_during_commit_leaves_all_or_nothing_and_the_next_run_commits_once(
    workers: ProcessPoolExecutor, tmp_path: Path, point: str
) -> None:
    name = f"staged_{uuid.uuid4().hex[:8]}.orders"
    day_one = rows(0, 300)
    staged_run(workers, REF, config_for({}, tmp_path, name), split(day_one, 2))
    day_two = rows(300, 300)
    crashed = config_for({}, tmp_path, name)
    state = {"run_id": crashed["job"]["run_id"]}
    assert drive_killed(REF, crashed, day_two.schema, split(day_two, 3), state, point) == -signal.SIGKILL
    committed = point == "after_commit"
    table = embedded_catalog(tmp_path).load_table(name)
    assert (writer_of(REF, crashed).load_state() == state) is committed
    assert contents(table) == (pa.concat_tables([day_one, day_two]) if committed else day_one).to_pylist()
    if not committed:
        staged_run(workers, REF, config_for({}, tmp_path, name), split(day_two, 2))
        table = embedded_catalog(tmp_path).load_table(name)
    assert contents(table) == pa.concat_tables([day_one, day_two]).to_pylist()
    assert len(run_ids(table)) == 2 and len(set(run_ids(table))) == 2  # day two committed exactly once


def test_unknown_commit_outcome_is_resolved_by_commit_id_and_keeps_files_when_unresolved(
    workers: ProcessPoolExecutor, tmp_path: Path, rest_server: RestCatalogServer, proxy: DropResponseProxy
) -> None:
    name = f"staged_{uuid.uuid4().hex[:8]}.orders"
    block = {**rest_server.catalog(proxy.uri)}

    def config(**extra: Any) -> dict[str, Any]:
        made = config_for(block, tmp_path, name, **extra)
        made["options"]["commit_outcome_wait_s"] = 1.5
        return made

    staged_run(workers, REF, config(), [rows(0, 100)])
    first = config()
    driver = writer_of(REF, first)
    driver.load_state()
    driver.prepare(rows(0, 1).schema)
    plan = driver.staging_plan()
    staged = stage_all(workers, REF, first, plan, split(rows(100, 200), 2))
    stage(REF, first, plan, f"{first['job']['run_id']}-p0000-a9", rows(100, 100))  # an attempt not committed
    driver.stage_state({"run_id": first["job"]["run_id"]})
    proxy.arm()  # the commit reaches the server; its answer never comes back
    result = driver.commit_staged(staged)
    driver.close()
    assert proxy.dropped == 1
    table = rest_catalog(rest_server).load_table(name)
    assert result["snapshot_id"] == table.current_snapshot().snapshot_id
    assert contents(table) == rows(0, 300).to_pylist() and len(run_ids(table)) == 2
    assert stored(table) == referenced(table)

    lost = config()
    before = stored(table)
    driver = writer_of(REF, lost)
    driver.load_state()
    driver.prepare(rows(0, 1).schema)
    staged = stage_all(workers, REF, lost, driver.staging_plan(), [rows(300, 50)])
    proxy.arm(forward=False)  # the commit never reaches the server, and no answer comes
    with pytest.raises(TargetError, match=r"outcome of this run's commit is unknown .* left in place"):
        driver.commit_staged(staged)
    driver.abort()
    driver.close()
    table = rest_catalog(rest_server).load_table(name)
    assert len(run_ids(table)) == 2 and stored(table) - before, "the run's files must stay for maintenance"


def test_plan_and_descriptions_are_small_and_hold_no_secret(
    workers: ProcessPoolExecutor, tmp_path: Path, rest_server: RestCatalogServer
) -> None:
    block = rest_server.catalog()
    secrets = [str(value) for key, value in block.items() if "secret" in key or "access-key" in key]
    assert secrets
    config = config_for(block, tmp_path, f"staged_{uuid.uuid4().hex[:8]}.orders", partition_by=["category"])
    driver = writer_of(REF, config)
    driver.prepare(rows(0, 1).schema)
    plan = driver.staging_plan()
    blob = pickle.dumps(plan)
    [description] = stage_all(workers, REF, config, plan, [rows(0, 300)])
    driver.abort()
    driver.close()
    described = pickle.dumps(description)
    for secret in secrets:
        assert secret.encode() not in blob and secret.encode() not in described
    assert len(blob) < 4096
    assert len(described) < 1500 * len(description["data_files"])


def test_commit_refuses_a_missing_or_foreign_staged_file(workers: ProcessPoolExecutor, tmp_path: Path) -> None:
    name = f"staged_{uuid.uuid4().hex[:8]}.orders"
    staged_run(workers, REF, config_for({}, tmp_path, name), [rows(0, 50)])
    table = embedded_catalog(tmp_path).load_table(name)
    before = stored(table)
    for damage in ("missing", "foreign"):
        config = config_for({}, tmp_path, name)
        driver = writer_of(REF, config)
        driver.load_state()
        driver.prepare(rows(0, 1).schema)
        [described] = stage_all(workers, REF, config, driver.staging_plan(), [rows(50, 50)])
        entry = described["data_files"][0]
        if damage == "missing":
            Path(entry["path"].removeprefix("file://")).unlink()
        else:
            described["data_files"] = [{**entry, "path": next(iter(table.scan().plan_files())).file.file_path}]
        with pytest.raises(TargetError, match="missing" if damage == "missing" else "not a data file staged by run"):
            driver.commit_staged([described])
        driver.abort()
        driver.close()
    table = embedded_catalog(tmp_path).load_table(name)
    assert stored(table) == before and contents(table) == rows(0, 50).to_pylist() and len(run_ids(table)) == 1


def test_merge_last_wins_resolves_duplicates_across_partitions_in_partition_order(
    workers: ProcessPoolExecutor, tmp_path: Path
) -> None:
    name = f"staged_{uuid.uuid4().hex[:8]}.orders"
    staged_run(workers, REF, config_for({}, tmp_path, name), [rows(0, 100)])
    merge = {"keys": ["id"], "duplicates": "last_wins"}
    # ids 50-59 come in partitions 0 and 1 (and twice within partition 1): the last row in partition order wins.
    parts = [rows(50, 20, "first"), pa.concat_tables([rows(50, 10, "second"), rows(55, 5, "third")]), rows(200, 5)]
    staged_run(workers, REF, config_for({}, tmp_path, name, "merge", merge=merge), parts)
    table = embedded_catalog(tmp_path).load_table(name)
    expected = {row["id"]: row for row in rows(0, 100).to_pylist()}
    for part in parts:
        expected.update({row["id"]: row for row in part.to_pylist()})
    assert contents(table) == [expected[k] for k in sorted(expected)]
    names = [row["name"] for row in contents(table)[50:60]]
    assert names == [f"second {i}" for i in range(50, 55)] + [f"third {i}" for i in range(55, 60)]
    assert stored(table) >= referenced(table) and not [p for p in stored(table) if "keys-" in p]


def test_merge_on_a_text_key_with_an_empty_partition(workers: ProcessPoolExecutor, tmp_path: Path) -> None:
    name = f"staged_{uuid.uuid4().hex[:8]}.orders"
    staged_run(workers, REF, config_for({}, tmp_path, name), [rows(0, 30)])
    merge = config_for({}, tmp_path, name, "merge", merge={"keys": ["name"]})
    staged_run(workers, REF, merge, [rows(10, 5, extra={"amount": [0.0] * 5}), rows(0, 0), rows(100, 2)])
    table = embedded_catalog(tmp_path).load_table(name)
    expected = {row["name"]: row for row in rows(0, 30).to_pylist()}
    expected.update(
        {row["name"]: row for row in [*rows(10, 5, extra={"amount": [0.0] * 5}).to_pylist(), *rows(100, 2).to_pylist()]}
    )
    assert contents(table) == sorted(expected.values(), key=lambda row: row["id"])
