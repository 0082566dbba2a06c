"""Process plugins from a real virtualenv (issue #10), streams that end only on their marker and
bounded stderr (issue #12), multi-call binaries keeping their name.

The virtualenvs are real (``python -m venv``) and live outside the checkout, under
pytest's /tmp folder -- which the sandbox hides behind its private /tmp -- so a
plugin works only when its interpreter environment is shown to it completely.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from dativo.config.loader import load_job
from dativo.engine import pipeline
from dativo.engine.plan import build_plan
from dativo.errors import PluginError, SourceError
from dativo.runtimes.protocol import ProtocolError

from support.sandbox_support import make_venv, shell_plugin

PREFIX_READER = """
import os, sys
import pyarrow as pa
from dativo.sdk import DataReader

SCHEMA = pa.schema([("prefix", pa.string()), ("base", pa.string()), ("argv0", pa.string()), ("cfg", pa.bool_())])

class PrefixReader(DataReader):
    def get_schema(self):
        return SCHEMA

    def read_batch(self, batch_size):
        row = [sys.prefix, sys.base_prefix, sys.argv[0], os.path.exists(os.path.join(sys.prefix, "pyvenv.cfg"))]
        yield pa.record_batch([pa.array([v]) for v in row], schema=SCHEMA)
"""

CONSOLE_SCRIPT = """#!{python}
import sys
from dativo.cli import main
if __name__ == "__main__":
    sys.exit(main())
"""


def write_job(folder: Path, reader: dict[str, Any], **target: Any) -> Path:
    job = {
        "name": "venv",
        "source": {"connector": "custom", "reader": reader},
        "target": {"connector": "parquet", "path": "out", **target},
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def no_output(folder: Path) -> bool:
    out = folder / "out"
    return not out.exists() or not any(out.rglob("*"))


def run(path: Path) -> pipeline.RunSummary:
    return pipeline.run(build_plan(load_job(path)))


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv under /tmp, outside the checkout, with its own ``dativo`` console script."""
    root = tmp_path_factory.mktemp("venvs") / "plugin-venv"
    python = make_venv(root)
    script = root / "bin" / "dativo"
    script.write_text(CONSOLE_SCRIPT.format(python=python))
    script.chmod(0o755)
    assert python.is_symlink()  # the case that broke: bin/python points at the base interpreter
    return root


@pytest.fixture
def prefix_reader(tmp_path: Path) -> str:
    code = tmp_path / "plugin-code"
    code.mkdir()
    (code / "prefix_reader.py").write_text(PREFIX_READER)
    return f"{code / 'prefix_reader.py'}:PrefixReader"


@pytest.mark.parametrize("enabled", [True, False], ids=["sandbox", "no-sandbox"])
def test_a_venv_interpreter_stays_the_venvs(tmp_path, venv, prefix_reader, enabled):
    python = venv / "bin" / "python"
    command = [str(python), "-m", "dativo.runtimes.serve", "process", prefix_reader]
    job = write_job(tmp_path, {"type": "process", "command": command, "sandbox": {"enabled": enabled}})
    assert run(job).rows == 1
    row = pq.read_table(tmp_path / "out").to_pylist()[0]
    assert row["prefix"] == str(venv)  # not the base interpreter's prefix
    assert row["base"] != str(venv)
    assert row["cfg"] is True  # pyvenv.cfg is visible inside the sandbox


@pytest.mark.parametrize("enabled", [True, False], ids=["sandbox", "no-sandbox"])
def test_the_documented_dativo_serve_command_works_from_an_activated_venv(tmp_path, venv, prefix_reader, enabled):
    """As a user does it: ``. venv/bin/activate; dativo run job.yaml`` with ``command: [dativo, serve, ...]``."""
    reader = {
        "type": "process",
        "command": ["dativo", "serve", "process", prefix_reader],
        "sandbox": {"enabled": enabled},
    }
    job = write_job(tmp_path, reader)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "VIRTUAL_ENV": str(venv), "LANG": "C.UTF-8", "HOME": str(tmp_path)}
    result = subprocess.run(
        [str(venv / "bin" / "dativo"), "run", str(job), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    row = pq.read_table(tmp_path / "out").to_pylist()[0]
    assert row["prefix"] == str(venv) and row["cfg"] is True


# ------------------------------------------------------------------------------------------------
# A stream ends only on its end-of-stream marker
# ------------------------------------------------------------------------------------------------

CUT_SHORT = """
import base64, json, os, sys
import pyarrow as pa
schema = pa.schema([("n", pa.int64())])
sys.stdin.readline()
sink = pa.BufferOutputStream(); pa.ipc.new_stream(sink, schema).close()
out = os.fdopen(1, "wb")
encoded = base64.b64encode(sink.getvalue().to_pybytes()).decode()
out.write((json.dumps({"dativo": "hello", "protocol": 1, "schema": encoded}) + "\\n").encode())
out.flush()
sys.stdin.readline()
sink = pa.BufferOutputStream()
writer = pa.ipc.new_stream(sink, schema)
for i in range(5):
    writer.write_batch(pa.record_batch([pa.array(range(i * 1000, (i + 1) * 1000))], schema=schema))
data = sink.getvalue().to_pybytes()  # the writer is never closed: no end-of-stream marker
out.write(data)
out.flush()
sys.exit(0)
"""


def test_a_process_reader_stream_without_its_marker_fails_the_run(tmp_path):
    (tmp_path / "cut.py").write_text(CUT_SHORT)
    job = write_job(tmp_path, {"type": "process", "name": "cut", "command": [sys.executable, "cut.py"]})
    with pytest.raises(ProtocolError) as info:
        run(job)
    message = str(info.value)
    assert "reader plugin 'cut'" in message and "after 5 batches" in message
    assert "ended without the end-of-stream marker" in message and "\n" not in message
    assert no_output(tmp_path)  # nothing committed


def test_a_writer_input_without_its_marker_is_not_published(tmp_path):
    """``dativo serve`` as a writer: its stdin stream is cut before the marker; it aborts and says so."""
    out = tmp_path / "out"
    config = {"connector": "parquet", "path": str(out), "job": {"name": "w", "dir": str(tmp_path), "run_id": "r1"}}
    schema = pa.schema([("n", pa.int64())])
    sink = pa.BufferOutputStream()
    writer = pa.ipc.new_stream(sink, schema)
    writer.write_batch(pa.record_batch([pa.array([1, 2, 3])], schema=schema))
    cut = sink.getvalue().to_pybytes()  # not closed: no marker
    handshake = {"dativo": "handshake", "protocol": 1, "protocols": [1], "kind": "writer", "config": config}
    stdin = (json.dumps(handshake) + "\n" + json.dumps({"command": "write"}) + "\n").encode() + cut
    result = subprocess.run(
        [sys.executable, "-m", "dativo.runtimes.serve", "process", "parquet"],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    record = json.loads(result.stderr.decode().strip().splitlines()[-1])
    assert record["dativo"] == "error"
    assert "ended without the end-of-stream marker after 1 batches; nothing was published" in record["message"]
    assert not out.exists() or not list(out.rglob("*.parquet"))


def test_a_flight_stream_without_its_marker_fails_the_run(tmp_path):
    """A Flight server that ends DoGet cleanly but early (no end marker) fails the run."""
    import pyarrow.flight as flight

    schema = pa.schema([("n", pa.int64())])

    class EarlyEnd(flight.FlightServerBase):  # type: ignore[misc]
        def get_schema(self, context: Any, descriptor: Any) -> Any:
            return flight.SchemaResult(schema)

        def do_get(self, context: Any, ticket: Any) -> Any:
            batch = pa.record_batch([pa.array([1, 2])], schema=schema)
            return flight.GeneratorStream(schema, iter([batch, batch]))

    server = EarlyEnd("grpc://127.0.0.1:0")
    try:
        job = write_job(tmp_path, {"type": "flight", "name": "early", "endpoint": f"grpc://127.0.0.1:{server.port}"})
        with pytest.raises(ProtocolError) as info:
            run(job)
    finally:
        server.shutdown()
    assert "reader plugin 'early'" in str(info.value)
    assert "ended without the end-of-stream marker after 2 batches" in str(info.value)
    assert no_output(tmp_path)


# ------------------------------------------------------------------------------------------------
# stderr: read in blocks, bounded lines; an exited plugin is reported as exited
# ------------------------------------------------------------------------------------------------


def test_a_huge_stderr_line_then_exit_is_reported_as_the_exit(tmp_path):
    (tmp_path / "noisy.py").write_text(
        "import os, sys\nos.write(2, b'x' * (100 * 1024 * 1024) + b'\\n')\n"
        "os.write(2, b'final words\\n')\nsys.exit(1)\n"
    )
    job = write_job(tmp_path, {"type": "process", "name": "noisy", "command": [sys.executable, "noisy.py"]})
    with pytest.raises(SourceError) as info:
        run(job)
    message = str(info.value)
    assert "reader plugin 'noisy' exited with code 1 (starting up)" in message
    assert "last stderr line: 'final words'" in message
    assert "handshake" not in message


def test_heavy_logging_around_a_good_stream_is_fast(tmp_path, caplog):
    script = shell_plugin(
        tmp_path / "plugin",
        pa.table({"n": [1, 2, 3]}),
        stderr_command="yes 'a log line of about forty bytes, again' | head -n 300000",
    )
    job = write_job(tmp_path, {"type": "process", "name": "chatty", "command": [str(script)]})
    import time

    started = time.monotonic()
    with caplog.at_level("WARNING"):
        assert run(job).rows == 3
    assert time.monotonic() - started < 60  # 300,000 lines; one byte per read took minutes


# ------------------------------------------------------------------------------------------------
# Multi-call binaries keep the name they are called by
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("enabled", [True, False], ids=["sandbox", "no-sandbox"])
def test_a_multi_call_binary_keeps_its_name(tmp_path, enabled, caplog):
    folder = tmp_path / "tools"
    script = shell_plugin(folder, pa.table({"n": [1]}), stderr_command='basename "$0"')
    alias = folder / "my-reader"
    alias.symlink_to(script.name)
    job = write_job(
        tmp_path, {"type": "process", "name": "multi", "command": [str(alias)], "sandbox": {"enabled": enabled}}
    )
    with caplog.at_level("INFO"):
        assert run(job).rows == 1
    records = [r.getMessage() for r in caplog.records if r.name == "dativo.plugin.multi"]
    assert records == ["plugin says: my-reader"]


def test_a_plugin_error_names_the_plugin_not_a_missing_handshake(tmp_path):
    (tmp_path / "dies.py").write_text("import sys\nsys.stderr.write('boom\\n')\nsys.exit(7)\n")
    job = write_job(tmp_path, {"type": "process", "name": "dies", "command": [sys.executable, "dies.py"]})
    with pytest.raises((SourceError, PluginError)) as info:
        run(job)
    assert "reader plugin 'dies' exited with code 7 (starting up); last stderr line: 'boom'" in str(info.value)
