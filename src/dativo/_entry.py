"""The ``dativo`` command's entry point: ``dativo --version`` answers before anything heavy is imported."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    """Run the CLI; a bare ``--version`` is answered from package metadata alone (no pyarrow, no typer)."""
    if sys.argv[1:] == ["--version"]:
        from dativo import __version__
        from dativo._sdk_version import SDK_API_VERSION

        print(f"dativo {__version__} (plugin SDK API {SDK_API_VERSION})")
        return
    from dativo.cli import main as cli_main

    cli_main()
