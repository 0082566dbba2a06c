"""``dativo init plugin``: generate a complete, buildable plugin project from the templates shipped with dativo.

Templates live in ``dativo/testing/templates/<lang>/<kind>/`` (package data, next to the
conformance suite every generated project runs). A file
ending in ``.j2`` is rendered with Jinja2 and loses the suffix; every other
file is copied as is. Path parts may contain ``{{package}}`` / ``{{name}}``.
A freshly generated project builds and passes ``dativo plugins certify`` with
no edits (the test suite checks this for every language and kind).
"""

from __future__ import annotations

import hashlib
import keyword
import re
import shutil
from dataclasses import asdict, dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Literal

import jinja2

from dativo import __version__
from dativo.errors import ConfigError
from dativo.sdk import SDK_API_VERSION

__all__ = ["KINDS", "LANGS", "PluginNames", "generate", "names_for", "template_digest"]

Lang = Literal["python", "rust", "go"]
Kind = Literal["reader", "writer"]
LANGS: tuple[Lang, ...] = ("python", "rust", "go")
KINDS: tuple[Kind, ...] = ("reader", "writer")
_NAME = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")


@dataclass(frozen=True)
class PluginNames:
    """Every spelling of a plugin's name the templates use."""

    name: str  # my-orders: the distribution, entry point, binary and folder name
    package: str  # my_orders: the Python package / Rust crate library
    class_name: str  # MyOrdersReader
    kind: str
    lang: str
    sdk_version: str  # 1.1.0
    sdk_range: str  # >=1.1,<2
    dativo_version: str


def names_for(name: str, kind: Kind, lang: Lang) -> PluginNames:
    """Derive the names; ConfigError unless ``name`` is lower-case words joined by hyphens (``my-orders``)."""
    if not _NAME.match(name):
        raise ConfigError(
            f"plugin name '{name}' must be lower-case letters and digits in words joined by '-' (e.g. 'my-orders')"
        )
    package = name.replace("-", "_")
    if keyword.iskeyword(package):
        raise ConfigError(f"plugin name '{name}' is a Python keyword; choose another")
    words = "".join(part.capitalize() for part in name.split("-"))
    class_name = words if words.endswith(kind.capitalize()) else words + kind.capitalize()
    major, minor = SDK_API_VERSION.split(".")[:2]
    return PluginNames(
        name=name,
        package=package,
        class_name=class_name,
        kind=kind,
        lang=lang,
        sdk_version=SDK_API_VERSION,
        sdk_range=f">={major}.{minor},<{int(major) + 1}",
        dativo_version=__version__,
    )


def _template_root(lang: Lang, kind: Kind) -> Traversable:
    return files("dativo.testing").joinpath("templates", lang, kind)


def template_digest(lang: Lang, kind: Kind) -> str:
    """A hash of one template's files (build caches are keyed by it)."""
    digest = hashlib.sha256()
    for relative, entry in sorted(_walk(_template_root(lang, kind), "")):
        digest.update(relative.encode())
        digest.update(entry.read_bytes())
    return digest.hexdigest()[:16]


def _walk(node: Traversable, prefix: str) -> list[tuple[str, Traversable]]:
    found: list[tuple[str, Traversable]] = []
    for entry in node.iterdir():
        if entry.name == "__pycache__":
            continue
        relative = f"{prefix}{entry.name}"
        if entry.is_dir():
            found.extend(_walk(entry, relative + "/"))
        else:
            found.append((relative, entry))
    return found


def generate(name: str, kind: Kind, lang: Lang, dest: Path, force: bool = False) -> list[Path]:
    """Write the project for plugin ``name`` into ``dest`` (created); return the files written.

    Raises ConfigError for an unknown kind or language, a bad name, or a
    non-empty ``dest`` (unless ``force``, which overwrites the template's files only).
    """
    if lang not in LANGS:
        raise ConfigError(f"unknown language '{lang}' (choose {', '.join(LANGS)})")
    if kind not in KINDS:
        raise ConfigError(f"unknown kind '{kind}' (choose reader or writer)")
    names = names_for(name, kind, lang)
    if dest.exists() and any(dest.iterdir()) and not force:
        raise ConfigError(f"{dest} exists and is not empty; choose another folder or pass --force")
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False, trim_blocks=False
    )
    context = asdict(names)
    written: list[Path] = []
    for relative, entry in sorted(_walk(_template_root(lang, kind), "")):
        target_rel = env.from_string(relative.replace("{{package}}", "{{ package }}")).render(context)
        data = entry.read_bytes()
        if target_rel.endswith(".j2"):
            target_rel = target_rel[:-3]
            data = env.from_string(data.decode()).render(context).encode()
        target = dest / target_rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        if target_rel.endswith(".sh"):
            target.chmod(0o755)
        written.append(target)
    return written


def copy_tree(source: Path, dest: Path) -> None:
    """Copy a generated project (tests use it to build in a cache folder)."""
    shutil.copytree(source, dest, dirs_exist_ok=True)
