"""Opening the Iceberg target's catalog (embedded SQL, REST, Glue, ... by PyIceberg properties) and namespaces."""

from __future__ import annotations

# Before any PyIceberg import: defers its model builds and unused modules (see _pyiceberg).
from dativo.targets.iceberg import _pyiceberg  # noqa: F401

# isort: split

from pathlib import Path
from typing import Any

from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError

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
            return load_catalog(name, **properties)
        except Exception as exc:
            # Two processes creating a new embedded catalog's tables at once: the loser sees them appear.
            if "already exists" in str(exc) and attempt < 2:
                continue
            raise TargetError(f"iceberg catalog '{name}' cannot be opened: {redact(str(exc))}") from None
    raise AssertionError("unreachable")
