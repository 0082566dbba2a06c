"""Airflow's test environment: a throw-away AIRFLOW_HOME with a SQLite metadata database (migrated once)."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Before anything imports airflow: its configuration is read at import time.
_HOME = Path(tempfile.mkdtemp(prefix="dativo-airflow-"))
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ.update(
    {
        "AIRFLOW_HOME": str(_HOME),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(_HOME / "dags"),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
    }
)
subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
