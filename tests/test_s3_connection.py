"""One S3 connection model (dativo.S3Connection) for files, parquet and encrypted-parquet, against moto's server."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dativo.config.loader import load_job
from dativo.connectors.files import FileReader
from dativo.connectors.files.errors import is_transient
from dativo.engine import pipeline
from dativo.engine.plan import build_plan
from dativo.errors import ConfigError
from dativo.sdk_connectors import S3Connection
from dativo.storage import filesystem_for

from support.s3server import S3Server


def bare(server: S3Server) -> dict[str, str]:
    """The server's connection with a scheme-less endpoint (host:port)."""
    return {**server.connection(), "endpoint_url": server.endpoint_url.removeprefix("http://")}


def test_allow_http_makes_a_bare_endpoint_plain_http_for_writers_and_readers(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    connection = {**bare(s3_server), "allow_http": True}
    fs, root = filesystem_for(f"s3://{s3_bucket}/t", connection, tmp_path)
    pq.write_table(pa.table({"id": [1, 2]}), f"{root}/a.parquet", filesystem=fs)
    assert s3_server.list_keys(s3_bucket, "t/") == ["t/a.parquet"]

    reader = FileReader()
    reader.initialize({"path": f"s3://{s3_bucket}/t/a.parquet", "connection": connection, "job": {"dir": "."}})
    assert [b.to_pydict() for b in reader.read_batch(10)] == [{"id": [1, 2]}]


def test_without_allow_http_a_bare_endpoint_is_https_and_fails_transiently(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    s3_server.put_object(s3_bucket, "a.csv", b"id\n1\n")
    reader = FileReader()
    with pytest.raises(Exception) as info:  # TLS against a plain-HTTP server: a connection failure
        reader.initialize({"path": f"s3://{s3_bucket}/a.csv", "connection": bare(s3_server), "job": {"dir": "."}})
    assert getattr(info.value, "transient", None) is True, info.value
    assert s3_server.secret_access_key not in str(info.value)


def test_allow_http_false_rejects_an_http_endpoint_at_its_line(s3_server: S3Server, tmp_path: Path) -> None:
    connection = {**s3_server.connection(), "allow_http": False}
    job = tmp_path / "job.yaml"
    job.write_text(
        "source: {connector: files, path: a.csv}\ntarget:\n  connector: parquet\n  path: s3://b/p\n"
        f"  connection: {json.dumps(connection)}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_job(job)
    message = str(info.value)
    assert "job.yaml:5: target.connection: endpoint_url" in message and "allow_http is false" in message
    assert s3_server.secret_access_key not in message


def test_connection_typos_and_half_credentials_fail_at_their_line(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        "source:\n  connector: files\n  path: s3://b/a.csv\n  connection:\n    endpoint: http://x:9000\n"
        "target:\n  connector: encrypted-parquet\n  path: out\n  connection: {access_key_id: AKIAONLY}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_job(job)
    lines = str(info.value).splitlines()
    assert lines[0].endswith(
        "job.yaml:5: source.connection.endpoint: unknown key; did you mean 'endpoint_url'? "
        "(the job reference is docs/configuration.md)"
    )
    assert "job.yaml:9: target.connection: needs both access_key_id and secret_access_key" in lines[1]


def test_a_parquet_job_writes_to_s3_through_the_model(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,v\n1,x\n2,y\n")
    connection = {**bare(s3_server), "allow_http": True}
    job = tmp_path / "job.yaml"
    job.write_text(
        "source: {connector: files, path: a.csv}\n"
        f"target: {{connector: parquet, path: 's3://{s3_bucket}/out', connection: {json.dumps(connection)}}}\n"
    )
    pipeline.run(build_plan(load_job(job)))
    keys = [k for k in s3_server.list_keys(s3_bucket, "out/") if k.endswith(".parquet")]
    assert len(keys) == 1


def test_parse_reports_every_problem_on_one_line_with_the_plugin_name() -> None:
    with pytest.raises(ConfigError) as info:
        S3Connection.parse({"region": "x", "bucket": "b", "anonymous": "maybe"}, "my writer")
    message = str(info.value)
    assert message.startswith("my writer: unknown connection key(s) bucket; connection.anonymous:")
    assert "\n" not in message
    assert S3Connection.parse(None, "w") == S3Connection()


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError("read"), True),
        (OSError("AWS Error NETWORK_CONNECTION during HeadObject operation: curlCode: 7"), True),
        (OSError("AWS Error SLOW_DOWN during PutObject operation: Please reduce your request rate."), True),
        (OSError("AWS Error UNKNOWN (HTTP status 503) during GetObject operation: "), True),
        (OSError("AWS Error UNKNOWN (HTTP status 429) during GetObject operation: "), True),
        (OSError("AWS Error UNKNOWN (HTTP status 404) during HeadObject operation: "), False),
        (OSError("AWS Error ACCESS_DENIED during HeadObject operation: timed out waiting"), False),
        (OSError("curl: Could not connect to server"), True),
        (OSError("No such file or directory"), False),
        (ValueError("timed out"), False),
    ],
)
def test_the_files_connector_decides_transient_in_one_place(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_an_iceberg_target_takes_the_same_connection(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,v\n1,x\n2,y\n")
    catalog = {"uri": f"sqlite:///{tmp_path / 'catalog.db'}", "warehouse": f"s3://{s3_bucket}/wh"}
    connection = {**bare(s3_server), "allow_http": True}
    job = tmp_path / "job.yaml"
    job.write_text(
        "source: {connector: files, path: a.csv}\n"
        f"target: {{connector: iceberg, table: raw.t, catalog: {json.dumps(catalog)}, "
        f"connection: {json.dumps(connection)}}}\n"
    )
    loaded = load_job(job)
    assert loaded.config.target.get("catalog")["s3.endpoint"] == s3_server.endpoint_url
    pipeline.run(build_plan(loaded))
    keys = s3_server.list_keys(s3_bucket, "wh/")
    assert any(k.endswith(".parquet") for k in keys) and any(k.endswith(".metadata.json") for k in keys)
