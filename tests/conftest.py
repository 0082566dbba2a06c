import pytest

pytest_plugins = [
    "support.pg_fixtures",
    "support.s3_fixtures",
    "support.kms_fixtures",
    "support.iceberg_fixtures",
    "support.ray_fixtures",
    "support.staging_fixtures",
]

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember every skipped test (on the xdist controller too: reports travel there)."""
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite skips nothing: a skip hides a missing server or tool, so it fails the run."""
    if _skipped and exitstatus == 0 and not hasattr(session.config, "workerinput"):
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    if _skipped:
        terminalreporter.write_line(
            f"FAILED: {len(_skipped)} test(s) skipped; the suite must skip nothing (install what they need): "
            + ", ".join(_skipped[:20]),
            red=True,
        )
