"""Incremental planning (engine/incremental.py): the lower bound from state, initial and lookback."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from dativo.config.models import IncrementalSpec
from dativo.engine.incremental import CursorTracker, plan_incremental
from dativo.errors import ConfigError

SCHEMA = pa.schema([("id", pa.int64()), ("at", pa.timestamp("us", tz="UTC")), ("name", pa.string())])


def test_first_run_starts_after_initial_then_after_the_committed_mark():
    first = plan_incremental(IncrementalSpec(cursor="id", initial=10), SCHEMA, None)
    assert first.after == 10 and first.committed is None
    state = first.state(42)
    later = plan_incremental(IncrementalSpec(cursor="id", initial=10), SCHEMA, state)
    assert later.after == 42
    assert later.state(None)["cursor"] == 42  # no row read: the mark stays


def test_lookback_moves_the_bound_back_for_temporal_cursors():
    state = {"cursor_column": "at", "cursor_type": "timestamp", "cursor": "2026-01-02T00:00:00+00:00"}
    plan = plan_incremental(IncrementalSpec(cursor="at", lookback="2h"), SCHEMA, state)
    assert plan.after == dt.datetime(2026, 1, 1, 22, tzinfo=dt.UTC)


def test_bad_cursors_are_named():
    with pytest.raises(ConfigError, match="column 'nope' is not in the source"):
        plan_incremental(IncrementalSpec(cursor="nope"), SCHEMA, None)
    with pytest.raises(ConfigError, match="'name'"):
        plan_incremental(IncrementalSpec(cursor="name"), SCHEMA, None)
    with pytest.raises(ConfigError, match="dativo state reset"):
        plan_incremental(IncrementalSpec(cursor="id"), SCHEMA, {"cursor_column": "at", "cursor": 1})


def test_tracker_keeps_the_greatest_value_seen():
    plan = plan_incremental(IncrementalSpec(cursor="id"), SCHEMA, None)
    tracker = CursorTracker(plan, SCHEMA)
    for ids in ([3, 9, None], [5]):
        n = len(ids)
        tracker.update(
            pa.record_batch(
                [pa.array(ids, pa.int64()), pa.array([None] * n, SCHEMA.field("at").type), pa.array(["x"] * n)],
                schema=SCHEMA,
            )
        )
    assert tracker.high_water == 9
