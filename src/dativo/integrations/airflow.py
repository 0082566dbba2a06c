"""Airflow: ``DativoOperator`` runs a dativo job through the Python API (``pip install 'dativo[airflow]'``).

    from dativo.integrations.airflow import DativoOperator

    with DAG("lake", schedule="@daily", start_date=datetime(2026, 1, 1)):
        DativoOperator(task_id="lake", job="/opt/jobs/lake.yaml")

The run id is derived from the DAG run (``airflow-<dag_id>-<run_id>``), so a task retry
never applies a stream twice. The per-stream summary is the task's XCom return value,
the Iceberg tables are its outlets (``iceberg://<namespace>/<table>`` assets, each
event carrying rows, snapshot id and run id), and a failed stream fails the task after
the others are committed. See docs/orchestrators.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dativo.api import Job, RunResult, StreamInfo, list_streams, load_job, run
from dativo.integrations import missing_extra

try:
    from airflow.sdk import Asset, BaseOperator
except ImportError as _error:  # one line naming the extra, instead of a traceback into airflow
    raise missing_extra("apache-airflow", "airflow", _error) from None

__all__ = ["DativoOperator", "airflow_run_id", "asset_for"]


def asset_for(stream: StreamInfo) -> Asset | None:
    """The Airflow asset of a stream's target: ``iceberg://namespace/table`` or ``file://<path>`` (None: unnamed)."""
    if stream.target_table:
        namespace, _, table = stream.target_table.rpartition(".")
        return Asset(uri=f"iceberg://{namespace.replace('.', '/')}/{table}", name=f"iceberg.{stream.target_table}")
    if stream.target_path and stream.target_path.startswith("s3://"):
        return Asset(uri=stream.target_path)
    if stream.target_path:
        return Asset(uri=Path(stream.target_path).resolve().as_uri())
    return None


def airflow_run_id(context: Any) -> str:
    """``airflow-<dag_id>-<run_id>``: the same for every try of a task in one DAG run."""
    return f"airflow-{context['dag'].dag_id}-{context['run_id']}"


class DativoOperator(BaseOperator):  # type: ignore[misc]  # airflow ships no types for mypy here
    """Run a dativo job (or some of its ``streams``) and push the per-stream summary to XCom.

    ``window_from_data_interval`` reads only rows whose incremental cursor is in the DAG
    run's data interval (see :func:`dativo.run`'s ``window``). Declaring outlets lists the
    job's streams when the DAG is parsed (wildcards connect to the source then); pass
    ``declare_outlets=False`` to avoid that. Raises AirflowException-compatible errors:
    the job's own DativoError, or a RuntimeError naming the failed streams (the others are committed).
    """

    template_fields: Sequence[str] = ("job", "run_id")

    def __init__(
        self,
        *,
        job: str,
        streams: Sequence[str] | None = None,
        run_id: str | None = None,
        window_from_data_interval: bool = False,
        max_concurrent_streams: int | None = None,
        declare_outlets: bool = True,
        **kwargs: Any,
    ) -> None:
        assets: dict[str, Asset] = {}
        if declare_outlets:
            for info in list_streams(job, streams=streams):
                asset = asset_for(info)
                if asset is not None:
                    assets[info.name] = asset
            kwargs.setdefault("outlets", list(assets.values()))
        super().__init__(**kwargs)
        self.stream_assets = assets
        self.job = job
        self.streams = list(streams) if streams else None
        self.run_id = run_id
        self.window_from_data_interval = window_from_data_interval
        self.max_concurrent_streams = max_concurrent_streams

    def execute(self, context: Any) -> dict[str, Any]:
        """Run the job; returns (pushes to XCom) ``RunResult.to_dict()``; raises if a stream failed."""
        loaded: Job = load_job(self.job)
        window = None
        if self.window_from_data_interval:
            window = (context["data_interval_start"], context["data_interval_end"])
        run_id = self.run_id or airflow_run_id(context)
        self.log.info("dativo job %s, run id %s, streams %s", loaded.name, run_id, self.streams or "all")
        result = run(
            loaded,
            streams=self.streams,
            run_id=run_id,
            window=window,
            max_concurrent_streams=self.max_concurrent_streams,
        )
        summary: dict[str, Any] = json.loads(json.dumps(result.to_dict(), default=str))
        self._outlet_events(context, result)
        for stream in result.streams:
            self.log.info(
                "stream %s: %s, %d rows, snapshot %s", stream.name, stream.status, stream.rows, stream.snapshot_id
            )
        if not result.ok:
            context["ti"].xcom_push(key="dativo_summary", value=summary)
            lines = "; ".join(f"{s.name}: {s.error}" for s in result.streams if not s.ok)
            raise RuntimeError(f"{len(result.failed)} of {len(result.streams)} dativo streams failed: {lines}")
        return summary

    def _outlet_events(self, context: Any, result: RunResult) -> None:
        """Attach rows, snapshot id and run id to each committed table's asset event."""
        events = context.get("outlet_events")
        if events is None:
            return
        for stream in result.streams:
            asset = self.stream_assets.get(stream.name)
            if stream.ok and asset is not None and asset in self.outlets:
                events[asset].extra = {"rows": stream.rows, "snapshot_id": stream.snapshot_id, "run_id": stream.run_id}
