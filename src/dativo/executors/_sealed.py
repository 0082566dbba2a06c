"""Plugin configs for workers with secrets as references (``${VAR}``, ``${file:path}``), resolved on the worker.

The driver's plugin configs hold the job's resolved values. Before a config is sent to
Ray tasks, every secret in it that came from a ``${...}`` reference of the job file is
put back as that reference (:func:`seal`): a string leaf holding one becomes a
:class:`Sealed` template. A worker resolves the templates from its own environment and
files (:func:`unseal`), exactly as the job loader does. What travels in plain text is
only what the job file itself holds in plain text (docs/ray.md, "Secrets").
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dativo._secrets import MASK, redact
from dativo.config.loader import _INTERPOLATION, _Interpolator
from dativo.errors import ConfigError

__all__ = ["Sealed", "seal", "secret_references", "unseal"]


@dataclass(frozen=True)
class Sealed:
    """A config string whose secrets are ``${...}`` references (``$${`` for a literal ``${``)."""

    template: str


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [node] if isinstance(node, str) else []


def secret_references(job_file: Path, base_dir: Path) -> dict[str, str]:
    """Secret value -> the ``${...}`` reference of ``job_file`` it came from (registered secrets only).

    A reference whose value cannot be found again on the driver (the file was edited, a
    variable unset since loading) is left out: that value, if in a config, travels as is.
    """
    try:
        raw = yaml.safe_load(job_file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    found: dict[str, str] = {}
    for text in _strings(raw):
        for match in _INTERPOLATION.finditer(text):
            expr = match.group(1)
            if expr is None:
                continue
            value = _value(expr.strip(), base_dir)
            if value and MASK in redact(value) and redact(value) != value:
                found[value] = "${" + expr + "}"
    return found


def _value(expr: str, base_dir: Path) -> str | None:
    if expr.startswith("file:"):
        file = Path(os.path.expanduser(expr[len("file:") :].strip()))
        try:
            return (file if file.is_absolute() else base_dir / file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError:
            return None
    name, has_default, default = expr.partition(":-")
    value = os.environ.get(name)
    return default if (value is None or value == "") and has_default else value


def seal(config: Any, references: Mapping[str, str]) -> Any:
    """``config`` with each secret of ``references`` in a string leaf put back as its reference."""
    if isinstance(config, Mapping):
        return {key: seal(value, references) for key, value in config.items()}
    if isinstance(config, list | tuple):
        return [seal(value, references) for value in config]
    if not isinstance(config, str) or not references:
        return config
    secrets = sorted((s for s in references if s in config), key=len, reverse=True)
    if not secrets:
        return config
    pieces = re.split("(" + "|".join(re.escape(s) for s in secrets) + ")", config)
    template = "".join(references[p] if i % 2 else p.replace("${", "$${") for i, p in enumerate(pieces))
    return Sealed(template)


def unseal(config: Any, job_file: Path, base_dir: Path, key: tuple[str, ...] = ()) -> Any:
    """On a worker: ``config`` with every :class:`Sealed` resolved from this process's environment and files.

    Raises ConfigError naming the key and the variable or file missing on the worker.
    """
    if isinstance(config, Mapping):
        return {k: unseal(v, job_file, base_dir, (*key, str(k))) for k, v in config.items()}
    if isinstance(config, list):
        return [unseal(v, job_file, base_dir, (*key, str(i))) for i, v in enumerate(config)]
    if isinstance(config, Sealed):
        where = f"{job_file} (on Ray worker node {os.uname().nodename})"
        resolver = _Interpolator(dict(os.environ), base_dir, where, {})
        try:
            return resolver.resolve(config.template, key)
        except ConfigError as exc:
            raise ConfigError(
                str(exc), hint="secrets reach Ray workers as references: set them on every worker (docs/ray.md)"
            ) from None
    return config
