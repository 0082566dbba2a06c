"""Start-up cost (issue 15): `dativo --version` and `import dativo` import nothing heavy."""

from __future__ import annotations

import subprocess
import sys

from dativo import SDK_API_VERSION, __version__


def imported_modules(*args: str) -> tuple[set[str], str]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *args], capture_output=True, text=True, timeout=120, check=True
    )
    names = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    return names, result.stdout


def test_version_imports_no_pyarrow_pyiceberg_sqlalchemy_or_typer():
    names, stdout = imported_modules("-m", "dativo", "--version")
    assert stdout.strip() == f"dativo {__version__} (plugin SDK API {SDK_API_VERSION})"
    heavy = {"pyarrow", "pyarrow.compute", "pyiceberg", "sqlalchemy", "typer", "rich", "pydantic", "boto3"}
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
