"""pytest integration of the conformance suite (entry point ``pytest11``: ``dativo``).

Subclass :class:`ReaderConformance` / :class:`WriterConformance` in a test
module and set ``plugin`` (a :class:`~dativo.testing.host.PluginUnderTest`)
and ``scenarios``; pytest then runs one test per rule, named after it
(``test_rule[reader.empty-source]``). A failing rule fails its test with what
was seen; a rule whose scenario is missing is skipped with the reason.

The ``dativo_certify`` fixture runs a whole certification into ``tmp_path``::

    def test_my_reader(dativo_certify):
        report = dativo_certify(PluginUnderTest("reader", implementation="my_pkg:Reader"))
        assert report.passed, report.failed_rules
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from dativo.testing.conformance import READER_RULES, WRITER_RULES, Report, Scenarios, certify, run_rule
from dativo.testing.host import PluginUnderTest

__all__ = ["ReaderConformance", "WriterConformance", "dativo_certify", "pytest_generate_tests"]


class _Conformance:
    kind: ClassVar[str]
    #: The plugin under test (implementation and runtime).
    plugin: ClassVar[PluginUnderTest]
    #: Scenarios (a :class:`Scenarios` or the mapping of a scenario file's ``reader:``/``writer:`` part).
    scenarios: ClassVar[Scenarios | Mapping[str, Any]] = {}

    def test_rule(self, dativo_rule: str, tmp_path: Path) -> None:
        """One rule of the contract against ``plugin``."""
        result = run_rule(self.plugin, dativo_rule, self.scenarios, tmp_path)
        if result.status == "skip":
            pytest.skip(f"{dativo_rule}: {result.message}")
        if result.status == "fail":
            pytest.fail(f"{dativo_rule} ({result.title}): {result.message}", pytrace=False)


class ReaderConformance(_Conformance):
    """Base class of a reader's conformance tests: one test per reader rule."""

    kind = "reader"


class WriterConformance(_Conformance):
    """Base class of a writer's conformance tests: one test per writer rule."""

    kind = "writer"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``dativo_rule`` with the rules of the test class's kind."""
    if "dativo_rule" not in metafunc.fixturenames or metafunc.cls is None:
        return
    rules = READER_RULES if getattr(metafunc.cls, "kind", "reader") == "reader" else WRITER_RULES
    metafunc.parametrize("dativo_rule", list(rules), ids=list(rules))


@pytest.fixture
def dativo_certify(tmp_path: Path) -> Callable[..., Report]:
    """``dativo_certify(plugin, scenarios=None, rules=None)``: a :class:`Report`, writing under ``tmp_path``."""

    def run(
        plugin: PluginUnderTest, scenarios: Scenarios | Mapping[str, Any] | None = None, rules: list[str] | None = None
    ) -> Report:
        return certify(plugin, scenarios, tmp_path / "certify", rules)

    return run
