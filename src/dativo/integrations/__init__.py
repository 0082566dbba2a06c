"""Orchestrator integrations: ``dativo.integrations.dagster`` and ``dativo.integrations.airflow``.

Each imports its framework only when used, and names the extra to install when it is missing.
"""

from __future__ import annotations

from dativo.errors import PluginError

__all__ = ["missing_extra"]


def missing_extra(module: str, extra: str, error: ImportError) -> PluginError:
    """The one-line error for an integration whose framework is not installed, naming the extra to install."""
    return PluginError(f"{module} is not installed ({error}); install it with: pip install 'dativo[{extra}]'")
