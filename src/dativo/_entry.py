"""The ``dativo`` command's entry point: ``dativo --version`` answers before anything heavy is imported."""

from __future__ import annotations

import os
import sys

from dativo import _gc

__all__ = ["main"]


def main() -> None:
    """Run the CLI; a bare ``--version`` is answered from package metadata alone (no pyarrow, no typer)."""
    if sys.argv[1:] == ["--version"]:
        from dativo import __version__
        from dativo._sdk_version import SDK_API_VERSION

        print(f"dativo {__version__} (plugin SDK API {SDK_API_VERSION})")
        return
    # Arrow's memory pool is chosen when pyarrow loads, so the command sets it before anything imports pyarrow:
    # jemalloc (in pyarrow's Linux wheels) held a wide-table run's peak RSS 15-35 MB below pyarrow's default
    # (mimalloc) and flat from 1M to 5M rows at no CPU cost (docs/performance.md, session 4). The command only:
    # an application importing dativo keeps its own choice. A value the user set wins.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc" if sys.platform.startswith("linux") else "system")
    # Collect cycles rarely while the command imports and sets up; the run restores the thresholds (dativo._gc).
    _gc.defer_during_startup()
    from dativo.cli import main as cli_main

    cli_main()
