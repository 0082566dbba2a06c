"""Merge resolution (targets/_merge.py): which keys leave the target, which source rows stay."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dativo.errors import ConfigError, SchemaError
from dativo.targets._merge import MergeKeys, MergeSettings, anti_join


def batch(ids: list[int], deleted: list[bool] | None = None) -> pa.RecordBatch:
    columns = {"id": pa.array(ids, pa.int64()), "v": pa.array([f"v{i}" for i in range(len(ids))], pa.string())}
    if deleted is not None:
        columns["gone"] = pa.array(deleted, pa.bool_())
    return pa.record_batch(columns)


def test_settings_need_keys_and_check_the_schema():
    with pytest.raises(ConfigError, match="needs the primary key"):
        MergeSettings.from_config({})
    settings = MergeSettings.from_config({"keys": ["id"], "delete_column": "gone"})
    assert settings.check(batch([1], [False]).schema).names == ["id", "v"]
    with pytest.raises(ConfigError, match="column 'nope' is not in the source"):
        MergeSettings.from_config({"keys": ["nope"]}).check(batch([1]).schema)
    with pytest.raises(ConfigError, match="'v' is string, not boolean"):
        MergeSettings.from_config({"keys": ["id"], "delete_column": "v"}).check(batch([1]).schema)


def test_duplicates_fail_by_default_naming_the_key():
    keys = MergeKeys(MergeSettings.from_config({"keys": ["id"]}))
    keys.add(batch([1, 2, 2]))
    with pytest.raises(SchemaError, match=r"merge key \(id=2\) appears 2 times"):
        keys.resolve()


def test_null_keys_are_refused():
    keys = MergeKeys(MergeSettings.from_config({"keys": ["id"]}))
    with pytest.raises(SchemaError, match="'id' is NULL"):
        keys.add(pa.record_batch({"id": pa.array([None], pa.int64()), "v": pa.array(["x"])}))


@given(st.lists(st.tuples(st.integers(0, 6), st.booleans()), max_size=40))
def test_last_wins_keeps_exactly_the_last_row_of_each_key(rows):
    settings = MergeSettings.from_config({"keys": ["id"], "delete_column": "gone", "duplicates": "last_wins"})
    keys = MergeKeys(settings)
    ids = [key for key, _ in rows]
    stored = keys.add(batch(ids, [gone for _, gone in rows]))
    drop, mask = keys.resolve()
    kept = stored.filter(mask) if mask is not None else stored
    last = {key: (index, gone) for index, (key, gone) in enumerate(rows)}
    assert sorted(drop.column("id").to_pylist()) == sorted(last)
    expected = sorted(f"v{index}" for index, gone in last.values() if not gone)
    assert sorted(kept.column("v").to_pylist()) == expected


def test_anti_join_drops_rows_by_single_and_compound_keys():
    rows = pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    assert anti_join(rows, pa.table({"a": pa.array([2], pa.int32())}), ["a"]).column("a").to_pylist() == [1, 3]
    dropped = anti_join(rows, pa.table({"a": [1, 3], "b": ["x", "nope"]}), ["a", "b"])
    assert sorted(dropped.column("a").to_pylist()) == [2, 3]
