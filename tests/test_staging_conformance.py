"""The conformance kit's StagingWriter rules (``writer.staging-*``): built-ins pass, broken stagers are caught."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from dativo.sdk import register_secret
from dativo.targets.parquet import ParquetDatasetWriter
from dativo.testing import PluginUnderTest, certify

from support.cli import dativo
from support.kms_fixtures import encrypted_parquet_scenario

RULES = ["writer.staging-commit", "writer.staging-abort"]
SECRET = "tok-" + os.urandom(8).hex()


class SecretInPlan(ParquetDatasetWriter):
    """Puts a credential into its plan (workers should read it from their own config)."""

    def plan_extras(self) -> dict[str, Any]:
        register_secret(SECRET)
        return {"token": SECRET}


class CommitKeepsOtherAttempts(ParquetDatasetWriter):
    """Commits the described files but leaves the staging folder (the other attempt's files) in place."""

    def commit_staged(self, staged: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        self._folder.remove_staging = lambda: None  # type: ignore[method-assign]
        return super().commit_staged(staged)


class AbortKeepsStagedFiles(ParquetDatasetWriter):
    """An abort that forgets what workers staged."""

    def abort(self) -> None:
        pass


def scenarios(plugin: str, tmp_path: Path) -> dict[str, Any]:
    if plugin == "iceberg":
        return {"standard": {"connector": "iceberg", "table": "certify.staged"}, "widens": {"int16": "int32"}}
    if plugin == "encrypted-parquet":
        keys = tmp_path / "keys"
        keys.mkdir()
        return encrypted_parquet_scenario(keys)
    return {"standard": {"connector": plugin}}


@pytest.mark.parametrize("plugin", ["parquet", "iceberg", "encrypted-parquet"])
def test_builtin_writers_pass_the_staging_rules(plugin: str, tmp_path: Path) -> None:
    report = certify(
        PluginUnderTest("writer", implementation=plugin), scenarios(plugin, tmp_path), tmp_path / "w", RULES
    )
    assert [(r.rule, r.status) for r in report.results] == [(rule, "pass") for rule in RULES], report.to_dict()
    assert "committed once" in report.results[0].message and "every attempt" in report.results[1].message


def test_a_writer_without_the_ability_passes_saying_so(tmp_path: Path) -> None:
    implementation = "support.conformance_plugins:GoodWriter"
    report = certify(PluginUnderTest("writer", implementation=implementation), {"standard": {}}, tmp_path, RULES)
    assert report.passed and all("does not implement StagingWriter" in r.message for r in report.results)


@pytest.mark.parametrize(
    ("cls", "rule", "message"),
    [
        ("SecretInPlan", "writer.staging-commit", "staging_plan() holds a secret in plain text"),
        ("CommitKeepsOtherAttempts", "writer.staging-commit", "left 1 file(s) of an attempt it did not commit"),
        ("AbortKeepsStagedFiles", "writer.staging-abort", "abort() on the driver left"),
    ],
)
def test_broken_stagers_fail_naming_what_they_did(cls: str, rule: str, message: str, tmp_path: Path) -> None:
    target = PluginUnderTest("writer", implementation=f"test_staging_conformance:{cls}")
    report = certify(target, {"standard": {}}, tmp_path, [rule])
    assert report.failed_rules == [rule], report.to_dict()
    assert message in report.results[0].message
    assert SECRET not in report.results[0].message


def test_plugins_certify_cli_runs_the_staging_rules_for_the_parquet_writer() -> None:
    result = dativo("plugins", "certify", "parquet", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    results = {r["rule"]: r for r in json.loads(result.stdout)["results"]}
    assert results["writer.staging-commit"]["status"] == "pass"
    assert "committed once" in results["writer.staging-commit"]["message"]
    assert results["writer.staging-abort"]["status"] == "pass"
