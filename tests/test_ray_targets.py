"""engine.executor: ray into encrypted-parquet (with ``dativo audit verify``) and for ``streams:`` jobs, day two.

Real Ray runs on the session's cluster (tests/support/raycluster.py) from the suite's real
PostgreSQL (ctid partitions in one exported snapshot); the encrypted dataset is read back
with the job's local key file and its audit chain checked by the real ``dativo`` command.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyiceberg.catalog import load_catalog

import dativo
from dativo.encryption.kms.local import LocalKeyFileKms
from dativo.targets.encrypted_parquet import read_encrypted

from support.cli import dativo as dativo_cli
from support.ray_jobs import create_items, pg_source, source_ids, write_job
from support.raycluster import PASSWORD_ENV

pytestmark = [pytest.mark.xdist_group("ray"), pytest.mark.timeout(300)]


@pytest.fixture
def ray_env(ray_cluster, pg_server, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv(PASSWORD_ENV, pg_server.password)
    return ray_cluster.address


ENCRYPTED = (
    "target:\n  connector: encrypted-parquet\n  path: out\n  options:\n"
    "    footer_key: footer_key\n    column_keys: {phi_key: [name]}\n"
    "    kms: {type: local, key_file: keys.json}\n    audit: {log: audit.jsonl}\n"
)


def records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_encrypted_parquet_on_ray_decrypts_exactly_and_the_audit_chain_verifies_two_days(
    tmp_path, pg_db, ray_env, key_file
):
    create_items(pg_db, 1, 3000)
    job = write_job(tmp_path, "phi", pg_source(pg_db), ENCRYPTED)
    kms = LocalKeyFileKms({"type": "local", "key_file": "keys.json"}, tmp_path)
    for day, run_id in enumerate(["enc-1", "enc-2"]):
        if day:
            create_items(pg_db, 3001, 3300, create=False)
        result = dativo.run(job, executor="ray", address=ray_env, run_id=run_id)
        result.raise_for_failures()
        executor = result.streams[0].summary["executor"]
        assert executor["done"] == executor["partitions"] == (1 if day else 3), executor  # day two: past the cursor
        table = read_encrypted(str(tmp_path / "out"), kms).sort_by("id")
        assert table.column("id").to_pylist() == source_ids(pg_db)  # every row once, decrypted
        assert table.column("name").to_pylist()[:2] == ["item 1", "item 2"]
        for file in (tmp_path / "out").glob("*.parquet"):
            assert b"item 1" not in file.read_bytes()  # the protected column is encrypted at rest
        verified = dativo_cli("audit", "verify", tmp_path / "audit.jsonl", "--job", job)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        events = [r["event"] for r in records(tmp_path / "audit.jsonl")]
        assert events.count("commit") == day + 1, events
        assert "run_abandoned" not in events
        recorded = {r["path"].rsplit("/", 1)[-1] for r in records(tmp_path / "audit.jsonl") if r["event"] == "file"}
        assert recorded == {p.name for p in (tmp_path / "out").glob("*.parquet")}  # each file staged once
    again = dativo.run(job, executor="ray", address=ray_env, run_id="enc-2")
    assert again.streams[0].status == "already committed", again.streams[0].error


def streams_job(tmp_path: Path, db, engine: str) -> Path:  # type: ignore[no-untyped-def]
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir(parents=True, exist_ok=True)
    catalog = {"type": "sql", "uri": f"sqlite:///{warehouse / 'catalog.db'}", "warehouse": warehouse.as_uri()}
    connection = {k: v for k, v in db.connection.items() if k != "password"}
    connection["password"] = "${" + PASSWORD_ENV + "}"
    path = tmp_path / "lake.yaml"
    path.write_text(
        "name: lake\ndefaults:\n  source:\n    connector: postgres\n"
        f"    connection: {json.dumps(connection)}\n    parallelism: 3\n    incremental: {{cursor: id}}\n"
        f"  target:\n    connector: iceberg\n    table: 'raw.{{table}}'\n    catalog: {json.dumps(catalog)}\n"
        f"streams:\n  public.items: {{}}\n  public.others: {{}}\n"
        f"engine: {{batch_size: 500, max_concurrent_streams: 2, retry: {{max_attempts: 1}}{engine}}}\n"
    )
    return path


def iceberg_ids(warehouse: Path, table: str) -> list[int]:
    catalog = load_catalog(
        "dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )
    loaded = catalog.load_table(table)
    referenced = {Path(t.file.file_path.removeprefix("file://")) for t in loaded.scan().plan_files()}
    folder = f"/{table.split('.')[1]}/data/"
    on_disk = {p for p in warehouse.rglob("*.parquet") if folder in p.as_posix()}
    assert on_disk == referenced, f"unreferenced data files: {sorted(map(str, on_disk - referenced))}"
    return sorted(loaded.scan().to_arrow().column("id").to_pylist())


def test_streams_job_on_ray_commits_each_table_once_two_days(tmp_path, pg_db, ray_env):
    create_items(pg_db, 1, 3000)
    pg_db.psql("CREATE TABLE others AS SELECT * FROM items; ALTER TABLE others ADD PRIMARY KEY (id);")
    job = streams_job(tmp_path, pg_db, f", executor: ray, ray: {{address: '{ray_env}'}}")
    checked = dativo_cli("validate", job)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    import ray

    ray.shutdown()  # both streams' drivers connect at once (they raced in ray.init: "called ray.init twice")
    for day in range(2):
        if day:
            create_items(pg_db, 3001, 3300, create=False)
            pg_db.psql("INSERT INTO others SELECT g, 'other ' || g, g, 'y' FROM generate_series(3001, 3150) g")
        result = dativo.run(job, run_id=f"lake-{day}")
        result.raise_for_failures()
        for stream in result.streams:
            executor = stream.summary["executor"]
            assert executor["done"] == executor["partitions"] == (1 if day else 3), (stream.name, executor)
        assert iceberg_ids(tmp_path / "warehouse", "raw.items") == source_ids(pg_db)
        others = [int(x) for x in pg_db.psql("COPY (SELECT id FROM others ORDER BY id) TO STDOUT").split()]
        assert iceberg_ids(tmp_path / "warehouse", "raw.others") == others
