"""The conformance suite's pure parts: every rule has a check, scenario files parse and are checked, leaks are seen."""

from __future__ import annotations

import os
import re
import socket
import threading

import pytest

from dativo.errors import ConfigError
from dativo.testing import READER_RULES, WRITER_RULES, Scenarios
from dativo.testing._reader_checks import Resources
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


def test_a_leaked_thread_with_the_ident_of_one_that_ended_is_still_seen():
    """The CI flake of reader.cancel-releases: glibc gives a new thread the ident of one that just ended."""
    ended = threading.Thread(target=lambda: None)
    ended.start()
    before = Resources()
    ended.join()
    stop = threading.Event()
    leaked = threading.Thread(target=stop.wait, name="leaked", daemon=True)
    leaked.start()
    try:
        assert leaked.ident == ended.ident  # the reuse this test is about (glibc's stack cache)
        assert Resources().added_since(before) == ["1 thread(s) (leaked)"]
    finally:
        stop.set()
        leaked.join()
    assert Resources().added_since(before) == []


def test_a_leaked_descriptor_with_the_number_of_one_that_closed_is_still_seen():
    read_end, write_end = os.pipe()
    before = Resources()
    os.close(read_end)
    os.close(write_end)
    sockets = socket.socketpair()  # takes the lowest free numbers: the pipe's
    try:
        assert {s.fileno() for s in sockets} == {read_end, write_end}
        assert Resources().added_since(before) == ["2 file descriptor(s)"]
    finally:
        for s in sockets:
            s.close()
    assert Resources().added_since(before) == []


def test_a_file_deleted_while_open_is_not_a_new_descriptor(tmp_path):
    with open(tmp_path / "spool", "wb") as held:
        before = Resources()
        os.unlink(held.name)  # /proc/self/fd now reads ".../spool (deleted)"
        assert Resources().added_since(before) == []
