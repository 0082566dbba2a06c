"""One table load per run (issue 15), and concurrent commits still caught (PyIceberg's requirements).

A run loads the Iceberg table once for its state and prepares its transaction on
that same load; the commit (PyIceberg's ``SqlCatalog.commit_table``) loads it once
more to check the transaction's requirements. Each test runs the real ``dativo``
command in a fresh interpreter with the real embedded catalog; a racing run is a
second real ``dativo run`` started at a chosen instant of the first.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from pyiceberg.catalog import load_catalog

from support.cli import assert_one_line_error, dativo

# Runs `dativo run JOB --quiet` in this interpreter, counting SqlCatalog.load_table calls (written to LOADS at
# exit); RACE names the instant a second `dativo run OTHER` runs and commits: before prepare (after the state
# was loaded) or before the commit.
HOOK = """
import atexit, subprocess, sys
from pyiceberg.catalog.sql import SqlCatalog
from dativo.targets.iceberg import writer

JOB, OTHER, RACE, LOADS = sys.argv[1:5]
loads = []
load_table = SqlCatalog.load_table
def counting(self, identifier):
    loads.append(identifier)
    return load_table(self, identifier)
SqlCatalog.load_table = counting
atexit.register(lambda: open(LOADS, "w").write(str(len(loads))))

raced = []
def race():  # once per process: a retried attempt runs undisturbed
    if not raced:
        raced.append(True)
        subprocess.run([sys.executable, "-m", "dativo", "run", OTHER, "--quiet"], check=True)

def before(name):
    original = getattr(writer.IcebergWriter, name)
    def racing(self, *args):
        race()
        return original(self, *args)
    setattr(writer.IcebergWriter, name, racing)

if RACE == "prepare":
    before("prepare")
elif RACE == "commit":
    before("_commit_files")
from dativo.cli import main
sys.argv = ["dativo", "run", JOB, "--quiet"]
main()
"""


def make_job(folder: Path, name: str, ids: range) -> Path:
    """A job ``name`` appending rows ``ids`` from its own SQLite table into ``demo.items`` (one embedded catalog)."""
    with sqlite3.connect(folder / f"{name}.db") as db:
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        db.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"{name} {i}") for i in ids])
    job = folder / f"{name}.yaml"
    job.write_text(
        f"name: {name}\nsource:\n  connector: sqlite\n  connection: {{path: {name}.db}}\n  table: items\n"
        "target:\n  connector: iceberg\n  table: demo.items\n"
    )
    return job


def hooked_run(folder: Path, job: Path, other: Path | None = None, race: str = "none") -> tuple[object, int]:
    """Run ``job`` under :data:`HOOK`; returns the CompletedProcess and the number of table loads it made."""
    loads = folder / "loads.txt"
    script = folder / "hook.py"
    script.write_text(textwrap.dedent(HOOK))
    result = subprocess.run(
        [sys.executable, str(script), str(job), str(other or job), race, str(loads)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=folder,
    )
    return result, int(loads.read_text())


def table_ids(folder: Path) -> list[int]:
    warehouse = folder / "warehouse"
    catalog = load_catalog(
        "dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )
    return sorted(catalog.load_table("demo.items").scan().to_arrow().column("id").to_pylist())


def data_files(folder: Path) -> int:
    return len(list((folder / "warehouse").rglob("*.parquet")))


def test_a_run_into_an_existing_table_loads_it_once_and_the_commit_once(tmp_path):
    seed = make_job(tmp_path, "seed", range(101, 104))
    job = make_job(tmp_path, "main", range(1, 4))
    assert dativo("run", seed, "--quiet").returncode == 0
    result, loads = hooked_run(tmp_path, job)
    assert result.returncode == 0, result.stderr
    assert loads == 2  # load_state (prepare reuses it) + PyIceberg's check at commit; it was 3
    assert table_ids(tmp_path) == [1, 2, 3, 101, 102, 103]


def test_another_job_committing_after_the_load_is_merged_by_a_retried_commit(tmp_path):
    """The other job commits between our load and prepare: the commit conflicts, refreshes, retries; no row lost."""
    seed = make_job(tmp_path, "seed", range(101, 104))
    job = make_job(tmp_path, "main", range(1, 4))
    other = make_job(tmp_path, "other", range(201, 204))
    assert dativo("run", seed, "--quiet").returncode == 0
    result, loads = hooked_run(tmp_path, job, other, race="prepare")
    assert result.returncode == 0, result.stderr
    assert table_ids(tmp_path) == [1, 2, 3, 101, 102, 103, 201, 202, 203]
    assert loads == 4  # load_state, the conflicting commit's check, the refresh, the retried commit's check
    assert data_files(tmp_path) == 3


def test_another_job_committing_before_the_commit_is_merged_by_a_retried_commit(tmp_path):
    seed = make_job(tmp_path, "seed", range(101, 104))
    job = make_job(tmp_path, "main", range(1, 4))
    other = make_job(tmp_path, "other", range(201, 204))
    assert dativo("run", seed, "--quiet").returncode == 0
    result, _ = hooked_run(tmp_path, job, other, race="commit")
    assert result.returncode == 0, result.stderr
    assert table_ids(tmp_path) == [1, 2, 3, 101, 102, 103, 201, 202, 203]
    assert data_files(tmp_path) == 3


def test_another_run_of_the_same_job_after_the_load_makes_this_run_commit_nothing(tmp_path):
    """A run of the same job commits between our load and prepare: ours fails at its commit and leaves no file."""
    seed = make_job(tmp_path, "seed", range(101, 104))
    job = make_job(tmp_path, "main", range(1, 4))
    assert dativo("run", seed, "--quiet").returncode == 0
    result, _ = hooked_run(tmp_path, job, job, race="prepare")
    assert_one_line_error(result, "another run of job 'main' committed", "committed nothing", code=1)
    assert table_ids(tmp_path) == [1, 2, 3, 101, 102, 103]  # the racing run's rows, once
    assert data_files(tmp_path) == 2  # the loser deleted its data file


def test_a_table_created_by_another_job_after_the_load_is_appended_to_by_the_retried_attempt(tmp_path):
    """No table at load time, another job creates it before our commit: that attempt commits nothing (transient),
    the engine's retry appends to the table; every row once, the failed attempt's file deleted."""
    job = make_job(tmp_path, "main", range(1, 4))
    other = make_job(tmp_path, "other", range(201, 204))
    result, loads = hooked_run(tmp_path, job, other, race="prepare")
    assert result.returncode == 0, result.stderr
    assert table_ids(tmp_path) == [1, 2, 3, 201, 202, 203]
    assert data_files(tmp_path) == 2
    assert loads >= 4  # the second attempt loaded the table again


def test_another_run_of_the_same_job_before_the_commit_makes_this_run_commit_nothing(tmp_path):
    """PyIceberg's own commit retry would rebase our append onto the other run's: the writer's check must run."""
    seed = make_job(tmp_path, "seed", range(101, 104))
    job = make_job(tmp_path, "main", range(1, 4))
    assert dativo("run", seed, "--quiet").returncode == 0
    result, _ = hooked_run(tmp_path, job, job, race="commit")
    assert_one_line_error(result, "another run of job 'main' committed", "committed nothing", code=1)
    assert table_ids(tmp_path) == [1, 2, 3, 101, 102, 103]
    assert data_files(tmp_path) == 2
