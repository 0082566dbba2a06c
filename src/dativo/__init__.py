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

from dativo.errors import (
    ConfigError,
    DativoError,
    PluginError,
    SchemaError,
    SourceError,
    TargetError,
    TypeMappingError,
)
from dativo.sdk import (
    SDK_API_VERSION,
    BatchLike,
    ChangeReader,
    DataReader,
    DataWriter,
    DescribesTargetTypes,
    IncrementalReader,
    ListsTables,
    PartitionedReader,
    PluginConfig,
    ReadPartition,
    StatefulWriter,
    WriteMode,
)

try:
    __version__ = version("dativo")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

if TYPE_CHECKING:  # the Python API imports the engine: loaded lazily by __getattr__ below
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


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(import_module("dativo.api"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dativo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})


__all__ = [
    "SDK_API_VERSION",
    "BatchLike",
    "ChangeReader",
    "ConfigError",
    "DataReader",
    "DataWriter",
    "DativoError",
    "DescribesTargetTypes",
    "DiscoveredStream",
    "IncrementalReader",
    "Job",
    "ListsTables",
    "PartitionedReader",
    "PluginConfig",
    "PluginError",
    "ReadPartition",
    "RunResult",
    "SchemaError",
    "SourceError",
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
    "list_streams",
    "load_job",
    "run",
    "validate",
]
