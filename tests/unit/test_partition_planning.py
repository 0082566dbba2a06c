"""How many ctid partitions an unset ``source.parallelism`` makes (``ctid_partitions`` / ``read_cores``)."""

from __future__ import annotations

import os

import pytest

from dativo.connectors.postgres.partitions import MIN_PARTITION_BYTES, ctid_partitions, read_cores

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
