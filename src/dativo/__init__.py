"""dativo: config-driven data ingestion with pluggable Arrow readers and writers.

Plugin authors import everything they need from here::

    from dativo import DataReader, DataWriter, SourceError

Applications run jobs through the Python API (``dativo.api``, loaded on first use)::

    import dativo
    result = dativo.run("job.yaml", run_id="2026-12-06")
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from dativo._sdk_version import SDK_API_VERSION
from dativo.errors import (
    ConfigError,
    DativoError,
    PluginError,
    SchemaError,
    SourceError,
    TargetError,
    TypeMappingError,
)

try:
    __version__ = version("dativo")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

if TYPE_CHECKING:  # the SDK needs pyarrow and the Python API the engine: both loaded by __getattr__ below
    from dativo.api import (
        DiscoveredStream,
        Job,
        RunResult,
        StreamInfo,
        StreamResult,
        StreamsFailed,
        ValidatedStream,
        discover,
        list_streams,
        load_job,
        run,
        validate,
    )
    from dativo.sdk import (
        CHANGE_COLUMNS,
        FAULT_HOOK_KEY,
        BatchLike,
        ChangeReader,
        DataReader,
        DataWriter,
        DescribesTargetTypes,
        FaultHook,
        IncrementalReader,
        ListsTables,
        PartitionedReader,
        PluginConfig,
        ReadPartition,
        StagingWriter,
        StatefulWriter,
        WriteMode,
        fault_hook,
        redact,
        register_secret,
    )
    from dativo.sdk_connectors import Connector, ConnectorConfig, OpenConnectorConfig, S3Connection, SqlSourceConfig

#: Names of the Python API (dativo.api), imported on first access (PEP 562) so ``import dativo`` stays cheap.
_API = frozenset(
    {
        "DiscoveredStream",
        "Job",
        "RunResult",
        "StreamInfo",
        "StreamResult",
        "StreamsFailed",
        "ValidatedStream",
        "discover",
        "list_streams",
        "load_job",
        "run",
        "validate",
    }
)


#: The plugin SDK's names (dativo.sdk imports pyarrow): ``import dativo`` and ``dativo --version`` stay cheap.
_SDK = frozenset(
    {
        "CHANGE_COLUMNS",
        "BatchLike",
        "ChangeReader",
        "DataReader",
        "DataWriter",
        "DescribesTargetTypes",
        "FAULT_HOOK_KEY",
        "FaultHook",
        "IncrementalReader",
        "ListsTables",
        "PartitionedReader",
        "PluginConfig",
        "ReadPartition",
        "StagingWriter",
        "StatefulWriter",
        "WriteMode",
        "fault_hook",
        "redact",
        "register_secret",
    }
)


#: The connector SDK's names (dativo.sdk_connectors: declare a connector, the S3 connection model).
_CONNECTOR_SDK = frozenset({"Connector", "ConnectorConfig", "OpenConnectorConfig", "S3Connection", "SqlSourceConfig"})


def __getattr__(name: str) -> Any:
    module = (
        "dativo.api"
        if name in _API
        else "dativo.sdk"
        if name in _SDK
        else "dativo.sdk_connectors"
        if name in _CONNECTOR_SDK
        else None
    )
    if module is None:
        raise AttributeError(f"module 'dativo' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API, *_SDK, *_CONNECTOR_SDK})


__all__ = [
    "CHANGE_COLUMNS",
    "FAULT_HOOK_KEY",
    "SDK_API_VERSION",
    "BatchLike",
    "ChangeReader",
    "ConfigError",
    "Connector",
    "ConnectorConfig",
    "DataReader",
    "DataWriter",
    "DativoError",
    "DescribesTargetTypes",
    "DiscoveredStream",
    "FaultHook",
    "IncrementalReader",
    "Job",
    "ListsTables",
    "OpenConnectorConfig",
    "PartitionedReader",
    "PluginConfig",
    "PluginError",
    "ReadPartition",
    "RunResult",
    "S3Connection",
    "SchemaError",
    "SourceError",
    "SqlSourceConfig",
    "StagingWriter",
    "StatefulWriter",
    "StreamInfo",
    "StreamResult",
    "StreamsFailed",
    "TargetError",
    "TypeMappingError",
    "ValidatedStream",
    "WriteMode",
    "__version__",
    "discover",
    "fault_hook",
    "list_streams",
    "load_job",
    "redact",
    "register_secret",
    "run",
    "validate",
]
