"""Read a job file: YAML with line numbers, ``${...}`` interpolation, secrets, validation.

Every problem becomes one :class:`~dativo.errors.ConfigError` whose message
starts with ``FILE:LINE: key.path:`` so the user can go straight to it.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from dativo._secrets import SECRET_KEY_PATTERN, register_secret
from dativo.config.connectors import connector, connectors, known
from dativo.config.models import JobConfig, _ConnectorSection
from dativo.config.streams import LoadedStreams, StreamEntry, StreamLines, StreamsJobConfig, merged_stream
from dativo.errors import ConfigError

__all__ = ["LoadedJob", "LoadedStreams", "load_job", "load_job_file", "parse_job"]

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
    #: The line of every key path in the file (``("source", "table")`` -> 5).
    lines: Mapping[KeyPath, int] = field(default_factory=dict, repr=False, compare=False)
    #: The stream's name when this job is one stream of a ``streams:`` file, else None.
    stream: str | None = None

    def locate(self, key: str) -> str:
        """``FILE:LINE`` of a dotted job key (``"source.table"``), or of its closest parent present."""
        path = tuple(key.split("."))
        return f"{self.path}:{_line_for(path, self.lines)}"

    @property
    def name(self) -> str:
        """The job's name: ``name:`` from the file, else the file name without extension."""
        return self.config.name or self.path.stem


def load_job(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> LoadedJob:
    """Load and validate the single-table job file at ``path``.

    Raises ConfigError (with file, line and key path) for a missing or unreadable
    file, malformed YAML, an unknown or missing key, a bad value, or an
    environment variable or secret file that ``${...}`` names but does not exist;
    also for a file with ``streams:`` (load it with :func:`load_job_file`).
    """
    loaded = load_job_file(path, env)
    if isinstance(loaded, LoadedStreams):
        raise ConfigError(
            f"{loaded.locate('streams')}: streams: this job holds {len(loaded.entries)} streams and this command "
            "takes a single-table job (dativo run, validate, check, discover and state take --stream NAME)"
        )
    return loaded


def load_job_file(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> LoadedJob | LoadedStreams:
    """Load and validate a job file: a single-table job, or a job with ``streams:`` (docs/many-tables.md).

    Raises ConfigError as :func:`load_job` does; for a streams file every stream is
    validated and every problem listed, each at the line that caused it.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"job file {file} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"job file {file} cannot be read: {exc}") from None
    job_dir = file.resolve().parent
    data, lines = _resolved(text, source=str(file), base_dir=job_dir, env=env)
    if "streams" in data or "defaults" in data:
        return _streams(data, lines, file, job_dir)
    return LoadedJob(config=_validate(data, str(file), lines), path=file, dir=job_dir, lines=lines)


def parse_job(
    text: str, *, source: str = "<job>", base_dir: Path | None = None, env: dict[str, str] | None = None
) -> JobConfig:
    """Parse job YAML ``text``; see :func:`load_job`. ``source`` names the text in messages."""
    return _parse(text, source=source, base_dir=base_dir, env=env)[0]


def _parse(
    text: str, *, source: str, base_dir: Path | None, env: dict[str, str] | None
) -> tuple[JobConfig, dict[KeyPath, int]]:
    data, lines = _resolved(text, source=source, base_dir=base_dir, env=env)
    return _validate(data, source, lines), lines


def _resolved(
    text: str, *, source: str, base_dir: Path | None, env: dict[str, str] | None
) -> tuple[dict[str, Any], dict[KeyPath, int]]:
    data, lines = _compose(text, source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: a job must be a mapping with 'source' and 'target' keys")
    resolver = _Interpolator(env if env is not None else dict(os.environ), base_dir or Path.cwd(), source, lines)
    return resolver.resolve(data, ()), lines


def _validate(data: dict[str, Any], source: str, lines: dict[KeyPath, int]) -> JobConfig:
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc, source, lines, data=data)) from None


def _streams(data: dict[str, Any], lines: dict[KeyPath, int], file: Path, job_dir: Path) -> LoadedStreams:
    """Validate a streams file, then every stream's merged job; all problems at once, each at its line."""
    source = str(file)
    misplaced = [
        f"{source}:{_line_for((key,), lines)}: {key}: with streams:, settings shared by the streams go under "
        f"defaults: (defaults.{key})"
        for key in ("source", "target")
        if key in data
    ]
    rest = {key: value for key, value in data.items() if key not in ("source", "target")}
    try:
        config = StreamsJobConfig.model_validate(rest)
    except ValidationError as exc:
        raise ConfigError(
            "\n".join([*misplaced, _describe_validation_error(exc, source, lines, StreamsJobConfig, rest)])
        ) from None
    problems: list[tuple[int, str]] = [(_line_for(("source",), lines), text) for text in misplaced]
    for shared in ("table", "query"):
        if shared in config.defaults.source:
            path: KeyPath = ("defaults", "source", shared)
            problems.append(
                (lines[path], f"{source}:{lines[path]}: {_dotted(path)}: set it per stream, not in defaults")
            )
    entries: list[StreamEntry] = []
    for key in config.streams:
        entry = _stream_entry(config, key, file, job_dir, lines, problems)
        if entry is not None:
            entries.append(entry)
    if problems:
        unique = dict.fromkeys(message for _, message in sorted(problems, key=lambda item: item[0]))
        raise ConfigError("\n".join(unique))
    return LoadedStreams(config=config, path=file, dir=job_dir, entries=tuple(entries), lines=lines)


def _stream_entry(
    config: StreamsJobConfig,
    key: str,
    file: Path,
    job_dir: Path,
    lines: dict[KeyPath, int],
    problems: list[tuple[int, str]],
) -> StreamEntry | None:
    """Merge and validate one stream; its problems are appended to ``problems`` (then None is returned)."""
    source = str(file)
    stream_lines = StreamLines(lines, key)

    def problem(path: KeyPath, message: str) -> None:
        where = stream_lines.origin(path)
        line = _line_for(where, lines)
        problems.append((line, f"{source}:{line}: {_dotted(where)}: {message}"))

    bad_template = False
    try:
        job, templates = merged_stream(config, key, config.name or file.stem)
    except (KeyError, ValueError) as exc:
        bad_template = True
        problem(
            ("target", "table"),
            f"bad placeholder {exc} in the target name; use {{schema}}, {{table}}, {{stream}} or {{job}} "
            "({{ and }} for literal braces)",
        )
        job, templates = merged_stream(config, key, config.name or file.stem, fill=False)
    try:
        job_config = JobConfig.model_validate(job)
    except ValidationError as exc:
        for path, message in _problems(exc, JobConfig, job):
            problem(path, message)
        return None
    if bad_template:
        return None
    spec = config.streams[key]
    exclude = tuple(spec.exclude) if spec is not None and not isinstance(spec, str) else ()
    loaded = LoadedJob(config=job_config, path=file, dir=job_dir, lines=stream_lines, stream=key)
    return StreamEntry(key=key, job=loaded, exclude=exclude, templates=templates)


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
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        raise ConfigError(f"{source}:{where}: invalid YAML: {_plain_yaml_problem(exc)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()


# PyYAML's parser wording -> what the user did wrong, and how to fix it.
_YAML_PROBLEMS: tuple[tuple[str, str], ...] = (
    (
        "mapping values are not allowed",
        "a ':' where a value was expected; indent the nested keys under their "
        "parent, or quote a value that contains ': '",
    ),
    (
        "expected <block end>",
        "this line is indented differently from the keys around it; align it with its siblings (spaces, not tabs)",
    ),
    ("could not find expected ':'", "a key without ':' (or an unclosed quote above); write 'key: value'"),
    (
        "cannot start any token",
        "a tab or a reserved character; YAML indents with spaces, and values starting with @ or ` must be quoted",
    ),
    (
        "did not find expected key",
        "this line is indented differently from the keys around it, or a list item "
        "('- ') is mixed with keys at the same level",
    ),
    ("expected ',' or ']'", "an unclosed '[' list above; close it with ']' or quote the value"),
    ("expected ',' or '}'", "an unclosed '{' mapping above; close it with '}' or quote the value"),
    ("found unexpected end of stream", "the file ends inside a quoted string; close the quote"),
    ("found undefined alias", "an '*alias' with no matching '&anchor'; quote the value if '*' is meant literally"),
    ("found duplicate anchor", "two '&anchor's with the same name"),
)


def _plain_yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    problem = str(exc.problem or exc.context or "malformed YAML")
    for pattern, plain in _YAML_PROBLEMS:
        if pattern in problem:
            return plain
    return problem


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


def _line_for(path: KeyPath, lines: Mapping[KeyPath, int]) -> int:
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return 1


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe_validation_error(
    exc: ValidationError,
    source: str,
    lines: Mapping[KeyPath, int],
    root: type[BaseModel] = JobConfig,
    data: Any = None,
) -> str:
    """Every problem pydantic found, one ``FILE:LINE: key.path: message`` line each, in file order."""
    problems = _problems(exc, root, data)
    problems.sort(key=lambda item: (_line_for(item[0], lines), _dotted(item[0])))
    return "\n".join(f"{source}:{_line_for(path, lines)}: {_dotted(path)}: {message}" for path, message in problems)


def _problems(exc: ValidationError, root: type[BaseModel], data: Any = None) -> list[tuple[KeyPath, str]]:
    """``(key path, message)`` of every problem, unknown keys paired with the required key they misspell."""
    problems: list[tuple[KeyPath, str]] = []
    for error in exc.errors(include_url=False):
        # pydantic puts union-member and validator names such as "function-after[...]" into loc.
        path: KeyPath = tuple(part for part in error["loc"] if isinstance(part, int) or "[" not in part)
        if error["type"] == "extra_forbidden":
            problems.append((path, "unknown key"))
        elif error["type"] == "missing":
            problems.append((path, "required key is missing"))
        else:
            problems.append((path, error["msg"].removeprefix("Value error, ")))
    return _pair_typos(problems, root, data)


def _pair_typos(
    problems: list[tuple[KeyPath, str]], root: type[BaseModel], data: Any = None
) -> list[tuple[KeyPath, str]]:
    """Turn "unknown key" into "did you mean ..." and drop the "missing" it explains.

    ``conector:`` is one mistake, not two: the unknown key names the missing one it
    was meant to be. Other unknown keys get the closest allowed key, if any.
    """
    missing = {path for path, message in problems if message == "required key is missing"}
    explained: set[KeyPath] = set()
    out: list[tuple[KeyPath, str]] = []
    for path, message in problems:
        if message != "unknown key" or not path or not isinstance(path[-1], str):
            out.append((path, message))
            continue
        parent = path[:-1]
        missing_here = [str(p[-1]) for p in missing if p[:-1] == parent and p not in explained]
        close = difflib.get_close_matches(path[-1], missing_here, n=1, cutoff=0.6)
        if close:
            explained.add((*parent, close[0]))
            out.append((path, f"unknown key; did you mean '{close[0]}' (a required key)?"))
            continue
        allowed = _allowed_keys(parent, root, data)
        close = difflib.get_close_matches(path[-1], allowed, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else "check its spelling"
        out.append((path, f"unknown key; {hint} ({_reference(parent, root, data)})"))
    return [(path, message) for path, message in out if path not in explained]


def _allowed_keys(path: KeyPath, root: type[BaseModel] = JobConfig, data: Any = None) -> list[str]:
    """The keys the job schema allows at ``path`` (empty when it is not a fixed model).

    Under ``source:`` / ``target:`` these are the engine's keys plus those of the
    connector ``data`` names there (its config model's fields).
    """
    model: Any = root
    node = data
    for part in path:
        if isinstance(part, int) or not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = _fields(model, node).get(part)
        if field is None:
            return []
        model = _model_of(field.annotation)
        node = node.get(part) if isinstance(node, Mapping) else None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(_fields(model, node))
    return []


def _reference(path: KeyPath, root: type[BaseModel], data: Any) -> str:
    """Where the keys at ``path`` are documented: a connector's own keys, else the job reference."""
    node = data
    for part in path:
        node = node.get(part) if isinstance(node, Mapping) else None
    if len(path) == 1 and path[0] in ("source", "target") and isinstance(node, Mapping):
        name = node.get("connector")
        role: Literal["source", "target"] = "source" if path[0] == "source" else "target"
        try:
            declared = connector(name, role) if isinstance(name, str) and root is JobConfig else None
        except (ValueError, ConfigError):
            declared = None
        if declared is not None and declared.config.model_fields:
            return f"connector '{name}' takes: {', '.join(declared.config.model_fields)}; see docs/configuration.md"
    return "the job reference is docs/configuration.md"


def _fields(model: type[BaseModel], node: Any) -> dict[str, FieldInfo]:
    """``model``'s fields; for a connector section, plus the fields of the connector ``node`` names."""
    fields = dict(model.model_fields)
    if not (issubclass(model, _ConnectorSection) and isinstance(node, Mapping)):
        return fields
    if "connector" not in node:  # no connector named: any installed connector's keys
        for name in known(model.ROLE):
            fields.update(connectors()[name].config.model_fields)
        return fields
    try:
        declared = connector(str(node["connector"]), model.ROLE)
    except (ValueError, ConfigError):
        return fields
    fields.update(declared.config.model_fields)
    return fields


def _model_of(annotation: Any) -> Any:
    """The pydantic model inside ``Model | None`` (or the annotation itself)."""
    for arg in typing.get_args(annotation) or (annotation,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation
