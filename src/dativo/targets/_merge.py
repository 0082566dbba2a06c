"""Merge (upsert) bookkeeping shared by writers: the keys a run brings, duplicates, deletes.

Every source row's key is remembered with its position in the run (keys only,
so memory grows with the number of rows times the key width, not the data).
At the end, :meth:`MergeKeys.resolve` finds duplicates — failing with the
offending key, or keeping the last occurrence — and returns the set of keys the
target must drop before the run's rows are added.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from dativo.errors import ConfigError, SchemaError

__all__ = ["MergeKeys", "MergeSettings", "anti_join"]

_POS = "__dativo_pos"
_DEL = "__dativo_del"


@dataclass(frozen=True)
class MergeSettings:
    """``target.merge`` as the writer sees it."""

    keys: tuple[str, ...]
    delete_column: str | None
    last_wins: bool

    @classmethod
    def from_config(cls, merge: Mapping[str, Any] | None) -> MergeSettings:
        """Read ``{keys, delete_column, duplicates}``; raises ConfigError when keys are missing."""
        if not merge or not merge.get("keys"):
            raise ConfigError("mode 'merge' needs the primary key: merge: {keys: [id]}")
        return cls(
            keys=tuple(str(key) for key in merge["keys"]),
            delete_column=str(merge["delete_column"]) if merge.get("delete_column") else None,
            last_wins=merge.get("duplicates", "fail") == "last_wins",
        )

    def check(self, schema: pa.Schema) -> pa.Schema:
        """Validate against the source schema; return the schema of the rows to store (without the delete column).

        Raises ConfigError naming a key or delete column that is missing or of the wrong type.
        """
        for key in self.keys:
            if schema.get_field_index(key) < 0:
                raise ConfigError(f"target.merge.keys: column '{key}' is not in the source ({', '.join(schema.names)})")
            kind = schema.field(key).type
            if pa.types.is_floating(kind) or pa.types.is_nested(kind):
                raise ConfigError(f"target.merge.keys: column '{key}' is {kind}, which cannot be a key")
        if self.delete_column is None:
            return schema
        index = schema.get_field_index(self.delete_column)
        if index < 0:
            raise ConfigError(f"target.merge.delete_column: column '{self.delete_column}' is not in the source")
        if not pa.types.is_boolean(schema.field(index).type):
            raise ConfigError(
                f"target.merge.delete_column: column '{self.delete_column}' is {schema.field(index).type}, not boolean"
            )
        return schema.remove(index)


class MergeKeys:
    """The keys of every row of one run, in order, with delete markers."""

    def __init__(self, settings: MergeSettings) -> None:
        self._settings = settings
        self._parts: list[pa.Table] = []
        self._rows = 0

    def add(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Record ``batch``'s keys; return the rows to store (delete-marked rows and the marker column removed).

        Raises SchemaError for a NULL key, naming the column.
        """
        settings = self._settings
        columns = {key: batch.column(key) for key in settings.keys}
        for key, column in columns.items():
            if column.null_count:
                raise SchemaError(f"merge key column '{key}' is NULL in a source row; keys must not be NULL")
        positions = pa.array(range(self._rows, self._rows + batch.num_rows), pa.int64())
        self._rows += batch.num_rows
        if settings.delete_column is None:
            deleted = pa.array([False] * batch.num_rows, pa.bool_())
            kept = batch
        else:
            deleted = pc.fill_null(batch.column(settings.delete_column), False)
            index = batch.schema.get_field_index(settings.delete_column)
            kept = batch.filter(pc.invert(deleted)).drop_columns([batch.schema.field(index).name])
        self._parts.append(pa.table({**columns, _POS: positions, _DEL: deleted}))
        return kept

    def recorded(self) -> pa.Table:
        """Every key recorded so far with its position and delete marker (what :meth:`adopt` takes)."""
        keys = {key: pa.array([], pa.int64()) for key in self._settings.keys}
        empty = pa.table({**keys, _POS: pa.array([], pa.int64()), _DEL: pa.array([], pa.bool_())})
        return pa.concat_tables(self._parts) if self._parts else empty

    def adopt(self, recorded: pa.Table) -> None:
        """Append the keys another :class:`MergeKeys` recorded (a staged partition's), after the ones here."""
        if recorded.num_rows == 0:
            return  # an empty partition (its key columns may be typed as placeholders)
        positions = pc.add(recorded[_POS], pa.scalar(self._rows, pa.int64()))
        self._parts.append(recorded.set_column(recorded.schema.get_field_index(_POS), _POS, positions))
        self._rows += recorded.num_rows

    def resolve(self) -> tuple[pa.Table, pa.Array | None]:
        """Return ``(keys to drop from the target, keep-mask over the stored rows or None)``.

        Raises SchemaError naming the first duplicated key unless duplicates are
        resolved by ``last_wins``; then the mask keeps only each key's last stored
        row (a key whose last occurrence is a delete keeps none).
        """
        keys = list(self._settings.keys)
        if not self._parts:
            return pa.table({key: pa.array([], pa.int64()) for key in keys}), None
        table = pa.concat_tables(self._parts)
        counts = table.group_by(keys).aggregate([(_POS, "max"), (_POS, "count")])
        duplicated = counts.filter(pc.greater(counts[f"{_POS}_count"], 1))
        drop = counts.select(keys)
        if duplicated.num_rows == 0:
            return drop, None
        if not self._settings.last_wins:
            first = duplicated.slice(0, 1).to_pylist()[0]
            shown = ", ".join(f"{key}={first[key]!r}" for key in keys)
            raise SchemaError(
                f"merge key ({shown}) appears {first[f'{_POS}_count']} times in this run's source rows "
                f"({duplicated.num_rows} duplicated key(s) in all); make the key unique or set "
                "target.merge.duplicates: last_wins to keep the last row"
            )
        last = pc.is_in(table[_POS], value_set=counts[f"{_POS}_max"].combine_chunks())
        stored = pc.invert(table[_DEL])
        return drop, pc.filter(last, stored).combine_chunks()


def anti_join(rows: pa.Table, drop: pa.Table, keys: Sequence[str]) -> pa.Table:
    """The rows of ``rows`` whose key is not in ``drop`` (same key column names)."""
    if drop.num_rows == 0 or rows.num_rows == 0:
        return rows
    if len(keys) == 1:
        key = keys[0]
        values = drop[key].combine_chunks().cast(rows.schema.field(key).type)
        return rows.filter(pc.invert(pc.is_in(rows[key], value_set=values)))
    casted = pa.table({key: drop[key].cast(rows.schema.field(key).type) for key in keys})
    return rows.join(casted, keys=list(keys), join_type="left anti")
