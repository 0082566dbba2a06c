"""The ``custom`` connector (entry point ``dativo.connectors: custom``): no keys of its own, no default plugin.

A job with ``connector: custom`` names its reader or writer under ``reader:`` /
``writer:``; every other key of the section is passed to that plugin as is, for it
to validate in ``initialize()``.
"""

from __future__ import annotations

from dativo.sdk_connectors import Connector, OpenConnectorConfig

__all__ = ["CUSTOM"]

CUSTOM = Connector(
    name="custom",
    config=OpenConnectorConfig,
    roles=("source", "target"),
    description="Any reader or writer, named under reader: / writer:; its keys are passed through",
)
