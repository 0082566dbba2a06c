"""The first day of a new user (issue 10): every config problem at once, plain YAML errors,
"did you mean", missing extras named at validate time, Rich markup not eating Arrow types,
a generated plugin that runs without pytest, retries visible on a terminal, --help."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dativo.testing.scaffold import generate

from support.cli import assert_one_line_error, dativo

HIDE = str(Path(__file__).parent / "support" / "hide_modules")


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_lines(result) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_every_problem_in_the_file_is_listed_with_did_you_mean(tmp_path):
    job = write(
        tmp_path,
        """\
        source:
          connector: files
          path: data.csv
          batch_szie: 10
        target:
          conector: iceberg
          tabel: raw.orders
        """,
    )
    result = dativo("validate", "--offline", job)
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 3, lines
    assert all(line.startswith("error: ") for line in lines), lines
    assert "job.yaml:4: source.batch_szie: unknown key" in lines[0]
    # One mistake, one line: the misspelt key names the required key it was meant to be.
    assert "job.yaml:6: target.conector: unknown key; did you mean 'connector' (a required key)?" in lines[1]
    assert "job.yaml:7: target.tabel: unknown key; did you mean 'table'?" in lines[2]
    assert "more problem" not in result.stderr and "required key is missing" not in result.stderr


def test_unknown_connector_and_plugin_suggest_the_closest_name(tmp_path):
    job = write(tmp_path, "source: {connector: file, path: x.csv}\ntarget: {connector: icebreg, table: a.b}\n")
    lines = error_lines(dativo("validate", "--offline", job))
    assert any("unknown source connector 'file' (did you mean 'files'?" in line for line in lines), lines
    assert any("unknown target connector 'icebreg' (did you mean 'iceberg'?" in line for line in lines), lines
    job = write(
        tmp_path,
        "source: {connector: files, path: x.csv, reader: {implementation: fils}}\n"
        "target: {connector: iceberg, table: a.b}\n",
    )
    assert_one_line_error(dativo("validate", "--offline", job), "reader 'fils'", "did you mean 'files'?", code=2)


def test_yaml_syntax_errors_are_plain_words_with_line_and_column(tmp_path):
    job = write(tmp_path, "source:\n  connector: files\n   path: data.csv\ntarget:\n  connector: iceberg\n")
    line = assert_one_line_error(dativo("validate", job), code=2)
    assert re.search(r"job\.yaml:3:\d+: invalid YAML: a ':' where a value was expected", line), line
    job = write(tmp_path, "source:\n\tconnector: files\n")
    line = assert_one_line_error(dativo("validate", job), code=2)
    assert re.search(r"job\.yaml:2:1: invalid YAML: a tab", line), line


def test_a_missing_extra_is_named_at_validate_time(tmp_path):
    """As in a base install: `validate` and `plugins list` name the extra before any run."""
    # dativo[native]'s reader needs no psycopg: a base install has it neither
    env = {"PYTHONPATH": HIDE, "DATIVO_TEST_HIDE": "psycopg,adbc_driver_postgresql,cryptography,dativo_postgres_rs"}
    pg = write(
        tmp_path,
        "source: {connector: postgres, connection: {dsn: 'postgresql://u@127.0.0.1:1/d'}, table: public.t}\n"
        "target: {connector: iceberg, table: a.b}\n",
        "pg.yaml",
    )
    assert_one_line_error(
        dativo("validate", "--offline", pg, env=env), "reader 'postgres-adbc' needs", "pip install 'dativo[postgres]'"
    )
    enc = write(
        tmp_path,
        "source: {connector: files, path: x.csv}\n"
        "target: {connector: encrypted-parquet, path: out, options: {kms: {type: local, key_file: k.json}}}\n",
        "enc.yaml",
    )
    assert_one_line_error(
        dativo("validate", "--offline", enc, env=env), "'cryptography'", "pip install 'dativo[encryption]'"
    )
    listed = dativo("plugins", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "pip install 'dativo[postgres]'" in listed.stdout and "pip install 'dativo[encryption]'" in listed.stdout


def test_discover_prints_arrow_types_with_their_brackets(tmp_path):
    table = pa.table(
        {
            "tz": pa.array([0], pa.timestamp("us", tz="UTC")),
            "naive": pa.array([0], pa.timestamp("us")),
            "t": pa.array([0], pa.time64("us")),
        }
    )
    pq.write_table(table, tmp_path / "x.parquet")
    job = write(tmp_path, "source: {connector: files, path: x.parquet}\ntarget: {connector: iceberg, table: a.b}\n")
    result = dativo("discover", job, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "timestamp[us, tz=UTC]" in result.stdout
    assert re.search(r"naive\s*│\s*timestamp\[us\]\s", result.stdout), result.stdout
    assert "time64[us]" in result.stdout


def test_generated_python_plugin_runs_and_certifies_without_pytest(tmp_path):
    project = tmp_path / "my-rows"
    generate("my-rows", "reader", "python", project, False)
    reader = next((project / "src").glob("*/reader.py"))
    cls = re.search(r"^class (\w+)\(DataReader\)", reader.read_text(), re.M)
    assert cls is not None
    implementation = f"{reader.parent.name}.reader:{cls.group(1)}"
    env = {"PYTHONPATH": f"{HIDE}:{project / 'src'}", "DATIVO_TEST_HIDE": "pytest,_pytest"}
    job = write(
        tmp_path,
        f"source: {{connector: custom, reader: {{implementation: '{implementation}', options: {{rows: 50}}}}}}\n"
        "target: {connector: parquet, path: out}\n",
    )
    result = dativo("run", "-q", job, env=env)
    assert result.returncode == 0, result.stderr
    assert pq.read_table(tmp_path / "out").num_rows == 50
    certified = dativo("plugins", "certify", implementation, env=env)
    assert certified.returncode == 0, certified.stdout + certified.stderr
    assert "Traceback" not in certified.stderr and "certified" in certified.stdout


def test_a_retry_prints_one_line_per_attempt_on_a_terminal(tmp_path):
    job = write(
        tmp_path,
        """\
        source:
          connector: postgres
          connection: {dsn: "postgresql://u:p@127.0.0.1:9/db?connect_timeout=2"}
          table: public.t
        target: {connector: iceberg, table: a.b}
        engine: {retry: {max_attempts: 3, initial_delay_s: 0.1}}
        """,
    )
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dativo", "run", str(job)],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "COLUMNS": "300"},
    )
    os.close(follower)
    output = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    assert proc.wait(timeout=30) == 1
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode(errors="replace"))
    retries = [line for line in text.splitlines() if "failed (transient), retrying in" in line]
    assert len(retries) == 2, text
    assert retries[0].startswith("attempt 1 of 3") and retries[1].startswith("attempt 2 of 3")
    assert "p@" not in text  # the password never shows


def test_help_shows_no_value_after_flags():
    result = dativo("run", "--help", env={"COLUMNS": "160"})
    assert result.returncode == 0
    assert "--quiet" in result.stdout and "<bool>" not in result.stdout
    assert "<path>" in result.stdout  # options that take a value still say what


def test_a_wrong_table_name_points_at_its_line_and_suggests_the_closest(tmp_path, pg_db):
    pg_db.psql("CREATE TABLE public.orders (id int)")
    job = write(
        tmp_path,
        f"""\
        source:
          connector: postgres
          connection: {{dsn: "{pg_db.dsn}"}}
          table: public.order
        target: {{connector: iceberg, table: raw.orders}}
        """,
    )
    for command in ("validate", "run"):
        line = assert_one_line_error(dativo(command, job), code=1)
        assert f"{job}:4: source.table: table 'public.order' does not exist" in line, line
        assert "did you mean 'public.orders'?" in line, line
