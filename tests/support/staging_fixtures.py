"""pytest plugin for the StagingWriter tests (tests/test_staging_*.py), registered in ``tests/conftest.py``.

* ``workers`` (module): a pool of two ``spawn``-ed worker processes (:func:`support.staging.pool`),
  shut down, with pending partitions cancelled, when the module's tests are done.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import pytest

from support.staging import pool


@pytest.fixture(scope="module")
def workers() -> Iterator[ProcessPoolExecutor]:
    """The worker processes partitions are staged in, one pool per test module."""
    executor = pool()
    try:
        yield executor
    finally:
        executor.shutdown(cancel_futures=True)
