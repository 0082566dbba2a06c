"""What every PostgreSQL reader shares: the plan ``describe_source`` decided, its schema, incremental bounds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pyarrow as pa

from dativo.connectors.postgres.types import SourcePlan, with_lower_bound
from dativo.errors import SourceError
from dativo.sdk import DataReader

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

    def _require_plan(self) -> SourcePlan:
        if self._plan is None:
            raise SourceError("the PostgreSQL reader was not initialized")
        return self._plan
