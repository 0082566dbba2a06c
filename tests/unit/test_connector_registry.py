"""The dativo.connectors registry: built-ins found like third parties, broken registrations named, cross-key checks."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any

import pytest

from dativo.config import connectors as registry
from dativo.config.loader import parse_job
from dativo.errors import ConfigError
from dativo.sdk_connectors import Connector, ConnectorConfig


@pytest.fixture
def fake_entry_points(monkeypatch: pytest.MonkeyPatch):
    """Replace the installed dativo.connectors entry points with the given ones (the cache is reset around it)."""

    def install(*points: EntryPoint) -> None:
        monkeypatch.setattr(registry, "entry_points", lambda group: list(points))
        registry.reset_connectors()

    yield install
    registry.reset_connectors()


class _Config(ConnectorConfig):
    folder: str


DUPLICATE = Connector(name="files", config=_Config, reader="x")
NOT_A_CONNECTOR = {"name": "files"}


def point(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=registry.ENTRY_POINT_GROUP)


def test_the_built_ins_are_registered_through_entry_points() -> None:
    found = registry.connectors()
    assert {"postgres", "sqlite", "files", "iceberg", "parquet", "encrypted-parquet", "custom"} <= set(found)
    assert found["postgres"].reader == "postgres-adbc" and found["postgres"].change_reader == "postgres-cdc"
    assert found["postgres"].load_planner() is not None and found["files"].load_planner() is None
    assert registry.known("target")[:1] == ["custom"] and "iceberg" in registry.known("target")
    assert "postgres" not in registry.known("target")


def test_a_connector_registered_twice_is_named_with_both_origins(fake_entry_points: Any) -> None:
    fake_entry_points(
        point("files", "dativo.connectors.files.connector:CONNECTOR"),
        point("files2", f"{__name__}:DUPLICATE"),
    )
    with pytest.raises(ConfigError, match=r"connector 'files' is registered twice: entry point 'files' .* and "):
        registry.connectors()


def test_an_entry_point_that_is_not_a_connector_or_does_not_import(fake_entry_points: Any) -> None:
    fake_entry_points(point("bad", f"{__name__}:NOT_A_CONNECTOR"))
    with pytest.raises(ConfigError, match=r"entry point 'bad' .* is a dict, not a dativo.sdk_connectors.Connector"):
        registry.connectors()
    fake_entry_points(point("gone", "no_such_module_dativo:X"))
    with pytest.raises(ConfigError, match=r"entry point 'gone' .* cannot be loaded: ModuleNotFoundError"):
        registry.connectors()


def test_cdc_needs_a_connector_with_a_change_reader() -> None:
    text = "source:\n  connector: sqlite\n  table: t\n  cdc: {}\ntarget: {connector: iceberg, table: a.b}\n"
    with pytest.raises(ConfigError, match=r"<job>:2: source: 'cdc' needs a connector that reads changes"):
        parse_job(text)
    ok = parse_job(text.replace("sqlite", "postgres"))
    assert ok.source.cdc is not None and ok.source.table == "t"


def test_connector_keys_reach_the_plugin_flat_with_defaults() -> None:
    job = parse_job("source: {connector: files, path: a.csv}\ntarget: {connector: parquet, path: out}\n")
    dumped = job.source.model_dump(exclude={"reader"})
    assert dumped["path"] == "a.csv" and dumped["format"] is None and dumped["cast_to_text"] == []
    assert dumped["connection"]["anonymous"] is False and "table" not in dumped
    assert job.source.table is None and job.source.get("format", "x") is None
    moved = job.target.model_copy(update={"path": "elsewhere"})
    assert moved.path == "elsewhere" and moved.model_dump()["path"] == "elsewhere"


def test_custom_passes_any_key_through() -> None:
    job = parse_job(
        "source:\n  connector: custom\n  anything: [1, 2]\n  reader: {type: custom, implementation: a.B}\n"
        "target: {connector: parquet, path: out}\n"
    )
    assert job.source.get("anything") == [1, 2]
