"""Closing a Flight reader from another thread ends its read even while the ``DoGet`` is still starting."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from support.process_plugins import served_flight_reader

SUPPORT = Path(__file__).parent / "support" / "plugins.py"


def test_close_while_the_do_get_is_starting_ends_the_read(tmp_path):
    marker = tmp_path / "slow"
    reader = served_flight_reader("slow-start", f"{SUPPORT}:SlowStartReader")()
    # 600 batches of one row, one a second: a read nobody cancels runs for ten minutes.
    options = {"rows": 600, "sleep": 1, "slow_marker": str(marker), "init_sleep": 3}
    reader.initialize({"options": options})  # GetSchema: fast (no marker yet)
    marker.touch()  # from now on the server's reader for the DoGet takes 3 s to initialize
    outcome: list[BaseException | None] = []

    def consume() -> None:
        try:
            list(reader.read_batch(1))
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    time.sleep(1)  # inside do_get: the server is still initializing its reader
    started = time.monotonic()
    reader.close()
    worker.join(timeout=15)
    assert not worker.is_alive(), "the read went on after close()"
    assert time.monotonic() - started < 15
    assert outcome and outcome[0] is not None and "closed while reading" in str(outcome[0])
