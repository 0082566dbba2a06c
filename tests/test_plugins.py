"""Naming a reader or writer in a job: every way to find one, every way loading can fail."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from dativo import SDK_API_VERSION, DataReader, DataWriter, PluginError
from dativo.core.registry import check_api_version, list_plugins, resolve_plugin

from support.cli import assert_one_line_error, dativo

SUPPORT = Path(__file__).parent / "support"


def test_entry_point_names_resolve_to_builtins():
    assert resolve_plugin("reader", "postgres-adbc", Path.cwd()).cls.__name__ == "AdbcPostgresReader"
    assert resolve_plugin("reader", "postgres-psycopg", Path.cwd()).cls.__name__ == "PsycopgPostgresReader"
    ref = resolve_plugin("writer", "iceberg", Path.cwd())
    assert issubclass(ref.cls, DataWriter)
    assert ref.origin.startswith("entry point dativo.writers:iceberg (dativo ")


@pytest.mark.parametrize("spec", ["support.plugins.GeneratedReader", "support.plugins:GeneratedReader"])
def test_import_paths_in_both_forms(spec):
    ref = resolve_plugin("reader", spec, Path.cwd())
    assert ref.cls.__name__ == "GeneratedReader"
    assert ref.api_version == SDK_API_VERSION


def test_file_path_relative_to_job_dir():
    ref = resolve_plugin("reader", "support/plugins.py:GeneratedReader", Path(__file__).parent)
    assert issubclass(ref.cls, DataReader)
    assert ref.origin == f"file {SUPPORT / 'plugins.py'}"


@pytest.mark.parametrize(
    ("kind", "spec", "message"),
    [
        ("reader", "no_such_pkg.readers.Fast", "module 'no_such_pkg.readers' not found"),
        ("reader", "support.broken_import:Reader", "a dependency of the plugin is missing"),
        ("reader", "support.plugins.NoSuchClass", "has no attribute 'NoSuchClass'"),
        ("reader", "support.plugins.NotAReader", "does not subclass dativo.DataReader"),
        ("writer", "support.plugins.GeneratedReader", "does not subclass dativo.DataWriter"),
        ("reader", "support.plugins.HalfReader", "does not implement read_batch"),
        ("reader", "support.plugins.SCHEMA", "is a Schema, not a class"),
        ("reader", "missing/file.py:Reader", "does not exist"),
        ("reader", "support/plugins.py", "name the class after the file"),
        ("reader", "fastreader", "no installed reader has that name"),
    ],
)
def test_every_loading_failure_names_plugin_and_cause(kind, spec, message):
    with pytest.raises(PluginError) as info:
        resolve_plugin(kind, spec, Path(__file__).parent)
    assert f"'{spec}'" in str(info.value)
    assert message in str(info.value)


def test_wrong_api_version_states_both_versions():
    with pytest.raises(PluginError) as info:
        resolve_plugin("reader", "support.plugins.FutureReader", Path.cwd())
    assert "supports plugin SDK >=2.0,<3 (api_version '2.0')" in str(info.value)
    assert f"this dativo provides SDK {SDK_API_VERSION}" in str(info.value)


_MAJOR, _MINOR = (int(part) for part in SDK_API_VERSION.split(".")[:2])


@pytest.mark.parametrize(
    ("declared", "accepted"),
    [
        ("1.0", True),  # a plain version means up to the next major: plugins written for SDK 1.0 keep working
        ("1.1", True),
        ("^1.1.0", True),
        (">=1.0,<2", True),
        (f">=1.1,<{_MAJOR}.{_MINOR + 1}", True),
        (f"{_MAJOR}.{_MINOR + 1}", False),  # needs an SDK newer than this one
        (f">=1.1,<{_MAJOR}.{_MINOR}", False),  # written for SDKs older than this one only
        (">=2,<3", False),
        ("0.9", False),
    ],
)
def test_api_version_ranges(declared, accepted):
    cls = type("Ranged", (DataReader,), {"api_version": declared, "get_schema": None, "read_batch": None})
    if accepted:
        check_api_version("reader", "ranged", cls)
    else:
        with pytest.raises(PluginError) as info:
            check_api_version("reader", "ranged", cls)
        assert f"api_version '{declared}'" in str(info.value)
        assert f"provides SDK {SDK_API_VERSION}" in str(info.value)


def test_api_version_that_is_no_version_is_refused():
    cls = type("Garbled", (DataReader,), {"api_version": "latest", "get_schema": None, "read_batch": None})
    with pytest.raises(PluginError, match="neither a version"):
        check_api_version("reader", "garbled", cls)


def test_list_plugins_includes_builtins_with_origin_and_version():
    rows = {(kind, name): (origin, api, problem) for kind, name, origin, api, problem in list_plugins()}
    for key in [
        ("reader", "postgres-adbc"),
        ("reader", "postgres-psycopg"),
        ("reader", "files"),
        ("reader", "sqlite"),
        ("writer", "iceberg"),
        ("writer", "parquet"),
    ]:
        origin, api, problem = rows[key]
        assert origin.startswith("dativo "), origin
        assert api == SDK_API_VERSION
        assert problem is None


def test_plugins_list_command_json():
    result = dativo("plugins", "list", "--json")
    assert result.returncode == 0, result.stderr
    names = {(row["kind"], row["name"]) for row in json.loads(result.stdout)}
    assert ("writer", "iceberg") in names
    assert ("reader", "postgres-adbc") in names


def _job(tmp_path: Path, reader: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            source:
              connector: custom
              reader: {{implementation: "{reader}"}}
            target: {{connector: parquet, path: out}}
            """
        )
    )
    return path


@pytest.mark.parametrize(
    ("reader", "fragment"),
    [
        (f"{SUPPORT}/broken_import.py:Reader", "No module named 'a_dependency_that_is_not_installed'"),
        (f"{SUPPORT}/plugins.py:FutureReader", "supports plugin SDK >=2.0,<3"),
        (
            f"{SUPPORT}/plugins.py:InitializeFailsReader",
            "initialize() failed: ValueError: bad option 'speed'",
        ),
    ],
)
def test_cli_reports_plugin_failures_in_one_line(tmp_path, reader, fragment):
    result = dativo("run", _job(tmp_path, reader))
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "out").exists()


def test_debug_shows_traceback(tmp_path):
    result = dativo("run", _job(tmp_path, f"{SUPPORT}/plugins.py:InitializeFailsReader"), "--debug")
    assert result.returncode != 0
    assert "Traceback" in result.stderr
