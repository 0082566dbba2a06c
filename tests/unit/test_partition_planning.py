"""How many ctid partitions an unset ``source.parallelism`` makes (``ctid_partitions`` / ``read_cores``)."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from dativo import SourceError
from dativo.connectors.postgres.connection import PgConnectionInfo
from dativo.connectors.postgres.partitions import MIN_PARTITION_BYTES, SnapshotPartitioner, ctid_partitions, read_cores
from dativo.connectors.postgres.types import SourcePlan, SourceSpec

BLOCK = 8192
SQL = 'SELECT "id" FROM "public"."t"'


@pytest.fixture
def four_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "::1", "/var/run/postgresql", "", None, "LOCALHOST"])
def test_a_server_on_this_machine_gets_half_the_cores(four_cores: None, host: str | None) -> None:
    assert read_cores(host) == 2


@pytest.mark.parametrize("host", ["db.example.com", "10.0.0.5", "localhost,db.example.com"])
def test_a_remote_server_gets_every_core(four_cores: None, host: str) -> None:
    assert read_cores(host) == 4


def test_one_core_is_never_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert read_cores("127.0.0.1") == 1


def test_unset_parallelism_splits_by_size_up_to_the_cores_of_the_host(four_cores: None) -> None:
    big = 10 * MIN_PARTITION_BYTES
    assert len(ctid_partitions(SQL, big, BLOCK, None, host="db.example.com")) == 4
    assert len(ctid_partitions(SQL, big, BLOCK, None, host="127.0.0.1")) == 2
    assert len(ctid_partitions(SQL, 2 * MIN_PARTITION_BYTES, BLOCK, None, host="db.example.com")) == 2
    assert ctid_partitions(SQL, MIN_PARTITION_BYTES, BLOCK, None, host="db.example.com") == []


def test_a_local_server_on_two_cores_is_read_on_one_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert ctid_partitions(SQL, 10 * MIN_PARTITION_BYTES, BLOCK, None, host="127.0.0.1") == []
    assert len(ctid_partitions(SQL, 10 * MIN_PARTITION_BYTES, BLOCK, None, host="db.example.com")) == 2


def test_explicit_parallelism_ignores_the_host(four_cores: None) -> None:
    parts = ctid_partitions(SQL, 10 * MIN_PARTITION_BYTES, BLOCK, 3, host="127.0.0.1")
    assert [p.index for p in parts] == [0, 1, 2]
    assert parts[-1].spec["sql"].endswith("WHERE ctid >= '(54614,0)'::tid")


def _partitioner(host: str) -> SnapshotPartitioner:
    # Port 1 on loopback: nothing listens, so a connection attempt fails at once with SourceError.
    info = PgConnectionInfo(
        conninfo=f"host={host} port=1 dbname=x user=x connect_timeout=2", host=host, port="1", user="x", dbname="x"
    )
    plan = SourcePlan(columns=(), schema=pa.schema([]), sql=SQL, array_columns=(), source="table public.t")
    return SnapshotPartitioner(info, SourceSpec(table="public.t", query=None), plan)


def test_one_usable_core_plans_no_snapshot_and_opens_no_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert _partitioner("127.0.0.1").plan(None) == []


def test_parallelism_1_plans_no_snapshot_and_opens_no_connection(four_cores: None) -> None:
    # Four cores, so 2 usable with a local server: only the explicit 1 keeps it from connecting (see the next test).
    assert _partitioner("127.0.0.1").plan(1) == []


def test_more_usable_cores_do_connect_to_plan(four_cores: None) -> None:
    with pytest.raises(SourceError):  # it tried the (unreachable) server: the shortcut above is not taken
        _partitioner("127.0.0.1").plan(None)
    with pytest.raises(SourceError):
        _partitioner("127.0.0.1").plan(2)
