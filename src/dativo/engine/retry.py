"""Run a job with retries: transient failures are retried with exponential backoff and jitter.

A failed attempt committed nothing (the writer was aborted), so a retry starts
from the same committed state and can never apply a batch twice. Terminal errors
(bad credentials, a missing table, a type error) fail at once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from dativo.config.loader import LoadedJob
from dativo.config.models import RetrySpec
from dativo.engine import pipeline
from dativo.engine.plan import build_plan
from dativo.errors import is_transient

__all__ = ["run_job"]

log = logging.getLogger("dativo.engine")


def run_job(
    job: LoadedJob,
    *,
    run_id: str | None = None,
    progress: pipeline.ProgressSink | None = None,
    attempts: list[pipeline.RunSummary] | None = None,
    on_retry: Callable[[int, int, float, BaseException], None] | None = None,
    stop: threading.Event | None = None,
) -> pipeline.RunSummary:
    """Run ``job`` until it succeeds, fails terminally, or ``engine.retry.max_attempts`` is used up.

    Every attempt's summary is appended to ``attempts`` (if given), so a caller can
    report the last one even when this raises. ``on_retry(attempt, max_attempts, delay_s, error)``
    is called before each wait (the CLI prints it as one line on a terminal). Raises the last
    attempt's error. ``stop`` aborts the run from another thread (see :func:`pipeline.run`).
    """
    policy = job.config.engine.retry
    attempt = 1
    while True:
        try:
            # Planning may talk to the source (a reader that asks for the source plan): retried alike.
            plan = build_plan(job, run_id)
        except Exception as exc:
            if attempt >= policy.max_attempts or not is_transient(exc):
                raise
            _wait(job, run_id, policy, attempt, exc, on_retry, stop)
            attempt += 1
            continue
        summary = pipeline.new_summary(plan)
        summary.attempt = attempt
        if attempts is not None:
            attempts.append(summary)
        try:
            return pipeline.run(plan, progress, summary, stop)
        except Exception as exc:
            if attempt >= policy.max_attempts or not is_transient(exc):
                raise
            _wait(job, plan.run_id, policy, attempt, exc, on_retry, stop)
            attempt += 1


def _wait(
    job: LoadedJob,
    run_id: str | None,
    policy: RetrySpec,
    attempt: int,
    exc: BaseException,
    on_retry: Callable[[int, int, float, BaseException], None] | None,
    stop: threading.Event | None,
) -> None:
    """Log the failed attempt and sleep the backoff (raises KeyboardInterrupt when ``stop`` is set meanwhile)."""
    delay = min(policy.max_delay_s, policy.initial_delay_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
    # INFO for logs; the caller decides whether a person watching should see it (on_retry).
    log.info(
        "attempt %d of %d failed with a transient error; retrying in %.1f s: %s",
        attempt,
        policy.max_attempts,
        delay,
        exc,
        extra={"job": job.name, "run_id": run_id},
    )
    if on_retry is not None:
        on_retry(attempt, policy.max_attempts, delay, exc)
    if stop is not None:
        if stop.wait(delay):
            raise KeyboardInterrupt from exc
    else:
        time.sleep(delay)
