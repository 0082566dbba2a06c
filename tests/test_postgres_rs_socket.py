"""postgres-rs reads its TCP socket with a 64 KiB receive low-water mark while a COPY streams.

The kernel then wakes the reader only once 64 KiB has arrived; a wait over 0.5 ms drops the mark
so that rows produced slowly, the COPY's last bytes and an error sent mid-stream still arrive
(plugins/postgres-rs/src/lowat.rs). These run against the suite's real PostgreSQL over TCP.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from dativo_postgres_rs import RustPostgresReader

from dativo.errors import SourceError

from support.pgserver import PostgresDatabase


def _read(connection: dict[str, object], query: str, batch_size: int) -> list[tuple[int, int]]:
    """(first column, length of the second) of every row the reader returns."""
    reader = RustPostgresReader()
    reader.initialize({"connector": "postgres", "connection": connection, "query": query})
    try:
        rows: list[tuple[int, int]] = []
        for batch in reader.read_batch(batch_size):
            lengths = [len(v) for v in batch.column(1).to_pylist()]
            rows.extend(zip(batch.column(0).to_pylist(), lengths, strict=True))
        return rows
    finally:
        reader.close()


def _within(seconds: float, work: Any) -> Any:
    """Run ``work()`` on a thread; fail (instead of hanging the suite) if it has not ended in ``seconds``."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # handed to the test below
            outcome.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"the read had not ended after {seconds} s: it waits for data that never comes"
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def test_rows_produced_slowly_all_arrive_without_waiting_for_64_kib(pg_db: PostgresDatabase) -> None:
    # 40 rows of ~1 KB, one every 20 ms: 40 KB in all, below the mark even at the end.
    query = "SELECT g, pg_sleep(0.02)::text || repeat('x', 1000) AS s FROM generate_series(1, 40) g"
    started = time.monotonic()
    rows = _within(30, lambda: _read(pg_db.connection, query, batch_size=1))
    elapsed = time.monotonic() - started
    assert rows == [(g, 1000) for g in range(1, 41)]
    assert elapsed < 10, f"40 slow rows took {elapsed:.1f} s: the reader waited for data that never came"


def test_a_large_copy_then_more_statements_on_the_same_connection(pg_db: PostgresDatabase) -> None:
    # ~8 MB through the raised mark, the COPY's tail below it, then a second read on a new reader
    # and the describe/COPY of each on its connection.
    query = "SELECT g, repeat('y', 200 + g % 50) AS s FROM generate_series(1, 40000) g"
    for _ in range(2):
        rows = _read(pg_db.connection, query, batch_size=4096)
        assert len(rows) == 40000
        assert sum(g for g, _ in rows) == 40000 * 40001 // 2
        assert all(n == 200 + g % 50 for g, n in rows)


def test_an_error_after_slow_rows_reaches_the_caller(pg_db: PostgresDatabase) -> None:
    query = "SELECT g, pg_sleep(0.01)::text || repeat('x', 1000 + 1 / (g - 30)) AS s FROM generate_series(1, 40) g"
    started = time.monotonic()
    with pytest.raises(SourceError, match="division by zero"):
        _within(30, lambda: _read(pg_db.connection, query, batch_size=1))
    assert time.monotonic() - started < 10
