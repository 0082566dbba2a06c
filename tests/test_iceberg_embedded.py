"""The embedded catalog (stdlib sqlite3) and PyIceberg's SqlCatalog share one file: each sees what the other did."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NamespaceNotEmptyError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
)

from dativo.targets.iceberg.catalog import open_catalog
from dativo.targets.iceberg.embedded import EmbeddedCatalog, sqlite_path

ROWS = pa.table({"id": pa.array([1, 2], pa.int64()), "name": pa.array(["a", "b"])})


def properties(tmp_path: Path) -> dict[str, str]:
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir(exist_ok=True)
    return {"uri": f"sqlite:///{warehouse / 'catalog.db'}", "warehouse": warehouse.as_uri()}


def both(tmp_path: Path) -> tuple[EmbeddedCatalog, SqlCatalog]:
    return EmbeddedCatalog("dativo", **properties(tmp_path)), SqlCatalog("dativo", **properties(tmp_path))


def ids(catalog: Catalog, name: str) -> list[int]:
    return sorted(catalog.load_table(name).scan().to_arrow().column("id").to_pylist())


def test_tables_written_by_either_catalog_are_read_and_extended_by_the_other(tmp_path):
    ours, theirs = both(tmp_path)
    ours.create_namespace("raw", {"owner": "dativo"})
    ours.create_table("raw.items", schema=ROWS.schema).append(ROWS)
    assert theirs.list_namespaces() == [("raw",)] and theirs.list_tables("raw") == [("raw", "items")]
    assert theirs.load_namespace_properties("raw") == {"owner": "dativo"}
    assert ids(theirs, "raw.items") == [1, 2]

    theirs.load_table("raw.items").append(ROWS.set_column(0, "id", pa.array([3, 4], pa.int64())))
    assert ids(ours, "raw.items") == [1, 2, 3, 4]  # the pointer moved: the new metadata is read
    theirs.create_namespace("staging")
    theirs.create_table("staging.more", schema=ROWS.schema)
    assert sorted(ours.list_namespaces()) == [("raw",), ("staging",)]
    assert ours.load_table("staging.more").scan().to_arrow().num_rows == 0

    ours.update_namespace_properties("raw", removals={"owner"}, updates={"team": "data"})
    assert theirs.load_namespace_properties("raw") == {"team": "data"}
    ours.rename_table("staging.more", "raw.renamed")
    assert sorted(theirs.list_tables("raw")) == [("raw", "items"), ("raw", "renamed")]
    ours.drop_table("raw.renamed")
    with pytest.raises(NoSuchTableError):
        theirs.load_table("raw.renamed")
    with pytest.raises(NamespaceNotEmptyError):
        ours.drop_namespace("raw")
    ours.drop_namespace("staging")
    assert theirs.list_namespaces() == [("raw",)]


def test_unchanged_metadata_is_reused_and_a_stale_append_is_not_lost(tmp_path):
    ours, theirs = both(tmp_path)
    ours.create_namespace("raw")
    ours.create_table("raw.items", schema=ROWS.schema)
    first, second = ours.load_table("raw.items"), ours.load_table("raw.items")
    assert first.metadata is second.metadata  # the pointer did not move: the file is not parsed again
    theirs.load_table("raw.items").append(ROWS)
    stale = EmbeddedCatalog("dativo", **properties(tmp_path)).load_table("raw.items")
    assert ours.load_table("raw.items").metadata is not first.metadata
    ours.load_table("raw.items").append(ROWS)
    stale.append(ROWS)  # its base is no longer current: the commit conflicts, PyIceberg refreshes and retries
    assert ids(theirs, "raw.items") == [1, 1, 1, 2, 2, 2]
    assert len(theirs.load_table("raw.items").snapshots()) == 3


def test_concurrent_appends_from_many_catalogs_lose_no_commit(tmp_path):
    """Every commit is one conditional UPDATE: racing writers conflict and retry, none overwrites another."""
    EmbeddedCatalog("dativo", **properties(tmp_path)).create_namespace("raw")
    EmbeddedCatalog("dativo", **properties(tmp_path)).create_table("raw.items", schema=ROWS.schema)
    writers, appends = 4, 3
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def append_all() -> None:
        catalog = EmbeddedCatalog("dativo", **properties(tmp_path))
        barrier.wait()
        try:
            for _ in range(appends):
                while True:
                    try:
                        catalog.load_table("raw.items").append(ROWS)
                        break
                    except CommitFailedException:  # PyIceberg's own retries ran out under the race
                        continue
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=append_all) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    table = SqlCatalog("dativo", **properties(tmp_path)).load_table("raw.items")
    assert len(table.snapshots()) == writers * appends
    assert table.scan().to_arrow().num_rows == writers * appends * ROWS.num_rows


def test_missing_and_existing_names_raise_what_sql_catalog_raises(tmp_path):
    ours, _ = both(tmp_path)
    with pytest.raises(NoSuchNamespaceError):
        ours.create_table("nowhere.items", schema=ROWS.schema)
    with pytest.raises(NoSuchNamespaceError):
        ours.create_table_transaction("nowhere.items", schema=ROWS.schema)  # the writer creates it then
    ours.create_namespace("raw")
    with pytest.raises(NamespaceAlreadyExistsError):
        ours.create_namespace("raw")
    ours.create_table("raw.items", schema=ROWS.schema)
    with pytest.raises(TableAlreadyExistsError):
        ours.create_table("raw.items", schema=ROWS.schema)
    with pytest.raises(NoSuchTableError):
        ours.load_table("raw.other")
    with pytest.raises(NoSuchTableError):
        ours.drop_table("raw.other")


def test_a_catalog_file_without_the_iceberg_type_column_is_used_as_v0(tmp_path):
    path = tmp_path / "warehouse" / "catalog.db"
    path.parent.mkdir()
    with sqlite3.connect(path) as db:  # what PyIceberg before views created
        db.execute(
            "CREATE TABLE iceberg_tables (catalog_name VARCHAR(255) NOT NULL, table_namespace VARCHAR(255) NOT "
            "NULL, table_name VARCHAR(255) NOT NULL, metadata_location VARCHAR(1000), previous_metadata_location "
            "VARCHAR(1000), PRIMARY KEY (catalog_name, table_namespace, table_name))"
        )
    ours = EmbeddedCatalog("dativo", **properties(tmp_path))
    ours.create_namespace("raw")
    ours.create_table("raw.items", schema=ROWS.schema).append(ROWS)
    assert ids(SqlCatalog("dativo", **properties(tmp_path)), "raw.items") == [1, 2]


def test_which_sql_catalogs_the_embedded_class_opens(tmp_path):
    assert sqlite_path({"type": "sql", "uri": "sqlite:////data/catalog.db"}) == "/data/catalog.db"
    assert sqlite_path({"uri": "sqlite:///relative.db"}) == "relative.db"
    for other in (
        {"uri": "sqlite:///catalog.db?mode=ro"},
        {"uri": "sqlite:///:memory:"},
        {"uri": "sqlite:///catalog.db", "echo": "true"},
        {"uri": "postgresql://host/db"},
        {"type": "rest", "uri": "sqlite:///catalog.db"},
    ):
        assert sqlite_path(other) is None, other
    assert type(open_catalog({}, tmp_path)) is EmbeddedCatalog
    explicit = {"type": "sql", "uri": f"sqlite:///{tmp_path / 'other.db'}?timeout=10", "warehouse": "wh"}
    assert type(open_catalog(explicit, tmp_path)) is SqlCatalog
