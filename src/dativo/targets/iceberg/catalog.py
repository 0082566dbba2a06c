"""Opening the Iceberg target's catalog (embedded SQL, REST, Glue, ... by PyIceberg properties) and namespaces.

A ``type: sql`` catalog on a plain ``sqlite:///`` file — the embedded catalog a job gets without a
``catalog:`` block — is opened by :class:`~dativo.targets.iceberg.embedded.EmbeddedCatalog` (the same
tables through the stdlib ``sqlite3``, without SQLAlchemy); every other catalog by PyIceberg's
``load_catalog``, which imports that catalog type's module only (``pyiceberg.catalog.sql`` for SQL,
``pyiceberg.catalog.rest`` for REST, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyiceberg.catalog
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError
from pyiceberg.utils.config import Config, merge_config

from dativo.errors import TargetError
from dativo.sdk import redact, register_secret

__all__ = ["ensure_namespace", "open_catalog"]

_SECRET_PROPERTY_MARKERS = ("secret", "password", "token", "credential", "key-id")


def ensure_namespace(catalog: Catalog, namespace: tuple[str, ...]) -> bool:
    """Create ``namespace`` unless it exists; True when this call created it.

    Idempotent under races: when another process creates it between our check and
    our create (``NamespaceAlreadyExistsError``, or the embedded catalog's unique-key
    error), it exists, which is all the caller needs. Other failures propagate.
    """
    try:
        catalog.create_namespace(namespace)
        return True
    except NamespaceAlreadyExistsError:
        return False
    except Exception as exc:
        if "already exists" in str(exc).lower() or "unique constraint" in str(exc).lower():
            return False
        raise


def open_catalog(properties: dict[str, Any], job_dir: Path) -> Catalog:
    """Load the catalog the job names (embedded SQL when none); raises TargetError when it cannot be opened."""
    name = str(properties.pop("name", "dativo"))
    properties = {key: str(value) for key, value in properties.items()}
    for key, value in properties.items():
        if any(marker in key.lower() for marker in _SECRET_PROPERTY_MARKERS):
            register_secret(value)
    if not properties or (properties.get("type", "sql") == "sql" and "uri" not in properties):
        warehouse = job_dir / "warehouse"
        warehouse.mkdir(parents=True, exist_ok=True)
        properties = {
            "type": "sql",
            "uri": f"sqlite:///{warehouse / 'catalog.db'}",
            "warehouse": warehouse.as_uri(),
            **properties,
        }
    warehouse_value = properties.get("warehouse", "")
    if warehouse_value and "://" not in warehouse_value:
        local = Path(warehouse_value).expanduser()
        local = local if local.is_absolute() else (job_dir / local).resolve()
        local.mkdir(parents=True, exist_ok=True)
        properties["warehouse"] = local.as_uri()
    for attempt in range(3):
        try:
            return _load(name, properties)
        except Exception as exc:
            # Two processes creating a new embedded catalog's tables at once: the loser sees them appear.
            if "already exists" in str(exc) and attempt < 2:
                continue
            raise TargetError(f"iceberg catalog '{name}' cannot be opened: {redact(str(exc))}") from None
    raise AssertionError("unreachable")


def _load(name: str, properties: dict[str, str]) -> Catalog:
    # As load_catalog does: the PYICEBERG_CATALOG__<name>__* variables and ~/.pyiceberg.yaml come first.
    config = getattr(pyiceberg.catalog, "_ENV_CONFIG", None) or Config()
    merged = merge_config(config.get_catalog_config(name) or {}, dict(properties))
    flat = {key: str(value) for key, value in merged.items() if not isinstance(value, dict)}
    if flat.get("type", "sql").lower() == "sql" and flat.get("uri", "").startswith("sqlite:///"):
        from dativo.targets.iceberg.embedded import EmbeddedCatalog, sqlite_path

        if "py-catalog-impl" not in flat and sqlite_path(flat) is not None:
            return EmbeddedCatalog(name, **flat)
    return load_catalog(name, **properties)
