"""`validate --offline` and the state commands never reach the source, not even for a reader asking a source plan."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dativo import api
from dativo.config.loader import load_job
from dativo.engine.plan import build_plan

from support.cli import assert_one_line_error, dativo

SUPPORT = Path(__file__).parent / "support"

#: Readers that ask for the postgres connector's plan: in process by class attribute, over Flight by the job.
READERS = {
    "wants_source_plan": f"{{implementation: '{SUPPORT / 'plan_echo.py'}:PlanEchoReader'}}",
    "source_plan: true": "{type: flight, endpoint: 'grpc://127.0.0.1:1', source_plan: true}",
}


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port that accepts connections and records them: a PostgreSQL nobody may contact."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock


def contacted(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def closed_port() -> int:
    with socket.socket() as sock:  # bound, never listening, then closed: connections are refused
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_job(tmp_path: Path, port: int, reader: str) -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(
        "source:\n"
        "  connector: postgres\n"
        f"  connection: {{host: 127.0.0.1, port: {port}, user: app, password: s3cr3t-pw, database: shop}}\n"
        "  table: public.orders\n"
        f"  reader: {reader}\n"
        "target: {connector: parquet, path: out}\n"
    )
    return job


@pytest.mark.parametrize("reader", list(READERS))
def test_validate_offline_and_state_never_contact_the_source(tmp_path, listener, reader):
    job = write_job(tmp_path, listener.getsockname()[1], READERS[reader])

    started = time.monotonic()
    offline = dativo("validate", "--offline", job)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.startswith("ok ") and "job.yaml" in offline.stdout
    assert time.monotonic() - started < 60  # no connect timeout waited out (typically under a second)

    state = dativo("state", "show", job)
    assert state.returncode == 0, state.stderr
    assert state.stdout.strip() == "null"  # the parquet target has no committed state yet

    assert [r.ok for r in api.validate(job, offline=True)] == [True]
    assert "postgres_plan" not in build_plan(load_job(job), contact_source=False).reader.config
    assert not contacted(listener)  # nothing above opened a connection to the "source"


@pytest.mark.parametrize("reader", list(READERS))
def test_validate_online_fails_with_one_line_naming_the_source(tmp_path, reader):
    port = closed_port()
    job = write_job(tmp_path, port, READERS[reader])
    result = dativo("validate", job)
    line = assert_one_line_error(result, f"cannot connect to PostgreSQL at 127.0.0.1:{port}", "Connection refused")
    assert "s3cr3t-pw" not in result.stdout + result.stderr
    assert result.returncode == 1, line
