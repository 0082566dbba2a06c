"""`dativo init plugin` for every language and kind: generate, build, certify, run the project's tests, run a job.

Builds are real (pip / maturin + cargo / go build) and cached between runs: cargo's
target folder lives under ~/.cache/dativo-test-builds (one per kind, so only the
generated crate itself is recompiled), Go uses its own build cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dativo import SDK_API_VERSION
from dativo.testing.scaffold import generate

from support.cli import dativo

CACHE = Path(os.environ.get("DATIVO_TEST_BUILD_CACHE", Path.home() / ".cache" / "dativo-test-builds"))
JOBS = os.environ.get("CARGO_BUILD_JOBS", "2")


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 900):
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def pip(*args: str | Path, cwd: Path):
    return run(sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args, cwd=cwd)


def build(lang: str, kind: str, project: Path, name: str) -> None:
    """Build the generated project and install it into this Python (Python/Rust) or bin/ (Go)."""
    if lang == "python":
        pip("install", "--no-deps", str(project), cwd=project)
    elif lang == "rust":
        target = CACHE / f"cargo-{kind}"
        env = {"CARGO_TARGET_DIR": str(target), "CARGO_BUILD_JOBS": JOBS}
        run("maturin", "build", "--quiet", "-o", "dist", cwd=project, env=env)
        wheels = sorted((project / "dist").glob("*.whl"))
        assert len(wheels) == 1, wheels
        pip("install", "--no-deps", "--force-reinstall", str(wheels[0]), cwd=project)
    else:
        run("go", "build", "-o", f"bin/{name}", ".", cwd=project)
        assert (project / "bin" / name).stat().st_mode & 0o111


@pytest.mark.parametrize("kind", ["reader", "writer"])
@pytest.mark.parametrize("lang", ["python", "rust", "go"])
def test_generated_plugin_builds_certifies_and_runs_a_job(lang, kind, tmp_path):
    name = f"kit-{lang[:2]}-{kind}"
    project = tmp_path / name
    created = dativo("init", "plugin", name, "--kind", kind, "--lang", lang, "--dir", str(project))
    assert created.returncode == 0, created.stderr
    for required in ("README.md", "conformance.yaml", "example_job.yaml", "tests/test_conformance.py"):
        assert (project / required).is_file(), required
    assert (
        "TODO"
        in next(
            p for p in project.rglob("*") if p.suffix in (".py", ".rs", ".go") and "TODO" in p.read_text()
        ).read_text()
    )

    build(lang, kind, project, name)
    try:
        # 1. certification from the command line, in the plugin's natural runtime (and over Flight for Python/Rust)
        runtimes = ["process"] if lang == "go" else ["custom", "flight"]
        target = f"./bin/{name}" if lang == "go" else name
        for runtime in runtimes:
            args = ["plugins", "certify", target, "--kind", kind, "--runtime", runtime, "--config", "conformance.yaml"]
            certified = dativo(*args, "--json", cwd=project)
            report = json.loads(certified.stdout)
            failed = [r for r in report["results"] if r["status"] != "pass"]
            assert certified.returncode == 0 and report["passed"], failed
            if not (lang == "rust" and kind == "reader"):
                assert not failed, failed  # every rule passes, none skipped
        # 2. the project's own test file (the conformance suite through the pytest plugin)
        tests = run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=project, timeout=600)
        assert " passed" in tests.stdout and "failed" not in tests.stdout
        # 3. the example job
        job = dativo("run", "example_job.yaml", "--summary-json", "run.json", cwd=project)
        assert job.returncode == 0, job.stderr
        summary = json.loads((project / "run.json").read_text())
        expected_rows = 1000 if kind == "reader" else 3
        assert summary["rows"] == expected_rows
        package = name.replace("-", "_")
        files = [p for p in (project / "out" / package).rglob("*.parquet") if not p.name.startswith(".")]
        assert files and sum(pq.read_metadata(f).num_rows for f in files) == expected_rows
        leftovers = [p for p in (project / "out").rglob("*") if ".staging" in p.name]
        assert not leftovers
    finally:
        if lang != "go":
            pip("uninstall", "-y", name, cwd=tmp_path)


def test_generated_plugin_passes_the_registry_api_version_check(tmp_path):
    # A generated plugin declares a range that contains this SDK: it loads; dativo plugins list shows it.
    project = tmp_path / "kit-range"
    generate("kit-range", "reader", "python", project)
    source = (project / "src" / "kit_range" / "reader.py").read_text()
    major, minor = SDK_API_VERSION.split(".")[:2]
    declared = f">={major}.{minor},<{int(major) + 1}"  # this SDK's MINOR up to the next MAJOR
    assert f'api_version = "{declared}"' in source
    pip("install", "--no-deps", str(project), cwd=tmp_path)
    try:
        listed = dativo("plugins", "list", "--json")
        rows = {row["name"]: row for row in json.loads(listed.stdout)}
        assert rows["kit-range"]["api_version"] == declared and rows["kit-range"]["problem"] is None
        # the same plugin asking for a future SDK is refused with both versions in the message
        (project / "src" / "kit_range" / "reader.py").write_text(source.replace(declared, ">=2.0,<3"))
        pip("install", "--no-deps", "--force-reinstall", str(project), cwd=tmp_path)
        refused = dativo("plugins", "certify", "kit-range")
        assert refused.returncode == 2
        assert "supports plugin SDK >=2.0,<3" in refused.stderr and f"provides SDK {SDK_API_VERSION}" in refused.stderr
    finally:
        pip("uninstall", "-y", "kit-range", cwd=tmp_path)


def test_init_refuses_bad_names_and_non_empty_folders(tmp_path):
    bad = dativo("init", "plugin", "Bad_Name", "--dir", str(tmp_path / "x"))
    assert bad.returncode == 2 and "lower-case" in bad.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    full = dativo("init", "plugin", "ok-name", "--dir", str(tmp_path / "full"))
    assert full.returncode == 2 and "not empty" in full.stderr
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    shutil.rmtree(tmp_path / "full")
