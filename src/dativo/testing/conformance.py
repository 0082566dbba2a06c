"""The conformance checks: every rule of the reader and writer contracts, as functions with structured results.

:func:`certify` runs every rule for one :class:`~dativo.testing.host.PluginUnderTest`
and returns a :class:`Report`; :func:`run_rule` runs one. A check never raises
for a misbehaving plugin: whatever the plugin does (raise, hang up, leak) ends
up as a ``fail`` result naming the rule and what was seen. ``skip`` means the
rule needs a scenario the caller did not give (say, no ``error`` scenario).

Scenarios are sections of a job's ``source:`` (readers) or ``target:``
(writers) — usually just ``options`` — under which the plugin behaves in a
known way (see :class:`Scenarios` and ``docs/plugin-kit.md``).

The checks themselves live in :mod:`dativo.testing._reader_checks` and
:mod:`dativo.testing._writer_checks`, the scenarios in :mod:`dativo.testing.scenarios`.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from dativo.errors import ConfigError
from dativo.sdk import SDK_API_VERSION
from dativo.testing._context import Context, Failed, Skipped, describe
from dativo.testing._reader_checks import LARGE_VALUE_BYTES, READER_CHECKS, RELEASE_WAIT_S
from dativo.testing._staging_checks import STAGING_CHECKS
from dativo.testing._writer_checks import WRITER_CHECKS
from dativo.testing.host import PluginUnderTest
from dativo.testing.scenarios import Scenarios

__all__ = [
    "LARGE_VALUE_BYTES",
    "READER_RULES",
    "RELEASE_WAIT_S",
    "WRITER_RULES",
    "CheckResult",
    "Report",
    "Rule",
    "Scenarios",
    "Status",
    "certify",
    "run_rule",
]

Status = Literal["pass", "fail", "skip"]


@dataclass(frozen=True)
class Rule:
    """One rule of a plugin contract: its id (``reader.empty-source``) and what it demands."""

    id: str
    title: str
    required: bool = True


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one rule: pass, fail (with what was seen) or skip (with why)."""

    rule: str
    title: str
    status: Status
    message: str
    required: bool = True
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``dativo plugins certify --json``)."""
        return asdict(self)


@dataclass
class Report:
    """Every result for one plugin in one runtime; ``passed`` when no required rule failed."""

    plugin: str
    kind: str
    runtime: str
    results: list[CheckResult] = field(default_factory=list)
    sdk_version: str = SDK_API_VERSION

    @property
    def passed(self) -> bool:
        """True when every required rule passed or was skipped."""
        return not any(result.status == "fail" and result.required for result in self.results)

    @property
    def failed_rules(self) -> list[str]:
        """Ids of the rules that failed (required or not)."""
        return [result.rule for result in self.results if result.status == "fail"]

    def result(self, rule: str) -> CheckResult:
        """The result of ``rule``; KeyError when it was not run."""
        for result in self.results:
            if result.rule == rule:
                return result
        raise KeyError(rule)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "plugin": self.plugin,
            "kind": self.kind,
            "runtime": self.runtime,
            "sdk_version": self.sdk_version,
            "passed": self.passed,
            "results": [result.to_dict() for result in self.results],
        }


READER_RULES: dict[str, Rule] = {
    rule.id: rule
    for rule in (
        Rule("reader.schema-before-data", "get_schema() returns a pyarrow.Schema before any data, the same every call"),
        Rule("reader.batches-match-schema", "every batch is valid Arrow with exactly the declared names, order, types"),
        Rule("reader.schema-stable", "the schema does not change mid-stream or after reading"),
        Rule("reader.batch-size-hint", "batches respect read_batch(batch_size) within a factor of two"),
        Rule("reader.empty-source", "an empty source declares its schema and ends with zero rows"),
        Rule("reader.errors-raise", "a failure raises an exception, never ends the data early"),
        Rule("reader.close-idempotent", "close() is safe twice, after reading, mid-stream and after errors"),
        Rule("reader.cancel-releases", "stopping mid-stream and closing releases threads, files and processes"),
        Rule("reader.large-values", "multi-MB text/binary values arrive intact"),
        Rule("reader.types", "every column is a type of the type table (docs/types.md) and reads back valid"),
    )
}

WRITER_RULES: dict[str, Rule] = {
    rule.id: rule
    for rule in (
        Rule("writer.types-roundtrip", "every type of the type table, NULLs included, reads back unchanged"),
        Rule("writer.finalize-metadata", "finalize() returns a JSON-ready dict with 'rows' (and 'files' as a list)"),
        Rule("writer.empty", "zero rows: prepare() then finalize() succeeds and reports rows = 0"),
        Rule("writer.abort-leaves-nothing", "abort() after prepare/write leaves no file behind"),
        Rule("writer.write-after-finalize", "write_batch() after finalize() raises"),
        Rule("writer.close-idempotent", "close() is safe twice, after finalize, after abort, without prepare"),
        Rule(
            "writer.staging-commit",
            "a StagingWriter: partitions staged on fresh instances (key in every file name), one attempt each "
            "committed with the state, the other attempt's files removed; plan and descriptions picklable, no secret",
        ),
        Rule("writer.staging-abort", "a StagingWriter: abort() on the driver removes the files of every attempt"),
    )
}


_CHECKS: dict[str, Callable[[Context], str]] = {**READER_CHECKS, **WRITER_CHECKS, **STAGING_CHECKS}


def _run(ctx: Context, rule: Rule) -> CheckResult:
    started = time.monotonic()
    status: Status
    try:
        message = _CHECKS[rule.id](ctx)
        status = "pass"
    except Skipped as exc:
        status, message = "skip", str(exc)
    except Failed as exc:
        status, message = "fail", str(exc)
    except Exception as exc:
        status, message = "fail", f"raised {describe(exc)}"
    return CheckResult(rule.id, rule.title, status, message, rule.required, round(time.monotonic() - started, 3))


def _rules(kind: str) -> dict[str, Rule]:
    return READER_RULES if kind == "reader" else WRITER_RULES


def certify(
    target: PluginUnderTest,
    scenarios: Scenarios | Mapping[str, Any] | None = None,
    workdir: Path | None = None,
    rules: Sequence[str] | None = None,
) -> Report:
    """Run every rule (or ``rules``) of the plugin's kind against ``target``; never raises for a bad plugin.

    ``workdir`` holds what writers write (a temporary folder, removed afterwards, when None).
    Raises ConfigError for unknown rule ids or malformed scenarios.
    """
    if not isinstance(scenarios, Scenarios):
        scenarios = Scenarios.from_mapping(scenarios or {})
    known = _rules(target.kind)
    chosen = list(rules) if rules is not None else list(known)
    unknown = [rule for rule in chosen if rule not in known]
    if unknown:
        raise ConfigError(f"unknown {target.kind} rule(s): {', '.join(unknown)} (known: {', '.join(known)})")
    report = Report(plugin=target.label, kind=target.kind, runtime=target.runtime)
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dativo-certify-")))
        workdir.mkdir(parents=True, exist_ok=True)
        ctx = Context(target, scenarios, workdir.resolve())
        report.results = [_run(ctx, known[rule]) for rule in chosen]
    return report


def run_rule(
    target: PluginUnderTest,
    rule: str,
    scenarios: Scenarios | Mapping[str, Any] | None = None,
    workdir: Path | None = None,
) -> CheckResult:
    """Run one rule (``reader.empty-source``); see :func:`certify`."""
    return certify(target, scenarios, workdir, [rule]).results[0]
