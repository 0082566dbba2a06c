"""The StagingWriter rules' checks (``writer.staging-*``, SDK 1.5): stage on fresh instances, commit once, abort.

A writer that does not implement :class:`dativo.StagingWriter` (or is hosted out of
process, where the ability does not travel) passes them with a message saying so:
the ability is optional. One that does is driven like a distributed executor drives
it: the driver prepares and hands out its plan; every partition is staged by a fresh
instance initialized with the same config; the driver commits one attempt per
partition or aborts. Plans and descriptions go through ``pickle`` and must not hold
a registered secret.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from dativo.sdk import StagingWriter, StatefulWriter, redact
from dativo.testing._context import Context, Failed, describe, quietly_closed
from dativo.testing._writer_checks import _check_metadata, _files_of, _local, _read_back, _read_parquet, _tree
from dativo.testing.type_table import sample_table

__all__ = ["STAGING_CHECKS"]

_NOT_STAGING = "the writer does not implement StagingWriter in this runtime (an optional ability); nothing to check"


def _through_pickle(value: object, what: str) -> Any:
    """``value`` after a pickle round trip; Failed if it cannot be pickled or holds a registered secret."""
    try:
        blob = pickle.dumps(value)
    except Exception as exc:
        raise Failed(f"{what} cannot be pickled (it is sent to other processes): {describe(exc)}") from None
    text = blob.decode("latin-1")
    if redact(text) != text:
        raise Failed(f"{what} holds a secret in plain text; give workers the config, not the credential")
    return pickle.loads(blob)


def _stage(ctx: Context, config: dict[str, Any], plan: Any, key: str, part: pa.Table) -> Mapping[str, Any]:
    """One attempt on a fresh, initialized instance (as a worker would run it); its checked description."""
    worker = ctx.target.writer(config, writable=[ctx.workdir])
    with quietly_closed(worker):
        try:
            described = worker.stage_partition(plan, key, iter(part.to_batches(max_chunksize=3)))  # type: ignore[attr-defined]
        except Exception as exc:
            raise Failed(f"stage_partition() of {key} raised {describe(exc)}") from None
    described = _through_pickle(described, f"stage_partition()'s description of {key}")
    if not isinstance(described, Mapping) or described.get("rows") != part.num_rows:
        rows = described.get("rows") if isinstance(described, Mapping) else described
        raise Failed(f"stage_partition() of {key} described rows = {rows!r}; {part.num_rows} rows were staged")
    files = described.get("files")
    if (
        not isinstance(files, list)
        or not all(isinstance(f, str) for f in files)
        or not isinstance(described.get("bytes"), int)
    ):
        raise Failed(f"stage_partition()'s description of {key} needs 'files' (a list of paths) and 'bytes' (int)")
    if any(key not in Path(_local(file)).name for file in files):
        raise Failed(f"a file staged for {key} does not carry the key in its name: {files[:2]}")
    return described


def _prepared(ctx: Context) -> tuple[Any, dict[str, Any], Path, Any] | None:
    """(driver, config, target folder, plan) after ``prepare`` and ``staging_plan``, or None for no StagingWriter."""
    config, path = ctx.target_config()
    driver = ctx.target.writer(config, writable=[ctx.workdir])
    if not isinstance(driver, StagingWriter):
        with quietly_closed(driver):
            return None
    try:
        if isinstance(driver, StatefulWriter):
            driver.load_state()
        driver.prepare(sample_table().schema)
        plan = _through_pickle(driver.staging_plan(), "staging_plan()")
    except BaseException:
        with quietly_closed(driver):
            driver.abort()
        raise
    return driver, config, path, plan


def _staging_commit(ctx: Context) -> str:
    prepared = _prepared(ctx)
    if prepared is None:
        return _NOT_STAGING
    driver, config, path, plan = prepared
    table = sample_table()
    run_id = str(config["job"]["run_id"])
    halves = [table.slice(0, table.num_rows // 2), table.slice(table.num_rows // 2)]
    with quietly_closed(driver):
        try:
            staged = [_stage(ctx, config, plan, f"{run_id}-p{i:04d}-a1", half) for i, half in enumerate(halves)]
            other = _stage(ctx, config, plan, f"{run_id}-p0000-a2", halves[0])
            if isinstance(driver, StatefulWriter):
                driver.stage_state({"run_id": run_id})
            metadata = driver.commit_staged(staged)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                driver.abort()
            if isinstance(exc, Failed) or not isinstance(exc, Exception):
                raise
            raise Failed(f"commit_staged() of one attempt per partition raised {describe(exc)}") from None
    _check_metadata(metadata, table.num_rows)
    files = _files_of(metadata, path)
    got = _read_back(ctx.scenarios.read_back, files, config) if ctx.scenarios.read_back else _read_parquet(files)
    want = sorted(table.column("id").to_pylist())
    if "id" not in got.column_names or sorted(got.column("id").to_pylist()) != want:
        raise Failed(f"after commit_staged() {got.num_rows} rows read back, not the {table.num_rows} staged once each")
    left = [file for file in other["files"] if Path(_local(file)).exists()]
    if left:
        raise Failed(f"commit_staged() left {len(left)} file(s) of an attempt it did not commit: {left[0]}")
    if isinstance(driver, StatefulWriter):
        reader = ctx.target.writer(config, writable=[ctx.workdir])
        with quietly_closed(reader):
            state = reader.load_state()  # type: ignore[attr-defined]
        if not state or state.get("run_id") != run_id:
            raise Failed(f"the state given to stage_state() was not committed by commit_staged() (found {state!r})")
    return f"2 partitions staged on fresh instances, committed once ({len(files)} file(s)); the other attempt removed"


def _staging_abort(ctx: Context) -> str:
    before = _tree(ctx.workdir)
    prepared = _prepared(ctx)
    if prepared is None:
        return _NOT_STAGING
    driver, config, _path, plan = prepared
    run_id = str(config["job"]["run_id"])
    table = sample_table()
    with quietly_closed(driver):
        try:
            for key in ("p0000-a1", "p0001-a1", "p0000-a2"):
                _stage(ctx, config, plan, f"{run_id}-{key}", table)
        finally:
            try:
                driver.abort()
            except Exception as exc:
                raise Failed(f"abort() after staging raised {describe(exc)}") from None
    left = sorted(set(_tree(ctx.workdir)) - set(before))
    if left:
        raise Failed(f"abort() on the driver left {len(left)} staged file(s) behind: {', '.join(left[:3])}")
    return "abort() on the driver removed the files of every attempt (3 staged)"


STAGING_CHECKS = {
    "writer.staging-commit": _staging_commit,
    "writer.staging-abort": _staging_abort,
}
