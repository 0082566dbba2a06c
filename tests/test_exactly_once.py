"""Exactly-once delivery: kill -9 at many points, concurrent runs, idempotent re-runs, retries.

Every test uses a real PostgreSQL table and the real ``dativo`` command; the
crash points are SIGKILLs delivered by dativo itself at named places
(``DATIVO_CRASH_AT``, see src/dativo/_faults.py), i.e. a real ``kill -9`` at
exactly that instant.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog import load_catalog

from support.cli import assert_one_line_error, dativo

SUPPORT = Path(__file__).parent / "support" / "plugins.py"


def create_items(db, rows: int = 3000) -> None:
    db.psql(
        "CREATE TABLE items (id int PRIMARY KEY, name text, amount numeric(10,2), updated_at timestamptz);"
        f"INSERT INTO items SELECT g, 'item ' || g, g * 1.5, '2024-01-01'::timestamptz + g * interval '1 second' "
        f"FROM generate_series(1, {rows}) g;"
    )


def source_rows(db) -> list[tuple]:
    out = db.psql("COPY (SELECT id, name, amount FROM items ORDER BY id) TO STDOUT")
    return [tuple(line.split("\t")) for line in out.splitlines() if line]


def iceberg_rows(job_dir: Path, table: str = "raw.items") -> list[tuple]:
    warehouse = job_dir / "warehouse"
    catalog = load_catalog(
        "dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )
    if not catalog.table_exists(table):
        return []
    data = catalog.load_table(table).scan().to_arrow().sort_by("id")
    columns = (data.column(c).to_pylist() for c in ("id", "name", "amount"))
    return [(str(i), n, f"{a:.2f}") for i, n, a in zip(*columns, strict=True)]


def referenced_files_exist(job_dir: Path, table: str = "raw.items") -> bool:
    warehouse = job_dir / "warehouse"
    catalog = load_catalog(
        "dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )
    if not catalog.table_exists(table):
        return True
    tasks = catalog.load_table(table).scan().plan_files()
    return all(Path(task.file.file_path.removeprefix("file://")).exists() for task in tasks)


def write_job(tmp_path: Path, db, mode: str = "append", target: str | None = None, extra: str = "") -> Path:
    merge = "  merge: {keys: [id]}\n" if mode == "merge" else ""
    cursor = "{cursor: updated_at, lookback: 10s}" if mode == "merge" else "{cursor: id}"
    target = target or f"target:\n  connector: iceberg\n  table: raw.items\n  mode: {mode}\n{merge}"
    path = tmp_path / "job.yaml"
    path.write_text(
        f"name: items-{mode}\n"
        "source:\n  connector: postgres\n"
        f"  connection: {json.dumps(db.connection)}\n"
        "  table: public.items\n"
        f"  incremental: {cursor}\n"
        f"{target}"
        "engine: {batch_size: 500, retry: {max_attempts: 1}}\n" + extra
    )
    return path


def run(path: Path, crash_at: str | None = None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"DATIVO_CRASH_AT": crash_at} if crash_at else {}
    return dativo("run", path, "--quiet", *args, env=env)


ICEBERG_POINTS = [
    "read:1",
    "read:3",
    "batch:1",
    "batch:4",
    "files_written",
    "before_commit",
    "after_commit",
    "before_finalize",
    "after_finalize",
]


@pytest.mark.parametrize("mode", ["append", "merge"])
@pytest.mark.parametrize("point", ICEBERG_POINTS)
def test_kill_9_then_rerun_lands_every_row_exactly_once_in_iceberg(tmp_path, pg_db, mode, point):
    create_items(pg_db)
    job = write_job(tmp_path, pg_db, mode)
    first = run(job)  # a committed first run, so the crash happens on top of existing state
    assert first.returncode == 0, first.stderr
    pg_db.psql(
        "INSERT INTO items SELECT g, 'late ' || g, g, '2024-02-01'::timestamptz + g * interval '1 second' "
        "FROM generate_series(3001, 5000) g;"
        "UPDATE items SET name = 'renamed', updated_at = '2024-03-01' WHERE id % 100 = 0;"
    )
    crashed = run(job, point)
    assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stderr)
    assert referenced_files_exist(tmp_path)
    rerun = run(job)
    assert rerun.returncode == 0, rerun.stderr
    expected = source_rows(pg_db)
    got = iceberg_rows(tmp_path)
    if mode == "append":  # append keeps the first version of updated rows; ids must still be exactly once
        assert [r[0] for r in got] == [r[0] for r in expected]
    else:
        assert got == expected
    assert referenced_files_exist(tmp_path)


PARQUET_POINTS = ["batch:2", "files_published", "after_commit", "before_finalize"]


@pytest.mark.parametrize("point", PARQUET_POINTS)
def test_kill_9_then_rerun_parquet_dataset(tmp_path, pg_db, point):
    create_items(pg_db)
    options = "{target_file_size_mb: 0.02, row_group_size_mb: 0.01}"
    target = f"target:\n  connector: parquet\n  path: out/items\n  options: {options}\n"
    job = write_job(tmp_path, pg_db, target=target)
    assert run(job).returncode == 0
    pg_db.psql("INSERT INTO items SELECT g, 'late ' || g, g, now() FROM generate_series(3001, 5000) g;")
    crashed = run(job, point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert run(job).returncode == 0
    manifest = sorted((tmp_path / "out" / "items" / "_dativo").glob("manifest-*.json"))[-1]
    files = json.loads(manifest.read_text())["files"]
    on_disk = sorted(p.name for p in (tmp_path / "out" / "items").glob("*.parquet"))
    assert sorted(files) == on_disk  # the rerun removed what the crashed run published but never listed
    assert not list((tmp_path / "out" / "items").glob("_dativo_tmp_*"))  # and the dead run's staging folder
    ids = sorted(i for name in files for i in pq.read_table(tmp_path / "out" / "items" / name).column("id").to_pylist())
    assert ids == list(range(1, 5001))


@pytest.mark.parametrize("point", ["file_moved:1", "files_published"])
def test_kill_9_on_day_one_before_the_first_manifest_then_rerun_parquet(tmp_path, pg_db, point):
    """The very first run dies with its files moved in but no manifest yet: the rerun must not adopt them."""
    create_items(pg_db)
    options = "{target_file_size_mb: 0.02, row_group_size_mb: 0.01}"
    target = f"target:\n  connector: parquet\n  path: out/items\n  options: {options}\n"
    job = write_job(tmp_path, pg_db, target=target)
    folder = tmp_path / "out" / "items"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"note": ["a file that was here before dativo"]}), folder / "before.parquet")
    crashed = run(job, point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert run(job).returncode == 0
    manifest = sorted((folder / "_dativo").glob("manifest-*.json"))[-1]
    files = json.loads(manifest.read_text())["files"]
    assert sorted(files) == sorted(p.name for p in folder.glob("*.parquet"))
    assert not list(folder.glob("_dativo_tmp_*"))
    ours = [name for name in files if name != "before.parquet"]
    assert "before.parquet" in files  # what was there before the first run stays part of the dataset
    ids = sorted(i for name in ours for i in pq.read_table(folder / name).column("id").to_pylist())
    assert ids == list(range(1, 3001))


def test_rerun_with_the_same_run_id_is_not_applied_twice(tmp_path, pg_db):
    create_items(pg_db, 100)
    path = tmp_path / "job.yaml"
    path.write_text(
        f"name: full\nsource:\n  connector: postgres\n  connection: {json.dumps(pg_db.connection)}\n"
        "  table: public.items\ntarget: {connector: iceberg, table: raw.items}\n"
    )
    first = dativo("run", path, "--run-id", "airflow-2024-01-01", "--summary-json", tmp_path / "a.json")
    assert first.returncode == 0, first.stderr
    again = dativo("run", path, "--run-id", "airflow-2024-01-01", "--summary-json", tmp_path / "b.json")
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "b.json").read_text())["status"] == "already committed"
    assert len(iceberg_rows(tmp_path)) == 100
    other = dativo("run", path, "--run-id", "airflow-2024-01-02")
    assert other.returncode == 0
    assert len(iceberg_rows(tmp_path)) == 200


def test_concurrent_runs_of_the_same_job_never_duplicate(tmp_path, pg_db):
    create_items(pg_db, 20_000)
    job = write_job(tmp_path, pg_db)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dativo", "run", str(job), "--quiet"], stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    assert any(code == 0 for code, _ in results), results
    for code, stderr in results:
        if code != 0:  # the loser says what happened and commits nothing
            assert "committed nothing" in stderr or "another run" in stderr, stderr
    assert run(job).returncode == 0  # catches up if the loser's rows were not read by the winner
    ids = [r[0] for r in iceberg_rows(tmp_path)]
    assert ids == [str(i) for i in range(1, 20_001)]


def test_commit_conflict_with_the_same_job_fails_cleanly(tmp_path, pg_db):
    """Run B of the job commits while run A is between reading and committing: A must commit nothing."""
    create_items(pg_db, 2000)
    job = write_job(tmp_path, pg_db)
    hook = tmp_path / "hook.py"
    hook.write_text(
        textwrap.dedent(
            f"""
            import subprocess, sys
            from dativo.engine import pipeline
            original = pipeline._new_state
            def racing(*args, **kwargs):
                subprocess.run([sys.executable, "-m", "dativo", "run", {str(job)!r}, "--quiet"], check=True)
                return original(*args, **kwargs)
            pipeline._new_state = racing
            from dativo.cli import main
            sys.argv = ["dativo", "run", {str(job)!r}, "--quiet"]
            main()
            """
        )
    )
    result = subprocess.run([sys.executable, str(hook)], capture_output=True, text=True, timeout=300)
    assert_one_line_error(result, "another run of job 'items-append' committed", "committed nothing", code=1)
    assert [r[0] for r in iceberg_rows(tmp_path)] == [str(i) for i in range(1, 2001)]
    warehouse_files = {p.name for p in (tmp_path / "warehouse").rglob("*.parquet")}
    assert len(warehouse_files) == 1  # the loser deleted its data file


def test_transient_failure_is_retried_and_terminal_is_not(tmp_path):
    marker = tmp_path / "failed-once"
    path = tmp_path / "job.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: flaky
            source:
              connector: custom
              reader: {{implementation: "{SUPPORT}:FlakyReader", options: {{marker: "{marker}"}}}}
            target: {{connector: iceberg, table: raw.items}}
            engine: {{retry: {{max_attempts: 3, initial_delay_s: 0.05}}}}
            """
        )
    )
    result = dativo("run", path, "--summary-json", tmp_path / "s.json")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["attempt"], summary["rows"]) == (2, 100)
    assert len(iceberg_rows_generic(tmp_path)) == 100

    terminal = tmp_path / "terminal.yaml"
    terminal.write_text(
        path.read_text().replace(
            f'FlakyReader", options: {{marker: "{marker}"}}', 'GeneratedReader", options: {fail_after: 0}'
        )
    )
    failed = dativo("run", terminal, "--summary-json", tmp_path / "t.json")
    assert failed.returncode == 1
    assert json.loads((tmp_path / "t.json").read_text())["attempt"] == 1


def iceberg_rows_generic(job_dir: Path) -> list[dict]:
    warehouse = job_dir / "warehouse"
    catalog = load_catalog(
        "dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )
    return catalog.load_table("raw.items").scan().to_arrow().to_pylist()


@pytest.mark.parametrize("point", ["read:1", "read:3", "batch:1", "before_finalize"])
def test_kill_9_during_a_full_read_that_started_before_the_writer_then_two_days_of_overwrite(tmp_path, pg_db, point):
    """A run without `incremental` starts reading before the writer is set up (docs/performance.md, start-up
    session 6): SIGKILL at the first reads (while PyIceberg is still loading), mid-write and before the
    commit leaves the table as it was; the next two runs each leave exactly the source."""
    create_items(pg_db)
    path = tmp_path / "job.yaml"
    path.write_text(
        "name: items-full\nsource:\n  connector: postgres\n"
        f"  connection: {json.dumps(pg_db.connection)}\n  table: public.items\n"
        "target:\n  connector: iceberg\n  table: raw.items\n  mode: overwrite\n"
        "engine: {batch_size: 500, retry: {max_attempts: 1}}\n"
    )
    first = run(path)
    assert first.returncode == 0, first.stderr
    assert iceberg_rows(tmp_path) == source_rows(pg_db)
    pg_db.psql("INSERT INTO items SELECT g, 'late ' || g, g, now() FROM generate_series(3001, 4000) g;")
    crashed = run(path, point)
    assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stderr)
    assert len(iceberg_rows(tmp_path)) == 3000  # the crashed run changed nothing
    assert referenced_files_exist(tmp_path)
    for _ in range(2):  # day two and day three
        rerun = run(path)
        assert rerun.returncode == 0, rerun.stderr
        assert iceberg_rows(tmp_path) == source_rows(pg_db)
        assert referenced_files_exist(tmp_path)
