"""The one entry-point lookup (core/entrypoints.py): every kind fails the same way on an unknown name."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dativo.core import entrypoints
from dativo.core.hosting import find_runtime
from dativo.core.registry import resolve_plugin
from dativo.engine.executor import LOCAL, find_executor
from dativo.errors import PluginError

from support.fake_dist import fake_distribution


def test_an_unknown_executor_names_the_group_the_closest_name_and_what_is_installed() -> None:
    with pytest.raises(PluginError) as info:
        find_executor("rya")
    assert str(info.value) == (
        "engine.executor: executor 'rya': no installed executor has that name (did you mean 'ray'? "
        "installed: local, ray; entry-point group 'dativo.executors'); "
        "'ray' is installed with pip install 'dativo[ray]'"
    )
    assert find_executor("local") is LOCAL and find_executor("ray").name == "ray"


@pytest.mark.parametrize(
    ("lookup", "start"),
    [
        (lambda: find_runtime("porcess", "reader 'r'"), "reader 'r': runtime 'porcess': no installed runtime"),
        (lambda: find_executor("nope"), "engine.executor: executor 'nope': no installed executor"),
        (
            lambda: resolve_plugin("reader", "postgres-adbcc", Path.cwd()),
            "reader 'postgres-adbcc': no installed reader",
        ),
    ],
)
def test_every_kind_says_unknown_names_the_same_way(lookup, start: str) -> None:
    with pytest.raises(PluginError) as info:
        lookup()
    message = str(info.value)
    assert message.startswith(start + " has that name (") and "; entry-point group 'dativo." in message
    assert "\n" not in message


def test_a_distribution_installed_after_a_scan_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    group = "dativo.test-entrypoints"
    assert entrypoints.entry_point_names(group) == []
    fake_distribution(tmp_path, "late-plugin", "1.0", {group: {"late": "json:dumps"}})
    monkeypatch.syspath_prepend(str(tmp_path))
    assert entrypoints.entry_point_names(group) == ["late"]
    assert entrypoints.load_entry_point(group, "late", "thing", callable, "__call__") is __import__("json").dumps
    with pytest.raises(PluginError, match=r"^thing 'late' \(json:dumps\) does not define a mapping$"):
        entrypoints.load_entry_point(group, "late", "thing", lambda value: isinstance(value, dict), "a mapping")
    assert sys.path[0] == str(tmp_path)
