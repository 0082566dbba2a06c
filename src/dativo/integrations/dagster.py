"""Dagster: one asset per stream of a dativo job (``pip install 'dativo[dagster]'``; docs/orchestrators.md).

    from dagster import Definitions
    from dativo.integrations.dagster import DativoResource, dativo_assets

    lake = dativo_assets(job="jobs/lake.yaml")
    defs = Definitions(assets=[lake], resources={"dativo": DativoResource()})

Each stream becomes an asset keyed ``[target namespace, table]`` (``DativoTranslator``),
depending on the source table's asset ``[schema, table]``. A materialization runs the
selected streams through :func:`dativo.run` with a run id derived from the Dagster run
(the root run of a re-execution) and the partition key, so re-executing a run or a
partition never applies the same data twice. Time partitions become the window of
``source.incremental.cursor`` (``[start, end)``). Every asset has two checks:
``rows_committed`` (rows read equal rows written) and ``schema_unchanged`` (warns when
the source's columns differ from the last materialization).
"""

# No "from __future__ import annotations": Dagster reads the context parameter's annotation at definition time.

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dativo.api import Job, StreamInfo, StreamResult, list_streams, load_job, run
from dativo.integrations import missing_extra

try:
    import dagster as dg
except ImportError as _error:  # one line naming the extra, instead of a traceback into dagster
    raise missing_extra("dagster", "dagster", _error) from None

__all__ = [
    "DativoJobsComponent",
    "DativoResource",
    "DativoTranslator",
    "dagster_run_id",
    "dativo_assets",
]

ROWS_CHECK = "rows_committed"
SCHEMA_CHECK = "schema_unchanged"


def _part(text: str) -> str:
    """A valid asset-key part: letters, digits and underscores."""
    return re.sub(r"[^A-Za-z0-9_]", "_", text) or "_"


class DativoTranslator:
    """Names the assets of a job's streams; subclass it to change keys, groups or descriptions."""

    def asset_key(self, stream: StreamInfo) -> Any:
        """``[target namespace, table]`` for table targets, else ``["dativo", stream name]``."""
        if stream.target_table:
            return dg.AssetKey([_part(p) for p in stream.target_table.split(".")])
        return dg.AssetKey(["dativo", _part(stream.name)])

    def source_key(self, stream: StreamInfo) -> Any:
        """``[schema, table]`` of the source table (``[job-less stream name]`` for a query)."""
        if stream.source_table:
            return dg.AssetKey([_part(p) for p in stream.source_table.split(".")])
        return dg.AssetKey(["source", _part(stream.name)])

    def description(self, stream: StreamInfo) -> str:
        """One line: what moves where."""
        source = stream.source_table or "query"
        target = stream.target_table or stream.target_path or "-"
        return f"dativo stream {stream.name}: {stream.source_connector} {source} -> {stream.target_connector} {target}"

    def group_name(self, stream: StreamInfo) -> str | None:
        """The asset group (None: Dagster's default)."""
        return None


def dagster_run_id(context: Any) -> str:
    """The dativo run id of a Dagster step: its root run (re-executions share it) plus the partition key."""
    dagster_run = context.run
    root = getattr(dagster_run, "root_run_id", None) or dagster_run.run_id
    key = context.partition_key if context.has_partition_key else None
    return f"dagster-{root}" + (f"-{key}" if key else "")


class DativoResource(dg.ConfigurableResource):  # type: ignore[type-arg]  # its value type is itself
    """Runs dativo jobs for Dagster assets.

    ``max_concurrent_streams`` overrides the job's ``engine.max_concurrent_streams``.
    """

    max_concurrent_streams: int | None = None

    def run_streams(
        self, context: Any, job: Job | str, keys: Mapping[Any, str], translator: DativoTranslator | None = None
    ) -> Iterator[Any]:
        """Run the streams of the selected assets; yield a MaterializeResult (with its checks) per stream.

        Raises dagster.Failure naming the failed streams after yielding the others' results
        (they are committed); job-level problems raise their DativoError.
        """
        selected = [name for key, name in keys.items() if key in context.selected_asset_keys]
        window = None
        if context.has_partition_key:
            if not isinstance(context.assets_def.partitions_def, dg.TimeWindowPartitionsDefinition):
                raise dg.Failure(description="dativo assets take time-window partitions (daily, hourly, ...) only")
            window = (context.partition_time_window.start, context.partition_time_window.end)
        run_id = dagster_run_id(context)
        context.log.info(
            f"dativo run {run_id}: streams {', '.join(selected)}" + (f", window {window}" if window else "")
        )
        result = run(
            job, streams=selected, run_id=run_id, max_concurrent_streams=self.max_concurrent_streams, window=window
        )
        by_name = {name: key for key, name in keys.items()}
        for stream in result.streams:
            if stream.ok:
                yield _materialization(context, by_name[stream.name], stream)
        if not result.ok:
            lines = [f"{s.name}: {s.error}" for s in result.streams if not s.ok]
            raise dg.Failure(
                description=f"{len(lines)} of {len(result.streams)} dativo streams failed: " + "; ".join(lines),
                metadata={"failed streams": ", ".join(result.failed)},
            )


def _materialization(context: Any, key: Any, stream: StreamResult) -> Any:
    target = stream.summary.get("target") or {}
    metadata: dict[str, Any] = {
        "dagster/row_count": stream.rows,
        "rows": stream.rows,
        "bytes": stream.bytes,
        "files": stream.files,
        "run_id": stream.run_id or "",
        "status": stream.status,
        "duration_s": round(stream.duration_s, 3),
    }
    if stream.snapshot_id is not None:
        metadata["snapshot_id"] = str(stream.snapshot_id)
    if stream.state and stream.state.get("cursor") is not None:
        metadata["cursor"] = str(stream.state["cursor"])
    if stream.target:
        metadata["target"] = stream.target
    columns = _columns(stream)
    if columns is not None:
        metadata["dagster/column_schema"] = dg.TableSchema(columns=[dg.TableColumn(n, t) for n, t in columns])
    written = target.get("rows") if isinstance(target, dict) else None
    same_rows = stream.status == "already committed" or written is None or int(written) == stream.rows
    checks = [
        dg.AssetCheckResult(
            check_name=ROWS_CHECK,
            asset_key=key,
            passed=same_rows or target.get("mode") == "merge",
            metadata={"rows read": stream.rows, "rows committed": int(written) if written is not None else stream.rows},
        ),
        _schema_check(context, key, columns),
    ]
    return dg.MaterializeResult(asset_key=key, metadata=metadata, check_results=checks)


def _columns(stream: StreamResult) -> list[tuple[str, str]] | None:
    return [(f.name, str(f.type)) for f in stream.schema] if stream.schema is not None else None


def _schema_check(context: Any, key: Any, columns: list[tuple[str, str]] | None) -> Any:
    previous = None
    event = context.instance.get_latest_materialization_event(key)
    if event is not None and event.asset_materialization is not None:
        schema = event.asset_materialization.metadata.get("dagster/column_schema")
        if schema is not None:
            previous = [(c.name, c.type) for c in schema.value.columns]
    drift: list[str] = []
    if previous is not None and columns is not None:
        before, now = dict(previous), dict(columns)
        drift += [f"added {n} {t}" for n, t in now.items() if n not in before]
        drift += [f"removed {n}" for n in before if n not in now]
        drift += [f"{n}: {before[n]} -> {t}" for n, t in now.items() if n in before and before[n] != t]
    return dg.AssetCheckResult(
        check_name=SCHEMA_CHECK,
        asset_key=key,
        passed=not drift,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"changes": "; ".join(drift) or "none", "first run": previous is None},
    )


def dativo_assets(
    *,
    job: str | Path | Job,
    streams: Sequence[str] | None = None,
    name: str | None = None,
    translator: DativoTranslator | None = None,
    partitions_def: Any = None,
    resource_key: str = "dativo",
    pool: str | None = None,
    retry_policy: Any = None,
) -> Any:
    """A Dagster multi-asset with one asset (and its two checks) per stream of ``job``.

    The streams are listed when this is called (wildcards connect to the source), so the
    asset graph follows the source's tables at each code-location load. ``streams``
    narrows them (names or patterns). ``partitions_def`` (a time-window one) maps each
    partition to ``[start, end)`` of the streams' incremental cursor. The assets are
    subsettable: materializing some runs only their streams. A ``retry_policy`` retry runs
    with the same run id, so streams committed by the failed attempt are not applied again.
    Raises ConfigError/SourceError (from :func:`dativo.list_streams`) when the job cannot be planned.
    """
    loaded = job if isinstance(job, Job) else load_job(job)
    translator = translator or DativoTranslator()
    infos = list_streams(loaded, streams=streams)
    keys: dict[Any, str] = {}
    specs, checks = [], []
    for info in infos:
        key = translator.asset_key(info)
        keys[key] = info.name
        specs.append(
            dg.AssetSpec(
                key,
                deps=[translator.source_key(info)],
                description=translator.description(info),
                group_name=translator.group_name(info),
                kinds={"dativo", info.target_connector},
                metadata={"dativo/stream": info.name, "dativo/job": str(loaded.path)},
                skippable=True,
            )
        )
        checks += [
            dg.AssetCheckSpec(ROWS_CHECK, asset=key, description="rows read equal rows committed"),
            dg.AssetCheckSpec(SCHEMA_CHECK, asset=key, description="source columns unchanged since the last run"),
        ]

    @dg.multi_asset(
        name=name or _part(loaded.name),
        specs=specs,
        check_specs=checks,
        can_subset=True,
        partitions_def=partitions_def,
        required_resource_keys={resource_key},
        pool=pool,
        retry_policy=retry_policy,
    )
    def _assets(context: dg.AssetExecutionContext) -> Iterator[Any]:
        resource: DativoResource = getattr(context.resources, resource_key)
        yield from resource.run_streams(context, loaded, keys, translator)

    return _assets


class DativoJobsComponent(dg.Component, dg.Model, dg.Resolvable):
    """A YAML component listing job files; each becomes a dativo multi-asset.

    ``defs.yaml``::

        type: dativo.integrations.dagster.DativoJobsComponent
        attributes:
          jobs: [jobs/lake.yaml, jobs/crm.yaml]
          max_concurrent_streams: 4
    """

    jobs: list[str]
    max_concurrent_streams: int | None = None

    def build_defs(self, context: Any) -> Any:
        """One multi-asset per job (paths relative to the component's folder) and the ``dativo`` resource."""
        base = Path(getattr(context, "path", Path.cwd()))
        assets = [dativo_assets(job=base / job if not Path(job).is_absolute() else job) for job in self.jobs]
        return dg.Definitions(
            assets=assets, resources={"dativo": DativoResource(max_concurrent_streams=self.max_concurrent_streams)}
        )
