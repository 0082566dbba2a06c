"""``dativo plugins list``: every plugin group (readers, writers, connectors, runtimes, KMS clients), built-in and
third-party, with its distribution, API version and details; a plugin that cannot load is a row with its problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dativo.sdk import SDK_API_VERSION

from support.cli import dativo
from support.fake_dist import fake_distribution

PACKAGE = """
from dativo.encryption.kms import KmsClient
from dativo.sdk import DataReader
from dativo.sdk_connectors import Connector, ConnectorConfig


class AcmeConfig(ConnectorConfig):
    folder: str


CONNECTOR = Connector(name="acme", config=AcmeConfig, reader="acme-reader", roles=("source",))


class AcmeReader(DataReader):
    def initialize(self, config):
        pass

    def get_schema(self):
        raise NotImplementedError

    def read_batch(self, batch_size):
        return iter(())


class AcmeKms(KmsClient):
    def wrap_key(self, key, master_key_id, context):
        raise NotImplementedError

    def unwrap_key(self, wrapped, master_key_id, context):
        raise NotImplementedError


def host_reader(plan):
    raise NotImplementedError


def host_writer(plan):
    raise NotImplementedError
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding an installed distribution with a plugin in every group, and one that cannot load."""
    return fake_distribution(
        tmp_path_factory.mktemp("acme-site"),
        "acme-plugins",
        "0.2",
        {
            "dativo.readers": {"acme-reader": "acme_plugins:AcmeReader"},
            "dativo.connectors": {"acme": "acme_plugins:CONNECTOR"},
            "dativo.runtimes": {"acme-runtime": "acme_plugins"},
            "dativo.kms": {"acme-kms": "acme_plugins:AcmeKms", "acme-broken": "acme_missing_module:Kms"},
        },
        {"acme_plugins.py": PACKAGE},
    )


def listing(site: Path) -> dict[tuple[str, str], dict[str, object]]:
    result = dativo("plugins", "list", "--json", env={"PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr
    return {(row["kind"], row["name"]): row for row in json.loads(result.stdout)}


def test_every_group_is_listed_with_origin_and_details(site: Path) -> None:
    rows = listing(site)
    assert {kind for kind, _ in rows} == {"reader", "writer", "connector", "runtime", "kms"}
    dativo_rows = [rows[key] for key in rows if key[1] in {"parquet", "files", "custom", "local", "postgres"}]
    assert dativo_rows and all(str(row["origin"]).startswith("dativo ") for row in dativo_rows)

    assert rows[("reader", "files")]["api_version"] == SDK_API_VERSION
    assert rows[("connector", "files")]["details"] == "source, reader: files"
    assert rows[("connector", "iceberg")]["details"] == "target, writer: iceberg"
    postgres = str(rows[("connector", "postgres")]["details"])
    assert "else postgres-adbc" in postgres and "changes: postgres-cdc" in postgres and "source planner" in postgres
    assert rows[("runtime", "custom")]["details"] == "module dativo.runtimes.inprocess"
    assert "imported when first used" in str(rows[("runtime", "flight")]["details"])
    assert rows[("kms", "local")]["details"] == "dativo.encryption.kms.local.LocalKeyFileKms"
    assert all(rows[key]["api_version"] is None for key in rows if key[0] in {"connector", "runtime", "kms"})

    for key, details in {
        ("reader", "acme-reader"): "",
        ("connector", "acme"): "source, reader: acme-reader",
        ("runtime", "acme-runtime"): "module acme_plugins",
        ("kms", "acme-kms"): "acme_plugins.AcmeKms",
    }.items():
        assert rows[key]["origin"] == "acme-plugins 0.2", rows[key]
        assert rows[key]["details"] == details and rows[key]["problem"] is None, rows[key]


def test_a_plugin_that_cannot_load_is_a_row_with_its_problem(site: Path) -> None:
    broken = listing(site)[("kms", "acme-broken")]
    assert broken["origin"] == "acme-plugins 0.2"
    assert str(broken["problem"]).startswith("acme_missing_module:Kms failed to load: ModuleNotFoundError")

    table = dativo("plugins", "list", env={"PYTHONPATH": str(site), "COLUMNS": "250"})
    assert table.returncode == 1  # the table view fails on a plugin that cannot load, after listing all
    assert "acme-broken" in table.stdout and "ModuleNotFoundError" in table.stdout
    assert "acme-runtime" in table.stdout and "LocalKeyFileKms" in table.stdout
