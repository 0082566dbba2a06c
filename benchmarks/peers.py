"""The peers' own virtual environment, built once and cached by the hash of its pinned requirements.

dlt runs from a separate venv so that neither project's dependencies (pyarrow, SQLAlchemy)
bend the other's. Sling and ingestr are not measured: both download binaries or DuckDB
extensions at run time from hosts these machines cannot reach (see benchmarks/README.md).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

#: Pinned so that a figure in the docs can be reproduced; bump deliberately.
PEER_REQUIREMENTS = (
    "dlt[parquet,filesystem]==1.31.0",
    "connectorx==0.4.6",
    "psycopg2-binary==2.9.13",
    "sqlalchemy==2.1.9",
)

DLT_BACKENDS = ("sqlalchemy", "pyarrow", "connectorx")


def peers_python(log: object = print) -> str:
    """The interpreter of the peers' venv, created (and pip-installed) on first use.

    Lives in ``$XDG_CACHE_HOME/dativo-bench/peers-<hash>`` (default ``~/.cache``). Raises
    ``SystemExit`` naming the pip command when the install fails (no network, say).
    """
    digest = hashlib.sha256("\n".join(PEER_REQUIREMENTS).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    venv = cache / "dativo-bench" / f"peers-{digest}"
    python = venv / "bin" / "python"
    if (venv / ".complete").is_file():
        return str(python)
    log(f"building the peers' venv in {venv} (once; ~1-2 min) ...")  # type: ignore[operator]
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", *PEER_REQUIREMENTS]
    if subprocess.run(pip).returncode != 0:
        raise SystemExit(f"could not install the peers: {' '.join(pip)} failed; run it by hand to see why")
    (venv / ".complete").write_text("\n".join(PEER_REQUIREMENTS) + "\n")
    return str(python)
