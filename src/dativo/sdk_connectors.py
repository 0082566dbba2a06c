"""The public connector SDK: declare a connector, and the S3 / object-store connection model.

A **connector** is what a job names in ``source.connector`` / ``target.connector``.
It is registered under the ``dativo.connectors`` entry-point group, exactly like the
built-in ones (postgres, sqlite, files, iceberg, parquet, encrypted-parquet)::

    # pyproject.toml
    [project.entry-points."dativo.connectors"]
    jsondir = "dativo_jsondir.connector:CONNECTOR"

    # dativo_jsondir/connector.py -- keep it light: it is imported whenever a job is loaded
    from dativo.sdk_connectors import Connector, ConnectorConfig

    class JsonDirConfig(ConnectorConfig):
        folder: str
        pattern: str = "*.json"

    CONNECTOR = Connector(name="jsondir", config=JsonDirConfig, reader="jsondir")

The job's ``source:`` (or ``target:``) keys other than the engine's own
(``connector``, ``reader``/``writer``, ``options``, ``incremental``, ``cdc``,
``parallelism``; ``mode``, ``merge``, ``schema_evolution``) are validated by
``config``: an unknown or misspelt key is reported as ``FILE:LINE: source.key:
unknown key; did you mean ...``, a bad value at its line, and the run does not start.
The validated keys reach the reader's ``initialize()`` config as top-level keys.

See docs/writing-plugins.md ("Writing a connector").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dativo._secrets import redact, register_secret
from dativo.errors import ConfigError

if TYPE_CHECKING:
    from pyarrow import fs as pafs

__all__ = [
    "Connector",
    "ConnectorConfig",
    "OpenConnectorConfig",
    "S3Connection",
    "SourcePlanner",
    "SqlSourceConfig",
]

#: ``planner(config) -> extra reader config``: called at plan time with the reader's config
#: (the job's ``source:`` section as the reader would receive it); what it returns is merged
#: into that config. Raise ConfigError / SourceError (``transient`` where retrying may help).
SourcePlanner = Callable[[Mapping[str, Any]], Mapping[str, Any]]


class ConnectorConfig(BaseModel):
    """Base of a connector's config model: unknown keys are rejected, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SqlSourceConfig(ConnectorConfig):
    """Base of a SQL source's config: ``table`` or ``query`` (not both), ``cast_to_text``, ``connection``."""

    connection: dict[str, Any] = Field(default_factory=dict, description="How to connect (connector-specific).")
    table: str | None = Field(None, description="The table (or view) to read whole.")
    query: str | None = Field(None, description="A SELECT to run instead of a table.")
    cast_to_text: list[str] = Field(default_factory=list, description="Columns read as text instead.")

    @model_validator(mode="after")
    def _table_or_query(self) -> SqlSourceConfig:
        if self.table is not None and self.query is not None:
            raise ValueError("give either 'table' or 'query', not both")
        return self


class OpenConnectorConfig(BaseModel):
    """A config model that accepts any keys (``connector: custom``: the named plugin validates them)."""

    model_config = ConfigDict(extra="allow", frozen=True)


@dataclass(frozen=True)
class Connector:
    """A connector's declaration, the object a ``dativo.connectors`` entry point names.

    ``name`` is what jobs write in ``connector:``; ``config`` validates its own keys;
    ``reader`` / ``writer`` name the default plugin (an entry-point name of
    ``dativo.readers`` / ``dativo.writers`` or an import path) used when the job
    names none — a connector with a reader can be a source, one with a writer a
    target (``roles`` overrides that, for connectors whose plugin the job must name).
    ``change_reader`` is the default reader of ``source.cdc`` jobs (none: cdc is
    rejected for this connector). ``planner`` (``"module:function"``, imported only
    when used) describes the source at plan time for readers that ask for it
    (``wants_source_plan``, see docs/writing-plugins.md). ``choose_reader``
    (``"module:function"``, ``config -> reader name``) picks the default reader by the
    job's settings when the job names none (postgres: the Rust reader where installed).
    """

    name: str
    config: type[BaseModel]
    reader: str | None = None
    writer: str | None = None
    change_reader: str | None = None
    planner: str | None = None
    choose_reader: str | None = None
    roles: tuple[Literal["source", "target"], ...] | None = None
    description: str = ""

    @property
    def is_source(self) -> bool:
        """Whether jobs may name this connector under ``source:``."""
        return "source" in self.roles if self.roles is not None else self.reader is not None

    @property
    def is_target(self) -> bool:
        """Whether jobs may name this connector under ``target:``."""
        return "target" in self.roles if self.roles is not None else self.writer is not None

    def load_planner(self) -> SourcePlanner | None:
        """Import the planner; raises ConfigError naming the connector when it cannot be imported."""
        if self.planner is None:
            return None
        planner: SourcePlanner = self._load(self.planner, "planner")
        return planner

    def default_reader(self, config: Mapping[str, Any]) -> str | None:
        """The reader for a job that names none: ``choose_reader(config)`` if declared, else ``reader``.

        Raises ConfigError naming the connector when ``choose_reader`` cannot be imported.
        """
        if self.choose_reader is None:
            return self.reader
        chooser: Callable[[Mapping[str, Any]], str] = self._load(self.choose_reader, "reader chooser")
        return chooser(config)

    def _load(self, reference: str, what: str) -> Any:
        from importlib import import_module

        module, _, attr = reference.partition(":")
        try:
            return getattr(import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"connector '{self.name}': its {what} {reference!r} cannot be imported: {exc}",
                hint="reinstall the package that provides the connector",
            ) from None


class S3Connection(BaseModel):
    """The ``connection:`` block of whatever reads or writes ``s3://`` (files, parquet, encrypted-parquet, iceberg).

    Every key is optional; without keys the standard AWS credential chain is used.
    ``endpoint_url`` is an ``http(s)://`` URL (an S3-compatible server) or a bare
    ``host:port`` (HTTPS unless ``allow_http: true``). ``allow_http: false``
    rejects an ``http://`` endpoint; left out, the endpoint's scheme decides.
    Secrets are registered for redaction as soon as the model is built.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. http://127.0.0.1:9000.")
    region: str | None = Field(None, description="AWS region (e.g. eu-west-1).")
    access_key_id: str | None = Field(None, description="Access key id; needs secret_access_key.")
    secret_access_key: str | None = Field(None, description="Secret access key; needs access_key_id.")
    session_token: str | None = Field(None, description="Session token of temporary credentials.")
    anonymous: bool = Field(False, description="Unsigned requests (public buckets).")
    allow_http: bool | None = Field(
        None, description="Plain-HTTP endpoints: true allows them (bare host:port means http), false rejects them."
    )

    @model_validator(mode="after")
    def _consistent(self) -> S3Connection:
        for value in (self.access_key_id, self.secret_access_key, self.session_token):
            register_secret(value or None)
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ValueError(
                "needs both access_key_id and secret_access_key, or neither (leave both out to use the "
                "AWS environment variables, profile or instance role)"
            )
        if self.endpoint_url:
            scheme, netloc = self._endpoint()
            if scheme not in ("http", "https") or not netloc:
                raise ValueError(
                    f"endpoint_url {redact(self.endpoint_url)!r} is not an http(s) URL (e.g. http://127.0.0.1:9000)"
                )
            if scheme == "http" and self.allow_http is False:
                raise ValueError(
                    f"endpoint_url {redact(self.endpoint_url)!r} is plain HTTP but allow_http is false "
                    "(use https://, or set allow_http: true)"
                )
        return self

    def _endpoint(self) -> tuple[str, str]:
        """``(scheme, host[:port][/path])`` of ``endpoint_url``."""
        raw = str(self.endpoint_url)
        if "://" not in raw:
            raw = ("http://" if self.allow_http else "https://") + raw
        parsed = urlparse(raw)
        return parsed.scheme, parsed.netloc + parsed.path.rstrip("/")

    @classmethod
    def parse(cls, connection: Any, who: str, key: str = "connection") -> S3Connection:
        """Validate a raw ``connection:`` mapping; raises ConfigError ``"<who>: connection.<key>: <problem>"``."""
        if connection is None:
            connection = {}
        if isinstance(connection, S3Connection):
            return connection
        if not isinstance(connection, Mapping):
            raise ConfigError(f"{who}: {key} must be a mapping of S3 settings")
        try:
            return cls.model_validate(dict(connection))
        except ValidationError as exc:
            problems, unknown = [], []
            for error in exc.errors(include_url=False):
                if error["type"] == "extra_forbidden":
                    unknown.append(".".join(str(part) for part in error["loc"]))
                    continue
                where = ".".join(str(part) for part in (key, *error["loc"]))
                problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
            if unknown:
                problems.insert(0, f"unknown {key} key(s) {', '.join(unknown)}")
            allowed = ", ".join(cls.model_fields)
            raise ConfigError(f"{who}: {'; '.join(problems)}", hint=f"S3 connection keys: {allowed}") from None

    def filesystem_options(self) -> dict[str, Any]:
        """Keyword arguments for ``pyarrow.fs.S3FileSystem`` (secrets included: never log them)."""
        options: dict[str, Any] = {}
        if self.endpoint_url:
            options["scheme"], options["endpoint_override"] = self._endpoint()
        if self.region:
            options["region"] = self.region
        if self.access_key_id:
            options["access_key"] = self.access_key_id
            options["secret_key"] = self.secret_access_key or ""
            if self.session_token:
                options["session_token"] = self.session_token
        if self.anonymous:
            options["anonymous"] = True
        return options

    def iceberg_properties(self) -> dict[str, str]:
        """The same connection as PyIceberg FileIO properties (``s3.endpoint``, ``s3.access-key-id``...)."""
        properties = {"s3.force-virtual-addressing": "false"}  # path-style, as pyarrow's S3 file system uses
        if self.endpoint_url:
            scheme, netloc = self._endpoint()
            properties["s3.endpoint"] = f"{scheme}://{netloc}"
        if self.region:
            properties["s3.region"] = self.region
        if self.access_key_id:
            properties["s3.access-key-id"] = self.access_key_id
            properties["s3.secret-access-key"] = self.secret_access_key or ""
            if self.session_token:
                properties["s3.session-token"] = self.session_token
        if self.anonymous:
            properties["s3.anonymous"] = "true"
        return properties

    def filesystem(self, **extra: Any) -> pafs.S3FileSystem:
        """A pyarrow S3 file system for this connection; raises ConfigError when pyarrow refuses the settings."""
        from pyarrow import ArrowException
        from pyarrow import fs as pafs

        try:
            return pafs.S3FileSystem(**self.filesystem_options(), **extra)
        except (ArrowException, OSError, ValueError) as exc:
            raise ConfigError(f"cannot set up S3 access: {redact(' '.join(str(exc).split()))}") from None
