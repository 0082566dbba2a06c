"""Loading a plugin from a file on many threads at once (streams of one job): every thread gets the class."""

from __future__ import annotations

import threading
from pathlib import Path

from dativo.core.registry import resolve_plugin

SLOW_PLUGIN = """
import time
import pyarrow as pa
from dativo import DataReader

time.sleep(0.3)  # a module that takes a while to import: others must wait, not see it half-made


class SlowReader(DataReader):
    def get_schema(self):
        return pa.schema([("x", pa.int64())])

    def read_batch(self, batch_size):
        yield from ()
"""


def test_concurrent_loads_of_one_file_all_get_the_class(tmp_path: Path):
    (tmp_path / "slow.py").write_text(SLOW_PLUGIN)
    results: list[object] = []

    def load() -> None:
        try:
            results.append(resolve_plugin("reader", "slow.py:SlowReader", tmp_path).cls.__name__)
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == ["SlowReader"] * 8, results
