"""Runtimes are found through the ``dativo.runtimes`` entry points: the built-in three and a third party's alike."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dativo.config.loader import load_job
from dativo.core.hosting import find_runtime, host_reader, runtime_names
from dativo.engine import pipeline
from dativo.engine.plan import build_plan
from dativo.errors import ConfigError, PluginError

from support.cli import assert_one_line_error, dativo
from support.fake_dist import fake_distribution

SUPPORT = Path(__file__).parent / "support" / "plugins.py"

#: A third-party runtime: hosts Python classes in process, and records what it hosted.
RUNTIME = """
import os

from dativo.sdk import DataReader, DataWriter

HOSTED = []


def _host(plan, base):
    plugin = plan.ref.cls()
    assert isinstance(plugin, base)
    plugin.initialize(plan.config)
    HOSTED.append((plan.ref.kind, plan.ref.name))
    if os.environ.get("RECORDING_RUNTIME_LOG"):  # a run in another process says what it hosted
        with open(os.environ["RECORDING_RUNTIME_LOG"], "a") as log:
            log.write(f"{plan.ref.kind} {plan.ref.name} {plan.runtime} {sorted(plan.config['options'])}\\n")
    return plugin


def host_reader(plan):
    return _host(plan, DataReader)


def host_writer(plan):
    return _host(plan, DataWriter)
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A site dir on sys.path holding a distribution that registers runtimes through entry points."""
    root = fake_distribution(
        tmp_path / "site",
        "recording-runtime",
        "0.1",
        {
            "dativo.runtimes": {
                "recording": "recording_runtime",
                "broken": "broken_runtime",
                "not-a-runtime": "not_a_runtime:thing",
            }
        },
        {
            "recording_runtime/__init__.py": RUNTIME,
            "broken_runtime.py": "raise ImportError('needs a library that is not installed')\n",
            "not_a_runtime.py": "thing = object()\n",
        },
    )
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in ("recording_runtime", "broken_runtime", "not_a_runtime"):
        sys.modules.pop(name, None)


def write_job(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: items
            source:
              connector: custom
              reader: {{implementation: "{SUPPORT}:GeneratedReader", options: {{rows: 2500}}}}
            target: {{connector: parquet, path: out}}
            engine: {{batch_size: 1000}}
            """
        )
    )
    return path


def test_built_in_runtimes_are_registered_by_entry_point():
    assert {"custom", "process", "flight"} <= set(runtime_names())


def test_a_third_party_runtime_hosts_a_run(tmp_path, site):
    assert "recording" in runtime_names()
    plan = build_plan(load_job(write_job(tmp_path)))
    plan = dataclasses.replace(
        plan,
        reader=dataclasses.replace(plan.reader, runtime="recording"),
        writer=dataclasses.replace(plan.writer, runtime="recording"),
    )
    summary = pipeline.run(plan)
    assert (summary.status, summary.rows) == ("succeeded", 2500)
    hosted = sys.modules["recording_runtime"].HOSTED
    assert hosted == [("reader", plan.reader.ref.name), ("writer", "parquet")]
    assert sum(f.stat().st_size > 0 for f in (tmp_path / "out").rglob("*.parquet")) >= 1


def test_unknown_runtime_names_the_registered_ones(tmp_path):
    plan = build_plan(load_job(write_job(tmp_path)))
    with pytest.raises(PluginError) as info:
        host_reader(dataclasses.replace(plan.reader, runtime="nope"))
    message = str(info.value)
    assert message.startswith(f"reader '{plan.reader.ref.name}': runtime 'nope': no installed runtime has that name (")
    assert "custom, flight, process" in message and "entry-point group 'dativo.runtimes'" in message


def test_a_runtime_that_fails_to_load_is_one_plugin_error(site):
    with pytest.raises(PluginError, match=r"runtime 'broken' \(broken_runtime\) failed to import: ImportError: needs"):
        find_runtime("broken")
    with pytest.raises(PluginError, match=r"runtime 'not-a-runtime' .* does not define host_reader and host_writer"):
        find_runtime("not-a-runtime")


def test_loading_the_flight_entry_point_does_not_import_grpc():
    code = (
        "import sys\n"
        "from dativo.core.hosting import find_runtime\n"
        "from dativo.engine import pipeline\n"
        "runtimes = [find_runtime(n) for n in ('custom', 'process', 'flight')]\n"
        "print('pyarrow.flight' in sys.modules)\n"
        "runtimes[2]._target()\n"
        "print('pyarrow.flight' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


def test_stale_install_without_runtime_entry_points_says_to_reinstall(tmp_path, monkeypatch):
    # An environment whose installed dativo metadata predates the group (nothing registered at all).
    from dativo.core import hosting

    monkeypatch.setattr(hosting, "runtime_names", list)
    plan = build_plan(load_job(write_job(tmp_path)))
    stale = r"no runtime is registered .*not even dativo's own \(reinstall dativo \('pip install -e \.'"
    with pytest.raises(PluginError, match=stale):
        host_reader(plan.reader)


def write_job_with_runtime(tmp_path: Path, runtime: str, writer_runtime: str = "recording") -> Path:
    """A job FILE whose reader names ``runtime`` in ``type:`` and its writer ``writer_runtime``."""
    path = tmp_path / "job.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: items
            source:
              connector: custom
              reader:
                type: {runtime}
                implementation: "{SUPPORT}:GeneratedReader"
                options: {{rows: 2500}}
            target:
              connector: parquet
              path: out
              writer: {{type: {writer_runtime}, implementation: parquet}}
            engine: {{batch_size: 1000}}
            """
        )
    )
    return path


def test_a_job_file_picks_a_third_party_runtime(tmp_path, site):
    job = write_job_with_runtime(tmp_path, "recording")
    plan = build_plan(load_job(job))
    assert (plan.reader.runtime, plan.writer.runtime) == ("recording", "recording")
    assert plan.reader.ref.cls.__name__ == "GeneratedReader"  # resolved exactly as type custom resolves it

    log = tmp_path / "hosted.log"
    result = dativo("run", job, env={"PYTHONPATH": str(site), "RECORDING_RUNTIME_LOG": str(log)})
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == [
        f"reader {plan.reader.ref.name} recording ['rows']",
        "writer parquet recording []",
    ]
    written = sum(pq.read_metadata(f).num_rows for f in (tmp_path / "out").rglob("*.parquet"))
    assert written == 2500


def test_a_misspelt_runtime_type_is_one_error_at_its_line(tmp_path, site):
    job = write_job_with_runtime(tmp_path, "recordin")
    with pytest.raises(ConfigError, match=r"unknown runtime type 'recordin' \(did you mean 'recording'\?"):
        load_job(job)
    result = dativo("run", job, env={"PYTHONPATH": str(site)})
    line = assert_one_line_error(
        result,
        f"{job}:5",
        "source.reader.type",
        "unknown runtime type 'recordin' (did you mean 'recording'? known: ",
        code=2,
    )
    assert all(name in line for name in ("custom", "flight", "process", "recording", "broken"))


def test_a_third_party_type_takes_no_command_or_endpoint(tmp_path, site):
    job = write_job_with_runtime(tmp_path, "recording")
    job.write_text(job.read_text().replace("implementation: parquet", "endpoint: grpc://localhost:1"))
    with pytest.raises(ConfigError, match=r"'endpoint' does not apply to type 'recording'"):
        load_job(job)


def test_a_third_party_type_without_implementation_plans_a_named_plugin(tmp_path, site):
    """A runtime hosting something that is no Python class: the plan names it, the runtime reads its options."""
    from dativo.sdk import DataReader

    job = write_job_with_runtime(tmp_path, "recording")
    job.write_text(job.read_text().replace(f'implementation: "{SUPPORT}:GeneratedReader"', "name: wasm-reader"))
    plan = build_plan(load_job(job))
    assert (plan.reader.ref.name, plan.reader.ref.origin, plan.reader.ref.cls) == (
        "wasm-reader",
        "runtime recording",
        DataReader,
    )
    assert plan.reader.runtime == "recording" and plan.reader.config["options"] == {"rows": 2500}
    assert "fault_hook" not in plan.reader.config  # only dativo's own in-process runtime is handed the hook

    job.write_text(job.read_text().replace("    name: wasm-reader\n", ""))
    with pytest.raises(ConfigError, match=r"type 'recording' needs 'implementation' \(a Python plugin\) or 'name'"):
        load_job(job)
