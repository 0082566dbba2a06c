"""The ``dativo`` command. Thin: parse arguments, call the engine, print results.

Exit codes: 0 success, 1 the run or check failed, 2 the job or the command
line is invalid, 130 interrupted. Errors print as one line on stderr; ``--debug``
adds the traceback.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from dativo import __version__
from dativo._logging import configure_logging
from dativo._sdk_version import SDK_API_VERSION
from dativo._secrets import redact
from dativo.cli.common import err, escape, fail, out, real_console, say_ok, state
from dativo.cli.lazy import LazyGroup, lazy_command
from dativo.cli.streams import print_discovered, print_streams_summary, stream_errors
from dativo.errors import ConfigError, PluginError

if TYPE_CHECKING:
    from rich.progress import Progress

    from dativo import api as python_api
    from dativo.engine import pipeline
    from dativo.engine.streams import Stream

# Only what every command needs is imported above: the engine, the Python API and the
# plugins load inside the commands that use them, so `dativo validate --offline` and
# `dativo --help` do not import pyiceberg, SQLAlchemy, ADBC or boto3 (issue 15).

__all__ = ["app", "main"]

app = typer.Typer(
    cls=LazyGroup,
    name="dativo",
    help="Move tables into Iceberg and Parquet with pluggable Arrow readers and writers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
plugins_app = typer.Typer(
    help="Inspect installed plugins (readers, writers, connectors, runtimes, KMS clients).", no_args_is_help=True
)
state_app = typer.Typer(help="Inspect or reset the state a job commits with its data.", no_args_is_help=True)
init_app = typer.Typer(help="Generate a new project from dativo's templates.", no_args_is_help=True)
# Every command is built when click asks for it (dativo.cli.lazy), in this order in the help.
lazy_command("run", "dativo.cli:run")
lazy_command("validate", "dativo.cli:validate")
lazy_command("check", "dativo.cli:check")
lazy_command(
    "serve",
    "dativo.cli:serve",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
lazy_command("discover", "dativo.cli:discover")
lazy_command("plugins", "dativo.cli:plugins_app")
lazy_command("state", "dativo.cli:state_app")
lazy_command("init", "dativo.cli:init_app")
lazy_command("audit", "dativo.cli.audit:audit_app")  # encrypted-parquet: dativo audit verify LOG
lazy_command("kms", "dativo.cli.audit:kms_app")
lazy_command("cdc", "dativo.cli.cdc:cdc_app")  # change data capture: dativo cdc status|drop JOB
lazy_command("decrypt", "dativo.cli.audit:decrypt")
lazy_command("maintain", "dativo.cli.maintain:maintain")  # iceberg: expire snapshots, remove orphans, compact


def _flags_take_no_value() -> None:
    """Typer >= 0.2x prints ``<bool>`` after flags in --help, as if they took a value; show nothing."""
    option = getattr(typer.core, "TyperOption", None)
    original = getattr(option, "display_type_rich", None)
    if option is None or original is None or getattr(original, "_dativo", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return None if getattr(self, "is_flag", False) else original(self, ctx)

    display_type_rich._dativo = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich


_flags_take_no_value()

T = TypeVar("T")
JobArg = Annotated[Path, typer.Argument(help="The job file (YAML).", show_default=False)]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")]
StreamOpt = Annotated[
    list[str] | None,
    typer.Option("--stream", help="Jobs with streams: only this stream (a name or pattern; repeatable)."),
]


def _version(value: bool) -> None:
    if value:
        out.print(f"dativo {__version__} (plugin SDK API {SDK_API_VERSION})")
        raise typer.Exit()


@app.callback()
def _main(
    debug: DebugOpt = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "warning",
    log_format: Annotated[str, typer.Option(help="text or json (structured, one object per line).")] = "text",
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """dativo: config-driven ingestion with pluggable readers and writers."""
    state["debug"] = debug
    if log_format not in {"text", "json"}:
        fail(ConfigError(f"--log-format must be 'text' or 'json', not '{log_format}'"))
    configure_logging("debug" if debug else log_level, log_format)


ExecutorOpt = Annotated[
    str | None,
    typer.Option(help="Where partitions run: local, or ray (overrides engine.executor; pip install 'dativo[ray]')."),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        help="With --executor ray: the Ray cluster (auto, or ray://host:10001); overrides engine.ray.address."
    ),
]


def run(
    job: JobArg,
    summary_json: Annotated[Path | None, typer.Option(help="Also write the run summary as JSON to this file.")] = None,
    run_id: Annotated[
        str | None,
        typer.Option(help="Name this run (e.g. the scheduler's run id); a run already committed is not applied again."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary table.")] = False,
    stream: StreamOpt = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", help="source.cdc jobs: keep running, one commit per cdc.commit_interval_s (as 'cdc follow')."
        ),
    ] = False,
    executor: ExecutorOpt = None,
    address: AddressOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Run a job: read the source, write the target, commit once at the end (transient failures are retried)."""
    state["debug"] |= debug
    if follow:
        from dativo.cli.cdc import follow as follow_changes

        if summary_json is not None or run_id is not None or stream:
            fail(ConfigError("--follow takes no --summary-json, --run-id or --stream (each commit is its own run)"))
        follow_changes(job, interval=None, quiet=quiet)
        return
    from dativo import api as python_api

    loaded = _guard(lambda: _load(job))
    done: list[python_api.StreamResult] = []
    try:
        with _progress(quiet) as progress, _sigterm_as_interrupt():
            result = _guard(
                lambda: python_api.run(
                    loaded,
                    streams=stream,
                    run_id=run_id,
                    progress=progress,
                    on_retry=_print_retry,
                    on_stream_done=done.append,
                    executor=executor,
                    address=address,
                ),
                streams=loaded.has_streams,
            )
    finally:
        if summary_json is not None and done:
            data = _streams_json(loaded, done) if loaded.has_streams else done[-1].summary
            summary_json.write_text(redact(json.dumps(data, indent=2, default=str)) + "\n")
    if not loaded.has_streams:
        if not result.ok:
            _guard(result.raise_for_failures)
        if not quiet:
            _print_summary(result.streams[0].summary)
        return
    if not quiet:
        print_streams_summary(out, result)
    _print_stream_errors([(s.name, s.exception) for s in result.streams if s.exception is not None], loaded)
    if not result.ok:
        raise typer.Exit(1)


def _streams_json(job: python_api.Job, done: list[python_api.StreamResult]) -> dict[str, Any]:
    failed = [s.name for s in done if not s.ok]
    return {
        "job": job.name,
        "status": "failed" if failed else "succeeded",
        "failed": failed,
        "rows": sum(s.rows for s in done),
        "streams": [s.to_dict() for s in done],
    }


@state_app.command("show")
def state_show(job: JobArg, stream: StreamOpt = None, debug: DebugOpt = False) -> None:
    """Print the state the job's last successful run committed with its data (JSON; one per stream)."""
    from dativo.engine import pipeline
    from dativo.engine.plan import build_plan
    from dativo.engine.streams import plan_streams

    state["debug"] |= debug
    loaded = _guard(lambda: _load(job))
    streams = _guard(lambda: plan_streams(loaded.loaded, stream))
    # The state is the writer's: a plan that never reaches the source (no source planner) does.
    plans = {s.name: (s, _guard(lambda s=s: build_plan(s.job, contact_source=False), s)) for s in streams}  # type: ignore[misc]
    states = {name: _guard(lambda p=p: pipeline.load_state(p), s) for name, (s, p) in plans.items()}  # type: ignore[misc]
    shown = states if loaded.has_streams else next(iter(states.values()))
    out.print_json(json.dumps(shown, default=str) if shown is not None else "null")


@state_app.command("reset")
def state_reset(
    job: JobArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    force: Annotated[bool, typer.Option(help="Reset even though other jobs or tools write the same target.")] = False,
    stream: StreamOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Forget the job's state: its next run reads from source.incremental.initial again."""
    from dativo.engine import pipeline
    from dativo.engine.plan import build_plan
    from dativo.engine.streams import plan_streams

    state["debug"] |= debug
    loaded = _guard(lambda: _load(job))
    streams = _guard(lambda: plan_streams(loaded.loaded, stream))
    plans = [(s, _guard(lambda s=s: build_plan(s.job, contact_source=False), s)) for s in streams]  # type: ignore[misc]
    what = f"job '{loaded.name}'" + (f" ({len(plans)} streams)" if loaded.has_streams else "")
    if not yes and not typer.confirm(f"Reset the state of {what}? Its next run re-reads the source"):
        fail(ConfigError("state reset cancelled; nothing changed"))
    for s, plan in plans:
        message = _guard(lambda plan=plan: pipeline.reset_state(plan, force), s)  # type: ignore[misc]
        out.print(f"{s.name}: {message}" if loaded.has_streams else message, markup=not loaded.has_streams)


def validate(
    job: JobArg,
    offline: Annotated[
        bool, typer.Option(help="Only check the file and the plugins; do not connect to the source.")
    ] = False,
    stream: StreamOpt = None,
    executor: ExecutorOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Check a job file, its plugins and (unless --offline) the source's columns, the mode and the cursor."""
    from dativo import api as python_api

    state["debug"] |= debug
    loaded = _guard(lambda: _load(job))
    results = _guard(lambda: python_api.validate(loaded, streams=stream, offline=offline, executor=executor))
    if not loaded.has_streams:
        if results[0].exception is not None:
            fail(results[0].exception)
        say_ok(f"{job}: reader {results[0].reader}, writer {results[0].writer}")
        return
    for item in results:
        if item.ok:
            line = escape(f"{job} [{item.name}]: reader {item.reader}, writer {item.writer}")
            out.print(f"[green]ok[/green] {line}", soft_wrap=True)
    failures = [(item.name, item.exception) for item in results if item.exception is not None]
    _print_stream_errors(failures, loaded)
    if failures:
        raise typer.Exit(2 if any(isinstance(e, ConfigError | PluginError) for _, e in failures) else 1)


def check(job: JobArg, stream: StreamOpt = None, debug: DebugOpt = False) -> None:
    """Connect to the source and the target with the job's credentials."""
    from dativo.engine import pipeline
    from dativo.engine.plan import build_plan
    from dativo.engine.streams import plan_streams

    state["debug"] |= debug
    loaded = _guard(lambda: _load(job))
    streams = _guard(lambda: plan_streams(loaded.loaded, stream))
    failures: list[tuple[str, BaseException]] = []
    for s in streams:
        try:
            results = pipeline.check(build_plan(s.job))
        except Exception as exc:
            if not loaded.has_streams:
                fail(exc)
            failures.append((s.name, exc))
            continue
        for side, result in results:
            label = f"{s.name} {side}" if loaded.has_streams else side
            out.print(f"[green]ok[/green] {escape(label)}: {escape(str(result))}")
    _print_stream_errors(failures, loaded)
    if failures:
        raise typer.Exit(1)


def serve(ctx: typer.Context) -> None:
    """Serve a reader or writer as a process or Flight plugin: dativo serve {process,flight} IMPLEMENTATION ..."""
    from dativo.runtimes.serve import main as serve_main  # serve flight imports gRPC only when asked for

    raise typer.Exit(serve_main(list(ctx.args)))


def discover(
    job: JobArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    stream: StreamOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Print the source schema as Arrow types and as the target types it will become."""
    from dativo import api as python_api

    state["debug"] |= debug
    loaded = _guard(lambda: _load(job))
    found = _guard(lambda: python_api.discover(loaded, streams=stream))
    print_discovered(out, found, as_json=as_json, per_stream=loaded.has_streams)


@plugins_app.command("list")
def plugins_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List every installed plugin: readers, writers, connectors, runtimes, KMS clients (the table exits 1 if one
    cannot load)."""
    from dativo.cli.plugins import installed_plugins

    rows = installed_plugins()
    if as_json:  # exit 0: a consumer reads each row's problem
        out.print_json(json.dumps([row.to_dict() for row in rows]))
        return
    from rich.table import Table

    table = Table("kind", "name", "origin", "api", "details", "status")
    for row in rows:
        table.add_row(
            row.kind,
            escape(row.name),
            escape(row.origin),
            escape(row.api_version or "-"),
            escape(row.details),
            f"[red]{escape(row.problem)}[/red]" if row.problem else "[green]ok[/green]",
        )
    out.print(table)
    if any(row.problem for row in rows):
        raise typer.Exit(1)


@init_app.command("plugin")
def init_plugin(
    name: Annotated[str, typer.Argument(help="The plugin's name: lower-case words joined by '-' (my-orders).")],
    kind: Annotated[str, typer.Option(help="reader or writer.")] = "reader",
    lang: Annotated[str, typer.Option(help="python, rust or go.")] = "python",
    directory: Annotated[Path | None, typer.Option("--dir", help="Where to write it (default: ./NAME).")] = None,
    force: Annotated[bool, typer.Option(help="Write into a non-empty folder.")] = False,
) -> None:
    """Generate a buildable plugin project (code, packaging, example job, conformance tests, README)."""
    from dativo.testing.scaffold import generate

    dest = directory or Path(name)
    written = _guard(lambda: generate(name, kind, lang, dest, force))  # type: ignore[arg-type]
    out.print(
        f"created {kind} plugin '{name}' ({lang}) in {dest}: {len(written)} files; next: {dest / 'README.md'}",
        markup=False,
    )


@plugins_app.command("certify")
def plugins_certify(
    implementation: Annotated[
        str, typer.Argument(help="Installed name, pkg.mod:Class, file.py:Class, an executable, or grpc://host:port.")
    ],
    kind: Annotated[str | None, typer.Option(help="reader or writer (found out for Python plugins).")] = None,
    runtime: Annotated[str, typer.Option(help="custom (in process), process or flight.")] = "custom",
    config: Annotated[
        Path | None, typer.Option("--config", help="Scenario file (conformance.yaml of a generated plugin).")
    ] = None,
    rule: Annotated[list[str] | None, typer.Option("--rule", help="Run only this rule (repeatable).")] = None,
    sandbox: Annotated[bool, typer.Option(help="Sandbox process plugins (as jobs do by default).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Run the conformance suite against a plugin; exit 0 only when every required rule passes."""
    from dativo.testing.cli import run_certification  # the suite imports pytest helpers only when asked for

    state["debug"] |= debug
    if kind not in (None, "reader", "writer") or runtime not in ("custom", "process", "flight"):
        fail(ConfigError(f"--kind takes reader or writer, --runtime custom, process or flight ({kind}, {runtime})"))
    report = _guard(
        lambda: run_certification(implementation, kind, runtime, config, rule, sandbox=sandbox)  # type: ignore[arg-type]
    )
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        from rich.table import Table

        table = Table("rule", "result", "details", title=f"{report.plugin}: plugin SDK {report.sdk_version}")
        colours = {"pass": "green", "fail": "red", "skip": "yellow"}
        for result in report.results:
            table.add_row(result.rule, f"[{colours[result.status]}]{result.status}[/]", escape(redact(result.message)))
        out.print(table)
        verdict = "[green]certified[/green]" if report.passed else "[red]not certified[/red]"
        out.print(f"{verdict}: {escape(', '.join(report.failed_rules) or 'no rule failed')}")
    if not report.passed:
        raise typer.Exit(1)


def _load(path: Path) -> python_api.Job:
    """Load the job file and remember it, so errors about a key can point at its line."""
    from dativo import api as python_api

    job = python_api.load_job(path)
    state["job"] = job.loaded
    return job


def _guard(action: Callable[[], T], stream: Stream | None = None, *, streams: bool = False) -> T:
    """Run ``action``; an error ends the command with one line (naming ``stream``, if given) and its exit code."""
    try:
        return action()
    except KeyboardInterrupt:
        committed = "streams that finished before stay committed" if streams else "nothing was committed"
        err.print(f"[red]error:[/red] interrupted; {committed}", highlight=False)
        raise typer.Exit(130) from None
    except Exception as exc:
        if stream is not None and stream.job.stream is not None:
            _print_stream_errors([(stream.name, exc)], None)
            raise typer.Exit(2 if isinstance(exc, ConfigError | PluginError) else 1) from None
        fail(exc)


def _print_stream_errors(failures: list[tuple[str, BaseException]], job: python_api.Job | None) -> None:
    """One ``error: stream NAME: ...`` line per problem of each failed stream."""
    from dativo.config.loader import LoadedStreams

    streams = (
        {s.key: s.job for s in job.loaded.entries} if job is not None and isinstance(job.loaded, LoadedStreams) else {}
    )
    for line in stream_errors(failures, streams, debug=bool(state["debug"])):
        err.print(line, highlight=False, markup=False, soft_wrap=True)


class _Bar:
    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task = progress.add_task("rows", total=None, rows=0, mb=0.0, rate=0.0, parts="")
        self._rows = 0
        self._bytes = 0

    def advance(self, rows: int, nbytes: int) -> None:
        self._rows += rows
        self._bytes += nbytes
        elapsed = self._progress.tasks[0].elapsed or 1e-9
        self._progress.update(self._task, rows=self._rows, mb=self._bytes / 1e6, rate=self._rows / max(elapsed, 1e-9))

    def partitions(self, done: int, running: int, retried: int) -> None:
        """Distributed runs (engine.executor: ray): partitions done, running and retried."""
        text = f"partitions {done} done, {running} running" + (f", {retried} retried" if retried else "")
        self._progress.update(self._task, parts=text)


@contextmanager
def _progress(quiet: bool) -> Iterator[pipeline.ProgressSink | None]:
    if quiet or not err.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]{task.fields[rows]:,}[/bold] rows"),
        TextColumn("{task.fields[mb]:,.1f} MB"),
        TextColumn("{task.fields[rate]:,.0f} rows/s"),
        TextColumn("{task.fields[parts]}"),
        BarColumn(bar_width=None),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=real_console(err), transient=True) as progress:
        yield _Bar(progress)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A scheduler's SIGTERM aborts the run like Ctrl-C does: nothing committed, staged files removed."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_retry(attempt: int, max_attempts: int, delay_s: float, exc: BaseException) -> None:
    """One line per failed attempt for a person at a terminal (logs get it at INFO)."""
    if err.is_terminal:
        message = redact(str(exc)).replace("\n", " ")
        err.print(
            f"attempt {attempt} of {max_attempts} failed (transient), retrying in {delay_s:.1f} s: {message}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(show_header=False)
    target = summary.get("target", {})
    files = target.get("files") if isinstance(target.get("files"), list) else []
    where = target.get("table") or target.get("path") or (files[0] if len(files) == 1 else "-")
    snapshot = target.get("snapshot_id")
    for key, value in (
        ("job", f"{summary['job']} (run {summary['run_id'][:12]})"),
        ("status", summary["status"]),
        ("rows", f"{summary['rows']:,}"),
        ("bytes (arrow)", f"{summary['bytes']:,}"),
        ("batches", str(summary["batches"])),
        ("files", str(summary["files"])),
        ("duration", f"{summary['duration_s']:.2f} s"),
        ("rows/s", f"{summary['rows_per_s'] or 0:,}"),
        ("target", str(where) + (f" (snapshot {snapshot})" if snapshot else "")),
    ):
        table.add_row(key, escape(redact(value)))
    executor = summary.get("executor")
    if isinstance(executor, dict):
        retried = f", {executor['retried']} retried" if executor.get("retried") else ""
        table.add_row("executor", escape(f"{executor['name']}: {executor['done']} partitions{retried}"))
        for node, figures in (executor.get("workers") or {}).items():
            rate = f"{figures['rows_per_s'] or 0:,} rows/s"
            table.add_row(
                f"  node {node}", escape(f"{figures['partitions']} partitions, {figures['rows']:,} rows, {rate}")
            )
    out.print(table)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("error: interrupted; nothing was committed", highlight=False, markup=False)
        sys.exit(130)
