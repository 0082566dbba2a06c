"""The conformance suite's pure parts: every rule has a check, scenario files parse and are checked."""

from __future__ import annotations

import re

import pytest

from dativo.errors import ConfigError
from dativo.testing import READER_RULES, WRITER_RULES, Scenarios
from dativo.testing.conformance import _CHECKS
from dativo.testing.scenarios import LOSSLESS_WIDENINGS, load_read_back


def test_every_rule_has_exactly_one_check():
    assert set(_CHECKS) == set(READER_RULES) | set(WRITER_RULES)
    assert all(rule.startswith("reader.") for rule in READER_RULES)
    assert all(rule.startswith("writer.") for rule in WRITER_RULES)


def test_a_scenario_file_with_read_back_and_widens(tmp_path):
    path = tmp_path / "conformance.yaml"
    path.write_text(
        "writer:\n"
        "  standard: {options: {compression: none}}\n"
        "  read_back: dativo.targets.encrypted_parquet:read_back\n"
        "  widens: {int16: int32}\n"
    )
    scenarios = Scenarios.from_file(path, "writer")
    assert scenarios.standard == {"options": {"compression": "none"}}
    assert scenarios.widens == {"int16": "int32"}
    assert load_read_back(scenarios.read_back).__name__ == "read_back"  # type: ignore[arg-type]
    assert Scenarios.from_file(path, "reader") == Scenarios()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"widens": {"int32": "int16"}}, "widens int32 -> int16 is not a lossless widening"),
        ({"widens": {"string": "binary"}}, "widens string -> binary is not a lossless widening"),
        ({"widens": ["int16"]}, "widens must be a mapping"),
        ({"read_back": "no_colon"}, "read_back must be an import path 'pkg.module:function'"),
        ({"standrd": {}}, "unknown scenario(s) standrd"),
        ({"empty": "none"}, "scenario 'empty' must be a mapping"),
    ],
)
def test_scenario_keys_are_checked(section, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Scenarios.from_mapping(section)


def test_only_lossless_widenings_can_be_declared():
    for narrow, wide in LOSSLESS_WIDENINGS:
        assert Scenarios.from_mapping({"widens": {narrow: wide}}).widens == {narrow: wide}
    with pytest.raises(ConfigError, match="cannot be imported"):
        load_read_back("dativo.no_such_module:read")
    with pytest.raises(ConfigError, match="is a str, not a function"):
        load_read_back("dativo.targets.encrypted_parquet:WRITER_NAME")
