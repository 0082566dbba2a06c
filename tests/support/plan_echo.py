"""A reader that asks for the source plan and yields what it received: one row per planned column.

Hosted in process (``wants_source_plan``) and behind Flight (``source_plan: true`` in the job)
by tests/test_source_plans.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from dativo import DataReader, PluginConfig, SourceError

SCHEMA = pa.schema([("name", pa.string()), ("kind", pa.string()), ("sql", pa.string())])


class PlanEchoReader(DataReader):
    """Yields ``postgres_plan``'s columns; SourceError when the plan is missing."""

    wants_source_plan = True

    def initialize(self, config: PluginConfig) -> None:
        plan = config.get("postgres_plan")
        if not isinstance(plan, dict):
            raise SourceError("plan echo: config.postgres_plan is missing")
        self.plan = plan

    def get_schema(self) -> pa.Schema:
        return SCHEMA

    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        rows = [{"name": c["name"], "kind": c["kind"], "sql": self.plan["sql"]} for c in self.plan["columns"]]
        yield pa.RecordBatch.from_pylist(rows, schema=SCHEMA)
