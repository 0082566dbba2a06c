"""Day two on Iceberg: the whole PostgreSQL type table, every reader, append twice, overwrite, merge.

Each ``schema_evolution`` mode, on the embedded catalog and on Apache Iceberg's REST
catalog server (S3 warehouse on moto), unpartitioned and partitioned; every run's
table is read back and compared with the values PostgreSQL holds (issue 10 item 1,
issue 11 item 1).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from dativo.config.loader import load_job
from dativo.engine.retry import run_job
from test_postgres_readers import FIDELITY, create_fidelity_table, norm

from support.process_plugins import GO_READER

READERS: dict[str, str] = {
    "adbc": "  reader: {implementation: postgres-adbc}\n",
    "psycopg": "  reader: {implementation: postgres-psycopg}\n",
    "rust": "  reader: {implementation: postgres-rs}\n",
    "go": f"  reader: {{type: process, command: [{GO_READER}], sandbox: {{network: true}}, source_plan: true}}\n",
}
EVOLUTION = ["evolve", "freeze", "fail"]
PARTITION_BY = ["bucket(4, rowno)", "day(tstz)", "identity(b)", "truncate(2, txt)", "year(d)"]

# Every reader with every evolution mode on both catalogs, unpartitioned; partitioned: every
# reader on both catalogs, and every evolution mode with one reader.
CASES = [(r, e, False) for r in READERS for e in EVOLUTION] + [(r, "evolve", True) for r in READERS]
CASES += [("adbc", e, True) for e in EVOLUTION if e != "evolve"]


def write_job(
    job_dir: Path,
    db: Any,
    catalog: dict[str, Any],
    table: str,
    reader: str,
    evolution: str,
    mode: str,
    partitioned: bool,
) -> Path:
    connection = dict(db.connection, options="-c TimeZone=America/Los_Angeles")
    names = ", ".join(c.name for c in FIDELITY)
    target: dict[str, Any] = {
        "connector": "iceberg",
        "table": table,
        "mode": mode,
        "schema_evolution": {"mode": evolution},
    }
    if catalog:
        target["catalog"] = catalog
    if mode == "merge":
        target["merge"] = {"keys": ["rowno"]}
    if partitioned:
        target["partition_by"] = PARTITION_BY
    path = job_dir / f"{mode}.yaml"
    path.write_text(
        "name: fidelity\n"
        "source:\n  connector: postgres\n"
        f"  connection: {json.dumps(connection)}\n"
        f"  query: {json.dumps(f'SELECT rowno, {names} FROM fidelity ORDER BY rowno')}\n"
        + READERS[reader]
        + f"target: {json.dumps(target)}\n"
    )
    return path


def assert_equals_postgres(table: Any, copies: int) -> None:
    data = table.scan().to_arrow().sort_by("rowno")
    assert data.num_rows == 5 * copies
    assert data.column("rowno").to_pylist() == sorted(list(range(5)) * copies)
    for col in FIDELITY:
        got = norm(data.column(col.name).to_pylist())
        assert got == norm([value for value in col.expected for _ in range(copies)]), col.name


@pytest.mark.parametrize(
    ("reader", "evolution", "partitioned"), CASES, ids=[f"{r}-{e}{'-partitioned' if p else ''}" for r, e, p in CASES]
)
def test_type_table_append_twice_overwrite_merge(tmp_path, pg_db, iceberg_catalog, reader, evolution, partitioned):
    create_fidelity_table(pg_db)
    properties, open_catalog = iceberg_catalog
    table_name = f"day2_{uuid.uuid4().hex[:10]}.fidelity"
    for mode, copies in [("append", 1), ("append", 2), ("overwrite", 1), ("merge", 1)]:
        path = write_job(tmp_path, pg_db, properties, table_name, reader, evolution, mode, partitioned)
        summary = run_job(load_job(path))
        assert summary.rows == 5, (mode, summary)
        table = open_catalog(tmp_path).load_table(table_name)
        assert_equals_postgres(table, copies)
        assert table.current_snapshot().summary["dativo.job"] == "fidelity"
    assert str(table.schema().find_field("a_i4").field_type) == "list<int>"
    assert len(table.spec().fields) == (len(PARTITION_BY) if partitioned else 0)
    operations = [snapshot.summary.operation.value for snapshot in table.snapshots()]
    assert operations == ["append", "append", "overwrite", "overwrite"]
