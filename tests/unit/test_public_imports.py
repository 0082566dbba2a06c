"""Plugins import only dativo's public modules; built-in plugins no longer reach into _secrets / _faults.

Static (``ast``): every ``import`` / ``from ... import`` in plugins/**/*.py must name a
module of the documented public list (docs/writing-plugins.md, "What a plugin may
import"), and the built-in connectors and targets must get secret registration and the
crash-point hook from the SDK (``dativo.sdk.register_secret`` / ``redact`` / ``fault_hook``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The modules a plugin may import (and their submodules, unless private).
PUBLIC = ("dativo", "dativo.sdk", "dativo.errors", "dativo.testing", "dativo.postgres_sdk")


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """Every dativo module ``path`` imports, as (line, dotted name); ``from dativo import x`` yields dativo.x."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            if node.module == "dativo":
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):  # private, not __version__
                        yield node.lineno, f"dativo.{alias.name}"


def is_public(module: str) -> bool:
    if module != "dativo" and not module.startswith("dativo."):
        return True  # not dativo's
    if any(part.startswith("_") for part in module.split(".")):
        return False
    if module == "dativo":
        return True
    return any(module == name or module.startswith(name + ".") for name in PUBLIC if name != "dativo")


def violations(paths: list[Path], allowed: object) -> list[str]:
    found = []
    for path in paths:
        for line, module in imported_modules(path):
            if not allowed(module):  # type: ignore[operator]
                found.append(f"{path.relative_to(ROOT)}:{line}: imports {module}")
    return found


def test_the_checker_tells_public_from_private():
    assert is_public("dativo.sdk") and is_public("dativo.postgres_sdk") and is_public("dativo.testing.pytest_plugin")
    assert is_public("pyarrow") and is_public("dativo")
    for private in ("dativo._secrets", "dativo._faults", "dativo.connectors.postgres.types", "dativo.engine.plan"):
        assert not is_public(private), private


def test_nothing_under_plugins_imports_a_private_dativo_module(tmp_path):
    paths = sorted(p for p in (ROOT / "plugins").rglob("*.py") if "target" not in p.relative_to(ROOT).parts)
    assert any(p.name == "__init__.py" and "dativo_postgres_rs" in p.parts for p in paths)
    assert violations(paths, is_public) == []
    # The check sees the forms a plugin would use.
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from dativo import _secrets\nimport dativo._faults\nfrom dativo.connectors.postgres import types\n"
        "from dativo import __version__, SourceError\n"
    )
    found = [line for line, module in imported_modules(bad) if not is_public(module)]
    assert found == [1, 2, 3]


def test_built_in_connectors_and_targets_use_the_sdk_for_secrets_and_crash_points():
    paths = sorted([*(ROOT / "src/dativo/connectors").rglob("*.py"), *(ROOT / "src/dativo/targets").rglob("*.py")])
    assert len(paths) > 10
    assert violations(paths, lambda module: module not in ("dativo._secrets", "dativo._faults")) == []
