"""The job schema. Unknown keys are rejected everywhere; see docs/configuration.md."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)

from dativo._installed import entry_points
from dativo.config.connectors import connector, connector_keys, did_you_mean
from dativo.sdk_connectors import Connector

__all__ = [
    "BUILT_IN_RUNTIMES",
    "CdcSpec",
    "EngineConfig",
    "FlightTlsSpec",
    "IncrementalSpec",
    "JobConfig",
    "MergeSpec",
    "PluginSpec",
    "RayConfig",
    "RetrySpec",
    "SandboxSpec",
    "SchemaEvolutionSpec",
    "SourceConfig",
    "TargetConfig",
    "TimeoutSpec",
    "runtime_names",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SandboxSpec(_Strict):
    """``sandbox:`` of a process plugin — what the plugin may use. On by default; see docs/process-protocol.md."""

    enabled: bool = Field(True, description="Run the plugin in the sandbox (clean environment, limits, bwrap).")
    memory_mb: int | None = Field(4096, gt=0, description="Address-space limit (RLIMIT_AS) in MiB; null: none.")
    cpu_seconds: int | None = Field(None, gt=0, description="CPU-time limit (RLIMIT_CPU) in seconds; null: none.")
    open_files: int | None = Field(1024, gt=2, description="Open file descriptors (RLIMIT_NOFILE); null: inherit.")
    max_processes: int | None = Field(
        256, gt=0, description="Processes and threads the plugin may run at once (pids cgroup or RLIMIT_NPROC)."
    )
    network: bool = Field(False, description="Allow network access (needs bwrap to be forbidden).")
    read_paths: list[str] = Field(
        default_factory=list,
        description="More paths the plugin may read (relative to the job file); besides the system directories, "
        "TLS/name-resolution files of /etc and the plugin's own files, nothing else is visible.",
    )
    writable_paths: list[str] = Field(
        default_factory=list, description="Paths the plugin may write (relative to the job file); all else read-only."
    )
    require_isolation: bool = Field(
        True,
        description="Refuse to run without bubblewrap; false runs the fallback (clean environment, limits, an "
        "unprivileged uid when dativo is root) and warns naming what is lost.",
    )


class TimeoutSpec(_Strict):
    """``timeouts:`` of a process plugin, in seconds (null: no limit)."""

    startup_s: float | None = Field(30.0, gt=0, description="From start until the plugin's hello.")
    idle_s: float | None = Field(300.0, gt=0, description="No progress on the plugin's pipes for this long.")
    total_s: float | None = Field(None, gt=0, description="The plugin's whole life.")


class FlightTlsSpec(_Strict):
    """``tls:`` of a Flight plugin (for ``grpc+tls://`` endpoints)."""

    ca_file: str | None = Field(None, description="PEM file of the CA that signed the server certificate.")
    server_name: str | None = Field(None, description="Name to verify the certificate against, if not the host.")


class PluginSpec(_Strict):
    """``reader:`` / ``writer:`` — which implementation to run and how to host it."""

    type: str = Field(
        "custom",
        description="How the plugin is hosted: 'custom' runs Python (or a PyO3 module) in process; 'process' "
        "runs an executable speaking Arrow IPC over pipes; 'flight' talks to an Arrow Flight endpoint; any other "
        "name is a runtime an installed package registers under the 'dativo.runtimes' entry points.",
    )
    implementation: str | None = Field(
        None,
        description="For type custom (and, when given, a third-party runtime): 'pkg.mod.Class', 'pkg.mod:Class', "
        "'path/to/file.py:Class' (relative to the job file) or the name of an installed plugin "
        "(see 'dativo plugins list').",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Passed to initialize() as config['options'].")
    name: str | None = Field(None, description="Label of a process/flight plugin in logs and messages.")
    command: list[str] | None = Field(None, description="type process: the executable and its arguments.")
    sha256: str | dict[str, str] | None = Field(
        None,
        description="type process: 'sha256:<hex>' of the executable, or {command item: 'sha256:<hex>'} to pin "
        "several (an interpreter and its script); pinned files run from a verified private copy.",
    )
    env: dict[str, str] = Field(default_factory=dict, description="type process: the plugin's entire environment.")
    sandbox: SandboxSpec = Field(default_factory=SandboxSpec)  # type: ignore[arg-type]  # pydantic fills defaults
    timeouts: TimeoutSpec = Field(default_factory=TimeoutSpec)  # type: ignore[arg-type]  # pydantic fills defaults
    endpoint: str | None = Field(
        None, pattern=r"^grpc(\+tls|\+tcp)?://", description="type flight: grpc://host:port or grpc+tls://host:port."
    )
    token: str | None = Field(None, description="type flight: bearer token sent with every call.")
    tls: FlightTlsSpec = Field(default_factory=FlightTlsSpec)  # type: ignore[arg-type]  # pydantic fills defaults
    source_plan: bool = Field(
        False,
        description="Readers: ask the source connector's planner for its plan at plan time and pass it in the "
        "config (postgres: 'postgres_plan'); for process/flight readers, which dativo cannot inspect.",
    )

    @field_validator("type")
    @classmethod
    def _registered_runtime(cls, value: str) -> str:
        if value in BUILT_IN_RUNTIMES:  # registered by dativo itself: no scan of the installed metadata
            return value
        names = runtime_names()
        if value not in names:
            raise ValueError(f"unknown runtime type '{value}'{did_you_mean(value, names or list(BUILT_IN_RUNTIMES))}")
        return value

    @field_validator("implementation")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("implementation must not be empty")
        return value.strip() if value is not None else None

    @field_validator("sha256")
    @classmethod
    def _pins_well_formed(cls, value: str | dict[str, str] | None) -> str | dict[str, str] | None:
        pins = {"": value} if isinstance(value, str) else value or {}
        for item, pin in pins.items():
            if not re.fullmatch(r"sha256:[0-9a-f]{64}", pin):
                where = f" (for {item!r})" if item else ""
                raise ValueError(f"'{pin}'{where} is not 'sha256:' followed by 64 lowercase hex digits")
        return value

    @field_validator("command")
    @classmethod
    def _command_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not value[0].strip()):
            raise ValueError("command must name an executable, e.g. [./bin/my-reader, --flag]")
        return value

    @model_validator(mode="after")
    def _fields_for_type(self) -> PluginSpec:
        required = {"custom": "implementation", "process": "command", "flight": "endpoint"}.get(self.type)
        if required is None:  # a third-party runtime: a Python plugin it hosts, or a label and options
            for key in ("command", "endpoint"):
                if getattr(self, key) is not None:
                    raise ValueError(f"'{key}' does not apply to type '{self.type}' (it takes 'implementation')")
            if self.implementation is None and self.name is None:
                raise ValueError(f"type '{self.type}' needs 'implementation' (a Python plugin) or 'name'")
            required = "implementation"
        elif getattr(self, required) is None:
            raise ValueError(f"type '{self.type}' needs '{required}'")
        for key in ("implementation", "command", "endpoint"):
            if key != required and getattr(self, key) is not None:
                raise ValueError(f"'{key}' does not apply to type '{self.type}' (it needs '{required}')")
        if self.type != "process" and (self.sha256 or self.env):
            raise ValueError(f"'sha256' and 'env' apply to type 'process' only, not '{self.type}'")
        if isinstance(self.sha256, dict) and self.command is not None:
            unknown = sorted(set(self.sha256) - set(self.command))
            if unknown:
                raise ValueError(f"sha256 pins {unknown}, which is not an item of 'command' {self.command}")
        if self.type != "flight" and self.token is not None:
            raise ValueError(f"'token' applies to type 'flight' only, not '{self.type}'")
        return self


class IncrementalSpec(_Strict):
    """``source.incremental:`` — read only rows past the last committed high-water mark."""

    cursor: str = Field(description="Column whose greatest value is remembered (integer, date, timestamp[tz]).")
    initial: str | int | None = Field(
        None, description="Lower bound (exclusive) for the first run: a number, date or ISO timestamp."
    )
    lookback: str | int | None = Field(
        None,
        description="Re-read this far behind the mark for late rows: a number for integer cursors, "
        "or a duration like '2h', '30m', '1d' for temporal ones. Needs target.mode: merge.",
    )


class CdcSpec(_Strict):
    """``source.cdc:`` — change data capture through a logical replication slot (see docs/cdc.md)."""

    slot: str | None = Field(
        None, pattern=r"^[a-z0-9_]{1,63}$", description="Logical replication slot; default dativo_<job name>."
    )
    publication: str | None = Field(None, description="Publication of the table; default dativo_<job name>.")
    create: bool = Field(True, description="Create the publication and the slot when missing.")
    deletes: Literal["hard", "soft"] = Field(
        "hard", description="hard: deleted rows leave the table; soft: kept with _deleted and _cdc_* columns."
    )
    retained_wal_warning_mb: int = Field(
        1024, gt=0, description="Warn in the run summary when the slot retains more WAL than this (MiB)."
    )
    commit_interval_s: float = Field(10.0, gt=0, description="'dativo cdc follow': seconds between commits.")
    max_rows: int | None = Field(
        None, gt=0, description="Read at most about this many changes per run (whole transactions); null: all."
    )


class _ConnectorSection(BaseModel):
    """``source:`` / ``target:``: the engine's keys as fields, the connector's keys validated by its model.

    The engine's keys are this class's fields (source: ``connector``, ``reader``,
    ``options``, ``incremental``, ``cdc``, ``parallelism``; target: ``connector``,
    ``writer``, ``options``, ``mode``, ``merge``, ``schema_evolution``); every other key
    goes to the model of the connector ``connector`` names (dativo.connectors entry points).

    The connector's validated keys are kept as extra attributes (``section.table``,
    ``section.path``...) and appear in ``model_dump()``, flat, as plugins receive them.
    A key no model knows is an ``unknown key`` error at its line.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    ROLE: ClassVar[Literal["source", "target"]]

    @model_validator(mode="wrap")
    @classmethod
    def _connector_keys(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        if isinstance(data, _ConnectorSection) or not isinstance(data, dict):
            return handler(data)
        engine = {key: value for key, value in data.items() if key in cls.model_fields}
        own = {key: value for key, value in data.items() if key not in cls.model_fields}
        name = data.get("connector")
        try:
            declared = connector(name, cls.ROLE) if isinstance(name, str) else None
        except ValueError:
            declared = None  # the connector field's own validator reports it
        errors: list[Any] = []
        settings: dict[str, Any] = dict(own)
        if declared is not None:
            try:
                settings = declared.config.model_validate(own).model_dump()
            except ValidationError as exc:
                errors.extend(exc.errors())
        elif name is None:
            # No connector named ("conector: files" is one typo): a key no installed connector knows is unknown.
            anyones = connector_keys(cls.ROLE)
            errors.extend(
                {"type": "extra_forbidden", "loc": (key,), "input": value}
                for key, value in own.items()
                if key not in anyones
            )
        try:
            section = handler(engine)
        except ValidationError as exc:
            raise _merged(cls, [*exc.errors(), *errors]) from None
        if errors:
            raise _merged(cls, errors)
        object.__setattr__(section, "__pydantic_extra__", settings)
        section._after_connector(declared)
        return section

    def _after_connector(self, declared: Connector | None) -> None:
        """Checks across engine and connector keys; raise :func:`_value_error` (reported at the section)."""

    def get(self, key: str, default: Any = None) -> Any:
        """A key of the section, engine's or connector's (``default`` when absent)."""
        if key in type(self).model_fields:
            return getattr(self, key)
        return (self.__pydantic_extra__ or {}).get(key, default)

    @property
    def table(self) -> str | None:
        """``table`` when the connector has one, else None."""
        return self.get("table")  # type: ignore[no-any-return]

    @property
    def path(self) -> str | None:
        """``path`` when the connector has one, else None."""
        return self.get("path")  # type: ignore[no-any-return]

    @property
    def connection(self) -> dict[str, Any]:
        """``connection`` (as a plain mapping) when the connector has one, else {}."""
        value = self.get("connection")
        return dict(value) if isinstance(value, Mapping) else {}


#: The runtimes dativo registers itself (pyproject.toml's dativo.runtimes entry points).
BUILT_IN_RUNTIMES = ("custom", "process", "flight")


def runtime_names() -> list[str]:
    """Every runtime registered under the ``dativo.runtimes`` entry points (what ``type:`` may say), sorted."""
    return sorted({entry.name for entry in entry_points(group="dativo.runtimes")})


def _merged(cls: type[BaseModel], errors: list[Any]) -> ValidationError:
    details = [
        {"type": error["type"], "loc": error["loc"], "input": error.get("input"), "ctx": error["ctx"]}
        if "ctx" in error
        else {"type": error["type"], "loc": error["loc"], "input": error.get("input")}
        for error in errors
    ]
    return ValidationError.from_exception_data(cls.__name__, details)  # type: ignore[arg-type]


class SourceConfig(_ConnectorSection):
    """``source:`` — where data comes from: the engine's keys; the rest is the connector's (docs/configuration.md)."""

    ROLE = "source"

    connector: str
    incremental: IncrementalSpec | None = None
    cdc: CdcSpec | None = None
    parallelism: int | None = Field(
        None,
        gt=0,
        le=64,
        description="Connections reading partitions of the source at once, in one snapshot (readers that support "
        "it); unset: chosen from the table size and the machine's cores; 1: one stream.",
    )
    options: dict[str, Any] = Field(default_factory=dict)
    reader: PluginSpec | None = None

    @field_validator("connector")
    @classmethod
    def _known_connector(cls, value: str) -> str:
        connector(value, "source")
        return value

    @property
    def query(self) -> str | None:
        """``query`` when the connector has one, else None."""
        return self.get("query")  # type: ignore[no-any-return]

    def _after_connector(self, declared: Connector | None) -> None:
        if declared is None:
            return
        if declared.reader is None and self.reader is None:
            raise _value_error(
                type(self), f"connector '{self.connector}' has no default reader: name one under 'reader:'"
            )
        if self.cdc is not None and (declared.change_reader is None or self.table is None or self.incremental):
            raise _value_error(
                type(self),
                "'cdc' needs a connector that reads changes (postgres) and a 'table' (not a query), "
                "without 'incremental'",
            )


def _value_error(cls: type[BaseModel], message: str) -> ValidationError:
    return ValidationError.from_exception_data(
        cls.__name__, [{"type": "value_error", "loc": (), "input": None, "ctx": {"error": ValueError(message)}}]
    )


class MergeSpec(_Strict):
    """``target.merge:`` — upsert on a primary key."""

    keys: list[str] = Field(min_length=1, description="Primary-key columns identifying a row.")
    delete_column: str | None = Field(
        None, description="Boolean source column: rows where it is true delete their key from the target."
    )
    duplicates: Literal["fail", "last_wins"] = Field(
        "fail", description="A key appearing more than once in one run: fail naming it, or keep the last row."
    )


class SchemaEvolutionSpec(_Strict):
    """``target.schema_evolution:`` — what happens when the source schema differs from the table's."""

    mode: Literal["evolve", "freeze", "fail"] = Field(
        "evolve",
        description="evolve: add new columns, widen types Iceberg allows; freeze: keep the table schema, ignore "
        "new columns; fail: any difference stops the run.",
    )


class TargetConfig(_ConnectorSection):
    """``target:`` — where data lands: the engine's keys; the rest is the connector's (docs/configuration.md)."""

    ROLE = "target"

    connector: str
    options: dict[str, Any] = Field(default_factory=dict)
    mode: Literal["append", "overwrite", "merge"] = "append"
    merge: MergeSpec | None = None
    schema_evolution: SchemaEvolutionSpec = Field(default_factory=SchemaEvolutionSpec)  # type: ignore[arg-type]  # pydantic fills defaults
    writer: PluginSpec | None = None

    @field_validator("connector")
    @classmethod
    def _known_connector(cls, value: str) -> str:
        connector(value, "target")
        return value

    @model_validator(mode="after")
    def _merge_settings(self) -> TargetConfig:
        if self.mode == "merge" and self.merge is None:
            raise ValueError("mode 'merge' needs the primary key: merge: {keys: [id]}")
        if self.merge is not None and self.mode != "merge":
            raise ValueError(f"'merge' settings are given but mode is '{self.mode}' (set mode: merge)")
        return self

    def _after_connector(self, declared: Connector | None) -> None:
        if declared is not None and declared.writer is None and self.writer is None:
            raise _value_error(
                type(self), f"connector '{self.connector}' has no default writer: name one under 'writer:'"
            )


class RetrySpec(_Strict):
    """``engine.retry:`` — how transient failures (dropped connections, commit conflicts, S3 503s) are retried."""

    max_attempts: int = Field(3, ge=1, le=100, description="Attempts in all, the first included.")
    initial_delay_s: float = Field(1.0, ge=0, description="Delay before the second attempt; doubles each time.")
    max_delay_s: float = Field(60.0, ge=0, description="Upper bound of one delay (before jitter).")


class RayConfig(_Strict):
    """``engine.ray:`` — where and how a job's partitions run with ``engine.executor: ray`` (docs/ray.md)."""

    address: str = Field(
        "auto",
        min_length=1,
        description="The Ray cluster: 'auto' (the cluster this machine belongs to, or RAY_ADDRESS), "
        "'ray://host:10001' (Ray Client), or 'local' (start one in this process).",
    )
    max_retries: int = Field(
        3, ge=0, le=20, description="Times Ray retries a partition whose worker or node died (not terminal errors)."
    )
    num_cpus: float = Field(1.0, gt=0, le=64, description="CPUs Ray reserves for each partition's task.")
    max_in_flight: int | None = Field(
        None, gt=0, le=10_000, description="Partitions running at once; unset: as many as the cluster schedules."
    )
    runtime_env: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray's runtime_env for the tasks (pip, py_modules, working_dir, env_vars): how plugins "
        "reach the workers.",
    )


class EngineConfig(_Strict):
    """``engine:`` — how batches flow."""

    batch_size: int = Field(16_384, gt=0, le=10_000_000, description="Rows per batch asked of the reader.")
    queue_size: int = Field(4, gt=0, le=64, description="Batches the reader may run ahead of the writer.")
    queue_mb: float = Field(
        16,
        gt=0,
        le=65_536,
        description=(
            "Megabytes of Arrow data the reader may run ahead of the writer; with queue_size, whichever "
            "is reached first bounds the queue (one batch always fits, however large)."
        ),
    )
    read_mb: float = Field(
        64,
        gt=0,
        le=65_536,
        description=(
            "Megabytes of Arrow data the running partitions hold together before the queue (about 3 batches "
            "each): batches shrink to fit, then fewer partitions run at once; whatever source.parallelism says."
        ),
    )
    max_concurrent_streams: int = Field(
        4, gt=0, le=64, description="Jobs with streams: how many streams run at once in the one process."
    )
    retry: RetrySpec = Field(default_factory=RetrySpec)  # type: ignore[arg-type]  # pydantic fills defaults
    executor: str = Field(
        "local",
        pattern=r"^[a-z][a-z0-9_\-]*$",
        description="Where partitions run: 'local' (this process) or a registered executor such as 'ray'.",
    )
    ray: RayConfig = Field(default_factory=RayConfig)  # type: ignore[arg-type]  # pydantic fills defaults


class JobConfig(_Strict):
    """A whole job file."""

    version: Literal[1] = 1
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]+$")
    source: SourceConfig
    target: TargetConfig
    engine: EngineConfig = Field(default_factory=EngineConfig)  # type: ignore[arg-type]  # pydantic fills defaults

    @model_validator(mode="after")
    def _lookback_needs_merge(self) -> JobConfig:
        incremental = self.source.incremental
        if incremental is not None and incremental.lookback is not None and self.target.mode != "merge":
            raise ValueError(
                "source.incremental.lookback re-reads rows, which only target.mode: merge deduplicates "
                f"(mode is '{self.target.mode}')"
            )
        return self
