"""dativo: config-driven data ingestion with pluggable Arrow readers and writers.

Plugin authors import everything they need from here::

    from dativo import DataReader, DataWriter, SourceError
"""

from importlib.metadata import PackageNotFoundError, version

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

__all__ = [
    "SDK_API_VERSION",
    "BatchLike",
    "ChangeReader",
    "ConfigError",
    "DataReader",
    "DataWriter",
    "DativoError",
    "DescribesTargetTypes",
    "IncrementalReader",
    "PartitionedReader",
    "PluginConfig",
    "PluginError",
    "ReadPartition",
    "SchemaError",
    "SourceError",
    "StatefulWriter",
    "TargetError",
    "TypeMappingError",
    "WriteMode",
    "__version__",
]
