"""Start-up cost (issue 15): each command imports what it needs only (checked in fresh interpreters)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from dativo import SDK_API_VERSION, __version__

# Runs `python -m MODULE ARGS` or `python -c CODE` and writes every module in sys.modules at exit to a file.
# (`-X importtime` misses what importlib.import_module loads: plugins, catalogs, lazy commands.)
_RECORDER = """
import atexit, os, runpy, sys
def _record():
    with open(os.environ["DATIVO_TEST_MODULES"], "w") as out:
        out.write("\\n".join(sorted(sys.modules)))
atexit.register(_record)
mode, target, *sys.argv[1:] = sys.argv[1:]
if mode == "-m":
    sys.argv[0] = target
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
"""


def imported_modules(*args: str, cwd: Path | None = None) -> tuple[set[str], str]:
    """The modules a fresh interpreter has imported when ``python ARGS`` exits (and its stdout)."""
    with tempfile.TemporaryDirectory(prefix="dativo-modules-") as folder:
        record = Path(folder) / "modules.txt"
        result = subprocess.run(
            [sys.executable, "-c", _RECORDER, *args],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=cwd,
            env={**os.environ, "DATIVO_TEST_MODULES": str(record)},
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return set(record.read_text().split()), result.stdout


def test_version_imports_no_pyarrow_pyiceberg_sqlalchemy_or_typer():
    names, stdout = imported_modules("-m", "dativo", "--version")
    assert stdout.strip() == f"dativo {__version__} (plugin SDK API {SDK_API_VERSION})"
    heavy = {"pyarrow", "pyarrow.compute", "pyiceberg", "sqlalchemy", "typer", "rich", "pydantic", "boto3"}
    heavy |= {"adbc_driver_manager", "adbc_driver_postgresql", "psycopg", "dativo_postgres_rs"}
    assert not heavy & names, sorted(heavy & names)


def test_import_dativo_is_cheap_and_the_sdk_loads_on_first_use():
    names, _ = imported_modules("-c", "import dativo")
    assert "pyarrow" not in names and "dativo.sdk" not in names and "dativo.api" not in names
    names, stdout = imported_modules("-c", "from dativo import DataReader, SourceError; print(DataReader.__module__)")
    assert stdout.strip() == "dativo.sdk" and "pyarrow" in names


def test_the_lazy_names_are_exactly_what_the_sdk_and_the_api_export():
    import dativo
    from dativo import api, sdk

    protocols = {"ArrowArrayExportable", "ArrowStreamExportable"}  # typing aids, imported from dativo.sdk
    assert set(dativo._SDK) | {"SDK_API_VERSION"} == set(sdk.__all__) - protocols
    assert set(dativo._API) <= set(api.__all__)
    assert {name for name in dativo.__all__ if not name.startswith("__")} >= set(dativo._SDK) | set(dativo._API)


# What the CLI, config parsing and plan building must not import (issue 15): a run loads these when it
# needs them, `validate --offline` never does.
NEVER_OFFLINE = {"pyiceberg", "sqlalchemy", "adbc_driver_manager", "adbc_driver_postgresql", "boto3", "psycopg"}


def write_job(tmp_path, source: str) -> str:
    job = tmp_path / "job.yaml"
    job.write_text(f"name: startup\nsource:\n{source}\ntarget:\n  connector: iceberg\n  table: demo.items\n")
    return str(job)


def test_validate_offline_imports_no_pyiceberg_sqlalchemy_or_pyarrow_compute(tmp_path):
    job = write_job(tmp_path, "  connector: sqlite\n  connection: {path: items.db}\n  table: items")
    names, stdout = imported_modules("-m", "dativo", "validate", "--offline", job)
    assert "reader sqlite, writer iceberg" in stdout
    heavy = NEVER_OFFLINE | {"pyarrow.compute", "pyarrow.dataset", "pyarrow.parquet", "rich"}
    assert not heavy & names, sorted(heavy & names)  # rich: the "ok" line is plain text when not on a terminal
    # the audit, KMS, CDC and maintenance commands load only when they run
    assert not {"dativo.cli.audit", "dativo.cli.cdc", "dativo.cli.maintain", "dativo.engine.pipeline"} & names


def test_validate_offline_of_a_postgres_job_connects_nowhere_and_imports_no_driver(tmp_path):
    dsn = "postgresql://nobody@127.0.0.1:9/nowhere"  # port 9 (discard): nothing may connect to it
    job = write_job(tmp_path, f"  connector: postgres\n  connection: {{dsn: '{dsn}'}}\n  table: public.items")
    names, stdout = imported_modules("-m", "dativo", "validate", "--offline", job)
    assert "writer iceberg" in stdout and "reader postgres-" in stdout
    # the reader's type module computes on Arrow arrays only while reading
    heavy = NEVER_OFFLINE | {"pyarrow.compute", "pyarrow.dataset", "pyarrow.parquet"}
    assert not heavy & names, sorted(heavy & names)


def test_help_lists_the_lazy_commands_and_they_still_run(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dativo", "--help"], capture_output=True, text=True, timeout=120, check=True
    )
    for command in ("run", "validate", "audit", "kms", "cdc", "decrypt", "maintain", "plugins"):
        assert f" {command} " in result.stdout, command
    result = subprocess.run(
        [sys.executable, "-m", "dativo", "cdc", "--help"], capture_output=True, text=True, timeout=120, check=True
    )
    assert "status" in result.stdout and "drop" in result.stdout
    result = subprocess.run([sys.executable, "-m", "dativo", "audti"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "No such command 'audti'" in result.stderr


def test_a_writer_made_from_the_light_entry_class_is_the_full_iceberg_writer():
    from dativo.core.registry import resolve_plugin
    from dativo.targets.iceberg import writer as full

    ref = resolve_plugin("writer", "iceberg", Path.cwd())
    instance = ref.cls()
    assert type(instance) is full.IcebergWriter and isinstance(instance, ref.cls)
    assert ref.cls.supported_modes == full.IcebergWriter.supported_modes == {"append", "overwrite", "merge"}


def sqlite_source(tmp_path: Path) -> str:
    import sqlite3

    with sqlite3.connect(tmp_path / "items.db") as db:
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO items VALUES (1, 'one')")
    return "  connector: sqlite\n  connection: {path: items.db}\n  table: items"


# The catalog clients: a run loads its own catalog's only.
REST_CLIENT = {"pyiceberg.catalog.rest", "requests"}
SQLALCHEMY_CATALOG = {"pyiceberg.catalog.sql", "sqlalchemy"}


def test_a_run_into_the_embedded_catalog_imports_no_rest_client(tmp_path):
    job = write_job(tmp_path, sqlite_source(tmp_path))
    names, _ = imported_modules("-m", "dativo", "run", "--quiet", job)
    assert "pyiceberg.catalog.sql" in names  # the embedded catalog is PyIceberg's SqlCatalog
    unwanted = REST_CLIENT | {"boto3", "adbc_driver_manager", "psycopg", "rich"}
    assert not unwanted & names, sorted(unwanted & names)


def test_a_run_into_a_rest_catalog_imports_no_sql_catalog(tmp_path, rest_server):
    block = "".join(f"    {key}: '{value}'\n" for key, value in rest_server.catalog().items())
    job = tmp_path / "job.yaml"
    job.write_text(
        f"name: startup\nsource:\n{sqlite_source(tmp_path)}\n"
        f"target:\n  connector: iceberg\n  table: startup_rest.items\n  catalog:\n{block}"
    )
    names, _ = imported_modules("-m", "dativo", "run", "--quiet", str(job))
    assert "pyiceberg.catalog.rest" in names
    unwanted = SQLALCHEMY_CATALOG
    assert not unwanted & names, sorted(unwanted & names)


def test_a_run_into_parquet_imports_no_pyiceberg(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(f"name: startup\nsource:\n{sqlite_source(tmp_path)}\ntarget:\n  connector: parquet\n  path: out\n")
    names, _ = imported_modules("-m", "dativo", "run", "--quiet", str(job))
    assert "dativo.targets.parquet" in names and list((tmp_path / "out").glob("*.parquet"))
    unwanted = {"pyiceberg", "sqlalchemy", "boto3", "adbc_driver_manager", "psycopg", "dativo.targets.iceberg.writer"}
    assert not unwanted & names, sorted(unwanted & names)


# The `dativo` command defers cyclic GC while it starts and restores it once rows move (dativo._gc); an
# application importing dativo keeps its own settings. Runs `python -m dativo ARGS` or `python -c CODE` and
# writes the GC's thresholds, its frozen-object count and what the run saw when rows started to move.
_GC_RECORDER = """
import atexit, gc, json, os, runpy, sys
seen = {}
def _record():
    with open(os.environ["DATIVO_TEST_GC"], "w") as out:
        json.dump({"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count(), **seen}, out)
atexit.register(_record)
gc.set_threshold(*json.loads(os.environ["DATIVO_TEST_THRESHOLD"]))  # the embedding application's own setting
import dativo._gc as settings
done = settings.startup_done
def startup_done():
    seen["threshold_while_starting"] = gc.get_threshold()
    done()
settings.startup_done = startup_done
mode, target, *sys.argv[1:] = sys.argv[1:]
if mode == "-m":
    sys.argv[0] = target
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
"""


def gc_after(*args: str, cwd: Path, threshold: tuple[int, int, int] = (700, 10, 10)) -> dict:
    record = cwd / "gc.json"
    env = {**os.environ, "DATIVO_TEST_GC": str(record), "DATIVO_TEST_THRESHOLD": json.dumps(threshold)}
    result = subprocess.run(
        [sys.executable, "-c", _GC_RECORDER, *args], capture_output=True, text=True, timeout=180, cwd=cwd, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(record.read_text())


def test_the_command_defers_gc_while_starting_then_freezes_and_restores_it(tmp_path):
    from dativo._gc import STARTUP_THRESHOLD

    job = write_job(tmp_path, sqlite_source(tmp_path))
    seen = gc_after("-m", "dativo", "run", "--quiet", job, cwd=tmp_path, threshold=(900, 11, 12))
    assert seen["threshold_while_starting"] == list(STARTUP_THRESHOLD)
    assert seen["threshold"] == [900, 11, 12]  # what the process had before the command started, restored
    assert seen["frozen"] > 10_000  # start-up's objects: later full collections skip them
    assert list((tmp_path / "warehouse").rglob("*.parquet"))  # and the run did write


def test_importing_dativo_and_running_a_job_leaves_the_applications_gc_alone(tmp_path):
    job = write_job(tmp_path, sqlite_source(tmp_path))
    code = f"import dativo\nresult = dativo.run({job!r})\nassert result.streams[0].rows == 1, result"
    seen = gc_after("-c", code, cwd=tmp_path, threshold=(900, 11, 12))
    assert seen["threshold_while_starting"] == [900, 11, 12]  # the pipeline's call changed nothing
    assert seen["threshold"] == [900, 11, 12] and seen["frozen"] == 0


# What a run imports before its read starts (session 7): the head is serial (the source's server waits), so
# what only the writer, a streams file or a failed plugin check needs loads later. A reader records
# sys.modules in initialize(): on the main thread, after the CLI, the config, the plan and hosting.
_SPY_READER = """
import os, sys
import pyarrow as pa
from dativo import DataReader

class SpyReader(DataReader):
    def initialize(self, config):
        with open(os.environ["DATIVO_TEST_HEAD"], "w") as out:
            out.write("\\n".join(sorted(sys.modules)))

    def get_schema(self):
        return pa.schema([("id", pa.int64())])

    def read_batch(self, batch_size):
        yield pa.record_batch([pa.array([1, 2], pa.int64())], names=["id"])
"""

#: Not before the read starts: packaging (a plain plugin api_version is checked without it), concurrent.futures
#: (streams run at once only), rich (--quiet), the writer's libraries, and the commands not run.
NOT_IN_THE_HEAD = {"packaging", "concurrent.futures", "rich", "pyiceberg", "sqlalchemy", "pyarrow.compute"} | {
    "dativo.cli.audit",
    "dativo.cli.cdc",
    "dativo.cli.maintain",
    "dativo.targets.iceberg.writer",
}


def test_a_run_imports_before_its_read_starts_only_what_the_read_needs(tmp_path):
    (tmp_path / "spy.py").write_text(_SPY_READER)
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: head\nsource:\n  connector: custom\n  reader: {implementation: 'spy.py:SpyReader'}\n"
        "target:\n  connector: iceberg\n  table: demo.head\n"
    )
    record = tmp_path / "head.txt"
    result = subprocess.run(
        [sys.executable, "-m", "dativo", "run", "--quiet", str(job)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env={**os.environ, "DATIVO_TEST_HEAD": str(record)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    head = set(record.read_text().split())
    assert {"dativo.cli", "dativo.config.models", "pyarrow"} <= head  # the recording is the head's
    assert not NOT_IN_THE_HEAD & head, sorted(NOT_IN_THE_HEAD & head)


def test_a_command_builds_only_itself_and_the_help_keeps_the_order():
    import typer

    from dativo.cli import app

    group = typer.main.get_command(app)
    order = ["run", "validate", "check", "serve", "discover", "plugins", "state", "init"]
    order += ["audit", "kms", "cdc", "decrypt", "maintain"]
    assert list(group.commands) == order  # names only: nothing is built yet
    assert dict(group.commands._eager) == {}  # type: ignore[attr-defined]
    run = group.get_command(None, "run")  # type: ignore[arg-type]
    assert run is not None and [p.name for p in run.params][:2] == ["job", "summary_json"]
    assert list(group.commands._eager) == ["run"]  # type: ignore[attr-defined]
    serve = group.get_command(None, "serve")  # type: ignore[arg-type]
    assert serve is not None and not serve.add_help_option and serve.context_settings["ignore_unknown_options"]


def test_a_plain_api_version_is_decided_without_packaging_exactly_as_packaging_decides(monkeypatch):
    from packaging.specifiers import InvalidSpecifier
    from packaging.version import InvalidVersion

    from dativo.core import registry

    declared = {f"{major}.{minor}{patch}" for major in range(3) for minor in range(8) for patch in ("", ".0", ".2")}
    declared |= {f"^{version}" for version in declared} | {"0", "1", "2", " 1.5 ", "01.5", "1.5.0.0"}
    for sdk in ("1.5.0", "1.5", "1.10", "0.3", "2.0.1"):
        monkeypatch.setattr(registry, "SDK_API_VERSION", sdk)
        for text in sorted(declared):
            try:
                accepted = registry.supported_sdk_range(text)
                expected = bool(str(accepted)) and accepted.contains(sdk, prereleases=True)
            except (InvalidSpecifier, InvalidVersion):
                expected = False
            assert registry._plain_version_accepts(text) == expected, (sdk, text)
    for other in (">=1.0,<2", "1.5rc1", "latest", "1.*", "v1.5"):  # not plain: packaging decides as before
        assert registry._plain_version_accepts(other) is False


_STREAMS_MODELS_AT_ONCE = """
import threading
import pydantic
from dativo.config.streams import StreamsJobConfig
assert not StreamsJobConfig.__pydantic_complete__  # deferred: built by the first thread that validates
barrier, seen = threading.Barrier(16), []
def use(index):
    barrier.wait()
    good = StreamsJobConfig.model_validate({"streams": {"a": None, "b": {"source": {"n": index}}}})
    try:
        StreamsJobConfig.model_validate({"streams": {"a": None}, "nope": 1})
    except pydantic.ValidationError as exc:
        seen.append((good.streams["b"].source["n"] == index, [e["type"] for e in exc.errors()]))
threads = [threading.Thread(target=use, args=(index,)) for index in range(16)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(seen == [(True, ["extra_forbidden"])] * 16)
"""


def test_the_deferred_streams_models_validate_alike_when_threads_first_use_them_at_once():
    result = subprocess.run(
        [sys.executable, "-c", _STREAMS_MODELS_AT_ONCE], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "True", result.stdout + result.stderr
