"""Built-in writer: a folder of Parquet files, local or on object storage, with a manifest.

Files are written under ``<path>/_dativo_tmp_<run id>/`` (a name Parquet
readers skip) and moved into ``<path>`` at ``finalize``. The commit point is
the manifest written last: ``<path>/_dativo/manifest-<sequence>.json`` lists
every file of the dataset and the state of every job writing it. Until it
exists the run has not happened: the next run deletes files that a crashed run
moved into place but never listed. ``abort`` deletes the staging folder.

Modes: ``append`` (the manifest lists the old files and the new ones) and
``overwrite`` (only the new ones; the old files are deleted after the manifest).

Staged (distributed) runs (:class:`dativo.StagingWriter`): workers write each
partition's files into the same staging folder, named after the attempt's key;
:meth:`ParquetDatasetWriter.commit_staged` publishes the described files through
the same steps as ``finalize`` and the staging folder, with every attempt that was
not committed, goes with them.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
from pyarrow import fs as pafs

from dativo import __version__
from dativo.errors import ConfigError, DativoError, TargetError
from dativo.sdk import DataWriter, PluginConfig, fault_hook, redact
from dativo.storage import filesystem_for
from dativo.targets._parquet import ParquetSettings, RollingParquetWriter, StagedFolder, WrittenFile, staged_stem

__all__ = ["MANIFEST_DIR", "ParquetDatasetWriter", "read_manifest"]

MANIFEST_DIR = "_dativo"
_KEEP_MANIFESTS = 20


class ParquetDatasetWriter(DataWriter):
    """Writes zstd Parquet files, rolled at ``target_file_size_mb``, published by a manifest at finalize."""

    supported_modes = frozenset({"append", "overwrite"})
    #: How this writer names itself in messages (``"<label> target"``).
    label = "parquet"

    def initialize(self, config: PluginConfig) -> None:
        """Resolve the target folder and its file system; raises ConfigError for a missing or bad ``path``."""
        self.config = config
        self._rolling: RollingParquetWriter | None = None
        self._state: dict[str, Any] | None = None
        self._finalized = False
        location = config.get("path")
        if not location:
            raise ConfigError(f"{self.label} target: 'path' is required (a local folder or s3://bucket/prefix)")
        job = config.get("job", {})
        fs, root = filesystem_for(str(location), config.get("connection") or {}, Path(job.get("dir", ".")))
        self._crash_point = fault_hook(config)
        self._folder = StagedFolder(
            fs, root, str(job.get("run_id", "run")), redact(str(location)), crash_point=self._crash_point
        )
        self._job = str(job.get("name", ""))
        self._mode = str(config.get("mode") or "append")
        self._settings = self.parquet_settings(config.get("options") or {})

    def parquet_settings(self, options: dict[str, Any]) -> ParquetSettings:
        """The Parquet file settings from the target's ``options:``; raises ConfigError for a bad value."""
        return ParquetSettings.from_options(options)

    def check(self) -> None:
        """Verify the folder can be created and written to; raises TargetError naming the location."""
        self._folder.check(f"{self.label} target")

    def load_state(self) -> dict[str, Any] | None:
        """This job's state in the latest manifest, or None."""
        manifest = read_manifest(self._folder.fs, self._folder.root)
        state = manifest.get("states", {}).get(self._job) if manifest else None
        return dict(state) if state else None

    def stage_state(self, state: dict[str, Any]) -> None:
        """Publish ``state`` in this run's manifest."""
        self._state = dict(state)

    def reset_state(self, force: bool = False) -> str:
        """Write a manifest without this job's state; TargetError if other jobs write here, unless ``force``."""
        manifest = read_manifest(self._folder.fs, self._folder.root)
        if manifest is None or self._job not in manifest.get("states", {}):
            return f"job '{self._job}' has no state in {self._folder.display}"
        others = sorted(job for job in manifest["states"] if job != self._job)
        if others and not force:
            raise TargetError(
                f"{self.label} dataset {self._folder.display} is also written by {', '.join(others)}; resetting job "
                f"'{self._job}' would re-ingest its rows next to theirs. Use --force if that is intended"
            )
        states = {job: state for job, state in manifest["states"].items() if job != self._job}
        self._write_manifest(manifest, manifest["files"], states)
        return f"state of job '{self._job}' removed from {self._folder.display}"

    def prepare(self, schema: pa.Schema) -> None:
        """Remove what crashed runs left (unlisted files, staging folders), create and hold this run's staging folder.

        Raises TargetError when the folder cannot be written.
        """
        self._recover()
        self._folder.prepare(f"{self.label} target")
        self._folder.hold()
        self._folder.sweep_dead()  # after hold: on an object store, this run's lease is the clock
        self._schema = schema
        self._rolling = RollingParquetWriter(schema, self._open_file, self._settings, self.file_options)

    def _open_file(self, index: int) -> tuple[str, Any]:
        path = self._folder.staged_path(f"part-{self._folder.run_id[:12]}-{index:05d}.parquet")
        return path, self.encode_stream(path, self._folder.fs.open_output_stream(path))

    # -- the pluggable file-encoding step (identity here; the encrypted writer overrides both) --

    def encode_stream(self, path: str, stream: Any) -> Any:
        """The stream the Parquet bytes of the staged file ``path`` go through (``stream`` itself here)."""
        return stream

    def file_options(self, index: int, path: str) -> dict[str, Any]:
        """Extra ``pyarrow.parquet.ParquetWriter`` arguments for file ``index`` (none here)."""
        return {}

    def companion_files(self, written: list[WrittenFile]) -> list[str]:
        """Staged files published with the data files but not listed as data (none here)."""
        return []

    def before_publish(self, written: list[WrittenFile], manifest: dict[str, Any], files: list[str]) -> None:
        """Called once the run's files are finished, before any is published; ``files`` is the new listing."""

    def after_commit(self, result: dict[str, Any]) -> dict[str, Any]:
        """Called after the manifest commit; returns the (possibly extended) result of :meth:`finalize`."""
        return result

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Stage ``batch`` in the temporary folder; raises TargetError after :meth:`finalize` (the run is published)."""
        assert self._rolling is not None, "prepare() was not called"
        if self._finalized:
            raise TargetError(f"{self.label} target: write_batch() after finalize(); the run is already published")
        self._rolling.write(batch)

    def finalize(self) -> dict[str, Any]:
        """Publish the staged files and then the manifest that makes them part of the dataset.

        Returns ``{path, mode, files, rows, bytes, manifest}``. Raises TargetError when
        another writer published a manifest meanwhile (nothing of this run is then listed).
        """
        assert self._rolling is not None, "prepare() was not called"
        self._finalized = True
        return self._publish(self._rolling.close())

    # -- staged (distributed) runs: dativo.StagingWriter --------------------------------------------

    def staging_plan(self) -> dict[str, Any]:
        """On the driver, after ``prepare``: the run id and the Arrow schema (no location, no credential)."""
        assert self._rolling is not None, "prepare() was not called"
        return {"format": self.label, "run_id": self._folder.run_id, "schema": self._schema, **self.plan_extras()}

    def plan_extras(self) -> dict[str, Any]:
        """More of :meth:`staging_plan` for a subclass (nothing here); must hold no secret."""
        return {}

    def adopt_plan(self, plan: Mapping[str, Any]) -> None:
        """On a worker, before staging: take over what :meth:`plan_extras` carried (nothing here)."""

    def stage_partition(self, plan: Mapping[str, Any], key: str, batches: Iterator[pa.RecordBatch]) -> dict[str, Any]:
        """On a worker: write ``batches`` as ``part-<key>-NNNNN.parquet`` in the run's staging folder.

        Returns ``{key, rows, bytes, files, parts}`` (``parts``: name, size, rows per file).
        Raises TargetError for a plan of another run or writer, or when writing fails
        (transient for an I/O error); files already written stay for the driver's
        ``abort`` or ``commit_staged`` to remove.
        """
        where = f"{self.label} target {self._folder.display}"
        if plan.get("format") != self.label or plan.get("run_id") != self._folder.run_id:
            raise TargetError(
                f"{where}: the staging plan is for {plan.get('format')} run {plan.get('run_id')}, this writer "
                f"is {self.label} run {self._folder.run_id}; initialize workers with the driver's config"
            )
        stem = staged_stem(self._folder.run_id, key, where)
        self.adopt_plan(plan)
        self._folder.prepare(f"{self.label} target")

        def open_file(index: int) -> tuple[str, Any]:
            path = self._folder.staged_path(f"part-{stem}-{index:05d}.parquet")
            return path, self.encode_stream(path, self._folder.fs.open_output_stream(path))

        rolling = RollingParquetWriter(plan["schema"], open_file, self._settings, self.file_options)
        try:
            for batch in batches:
                rolling.write(batch)
            written = rolling.close()
        except DativoError:
            rolling.abandon()
            raise
        except (OSError, pa.ArrowException) as exc:
            rolling.abandon()
            raise TargetError(
                f"{where}: staging partition {key} failed: {redact(str(exc))}", transient=isinstance(exc, OSError)
            ) from None
        return {
            "key": key,
            "rows": sum(file.rows for file in written),
            "bytes": sum(file.size for file in written),
            "files": [self._folder.display_path(file.path) for file in written],
            "parts": [
                {"name": file.path.rsplit("/", 1)[1], "size": file.size, "rows": file.rows, **self.describe_part(file)}
                for file in written
            ],
        }

    def describe_part(self, file: WrittenFile) -> dict[str, Any]:
        """More facts about one staged file for its description (none here); picklable, no secret."""
        return {}

    def adopt_part(self, path: str, part: Mapping[str, Any]) -> None:
        """On the driver: take over what :meth:`describe_part` said about the staged file ``path``."""

    def commit_staged(self, staged: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """On the driver: publish exactly the files of ``staged`` and the manifest, as :meth:`finalize` does.

        Every file is checked first (present in the staging folder, of the described
        size); the files of attempts not in ``staged`` go with the staging folder.
        Raises TargetError for a missing or altered file, a key given twice, or a
        manifest another writer published meanwhile; nothing is then listed.
        """
        assert self._rolling is not None, "prepare() was not called"
        if self._finalized:
            raise TargetError(f"{self.label} target: commit_staged() after the run was published")
        self._finalized = True
        where = f"{self.label} target {self._folder.display}"
        keys = [str(description["key"]) for description in staged]
        if len(set(keys)) != len(keys):
            raise TargetError(f"{where}: commit_staged() got the same attempt twice; nothing was committed")
        written: list[WrittenFile] = []
        for description in staged:
            for part in description["parts"]:
                name = str(part["name"])
                if "/" in name or not name.startswith("part-") or not name.endswith(".parquet"):
                    raise TargetError(f"{where}: staged file name {name!r} is not one this writer stages")
                path = self._folder.staged_path(name)
                written.append(WrittenFile(path, int(part["size"]), int(part["rows"]), cast(Any, None)))
                self.adopt_part(path, part)
        infos = self._folder.fs.get_file_info([file.path for file in written]) if written else []
        for file, info in zip(written, infos, strict=True):
            if info.type != pafs.FileType.File or info.size != file.size:
                found = "missing" if info.type != pafs.FileType.File else f"{info.size} bytes"
                raise TargetError(
                    f"{where}: staged file {file.path.rsplit('/', 1)[1]} is {found}, described as {file.size} "
                    "bytes; nothing was committed (run the job again)"
                )
        return self._publish(written)

    def _publish(self, written: list[WrittenFile]) -> dict[str, Any]:
        """Move ``written`` into the folder, commit the manifest listing them (and the state); the shared commit."""
        manifest = read_manifest(self._folder.fs, self._folder.root)
        if manifest is None:
            # The first commit here: the files already in the folder get a manifest of their own before any
            # of this run's is moved in, so a crash after the move cannot make the next run adopt them.
            manifest = self._baseline()
            manifest["sequence"] = self._write_manifest(manifest, manifest["files"], {}, baseline=True)
        names = [file.path.rsplit("/", 1)[1] for file in written]
        files = names if self._mode == "overwrite" else [*manifest["files"], *names]
        self.before_publish(written, manifest, files)
        self._folder.publish([file.path for file in written] + self.companion_files(written))
        self._crash_point("files_published")
        states = dict(manifest.get("states", {}))
        if self._state is not None:
            states[self._job] = self._state
        sequence = self._write_manifest(manifest, files, states)
        self._crash_point("after_commit")
        if self._mode == "overwrite":
            for name in set(manifest["files"]) - set(files):
                with contextlib.suppress(OSError, pa.ArrowException):
                    self._folder.fs.delete_file(f"{self._folder.root}/{name}")
        return self.after_commit(
            {
                "path": self._folder.display,
                "mode": self._mode,
                "manifest": sequence,
                "files": [self._folder.display_path(self._folder.final_path(f.path)) for f in written],
                "rows": sum(file.rows for file in written),
                "bytes": sum(file.size for file in written),
            }
        )

    def abort(self) -> None:
        """Delete the staging folder (every attempt staged for this run, dead ones included) and any file moved in."""
        if self._rolling is not None:
            self._rolling.abandon()
        self._folder.rollback()

    def _baseline(self) -> dict[str, Any]:
        """The dataset before its first manifest: every Parquet file already in the folder."""
        return {"sequence": 0, "files": sorted(self._data_files()), "states": {}}

    def _data_files(self) -> set[str]:
        selector = pafs.FileSelector(self._folder.root, allow_not_found=True)
        return {
            info.base_name
            for info in self._folder.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and info.base_name.endswith(".parquet") and info.base_name[0] not in "._"
        }

    def _recover(self) -> list[str]:
        """Delete data files that are not in the latest manifest: a crashed run published them, never committed.

        Returns the paths deleted.
        """
        manifest = read_manifest(self._folder.fs, self._folder.root)
        if manifest is None:
            return []
        deleted = []
        for name in sorted(self._data_files() - set(manifest["files"])):
            with contextlib.suppress(OSError, pa.ArrowException):
                self._folder.fs.delete_file(f"{self._folder.root}/{name}")
                deleted.append(f"{self._folder.root}/{name}")
        return deleted

    def _write_manifest(
        self, previous: dict[str, Any], files: list[str], states: dict[str, Any], baseline: bool = False
    ) -> int:
        """Commit the next manifest; a ``baseline`` one lists what was in the folder before dativo and no run."""
        sequence = int(previous.get("sequence", 0)) + 1
        body = {
            "version": 1,
            "sequence": sequence,
            "committed_at": datetime.now(UTC).isoformat(),
            "job": self._job,
            "run_id": None if baseline else self._folder.run_id,
            "mode": "baseline" if baseline else self._mode,
            "dativo_version": __version__,
            "files": files,
            "states": states,
        }
        fs, directory = self._folder.fs, f"{self._folder.root}/{MANIFEST_DIR}"
        final = f"{directory}/manifest-{sequence:010d}.json"
        data = json.dumps(body, indent=1, sort_keys=True, default=str).encode()
        if isinstance(fs, pafs.LocalFileSystem):
            # Write, then link into place: the link fails if another writer took this sequence number.
            os.makedirs(directory, exist_ok=True)
            temp = f"{directory}/.manifest-{self._folder.run_id}.tmp"
            with open(temp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temp, final)
            except FileExistsError:
                raise TargetError(
                    f"{self.label} dataset {self._folder.display}: another run committed manifest {sequence} "
                    "meanwhile; this run committed nothing (run it again)",
                    transient=True,
                ) from None
            finally:
                os.unlink(temp)
        else:
            # One PUT: an object appears whole or not at all.
            with fs.open_output_stream(final) as stream:
                stream.write(data)
        self._prune_manifests(sequence)
        return sequence

    def _prune_manifests(self, sequence: int) -> None:
        fs, directory = self._folder.fs, f"{self._folder.root}/{MANIFEST_DIR}"
        for old in range(max(1, sequence - 2 * _KEEP_MANIFESTS), sequence - _KEEP_MANIFESTS + 1):
            with contextlib.suppress(OSError, pa.ArrowException):
                fs.delete_file(f"{directory}/manifest-{old:010d}.json")


def read_manifest(fs: pafs.FileSystem, root: str) -> dict[str, Any] | None:
    """The newest manifest of the dataset at ``root``, or None before the first commit.

    Raises TargetError when the manifest cannot be parsed.
    """
    selector = pafs.FileSelector(f"{root}/{MANIFEST_DIR}", allow_not_found=True)
    names = sorted(
        info.path
        for info in fs.get_file_info(selector)
        if info.base_name.startswith("manifest-") and info.base_name.endswith(".json")
    )
    if not names:
        return None
    try:
        with fs.open_input_stream(names[-1]) as stream:
            manifest: dict[str, Any] = json.loads(stream.read())
    except (OSError, ValueError) as exc:
        raise TargetError(f"dataset manifest {names[-1]} cannot be read: {exc}") from None
    return manifest
