"""The Iceberg target's cheaper PyIceberg import (dativo.targets.iceberg._pyiceberg, issue 15).

Deferred pydantic model builds must validate and serialize exactly as eagerly built ones, the
modules kept behind a stand-in must still work when used, and a real run must still commit.
Each check runs in a fresh interpreter: the deferral only applies before PyIceberg is imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pyarrow as pa
from pyiceberg.catalog import load_catalog

from dativo.targets.iceberg._pyiceberg import LazyModule

# Builds a table's metadata through PyIceberg (create + append + properties), then dumps models
# of every kind the writer uses: table metadata, snapshot, schema, spec, sort order, updates.
DUMP = textwrap.dedent(
    """
    import json, sys
    {prelude}
    import pyarrow as pa
    from pyiceberg.catalog import load_catalog
    from pyiceberg.table.metadata import TableMetadataUtil
    from pyiceberg.table.update import AddSnapshotUpdate, SetPropertiesUpdate, AssertRefSnapshotId
    from pyiceberg.table.snapshots import Snapshot
    from pyiceberg.types import DecimalType, ListType, LongType, NestedField, StringType, StructType
    from pyiceberg.schema import Schema

    raw = json.loads(open(sys.argv[1]).read())
    metadata = TableMetadataUtil.parse_raw(json.dumps(raw))
    snapshot = metadata.snapshots[0]
    out = {{
        "metadata": metadata.model_dump_json(),
        "metadata_dict": json.dumps(metadata.model_dump(), default=str, sort_keys=True),
        "snapshot": Snapshot.model_validate_json(snapshot.model_dump_json()).model_dump_json(),
        "update": AddSnapshotUpdate(snapshot=snapshot).model_dump_json(),
        "props": SetPropertiesUpdate(updates={{"a": "1"}}).model_dump_json(),
        "requirement": AssertRefSnapshotId(ref="main", snapshot_id=snapshot.snapshot_id).model_dump_json(),
        "schema": Schema(
            NestedField(1, "id", LongType(), required=True),
            NestedField(2, "tags", ListType(3, StringType())),
            NestedField(4, "s", StructType(NestedField(5, "d", DecimalType(38, 2)))),
        ).model_dump_json(),
        "spec": metadata.spec().model_dump_json(),
        "sort_order": metadata.sort_order().model_dump_json(),
    }}
    try:
        Snapshot.model_validate({{"snapshot-id": "not a number"}})
    except Exception as exc:
        out["error"] = type(exc).__name__ + ": " + str(exc).splitlines()[0]
    from pydantic import BaseModel
    def models(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from models(sub)
    out["unbuilt"] = sum(1 for m in models(BaseModel) if m.__module__.startswith("pyiceberg")
                         and not m.__dict__.get("__pydantic_complete__"))
    print(json.dumps(out))
    """
)


def dump(tmp_path: Path, metadata_json: Path, prelude: str) -> dict:
    script = tmp_path / "dump.py"
    script.write_text(DUMP.format(prelude=prelude))
    done = subprocess.run([sys.executable, str(script), str(metadata_json)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def make_table(tmp_path: Path) -> Path:
    """A real table (embedded SQL catalog) with one committed append; returns its metadata JSON file."""
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    catalog = load_catalog("t", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri())
    catalog.create_namespace("ns")
    data = pa.table({"id": pa.array([1, 2], pa.int64()), "name": pa.array(["a", None], pa.string())})
    table = catalog.create_table("ns.t", schema=data.schema, properties={"owner": "test"})
    table.append(data)
    location = catalog.load_table("ns.t").metadata_location
    return Path(location.removeprefix("file://"))


def test_deferred_pyiceberg_models_validate_and_serialize_like_eagerly_built_ones(tmp_path):
    metadata_json = make_table(tmp_path)
    eager = dump(tmp_path, metadata_json, prelude="")
    deferred = dump(tmp_path, metadata_json, prelude="import dativo.targets.iceberg.writer")
    assert eager["unbuilt"] == 0  # PyIceberg alone builds every model at import
    assert deferred["unbuilt"] > 100  # through dativo most are never built in this process
    for key in ("metadata", "metadata_dict", "snapshot", "update", "props", "requirement", "schema", "spec"):
        assert deferred[key] == eager[key], key
    assert deferred["sort_order"] == eager["sort_order"]
    assert deferred["error"] == eager["error"] and deferred["error"].startswith("ValidationError")


def test_modules_behind_a_stand_in_load_on_first_use(tmp_path):
    script = tmp_path / "lazy.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import dativo.targets.iceberg.writer
            import pyiceberg.table
            assert "pyparsing" not in sys.modules, "pyparsing imported with the writer"
            assert type(sys.modules["strictyaml"]).__name__ == "LazyModule"
            expression = pyiceberg.table.parser.parse("id > 1 and name = 'a'")
            assert "pyparsing" in sys.modules
            assert type(sys.modules["pyiceberg.expressions.parser"]).__name__ == "module"
            import strictyaml
            print(repr(expression), strictyaml.load("a: 1").data)
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    plain = "from pyiceberg.expressions.parser import parse; print(repr(parse(\"id > 1 and name = 'a'\")), {'a': '1'})"
    expected = subprocess.run([sys.executable, "-c", plain], capture_output=True, text=True, check=True)
    assert "GreaterThan" in done.stdout and done.stdout == expected.stdout


def test_a_stand_in_loads_its_module_once_under_concurrent_first_use():
    module = LazyModule("json.tool")  # a real module not imported by the test run so far
    sys.modules.pop("json.tool", None)
    sys.modules["json.tool"] = module
    seen: list[object] = []
    start = threading.Barrier(8)

    def use() -> None:
        start.wait()
        seen.append(module.main)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8 and len({id(function) for function in seen}) == 1
    assert sys.modules["json.tool"] is not module and sys.modules["json.tool"].main is seen[0]


def test_a_missing_module_behind_a_stand_in_raises_its_import_error_on_use():
    module = LazyModule("dativo_no_such_module_for_test")
    try:
        module.anything  # noqa: B018
    except ModuleNotFoundError as exc:
        assert "dativo_no_such_module_for_test" in str(exc)
    else:
        raise AssertionError("no ImportError")


def test_a_run_builds_the_commit_models_ahead_and_commits(tmp_path):
    """A run's writer starts building the commit's models with its first row group, then commits through them."""
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import pyarrow as pa
            from dativo.targets.iceberg.writer import IcebergWriter
            from dativo.targets.iceberg import _pyiceberg
            from pyiceberg.table.snapshots import Snapshot
            writer = IcebergWriter()
            writer.initialize({{"table": "ns.t", "job": {{"dir": "{tmp_path}", "run_id": "r1", "name": "j"}},
                               "options": {{"row_group_size_mb": 0.001}}}})
            schema = pa.schema([("id", pa.int64())])
            writer.load_state()
            writer.prepare(schema)
            assert not Snapshot.__pydantic_complete__
            writer.write_batch(pa.record_batch([pa.array(range(1000), pa.int64())], schema=schema))
            assert writer._warm_up._thread is not None
            writer._warm_up.join()
            built = [name for module, name in _pyiceberg.COMMIT_MODELS
                     if getattr(__import__(module, fromlist=[name]), name).__pydantic_complete__]
            result = writer.finalize()
            print(len(built), len(_pyiceberg.COMMIT_MODELS), result["rows"])
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    built, listed, rows = done.stdout.split()
    assert built == listed and rows == "1000"
    catalog = load_catalog(
        "dativo",
        type="sql",
        uri=f"sqlite:///{tmp_path / 'warehouse' / 'catalog.db'}",
        warehouse=(tmp_path / "warehouse").as_uri(),
    )
    assert catalog.load_table("ns.t").scan().to_arrow().num_rows == 1000


def test_deferred_models_first_used_by_many_threads_at_once_validate_correctly(tmp_path):
    """Streams of one process may first use a model together (and the warm-up thread builds some): all see it built."""
    script = tmp_path / "threads.py"
    script.write_text(
        textwrap.dedent(
            """
            import threading
            import dativo.targets.iceberg.writer
            from pyiceberg.table.snapshots import Snapshot, Summary, Operation
            from pyiceberg.table.update import AssertRefSnapshotId
            assert not Snapshot.__pydantic_complete__ and not AssertRefSnapshotId.__pydantic_complete__
            barrier, out, errors = threading.Barrier(16), [], []
            def use(i):
                barrier.wait()
                try:
                    snapshot = Snapshot(snapshot_id=i, sequence_number=i, timestamp_ms=1, manifest_list="m",
                                        summary=Summary(Operation.APPEND, **{"dativo.job": "j"}))
                    requirement = AssertRefSnapshotId(ref="main", snapshot_id=i)
                    out.append((snapshot.model_dump_json(), requirement.model_dump_json()))
                except Exception as exc:
                    errors.append(repr(exc))
            threads = [threading.Thread(target=use, args=(i,)) for i in range(16)]
            for t in threads: t.start()
            for t in threads: t.join()
            assert not errors, errors
            assert len(out) == 16 and all('"dativo.job":"j"' in s and '"snapshot-id":' in r for s, r in out)
            print(sorted(out)[0][1])
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == '{"type":"assert-ref-snapshot-id","ref":"main","snapshot-id":0}'
