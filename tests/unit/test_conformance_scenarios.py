"""The conformance suite's pure parts: every rule has a check, scenario files parse and are checked, leaks are seen."""

from __future__ import annotations

import os
import re
import socket
import threading
import time

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


def _thread_reusing_an_ident() -> tuple[Resources, threading.Thread, threading.Event]:
    """A snapshot taken while a thread ran, then a running thread that was given that (ended) thread's ident.

    glibc hands a new thread the stack, and so the ident, of a thread that has fully exited; CPython's
    join() returns a moment before that, so wait for the kernel to drop the task, and retry if the
    cache handed out another stack.
    """
    for _ in range(50):
        finish = threading.Event()
        ended = threading.Thread(target=finish.wait)
        ended.start()
        before = Resources()  # `ended` is running here
        finish.set()
        ended.join()
        while os.path.exists(f"/proc/self/task/{ended.native_id}"):
            time.sleep(0.001)
        stop = threading.Event()
        leaked = threading.Thread(target=stop.wait, name="leaked", daemon=True)
        leaked.start()
        if leaked.ident == ended.ident:
            return before, leaked, stop
        stop.set()
        leaked.join()
    raise AssertionError("no thread was given an ended thread's ident in 50 tries: this test cannot run here")


def test_a_leaked_thread_with_the_ident_of_one_that_ended_is_still_seen():
    """The CI flake of reader.cancel-releases: a thread leaked during the check took the ident of one that ended."""
    before, leaked, stop = _thread_reusing_an_ident()
    try:
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
