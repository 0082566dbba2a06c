"""The import layers of src/dativo, read statically with ``ast`` (nothing is imported or executed).

Every module under ``src/dativo`` is parsed; each ``import`` / ``from ... import`` --
at module level or inside a function (a lazy import is still a dependency) -- becomes
an edge between top-level units (a subpackage such as ``engine``, or a top-level
module such as ``storage``). Imports under ``if TYPE_CHECKING:`` are for the type
checker only and are not edges. The test fails on:

* a cycle between top-level units;
* an import from a lower layer into a higher one (the order is :data:`LAYERS`);
* an import between the plugin-layer siblings (a runtime knows no connector);
* the engine naming a runtime, connector or target (it finds them through the
  registry and the entry points, like any third-party plugin).

A new top-level module or package must be placed in :data:`LAYERS`.
"""

from __future__ import annotations

import ast
import functools
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "dativo"

#: Lowest first. A unit may import units of its own layer or of lower layers only.
LAYERS: list[tuple[str, frozenset[str]]] = [
    (
        "the SDK, errors and private helpers",
        frozenset(
            {"__init__", "_sdk_version", "sdk", "errors", "_secrets", "_logging", "_faults", "_gc", "_installed"}
        ),
    ),
    ("config", frozenset({"config"})),
    # core, and the services plugins may stand on (storage, encryption: KMS clients and the audit chain).
    ("core", frozenset({"core", "storage", "encryption"})),
    # postgres_sdk: the public face of connectors/postgres for third-party PostgreSQL readers.
    ("plugins and runtimes", frozenset({"runtimes", "connectors", "targets", "postgres_sdk"})),
    # executors: found by the engine through the dativo.executors entry points (like runtimes).
    ("engine", frozenset({"engine", "testing", "executors"})),
    ("api", frozenset({"api"})),
    ("front ends", frozenset({"cli", "integrations", "_entry", "__main__"})),
]

#: Units of one layer that must not import each other.
INDEPENDENT = frozenset({"runtimes", "connectors", "targets"})

#: (importer, imported): the engine reaches these only through core's registry and entry points.
FORBIDDEN = frozenset(
    {("engine", "runtimes"), ("engine", "connectors"), ("engine", "targets"), ("engine", "executors")}
)

#: Known violations, each with who removes it: (importing file relative to src/dativo, imported module).
KNOWN_EXCEPTIONS: frozenset[tuple[str, str]] = frozenset()


def layer_of(unit: str) -> int | None:
    """The layer index of a top-level unit; ``sdk*`` modules are SDK, ``cli*`` modules front ends."""
    for index, (_, units) in enumerate(LAYERS):
        if unit in units:
            return index
    if unit.startswith("sdk"):
        return 0
    if unit.startswith("cli"):
        return len(LAYERS) - 1
    return None


@dataclass(frozen=True)
class Edge:
    source: str  # top-level unit of the importer
    target: str  # top-level unit imported
    file: str  # importer, relative to the package root
    line: int
    module: str  # the dativo module imported

    def __str__(self) -> str:
        return f"{self.file}:{self.line} imports {self.module} ({self.source} -> {self.target})"


def modules(root: Path) -> list[Path]:
    """Every importable .py file under ``root`` (its folders all packages; templates are not)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        folders = path.relative_to(root).parents
        if all((root / folder / "__init__.py").is_file() for folder in folders if str(folder) != "."):
            found.append(path)
    return found


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    """Collects ``(line, module)`` for every import in one file, skipping ``if TYPE_CHECKING:`` blocks."""

    def __init__(self, here: list[str], package: str, units: set[str]) -> None:
        self.here = here  # the package relative imports start from
        self.package = package
        self.units = units
        self.found: list[tuple[int, str]] = []

    def visit_If(self, node: ast.If) -> None:
        if _type_checking(node.test):
            for statement in node.orelse:
                self.visit(statement)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.extend((node.lineno, alias.name) for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.here[: len(self.here) - (node.level - 1)]
            module = ".".join([*base, *([node.module] if node.module else [])])
        else:
            module = node.module or ""
        if module == self.package:  # from dativo import x: x may be a submodule
            for alias in node.names:
                name = f"{self.package}.{alias.name}" if alias.name in self.units else self.package
                self.found.append((node.lineno, name))
        else:
            self.found.append((node.lineno, module))


def import_edges(root: Path, package: str = "dativo") -> list[Edge]:
    """Every import of a ``package`` module by a module under ``root``, as an edge between top-level units."""
    units = {p.stem for p in root.glob("*.py")} | {p.parent.name for p in root.glob("*/__init__.py")}

    def unit_of(module: str) -> str | None:
        parts = module.split(".")
        if parts[0] != package:
            return None
        return parts[1] if len(parts) > 1 and parts[1] in units else "__init__"

    edges: list[Edge] = []
    for path in modules(root):
        rel = path.relative_to(root)
        source = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        # Relative imports start from the containing package (for an __init__.py: its own package).
        visitor = _Imports([package, *rel.with_suffix("").parts][:-1], package, units)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        for line, module in visitor.found:
            target = unit_of(module)
            if target is not None and target != source:
                edges.append(Edge(source, target, rel.as_posix(), line, module))
    return edges


@functools.cache
def src_edges() -> tuple[Edge, ...]:
    """The edges of src/dativo, parsed once per test session."""
    return tuple(import_edges(SRC))


def checked_edges() -> list[Edge]:
    return [e for e in src_edges() if (e.file, e.module) not in KNOWN_EXCEPTIONS]


def cycles(edges: list[Edge] | tuple[Edge, ...]) -> list[list[str]]:
    """The strongly connected groups of more than one unit (Tarjan), each sorted."""
    graph: dict[str, set[str]] = defaultdict(set)
    for edge in edges:
        graph[edge.source].add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def layer_violations(edges: list[Edge]) -> list[str]:
    problems = []
    for edge in edges:
        low, high = layer_of(edge.source), layer_of(edge.target)
        if low is None or high is None:
            continue  # reported by test_every_unit_is_in_a_layer
        if high > low:
            problems.append(f"{edge}: layer '{LAYERS[low][0]}' must not import layer '{LAYERS[high][0]}'")
        elif edge.source in INDEPENDENT and edge.target in INDEPENDENT:
            problems.append(f"{edge}: {edge.source}, {edge.target} are siblings and must not import each other")
        elif (edge.source, edge.target) in FORBIDDEN:
            problems.append(f"{edge}: the engine finds {edge.target} through the registry, never by import")
    return problems


def test_every_unit_is_in_a_layer():
    units = {e.source for e in src_edges()} | {e.target for e in src_edges()}
    units |= {p.stem for p in SRC.glob("*.py")} | {p.parent.name for p in SRC.glob("*/__init__.py")}
    unplaced = sorted(u for u in units if layer_of(u) is None)
    assert not unplaced, f"place these in LAYERS of {Path(__file__).name}: {unplaced}"


def test_no_cycle_between_top_level_packages():
    found = cycles(checked_edges())
    details = [str(e) for e in checked_edges() if any(e.source in c and e.target in c for c in found)]
    assert not found, f"import cycles {found}:\n" + "\n".join(details)


def test_no_upward_import_and_no_sibling_plugin_import():
    problems = layer_violations(checked_edges())
    assert not problems, "\n".join(problems)


def test_known_exceptions_still_exist():
    """A known exception that was removed must leave the list (so it cannot come back unnoticed)."""
    present = {(e.file, e.module) for e in src_edges()}
    gone = KNOWN_EXCEPTIONS - present
    assert not gone, f"no longer imported, delete from KNOWN_EXCEPTIONS: {sorted(gone)}"


def test_the_walk_sees_the_real_imports():
    edges = src_edges()
    pairs = {(e.source, e.target) for e in edges}
    assert {("engine", "core"), ("runtimes", "core"), ("core", "sdk"), ("cli", "api")} <= pairs
    # A lazy import inside a function is an edge too (cli imports serve only for `dativo serve`).
    assert any(e.file == "cli/__init__.py" and e.module == "dativo.runtimes.serve" for e in edges)


@pytest.fixture
def tangled(tmp_path: Path) -> Path:
    """A tiny package with a lazy upward import, a cycle, a sibling import and a TYPE_CHECKING-only import."""
    root = tmp_path / "dativo"
    files = {
        "__init__.py": "",
        "errors.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dativo.engine import run\n",
        "core/__init__.py": "def f():\n    from ..engine import pipeline\n",
        "engine/__init__.py": "",
        "engine/pipeline.py": "from dativo.core import f\nfrom dativo import runtimes\n",
        "runtimes/__init__.py": "from . import x\n",
        "runtimes/x.py": "import dativo.connectors.postgres\n",
        "connectors/__init__.py": "",
        "connectors/postgres.py": "",
        "templates/python/t.py": "import dativo.cli\n",  # not a package: never walked
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_checks_find_cycles_upward_sibling_and_forbidden_imports(tangled: Path):
    edges = import_edges(tangled)
    assert not any(e.file.startswith("templates") for e in edges)
    assert not any(e.file == "errors.py" for e in edges)  # TYPE_CHECKING only
    assert cycles(edges) == [["core", "engine"]]
    problems = "\n".join(layer_violations(edges))
    assert "core/__init__.py:2 imports dativo.engine (core -> engine)" in problems
    assert "runtimes/x.py:1 imports dativo.connectors.postgres (runtimes -> connectors)" in problems
    assert "engine/pipeline.py:2 imports dativo.runtimes (engine -> runtimes)" in problems
