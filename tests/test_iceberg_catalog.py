"""Namespace creation under races (issue 10 item 8): concurrent first runs never fail on an existing namespace."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.exceptions import NoSuchNamespaceError

from dativo.errors import TargetError
from dativo.targets.iceberg import IcebergWriter
from dativo.targets.iceberg.catalog import ensure_namespace, open_catalog

from support.iceberg_fixtures import embedded_catalog

SCHEMA = pa.schema([("id", pa.int64())])


def writer(job_dir: Path, table: str = "fresh.items", run_id: str = "r1") -> IcebergWriter:
    instance = IcebergWriter()
    instance.initialize({"table": table, "job": {"name": "items", "dir": str(job_dir), "run_id": run_id}})
    return instance


def racing_writer(tmp_path: Path) -> IcebergWriter:
    """A writer whose first staging fails on a missing namespace that another run creates right then."""
    racing = writer(tmp_path)
    stage = racing._catalog.create_table_transaction
    calls: list[Any] = []

    def create_meanwhile(*args: Any, **kwargs: Any) -> Any:
        if not calls:
            calls.append(1)
            embedded_catalog(tmp_path).create_namespace("fresh")  # the other run wins the race
            raise NoSuchNamespaceError("fresh")
        return stage(*args, **kwargs)

    racing._catalog.create_table_transaction = create_meanwhile  # type: ignore[method-assign]
    return racing


def test_namespace_created_by_another_run_between_check_and_create(tmp_path):
    """The race of two first runs, made deterministic: the namespace appears right after our staging failed."""
    racing = racing_writer(tmp_path)
    racing.prepare(SCHEMA)
    racing.write_batch(pa.record_batch([pa.array([1, 2, 3])], schema=SCHEMA))
    result = racing.finalize()
    assert result["created_table"] and result["rows"] == 3
    assert embedded_catalog(tmp_path).load_table("fresh.items").scan().to_arrow().num_rows == 3


def test_a_failed_run_keeps_a_namespace_another_run_created(tmp_path):
    racing = racing_writer(tmp_path)
    racing.prepare(SCHEMA)
    racing.write_batch(pa.record_batch([pa.array([1])], schema=SCHEMA))
    racing.abort()
    assert ("fresh",) in embedded_catalog(tmp_path).list_namespaces()


def test_concurrent_ensure_namespace_all_succeed_and_one_creates(tmp_path):
    catalogs = [open_catalog({}, tmp_path) for _ in range(6)]
    barrier = threading.Barrier(len(catalogs))
    results: list[bool] = []
    errors: list[BaseException] = []

    def create(catalog: Any) -> None:
        barrier.wait()
        try:
            results.append(ensure_namespace(catalog, ("raced",)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(catalog,)) for catalog in catalogs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(results) == [False] * 5 + [True]
    assert ("raced",) in embedded_catalog(tmp_path).list_namespaces()


def test_a_run_whose_state_was_overtaken_before_prepare_commits_nothing(tmp_path):
    """Run A loads the job's state; run B of the same job commits (creating the table); A must not append.

    A prepares on the table as its state found it (one load per run), so the commit is where it finds out.
    """
    late = writer(tmp_path, "raw.items", run_id="r2")
    assert late.load_state() is None
    early = writer(tmp_path, "raw.items")
    assert early.load_state() is None
    early.stage_state({"cursor": 3})
    early.prepare(SCHEMA)
    early.write_batch(pa.record_batch([pa.array([1, 2, 3])], schema=SCHEMA))
    early.finalize()
    late.prepare(SCHEMA)
    late.write_batch(pa.record_batch([pa.array([4, 5])], schema=SCHEMA))
    with pytest.raises(TargetError, match=r"another run of job 'items' committed .* this run committed nothing"):
        late.finalize()
    late.abort()
    assert len(list((tmp_path / "warehouse").rglob("*.parquet"))) == 1  # the late run's file is deleted
    assert embedded_catalog(tmp_path).load_table("raw.items").scan().to_arrow().num_rows == 3
