"""Read a job file: YAML with line numbers, ``${...}`` interpolation, secrets, validation.

Every problem becomes one :class:`~dativo.errors.ConfigError` whose message
starts with ``FILE:LINE: key.path:`` so the user can go straight to it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dativo._secrets import SECRET_KEY_PATTERN, register_secret
from dativo.config.models import JobConfig
from dativo.errors import ConfigError

__all__ = ["LoadedJob", "load_job", "parse_job"]

KeyPath = tuple[str | int, ...]

# ${VAR}, ${VAR:-default}, ${file:path}; $${ is a literal "${".
_INTERPOLATION = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class LoadedJob:
    """A validated job plus where it came from (relative paths resolve against ``dir``)."""

    config: JobConfig
    path: Path
    dir: Path

    @property
    def name(self) -> str:
        """The job's name: ``name:`` from the file, else the file name without extension."""
        return self.config.name or self.path.stem


def load_job(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> LoadedJob:
    """Load and validate the job file at ``path``.

    Raises ConfigError (with file, line and key path) for a missing or unreadable
    file, malformed YAML, an unknown or missing key, a bad value, or an
    environment variable or secret file that ``${...}`` names but does not exist.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"job file {file} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"job file {file} cannot be read: {exc}") from None
    job_dir = file.resolve().parent
    config = parse_job(text, source=str(file), base_dir=job_dir, env=env)
    return LoadedJob(config=config, path=file, dir=job_dir)


def parse_job(
    text: str, *, source: str = "<job>", base_dir: Path | None = None, env: dict[str, str] | None = None
) -> JobConfig:
    """Parse job YAML ``text``; see :func:`load_job`. ``source`` names the text in messages."""
    data, lines = _compose(text, source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: a job must be a mapping with 'source' and 'target' keys")
    resolver = _Interpolator(env if env is not None else dict(os.environ), base_dir or Path.cwd(), source, lines)
    data = resolver.resolve(data, ())
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc, source, lines)) from None


def _compose(text: str, source: str) -> tuple[Any, dict[KeyPath, int]]:
    """Build plain Python data from YAML, remembering the line of every key path."""
    loader = yaml.SafeLoader(text)
    lines: dict[KeyPath, int] = {}

    def build(node: yaml.Node, path: KeyPath) -> Any:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node, deep=True)
                if key in out:
                    raise ConfigError(
                        f"{source}:{key_node.start_mark.line + 1}: {_dotted((*path, key))}: duplicate key"
                    )
                lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = build(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(item, (*path, index)) for index, item in enumerate(node.value)]
        return loader.construct_object(node, deep=True)

    try:
        root = loader.get_single_node()
        return (build(root, ()) if root is not None else None), lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError(f"{source}:{line}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()


class _Interpolator:
    def __init__(self, env: dict[str, str], base_dir: Path, source: str, lines: dict[KeyPath, int]) -> None:
        self.env = env
        self.base_dir = base_dir
        self.source = source
        self.lines = lines

    def resolve(self, value: Any, path: KeyPath) -> Any:
        if isinstance(value, dict):
            return {key: self.resolve(item, (*path, key)) for key, item in value.items()}
        if isinstance(value, list):
            return [self.resolve(item, (*path, index)) for index, item in enumerate(value)]
        if isinstance(value, str):
            resolved = self._string(value, path)
            if path and isinstance(path[-1], str) and SECRET_KEY_PATTERN.search(path[-1]):
                register_secret(resolved)
            return resolved
        return value

    def _string(self, text: str, path: KeyPath) -> str:
        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            return self._expression(match.group(1).strip(), path)

        return _INTERPOLATION.sub(substitute, text)

    def _expression(self, expr: str, path: KeyPath) -> str:
        if expr.startswith("file:"):
            return self._secret_file(expr[len("file:") :].strip(), path)
        name, has_default, default = expr.partition(":-")
        if not _ENV_NAME.fullmatch(name):
            self._fail(
                path,
                f"'${{{expr}}}' is not a valid reference (use ${{VAR}}, ${{VAR:-default}} or ${{file:path}})",
            )
        value = self.env.get(name)
        if value is None or (has_default and value == ""):
            if not has_default:
                self._fail(
                    path,
                    f"environment variable {name} is not set (export it, or give a default with ${{{name}:-value}})",
                )
            value = default
        if SECRET_KEY_PATTERN.search(name):
            register_secret(value)
        return value

    def _secret_file(self, raw: str, path: KeyPath) -> str:
        file = Path(os.path.expanduser(raw))
        if not file.is_absolute():
            file = self.base_dir / file
        try:
            secret = file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            self._fail(path, f"secret file {file} cannot be read ({exc.strerror or exc})")
        register_secret(secret)
        return secret

    def _fail(self, path: KeyPath, message: str) -> Any:
        raise ConfigError(f"{self.source}:{_line_for(path, self.lines)}: {_dotted(path)}: {message}")


def _line_for(path: KeyPath, lines: dict[KeyPath, int]) -> int:
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return 1


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe_validation_error(exc: ValidationError, source: str, lines: dict[KeyPath, int]) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    # pydantic puts union-member and validator names such as "function-after[...]" into loc.
    path: KeyPath = tuple(part for part in first["loc"] if isinstance(part, int) or "[" not in part)
    if first["type"] == "extra_forbidden":
        message = "unknown key (check its spelling and the job reference in docs/configuration.md)"
    elif first["type"] == "missing":
        message = "required key is missing"
    else:
        message = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{source}:{_line_for(path, lines)}: {_dotted(path)}: {message}{more}"
