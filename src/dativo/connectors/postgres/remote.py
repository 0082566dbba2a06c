"""The postgres connector's source planner: the canonical plan, as JSON, for readers that ask for it.

A reader of a ``connector: postgres`` source that asks for the source plan
(``source_plan: true`` in its ``reader:`` block, or ``wants_source_plan = True``
on its class) receives it at plan time in its config as ``postgres_plan``
(see ``docs/process-protocol.md``), whatever runtime hosts it, so a
reader written in Go or Rust runs exactly the SQL the built-in readers run and
produces exactly the canonical schema of
:mod:`dativo.connectors.postgres.types`, instead of re-implementing the
catalog lookups.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from dativo.connectors.postgres.connection import build_connection, import_psycopg, translate_error
from dativo.connectors.postgres.pool import borrow_psycopg
from dativo.connectors.postgres.types import SourceSpec, describe_source

__all__ = ["plan_source", "source_plan_for_plugin"]


def source_plan_for_plugin(config: Mapping[str, Any]) -> dict[str, Any]:
    """Describe the job's PostgreSQL source and return the plan as JSON-ready data.

    Keys: ``sql`` (numeric columns selected as text; ``array_ndims`` helper
    columns last), ``conninfo`` (a libpq connection string, password included),
    ``schema`` (the Arrow IPC schema message, base64), and ``columns``: per
    column ``name``, ``pg_type``, ``kind``, ``is_array``, ``unconstrained_numeric``,
    ``precision``/``scale`` for numerics; ``array_columns`` lists the indexes of
    array columns in the order of their helper columns. Raises the same
    ConfigError / SourceError / TypeMappingError as the built-in readers.
    """
    spec = SourceSpec.from_config(config)
    info = build_connection(config.get("connection"))
    psycopg = import_psycopg()
    try:
        with borrow_psycopg(info) as pg:  # a connection of the run's pool when streams share one
            plan = describe_source(pg, spec, numeric_as_text=True)
    except psycopg.Error as exc:
        raise translate_error(exc, info, table=spec.table) from exc
    columns = []
    for column in plan.columns:
        value_type = column.value_type
        entry: dict[str, Any] = {
            "name": column.name,
            "pg_type": column.pg_type,
            "kind": column.kind,
            "is_array": column.is_array,
            "unconstrained_numeric": column.unconstrained_numeric,
        }
        if pa.types.is_decimal(value_type):
            entry["precision"] = value_type.precision
            entry["scale"] = value_type.scale
        columns.append(entry)
    return {
        "sql": plan.sql,
        "conninfo": info.conninfo,
        "schema": base64.b64encode(plan.schema.serialize().to_pybytes()).decode(),
        "columns": columns,
        "array_columns": list(plan.array_columns),
        "source": plan.source,
    }


def plan_source(config: Mapping[str, Any]) -> dict[str, Any]:
    """The postgres connector's planner (``Connector.planner``): ``{"postgres_plan": ...}``.

    Raises what :func:`source_plan_for_plugin` raises; the password in ``conninfo``
    is registered for redaction by the connection set-up.
    """
    return {"postgres_plan": source_plan_for_plugin(config)}
