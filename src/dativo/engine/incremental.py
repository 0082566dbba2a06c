"""Incremental reads: the cursor column, its bounds, and the high-water mark the engine commits."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

from dativo.config.models import IncrementalSpec
from dativo.errors import ConfigError

__all__ = ["CursorTracker", "IncrementalPlan", "plan_incremental"]

CursorKind = Literal["int", "date", "timestamp", "timestamptz"]
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hour|d|day|w|week)s?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}
_UNIT_SECONDS |= {"w": 604800, "week": 604800}


@dataclass(frozen=True)
class IncrementalPlan:
    """The cursor of one run: which column, its kind, and the exclusive lower bound to read from."""

    column: str
    kind: CursorKind
    after: Any | None
    committed: Any | None

    def state(self, high_water: Any | None) -> dict[str, Any]:
        """The cursor part of the state to commit: the new mark, or the old one when no row was read."""
        mark = high_water if high_water is not None else self.committed
        return {"cursor_column": self.column, "cursor_type": self.kind, "cursor": _encode(mark)}


def plan_incremental(spec: IncrementalSpec, schema: pa.Schema, state: dict[str, Any] | None) -> IncrementalPlan:
    """Decide the lower bound from the committed state (or ``initial``) minus ``lookback``.

    Raises ConfigError naming the column when it is missing or not an integer,
    date or timestamp column, when ``initial``/``lookback`` do not fit its type,
    or when the committed state used another cursor column.
    """
    index = schema.get_field_index(spec.cursor)
    if index < 0:
        raise ConfigError(
            f"source.incremental.cursor: column '{spec.cursor}' is not in the source "
            f"(columns: {', '.join(schema.names)})"
        )
    kind = _kind(spec.cursor, schema.field(index).type)
    committed = None
    if state and state.get("cursor") is not None:
        if state.get("cursor_column") != spec.cursor:
            raise ConfigError(
                f"source.incremental.cursor is '{spec.cursor}' but the target's committed state was made with "
                f"cursor '{state.get('cursor_column')}'; run 'dativo state reset' to start over with the new cursor"
            )
        committed = _decode(state["cursor"], kind, "the committed state")
    start = (
        committed
        if committed is not None
        else (_decode(spec.initial, kind, "source.incremental.initial") if spec.initial is not None else None)
    )
    if start is not None and spec.lookback is not None:
        start = start - _lookback(spec.lookback, kind)
    return IncrementalPlan(column=spec.cursor, kind=kind, after=start, committed=committed)


class CursorTracker:
    """Follows the greatest cursor value across the batches of a run."""

    def __init__(self, plan: IncrementalPlan, schema: pa.Schema) -> None:
        # pyarrow.compute (~30 ms to import) loads here, not with the pipeline: a run's read starts before it.
        import pyarrow.compute as pc

        self._max = pc.max
        self._index = schema.get_field_index(plan.column)
        self._kind = plan.kind
        self.high_water: Any | None = None

    def update(self, batch: pa.RecordBatch) -> None:
        """Take the batch's greatest cursor value into account (NULLs are ignored)."""
        value = self._max(batch.column(self._index)).as_py()
        if value is not None and (self.high_water is None or value > self.high_water):
            self.high_water = value


def _kind(column: str, arrow: pa.DataType) -> CursorKind:
    if pa.types.is_integer(arrow):
        return "int"
    if pa.types.is_date(arrow):
        return "date"
    if pa.types.is_timestamp(arrow):
        return "timestamptz" if arrow.tz else "timestamp"
    raise ConfigError(
        f"source.incremental.cursor: column '{column}' is {arrow}; a cursor must be an integer, date or "
        "timestamp column"
    )


def _decode(value: Any, kind: CursorKind, where: str) -> Any:
    try:
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ValueError(value)
            return int(value)
        text = str(value)
        if kind == "date":
            return (
                dt.date.fromisoformat(text[:10]) if len(text) > 10 and text[10] in "T " else dt.date.fromisoformat(text)
            )
        stamp = dt.datetime.fromisoformat(text)
        if kind == "timestamptz":
            return stamp.replace(tzinfo=dt.UTC) if stamp.tzinfo is None else stamp.astimezone(dt.UTC)
        return stamp.replace(tzinfo=None) if stamp.tzinfo is None else stamp.astimezone(dt.UTC).replace(tzinfo=None)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a valid {kind} cursor value") from None


def _encode(value: Any) -> Any:
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return value


def _lookback(value: str | int, kind: CursorKind) -> Any:
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise ConfigError(f"source.incremental.lookback: {value!r} must be a non-negative number for an integer cursor")
    match = _DURATION.match(str(value))
    if match is None:
        raise ConfigError(
            f"source.incremental.lookback: {value!r} is not a duration (use e.g. '90s', '15m', '2h', '1d')"
        )
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    if kind == "date":
        return dt.timedelta(days=max(1, round(seconds / 86400)))
    return dt.timedelta(seconds=seconds)
