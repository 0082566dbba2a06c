"""Describe a source through the extension's own connection, with dativo's shared type mapping.

:func:`dativo.postgres_sdk.describe_source` asks the server a few questions through a
psycopg-style connection (``cursor()``, ``execute(sql, params)``, ``fetchone``/``fetchall``,
``description`` and ``pgresult.fmod``). :class:`DescribeConnection` answers them with the
extension's ``Connection.query`` (the server's row description plus the rows), so the mapping
is the one every reader uses (same SQL, same schema) and a ``postgres-rs`` run needs no psycopg
and no second connection. Parameters are rendered as SQL literals: strings as ``E'...'``
literals, integers and lists of integers as numbers and array literals; nothing else is accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DescribeConnection"]


@dataclass(frozen=True)
class _Column:
    name: str
    type_code: int


class _Result:
    def __init__(self, typmods: list[int]) -> None:
        self._typmods = typmods

    def fmod(self, index: int) -> int:
        return self._typmods[index]


def literal(value: Any) -> str:
    """``value`` as a SQL literal: an ``E'...'`` string, a number, or an int array; TypeError otherwise."""
    if isinstance(value, bool) or value is None:
        raise TypeError(f"unsupported query parameter {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if "\0" in value:
            raise ValueError("a query parameter contains a NUL character")
        return "E'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, Sequence) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return "'{" + ",".join(str(v) for v in value) + "}'"
    raise TypeError(f"unsupported query parameter {value!r}")


def render(sql: str, params: Sequence[Any] | None) -> str:
    """``sql`` with its ``%s`` placeholders replaced by ``params`` as literals (``%%`` is a percent sign)."""
    if params is None:
        return sql
    values = [literal(v) for v in params]
    out: list[str] = []
    used = pos = 0
    while (hole := sql.find("%", pos)) >= 0:
        out.append(sql[pos:hole])
        mark = sql[hole + 1 : hole + 2]
        if mark == "%":
            out.append("%")
        elif mark == "s" and used < len(values):
            out.append(values[used])
            used += 1
        else:
            raise ValueError(f"the query's placeholders do not match its {len(values)} parameters")
        pos = hole + 2
    if used != len(values):
        raise ValueError(f"the query's placeholders do not match its {len(values)} parameters")
    return "".join(out) + sql[pos:]


class _Cursor:
    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._rows: list[tuple[Any, ...]] = []
        self.description: list[_Column] | None = None
        self.pgresult: _Result | None = None

    def __enter__(self) -> _Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self._rows = []

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> _Cursor:
        columns, rows = self._conn.query(render(sql, params))
        self.description = [_Column(name, int(oid)) for name, oid, _ in columns]
        self.pgresult = _Result([int(typmod) for _, _, typmod in columns])
        self._rows = list(rows)
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows.pop(0) if self._rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows, self._rows = self._rows, []
        return rows


class DescribeConnection:
    """The part of a psycopg connection ``describe_source`` uses, over the extension's ``Connection``.

    Errors are the extension's (``ServerError``, ``DecodeError``), for the reader to translate.
    """

    def __init__(self, native: Any) -> None:
        self._native = native

    def cursor(self) -> _Cursor:
        """A cursor whose ``execute`` runs one query on the native connection."""
        return _Cursor(self._native)
