"""What every benchmark module shares: paths, the DSN variable, the phases, progress logging.

Importing it puts ``tests/`` on ``sys.path``: the benchmarks reuse ``tests/support`` (the
PostgreSQL server, ``/proc`` readers, the Ray cluster).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Literal

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

DSN_ENV = "DATIVO_BENCH_DSN"
#: Bump when the table definition changes: an existing table with another version is rebuilt.
TABLE_VERSION = 1
TARGET_TABLE = "bench.wide"

Role = Literal["floor", "dativo", "baseline", "peer", "startup"]
Phase = Literal["warmup", "run", "scaling"]


def log(message: str) -> None:
    """Progress goes to stderr so that stdout carries only the report."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
