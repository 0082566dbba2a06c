"""Job files: YAML, interpolation, secrets, validation and their error messages."""

from __future__ import annotations

import logging
import re
import textwrap
from pathlib import Path

import pytest

from dativo._logging import configure_logging
from dativo._secrets import redact
from dativo.config.loader import load_job, parse_job
from dativo.errors import ConfigError

pytestmark = pytest.mark.unit  # pure: parsing and validation only

MINIMAL = """\
source:
  connector: files
  path: data.csv
target:
  connector: iceberg
  table: raw.orders
"""


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_minimal_job_gets_defaults_and_name_from_file(tmp_path):
    job = load_job(write(tmp_path, MINIMAL, "orders.yaml"))
    assert job.name == "orders"
    assert job.dir == tmp_path.resolve()
    assert job.config.engine.batch_size == 16_384
    assert job.config.source.reader is None


def test_seed_form_of_reader_and_writer_parses(tmp_path):
    job = load_job(
        write(
            tmp_path,
            """\
            source:
              connector: postgres
              connection: {dsn: "${PG_DSN}"}
              table: public.orders
              reader:
                type: custom
                implementation: "my_pkg.readers.FastReader"
                options: {fetch: 10}
            target:
              connector: iceberg
              table: raw.orders
              writer:
                type: custom
                implementation: "my_pkg.writers.EncryptedWriter"
            """,
        ),
        env={"PG_DSN": "postgresql://u:p4ssword@h/db"},
    )
    assert job.config.source.reader is not None
    assert job.config.source.reader.implementation == "my_pkg.readers.FastReader"
    assert job.config.source.reader.options == {"fetch": 10}
    assert job.config.source.connection["dsn"] == "postgresql://u:p4ssword@h/db"
    assert job.config.target.writer is not None
    assert job.config.target.writer.implementation == "my_pkg.writers.EncryptedWriter"


def test_env_interpolation_with_defaults_and_escape():
    config = parse_job(
        """\
source:
  connector: files
  path: "${DATA_DIR}/x.csv"
  options: {a: "${UNSET:-fallback}", b: "${EMPTY:-used}", c: "$${LITERAL}", d: "${SET:-ignored}"}
target: {connector: parquet, path: out}
""",
        env={"DATA_DIR": "/data", "EMPTY": "", "SET": "value"},
    )
    assert config.source.path == "/data/x.csv"
    assert config.source.options == {"a": "fallback", "b": "used", "c": "${LITERAL}", "d": "value"}


def test_missing_environment_variable_names_variable_key_and_line():
    with pytest.raises(ConfigError) as info:
        parse_job(
            (
                'source:\n  connector: postgres\n  connection:\n    dsn: "${PG_DSN}"\n'
                "target: {connector: parquet, path: o}\n"
            ),
            source="job.yaml",
            env={},
        )
    assert str(info.value).startswith("job.yaml:4: source.connection.dsn: environment variable PG_DSN is not set")


def test_secret_from_file_is_read_relative_to_job_and_redacted(tmp_path):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pg_password").write_text("s3cr3t-from-file\n")
    job = load_job(
        write(
            tmp_path,
            """\
            source:
              connector: postgres
              connection: {host: db, password: "${file:secrets/pg_password}"}
              table: t
            target: {connector: parquet, path: out}
            """,
        )
    )
    assert job.config.source.connection["password"] == "s3cr3t-from-file"
    assert redact("connecting with s3cr3t-from-file") == "connecting with ***"


def test_missing_secret_file_is_a_config_error(tmp_path):
    path = write(tmp_path, MINIMAL.replace("path: data.csv", "path: ${file:nope.txt}"))
    with pytest.raises(ConfigError, match=r"job.yaml:3: source.path: secret file .*nope.txt cannot be read"):
        load_job(path)


def test_values_under_secret_keys_and_dsn_passwords_are_redacted_in_logs(tmp_path, capsys):
    parse_job(
        """\
source:
  connector: custom
  connection: {api_token: "tok-123456789"}
  reader: {implementation: x.Y}
target: {connector: parquet, path: out}
""",
        env={},
    )
    configure_logging("info", "json")
    logging.getLogger("dativo.test").info("token tok-123456789 and postgresql://me:hunter22@db/x")
    captured = capsys.readouterr().err
    assert "tok-123456789" not in captured
    assert "hunter22" not in captured
    assert "postgresql://me:***@db/x" in captured


def test_unknown_key_is_rejected_with_line_and_path(tmp_path):
    path = write(tmp_path, MINIMAL.replace("  path: data.csv", "  path: data.csv\n  tabel: x"))
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert "job.yaml:4: source.tabel: unknown key" in str(info.value)


def test_unknown_connector_lists_known_ones(tmp_path):
    path = write(tmp_path, MINIMAL.replace("connector: files", "connector: oracle"))
    with pytest.raises(ConfigError, match=r"job.yaml:2: source.connector: unknown source connector 'oracle'"):
        load_job(path)


def test_malformed_yaml_reports_line(tmp_path):
    path = write(tmp_path, "source:\n  connector: files\n  path: [unclosed\ntarget: {}\n")
    with pytest.raises(ConfigError, match=r"job.yaml:\d+:\d+: invalid YAML: an unclosed .\[. list"):
        load_job(path)


def test_duplicate_key_is_rejected(tmp_path):
    path = write(tmp_path, MINIMAL + "target:\n  connector: parquet\n")
    with pytest.raises(ConfigError, match="target: duplicate key"):
        load_job(path)


def test_missing_required_key(tmp_path):
    path = write(tmp_path, "source:\n  path: x.csv\ntarget: {connector: parquet, path: o}\n")
    with pytest.raises(ConfigError, match=r"job.yaml:\d: source.connector: required key is missing"):
        load_job(path)


def test_table_and_query_together_are_rejected(tmp_path):
    sql_source = MINIMAL.replace("connector: files", "connector: sqlite").replace("path: data.csv", "table: a")
    path = write(tmp_path, sql_source.replace("table: a", "table: a\n  query: SELECT 1", 1))
    with pytest.raises(ConfigError, match="either 'table' or 'query', not both"):
        load_job(path)


def test_a_key_of_another_connector_is_unknown_naming_the_connectors_keys(tmp_path):
    # table/query belong to the SQL connectors: the files connector's model rejects them at their line.
    path = write(tmp_path, MINIMAL.replace("path: data.csv", "path: data.csv\n  table: a"))
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert "job.yaml:4: source.table: unknown key" in str(info.value)
    assert "connector 'files' takes" in str(info.value) and "cast_to_text" in str(info.value)


def test_custom_connector_needs_a_reader(tmp_path):
    path = write(tmp_path, MINIMAL.replace("connector: files", "connector: custom"))
    with pytest.raises(ConfigError, match="connector 'custom' has no default reader"):
        load_job(path)


def test_iceberg_target_needs_table(tmp_path):
    path = write(tmp_path, MINIMAL.replace("  table: raw.orders\n", ""))
    with pytest.raises(ConfigError, match="iceberg target needs 'table"):
        load_job(path)


def test_missing_job_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_job(tmp_path / "nope.yaml")


def test_non_mapping_document(tmp_path):
    with pytest.raises(ConfigError, match="a job must be a mapping"):
        load_job(write(tmp_path, "- just\n- a list\n"))


class _AnyEnv(dict):
    """Every ${VAR} of a documentation example resolves."""

    def get(self, key, default=None):
        return "postgresql://user@db/app"


def test_every_job_example_in_the_docs_validates():
    repo = Path(__file__).resolve().parent.parent
    pages = [*sorted((repo / "docs").glob("*.md")), repo / "README.md", *sorted((repo / "plugins").rglob("README.md"))]
    checked = 0
    for page in pages:
        for block in re.findall(r"```ya?ml\n(.*?)```", page.read_text(), re.S):
            if re.search(r"^source:", block, re.M) and re.search(r"^target:", block, re.M) and "{...}" not in block:
                parse_job(block, source=page.name, env=_AnyEnv())
                checked += 1
    assert checked >= 6
