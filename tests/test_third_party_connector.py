"""Connectors are plugins: the worked third-party connector of examples/jsondir_connector, installed with pip
and run by ``dativo run`` into a real Iceberg table twice; its config errors; source plans requested by readers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dativo.config.loader import load_job
from dativo.engine.plan import build_plan
from dativo.errors import ConfigError

from support.cli import assert_one_line_error, dativo
from support.iceberg_fixtures import embedded_catalog

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "jsondir_connector"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install`` of the example package into a folder of its own, put on PYTHONPATH by the runs below."""
    target = tmp_path_factory.mktemp("jsondir-site")
    build = tmp_path_factory.mktemp("jsondir-src") / "pkg"
    shutil.copytree(EXAMPLE, build, ignore=shutil.ignore_patterns("warehouse", "build", "*.egg-info"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(build)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert (target / "dativo_jsondir" / "connector.py").is_file()
    return target


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    """The example's job and data, copied so runs never write into the repository."""
    target = tmp_path / "events"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("src", "warehouse", "*.toml", "*.md"))
    return target


def env_with(site: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}


def test_the_installed_connector_runs_end_to_end_twice(site: Path, job_dir: Path) -> None:
    env = env_with(site)
    listed = dativo("plugins", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    readers = {entry["name"]: entry for entry in json.loads(listed.stdout) if entry["kind"] == "reader"}
    assert readers["jsondir"]["origin"] == "dativo-jsondir 0.1.0" and readers["jsondir"]["problem"] is None

    first = dativo("run", job_dir / "job.yaml", "--summary-json", job_dir / "day1.json", env=env)
    assert first.returncode == 0, first.stderr
    assert json.loads((job_dir / "day1.json").read_text())["rows"] == 2
    table = embedded_catalog(job_dir).load_table("demo.events")
    rows = table.scan().to_arrow().sort_by("id").to_pylist()
    assert [(r["id"], r["name"], r["amount"]) for r in rows] == [(1, "signup", 0.0), (2, "purchase", 19.5)]
    assert str(rows[1]["at"]) == "2026-12-01 09:30:00+00:00"

    # Day two: a new document corrects event 2 and adds event 3; the merge on id keeps one row per event.
    (job_dir / "data" / "2026-12-02.json").write_text(
        json.dumps({"events": [{"id": 2, "name": "purchase", "amount": 25.0}, {"id": 3, "name": "refund"}]})
    )
    second = dativo("run", job_dir / "job.yaml", env=env)
    assert second.returncode == 0, second.stderr
    table = embedded_catalog(job_dir).load_table("demo.events")
    rows = table.scan().to_arrow().sort_by("id").to_pylist()
    assert [(r["id"], r["amount"]) for r in rows] == [(1, 0.0), (2, 25.0), (3, None)]
    assert len(table.history()) == 2


def test_a_misspelt_connector_key_fails_at_its_line(site: Path, job_dir: Path) -> None:
    job = job_dir / "job.yaml"
    job.write_text(job.read_text().replace("  folder: data", "  foldr: data"))
    result = dativo("run", job, env=env_with(site))
    line = assert_one_line_error(result, "job.yaml:5: source.foldr: unknown key; did you mean 'folder'")
    assert result.returncode != 0 and "a required key" in line
    assert not (job_dir / "warehouse" / "catalog.db").exists()  # nothing ran


def test_a_bad_value_and_an_unknown_connector_name_the_connector(site: Path, job_dir: Path) -> None:
    job = job_dir / "job.yaml"
    original = job.read_text()
    job.write_text(original.replace("amount: float64", "amount: decimal"))
    bad_value = dativo("validate", "--offline", job, env=env_with(site))
    assert_one_line_error(bad_value, "job.yaml:7: source.columns.amount: Input should be")

    job.write_text(original.replace("connector: jsondir", "connector: jsondr"))
    unknown = dativo("validate", "--offline", job, env=env_with(site))
    assert_one_line_error(unknown, "job.yaml:4: source.connector: unknown source connector 'jsondr'", "'jsondir'")

    # Without the package installed the connector is unknown, with the installed ones listed.
    missing = dativo("validate", "--offline", job_dir / "job.yaml")
    assert_one_line_error(missing, "unknown source connector 'jsondr'", "known: custom, files, postgres, sqlite")


def test_a_reader_asking_for_a_source_plan_of_a_connector_without_planner_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(
        "source:\n  connector: files\n  path: a.csv\n  reader:\n    type: process\n    command: [./r]\n"
        "    source_plan: true\ntarget: {connector: parquet, path: out}\n"
    )
    with pytest.raises(ConfigError, match="asks for a source plan, and connector 'files' has no planner"):
        build_plan(load_job(tmp_path / "job.yaml"))


def scenarios(root: Path) -> Path:
    """A conformance.yaml for the jsondir reader: each scenario a folder of documents (absolute paths)."""
    columns = {"id": "int64", "name": "string", "amount": "float64", "ok": "bool", "at": "timestamp"}

    def folder(name: str, documents: dict[str, object]) -> str:
        path = root / name
        path.mkdir(parents=True)
        for file, document in documents.items():
            (path / file).write_text(json.dumps(document) if not isinstance(document, str) else document)
        return str(path)

    def record(i: int, name: str = "") -> dict[str, object]:
        return {"id": i, "name": name or f"n{i}", "amount": i / 4, "ok": i % 2 == 0, "at": "2026-12-01T09:30:00Z"}

    sections = {
        "standard": folder(
            "standard", {f"{d}.json": [record(i) for i in range(d * 1500, d * 1500 + 1500)] for d in (0, 1)}
        ),
        "empty": folder("empty", {"a.json": []}),
        "large_values": folder("large", {"a.json": [record(1, "x" * (1536 * 1024)), record(2)]}),
        "error": folder("error", {"a.json": [record(1)], "b.json": "{not json"}),
        "all_types": folder("types", {"a.json": [record(1), {"id": None}]}),
    }
    path = root / "conformance.yaml"
    path.write_text(json.dumps({"reader": {k: {"folder": v, "columns": columns} for k, v in sections.items()}}))
    return path


@pytest.mark.parametrize("runtime", ["custom", "flight"])
def test_the_example_reader_passes_plugins_certify(site: Path, tmp_path: Path, runtime: str) -> None:
    config = scenarios(tmp_path / "scenarios")
    result = dativo(
        "plugins", "certify", "jsondir", "--config", config, "--runtime", runtime, "--json", env=env_with(site)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["plugin"] == f"reader jsondir ({runtime})" and report["passed"] is True
    assert report["results"] and all(r["status"] == "pass" for r in report["results"]), [
        (r["rule"], r["status"], r["message"]) for r in report["results"] if r["status"] != "pass"
    ]
