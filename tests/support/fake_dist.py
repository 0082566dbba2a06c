"""An installed distribution made by hand: a ``*.dist-info`` folder that ``importlib.metadata`` finds.

Tests register third-party plugins (readers, runtimes, KMS clients...) through real entry
points this way: ``importlib.metadata`` reads ``<name>-<version>.dist-info/entry_points.txt``
from any folder on ``sys.path``, exactly as for a pip-installed package.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def fake_distribution(
    root: Path,
    name: str,
    version: str,
    entry_points: Mapping[str, Mapping[str, str]],
    files: Mapping[str, str] | None = None,
) -> Path:
    """Write ``files`` (relative path -> source) and the dist-info of ``name`` into ``root``; returns ``root``.

    ``entry_points`` maps a group (``dativo.kms``) to ``{entry name: "module:attribute"}``.
    """
    for relative, text in (files or {}).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    dist = root / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(
        "".join(
            f"[{group}]\n" + "".join(f"{entry} = {target}\n" for entry, target in entries.items())
            for group, entries in entry_points.items()
        )
    )
    return root
