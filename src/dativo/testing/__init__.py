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

Only the two pytest base classes need pytest; everything else here (``certify``,
``sample_table``, ...) works without it, so a plugin may import it at run time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
from dativo.testing.type_table import FOUNDATION_TYPES, sample_table

if TYPE_CHECKING:
    from dativo.testing.pytest_plugin import ReaderConformance, WriterConformance

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


def __getattr__(name: str) -> Any:
    """Import the pytest base classes only when asked for: a plugin's run time needs no pytest."""
    if name in ("ReaderConformance", "WriterConformance"):
        try:
            module = importlib.import_module("dativo.testing.pytest_plugin")
        except ModuleNotFoundError as exc:
            if exc.name != "pytest":
                raise
            raise ImportError(
                f"dativo.testing.{name} is a pytest test class and needs pytest: pip install pytest"
            ) from None
        return getattr(module, name)
    raise AttributeError(f"module 'dativo.testing' has no attribute {name!r}")
