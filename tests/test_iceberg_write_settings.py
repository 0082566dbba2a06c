"""How the Iceberg target writes its data files: the table's write properties and metrics modes honoured (issue 15)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
from pyiceberg.catalog import load_catalog

from dativo.config.loader import load_job
from dativo.engine.retry import run_job

SUPPORT = Path(__file__).parent / "support" / "partitioned_plugins.py"


def write_job(tmp_path: Path, options: dict | None = None) -> Path:
    (tmp_path / "m").touch()  # the reader's failure marker: present, so it never fails
    reader = {"rows": 3000, "partitions": 1, "marker": str(tmp_path / "m")}
    target = {"connector": "iceberg", "table": "raw.items", **({"options": options} if options else {})}
    path = tmp_path / "job.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: write-settings
            source:
              connector: custom
              reader: {{implementation: "{SUPPORT}:FlakyPartitionedReader", options: {json.dumps(reader)}}}
            target: {json.dumps(target)}
            engine: {{batch_size: 1000}}
            """
        )
    )
    return path


def table(tmp_path: Path):
    warehouse = tmp_path / "warehouse"
    catalog = load_catalog(
        "dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )
    return catalog.load_table("raw.items")


def newest_files(tmp_path: Path) -> list[pq.FileMetaData]:
    tbl = table(tmp_path)
    snapshot = tbl.current_snapshot()
    assert snapshot is not None
    added = [
        entry.data_file.file_path
        for manifest in snapshot.manifests(tbl.io)
        if manifest.added_snapshot_id == snapshot.snapshot_id
        for entry in manifest.fetch_manifest_entry(tbl.io)
    ]
    assert added
    return [pq.ParquetFile(path.removeprefix("file://")).metadata for path in added]


def test_table_properties_choose_codec_and_metrics_mode_none_drops_statistics(tmp_path):
    run_job(load_job(write_job(tmp_path)))  # creates the table with dativo's defaults
    (first,) = newest_files(tmp_path)
    assert first.row_group(0).column(0).compression == "ZSTD"
    assert first.row_group(0).column(1).is_stats_set

    with table(tmp_path).transaction() as tx:
        tx.set_properties(
            {
                "write.parquet.compression-codec": "snappy",
                "write.metadata.metrics.column.name": "none",
            }
        )
    run_job(load_job(write_job(tmp_path)))
    (second,) = newest_files(tmp_path)
    columns = {second.row_group(0).column(i).path_in_schema: second.row_group(0).column(i) for i in range(2)}
    assert {c.compression for c in columns.values()} == {"SNAPPY"}
    assert columns["id"].is_stats_set  # Iceberg keeps its default truncate(16) metrics for id
    assert not columns["name"].is_stats_set  # no reader of the table uses them
    assert table(tmp_path).scan().to_arrow().num_rows == 6000


def test_job_options_win_over_table_properties(tmp_path):
    run_job(load_job(write_job(tmp_path)))
    with table(tmp_path).transaction() as tx:
        tx.set_properties({"write.parquet.compression-codec": "snappy"})
    run_job(load_job(write_job(tmp_path, {"compression": "gzip"})))
    (metadata,) = newest_files(tmp_path)
    assert metadata.row_group(0).column(0).compression == "GZIP"
