"""What the Ray executor tests share: job files, reading a target back exactly, the source's rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyiceberg.catalog import load_catalog

from dativo.targets.parquet import read_manifest

from support.raycluster import PASSWORD_ENV

PLUGINS = Path(__file__).parent / "ray_plugins.py"


def create_items(db: Any, first: int, last: int, *, create: bool = True) -> None:
    """``items`` rows ``first..last`` (several pages, so ctid partitions are real)."""
    ddl = "CREATE TABLE items (id int PRIMARY KEY, name text, amount numeric(10,2), pad text);" if create else ""
    db.psql(
        f"{ddl}INSERT INTO items SELECT g, 'item ' || g, g * 1.5, repeat('x', 200) "
        f"FROM generate_series({first}, {last}) g;"
    )


def source_ids(db: Any) -> list[int]:
    return [int(x) for x in db.psql("COPY (SELECT id FROM items ORDER BY id) TO STDOUT").split()]


def pg_source(db: Any, *, parallelism: int = 3, reader: str | None = None, options: str = "") -> str:
    """A postgres source whose password is a reference (``${DATIVO_RAY_PGPASSWORD}``), never in the file."""
    connection = {k: v for k, v in db.connection.items() if k != "password"}
    connection["password"] = "${" + PASSWORD_ENV + "}"
    lines = [
        "source:",
        "  connector: postgres",
        f"  connection: {json.dumps(connection)}",
        "  table: public.items",
        f"  parallelism: {parallelism}",
        "  incremental: {cursor: id}",
    ]
    if reader:
        lines.append(f"  reader: {{implementation: '{reader}'}}")
    if options:
        lines.append(f"  options: {options}")
    return "\n".join(lines) + "\n"


def parquet_target(path: Path, writer: str | None = None, options: str = "") -> str:
    out = f"target:\n  connector: parquet\n  path: {path}\n"
    if writer:
        out += f"  writer: {{implementation: '{writer}'}}\n"
    if options:
        out += f"  options: {options}\n"
    return out


def iceberg_target(warehouse: Path, table: str = "raw.items", mode: str = "append", merge: str = "") -> str:
    warehouse.mkdir(parents=True, exist_ok=True)
    catalog = {"type": "sql", "uri": f"sqlite:///{warehouse / 'catalog.db'}", "warehouse": warehouse.as_uri()}
    out = f"target:\n  connector: iceberg\n  table: {table}\n  mode: {mode}\n  catalog: {json.dumps(catalog)}\n"
    return out + (f"  merge: {merge}\n" if merge else "")


def write_job(folder: Path, name: str, source: str, target: str, engine: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\n{source}{target}engine: {{batch_size: 500, retry: {{max_attempts: 1}}{engine}}}\n")
    return path


def parquet_table(path: Path) -> pa.Table:
    """The dataset as its manifest lists it, sorted by id; asserts no other file is in the folder (nothing staged)."""
    fs = pafs.LocalFileSystem()
    manifest = read_manifest(fs, str(path))
    assert manifest is not None, f"nothing committed at {path}"
    every = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    data = {name for name in every if name.endswith(".parquet")}
    assert data == set(manifest["files"]), f"files beside the manifest's: {sorted(data - set(manifest['files']))}"
    return pa.concat_tables([pq.read_table(path / name) for name in manifest["files"]]).sort_by("id")


def iceberg_table(warehouse: Path, table: str = "raw.items") -> pa.Table:
    """The table's rows sorted by id; asserts every data file under the warehouse is referenced by it."""
    catalog = load_catalog(
        "dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )
    loaded = catalog.load_table(table)
    referenced = {Path(t.file.file_path.removeprefix("file://")) for t in loaded.scan().plan_files()}
    on_disk = {p for p in warehouse.rglob("*.parquet") if "/data/" in p.as_posix()}
    assert on_disk == referenced, f"unreferenced data files: {sorted(map(str, on_disk - referenced))}"
    return loaded.scan().to_arrow().sort_by("id")


def without_metadata(table: pa.Table) -> pa.Table:
    return table.replace_schema_metadata(None)
