"""What every PostgreSQL reader shares: the plan ``describe_source`` decided, its schema, incremental bounds."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, ClassVar

import pyarrow as pa

from dativo.connectors.postgres.connection import build_connection, connect_psycopg, import_psycopg, translate_error
from dativo.connectors.postgres.types import SourcePlan, with_lower_bound
from dativo.errors import SourceError
from dativo.sdk import DataReader, PluginConfig

__all__ = ["PlannedPostgresReader"]


class PlannedPostgresReader(DataReader):
    """Base of the PostgreSQL readers; subclasses set ``self._plan`` in ``initialize`` and read ``plan.sql``.

    Because the schema and the SQL come from one shared plan, every reader built
    on this class maps types identically and takes part in incremental reads.
    """

    requires: ClassVar[Mapping[str, str]] = {"psycopg": "pip install 'dativo[postgres]'"}

    _plan: SourcePlan | None = None

    def get_schema(self) -> pa.Schema:
        """The canonical schema decided in ``initialize``; raises SourceError if not initialized."""
        return self._require_plan().schema

    def set_incremental(self, cursor: str, after: Any | None) -> None:
        """Read only rows whose ``cursor`` column is greater than ``after`` (see dativo.IncrementalReader)."""
        self._plan = with_lower_bound(self._require_plan(), cursor, after)

    def list_tables(self, config: PluginConfig) -> list[str]:
        """Every table, view and materialized view the user may read, as ``schema.table`` (dativo.ListsTables).

        System schemas (``pg_catalog``, ``information_schema``, ``pg_toast``) are left out. A connection
        problem raises SourceError as ``initialize`` would.
        """
        info = build_connection(config.get("connection"))
        psycopg = import_psycopg()
        with contextlib.closing(connect_psycopg(info)) as pg:
            try:
                rows = pg.execute(
                    "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition "
                    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' "
                    "AND has_table_privilege(c.oid, 'SELECT') ORDER BY 1, 2"
                ).fetchall()
            except psycopg.Error as exc:
                raise translate_error(exc, info) from exc
        return [f"{schema}.{name}" for schema, name in rows]

    def _require_plan(self) -> SourcePlan:
        if self._plan is None:
            raise SourceError("the PostgreSQL reader was not initialized")
        return self._plan
