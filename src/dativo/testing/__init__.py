"""The plugin conformance suite: the same checks for every language and runtime.

Programmatically::

    from dativo.testing import PluginUnderTest, certify
    report = certify(PluginUnderTest("reader", implementation="my_pkg:MyReader"), {"empty": {"options": {"rows": 0}}})
    assert report.passed, report.failed_rules

As a pytest plugin (registered through the ``pytest11`` entry point, so it is
active wherever dativo is installed), subclass :class:`ReaderConformance` or
:class:`WriterConformance`: one test per rule is generated. ``dativo plugins
certify`` runs the same checks from the command line. Rules and scenarios:
``docs/plugin-kit.md``.
"""

from __future__ import annotations

from dativo.testing.conformance import (
    READER_RULES,
    WRITER_RULES,
    CheckResult,
    Report,
    Rule,
    Scenarios,
    certify,
    run_rule,
)
from dativo.testing.host import PluginUnderTest, Runtime, serve_command, served_by_flight
from dativo.testing.pytest_plugin import ReaderConformance, WriterConformance
from dativo.testing.type_table import FOUNDATION_TYPES, sample_table

__all__ = [
    "FOUNDATION_TYPES",
    "READER_RULES",
    "WRITER_RULES",
    "CheckResult",
    "PluginUnderTest",
    "ReaderConformance",
    "Report",
    "Rule",
    "Runtime",
    "Scenarios",
    "WriterConformance",
    "certify",
    "run_rule",
    "sample_table",
    "serve_command",
    "served_by_flight",
]
