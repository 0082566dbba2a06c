"""The plugin author kit: the conformance suite catches broken plugins in every runtime; `dativo plugins certify`.

Generated projects (`dativo init plugin`) are built and certified in tests/test_plugin_templates.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dativo.testing import (
    READER_RULES,
    WRITER_RULES,
    PluginUnderTest,
    ReaderConformance,
    WriterConformance,
    certify,
    served_by_flight,
)

from support.cli import dativo
from support.conformance_plugins import BROKEN_READERS, BROKEN_WRITERS, SCENARIOS

PLUGINS = Path(__file__).parent / "support" / "conformance_plugins.py"


def impl(cls: str) -> str:
    return f"{PLUGINS}:{cls}"


@pytest.mark.parametrize(("cls", "rule"), sorted(BROKEN_READERS.items()))
def test_each_broken_reader_fails_certification_naming_its_rule(cls, rule, tmp_path):
    report = certify(PluginUnderTest("reader", implementation=impl(cls)), SCENARIOS["reader"], tmp_path)
    assert not report.passed
    assert rule in report.failed_rules, report.to_dict()
    assert report.result(rule).message  # says what was seen


@pytest.mark.parametrize(("cls", "rule"), sorted(BROKEN_WRITERS.items()))
def test_each_broken_writer_fails_certification_naming_its_rule(cls, rule, tmp_path):
    report = certify(PluginUnderTest("writer", implementation=impl(cls)), SCENARIOS["writer"], tmp_path)
    assert not report.passed
    assert rule in report.failed_rules, report.to_dict()


@pytest.mark.parametrize("runtime", ["custom", "process", "flight"])
@pytest.mark.parametrize("kind", ["reader", "writer"])
def test_well_behaved_plugins_pass_every_rule_in_every_runtime(kind, runtime, tmp_path):
    cls = "GoodReader" if kind == "reader" else "GoodWriter"
    if runtime == "flight":
        with served_by_flight(impl(cls), kind) as endpoint:
            report = certify(PluginUnderTest(kind, "flight", endpoint=endpoint), SCENARIOS[kind], tmp_path)
    else:
        report = certify(PluginUnderTest(kind, runtime, implementation=impl(cls)), SCENARIOS[kind], tmp_path)
    rules = READER_RULES if kind == "reader" else WRITER_RULES
    assert [r.rule for r in report.results] == list(rules)
    assert [(r.rule, r.status) for r in report.results] == [(rule, "pass") for rule in rules], report.to_dict()
    assert report.passed and report.runtime == runtime


@pytest.mark.parametrize(
    ("kind", "cls", "rule"),
    [
        ("reader", "SwallowsErrors", "reader.errors-raise"),
        ("reader", "FewerColumnsThanDeclared", "reader.batches-match-schema"),
        ("writer", "LeavesFilesAfterAbort", "writer.abort-leaves-nothing"),
        ("writer", "LosesTypes", "writer.types-roundtrip"),
    ],
)
def test_broken_plugins_are_caught_out_of_process_too(kind, cls, rule, tmp_path):
    report = certify(PluginUnderTest(kind, "process", implementation=impl(cls)), SCENARIOS[kind], tmp_path, [rule])
    assert report.failed_rules == [rule], report.to_dict()


def test_missing_scenarios_skip_with_the_reason(tmp_path):
    report = certify(PluginUnderTest("reader", implementation=impl("GoodReader")), {"standard": {}}, tmp_path)
    skipped = {r.rule: r.message for r in report.results if r.status == "skip"}
    assert set(skipped) == {"reader.empty-source", "reader.errors-raise", "reader.large-values", "reader.types"}
    assert "no 'empty' scenario" in skipped["reader.empty-source"]
    assert report.passed  # skips are not failures


def test_certify_cli_reports_each_rule_and_exits_by_verdict(tmp_path):
    config = tmp_path / "conformance.yaml"
    config.write_text(yaml.safe_dump(SCENARIOS))
    bad = dativo("plugins", "certify", impl("SwallowsErrors"), "--config", str(config), "--json")
    assert bad.returncode == 1, bad.stderr
    report = json.loads(bad.stdout)
    assert report["passed"] is False and report["kind"] == "reader"
    statuses = {r["rule"]: r["status"] for r in report["results"]}
    assert statuses["reader.errors-raise"] == "fail"
    assert statuses["reader.empty-source"] == "pass"

    good = dativo("plugins", "certify", impl("GoodWriter"), "--config", str(config))
    assert good.returncode == 0, good.stdout + good.stderr
    assert "certified" in good.stdout and "writer.abort-leaves-nothing" in good.stdout

    unknown = dativo("plugins", "certify", "no-such-plugin")
    assert unknown.returncode == 2
    assert "no installed" in unknown.stderr


class TestGoodReaderThroughThePytestPlugin(ReaderConformance):
    """The pytest11 plugin: one generated test per reader rule."""

    plugin = PluginUnderTest("reader", implementation=impl("GoodReader"))
    scenarios = SCENARIOS["reader"]


class TestGoodWriterThroughThePytestPlugin(WriterConformance):
    plugin = PluginUnderTest("writer", implementation=impl("GoodWriter"))
    scenarios = SCENARIOS["writer"]


def test_pytest_plugin_generates_one_test_per_rule_and_reports_failures(tmp_path):
    (tmp_path / "test_broken.py").write_text(
        "from dativo.testing import PluginUnderTest, ReaderConformance\n"
        "class TestBroken(ReaderConformance):\n"
        f"    plugin = PluginUnderTest('reader', implementation={impl('SwallowsErrors')!r})\n"
        f"    scenarios = {SCENARIOS['reader']!r}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", "test_broken.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout
    assert f"1 failed, {len(READER_RULES) - 1} passed" in result.stdout
    assert "FAILED test_broken.py::TestBroken::test_rule[reader.errors-raise]" in result.stdout
    assert "ended normally" in result.stdout


def test_dativo_certify_fixture(dativo_certify):
    report = dativo_certify(PluginUnderTest("writer", implementation=impl("EmptyWriteFails")), SCENARIOS["writer"])
    assert report.failed_rules == ["writer.empty"]
