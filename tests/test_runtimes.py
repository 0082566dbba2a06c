"""Out-of-process runtimes (issue #5): the same plugins in process, as a sandboxed process and over Arrow Flight.

Real subprocesses, a real bubblewrap sandbox, a real Flight server on
loopback (with TLS and a bearer token). Misbehaving plugins are
``support/bad_plugin.py`` in one mode each: every run must fail with one
message naming the plugin and what it did, leave the target unchanged and
leave no process behind.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from dativo.config.loader import load_job
from dativo.engine import pipeline
from dativo.engine.plan import build_plan
from dativo.errors import ConfigError, DativoError, PluginError, SchemaError, SourceError, TargetError
from dativo.runtimes import sandbox
from dativo.runtimes.serve import PluginFlightServer
from dativo.targets.parquet import ParquetDatasetWriter

from support import plugins
from support.cli import assert_one_line_error, dativo
from support.sandbox_support import shell_plugin

SUPPORT = Path(__file__).parent / "support"
PLUGINS = SUPPORT / "plugins.py"
BAD = SUPPORT / "bad_plugin.py"
PY = sys.executable
SERVE = [PY, "-m", "dativo.runtimes.serve", "process"]


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def write_job(tmp_path: Path, reader: dict[str, Any], writer: dict[str, Any] | None = None, **source: Any) -> Path:
    job = {
        "name": "rt",
        "source": {"connector": "custom", "reader": reader, **source},
        "target": {"connector": "parquet", "path": "out", **({"writer": writer} if writer else {})},
        "engine": {"batch_size": 1000},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def run(path: Path) -> pipeline.RunSummary:
    return pipeline.run(build_plan(load_job(path)))


def output(tmp_path: Path) -> pa.Table:
    files = sorted((tmp_path / "out").glob("*.parquet"))
    assert files, "no parquet files were published"
    return pa.concat_tables(pq.read_table(f) for f in files)


def no_output(tmp_path: Path) -> bool:
    out = tmp_path / "out"
    return not out.exists() or not any(out.rglob("*"))


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def zombie_children() -> list[int]:
    me = os.getpid()
    zombies = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_bytes()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            if fields[0] == b"Z" and int(fields[1]) == me:
                zombies.append(int(entry.name))
    return zombies


def process_reader(command: list[str], **spec: Any) -> dict[str, Any]:
    return {"type": "process", "command": command, **spec}


def generated_options(rows: int = 2500) -> dict[str, Any]:
    return {"rows": rows}


# ------------------------------------------------------------------------------------------------
# Flight servers (the serve() helper) on loopback
# ------------------------------------------------------------------------------------------------


class FlightServer:
    def __init__(self, plugin_cls: type, **kwargs: Any) -> None:
        scheme = "grpc+tls" if kwargs.get("tls_certificates") else "grpc"
        self.server = PluginFlightServer(plugin_cls, f"{scheme}://127.0.0.1:0", **kwargs)
        self.endpoint = f"{scheme}://127.0.0.1:{self.server.port}"
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(10)


@pytest.fixture
def flight_reader():
    server = FlightServer(plugins.GeneratedReader)
    yield server
    server.stop()


@pytest.fixture
def flight_writer():
    server = FlightServer(ParquetDatasetWriter)
    yield server
    server.stop()


def self_signed(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dativo-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    ca = tmp_path / "ca.pem"
    ca.write_bytes(cert_pem)
    return ca, cert_pem, key_pem


# ------------------------------------------------------------------------------------------------
# Conformance: one reader / writer under all three runtimes gives the same result
# ------------------------------------------------------------------------------------------------


def reader_spec(runtime: str, implementation: str, endpoint: str | None = None) -> dict[str, Any]:
    if runtime == "custom":
        return {"implementation": implementation}
    if runtime == "process":
        return process_reader([*SERVE, implementation])
    return {"type": "flight", "endpoint": endpoint}


@pytest.mark.parametrize("runtime", ["custom", "process", "flight"])
def test_reader_conformance_same_rows_under_every_runtime(tmp_path, runtime, flight_reader):
    reader = reader_spec(runtime, f"{PLUGINS}:GeneratedReader", flight_reader.endpoint)
    reader["options"] = generated_options(2500)
    summary = run(write_job(tmp_path, reader))
    assert summary.status == "succeeded"
    assert (summary.rows, summary.batches) == (2500, 3)
    table = output(tmp_path).sort_by("id")
    expected = pa.Table.from_batches([plugins.make_batch(0, 2500)])
    assert table.equals(expected)


@pytest.mark.parametrize("runtime", ["process", "flight"])
def test_every_canonical_type_crosses_the_boundary_exactly(tmp_path, runtime):
    server = FlightServer(plugins.AllTypesReader) if runtime == "flight" else None
    try:
        reader = reader_spec(runtime, f"{PLUGINS}:AllTypesReader", server.endpoint if server else None)
        run(write_job(tmp_path, reader))
    finally:
        if server:
            server.stop()
    got = output(tmp_path)
    expected = pa.Table.from_batches([plugins.all_types_batch()])
    assert got.schema.names == expected.schema.names
    for name in expected.schema.names:
        want, have = expected.column(name), got.column(name)
        assert have.type == want.type, name
        if name == "f64":  # NaN != NaN
            assert str(have[0].as_py()) == "nan" and have.to_pylist()[1:] == want.to_pylist()[1:]
        else:
            assert have.to_pylist() == want.to_pylist(), name


@pytest.mark.parametrize("runtime", ["custom", "process", "flight"])
def test_writer_conformance_same_files_under_every_runtime(tmp_path, runtime, flight_writer):
    writer: dict[str, Any] = {"implementation": "parquet"}
    if runtime == "process":
        writer = {"type": "process", "command": [*SERVE, "parquet"], "sandbox": {"writable_paths": ["."]}}
    elif runtime == "flight":
        writer = {"type": "flight", "endpoint": flight_writer.endpoint}
    reader = {"implementation": f"{PLUGINS}:GeneratedReader", "options": generated_options(2500)}
    summary = run(write_job(tmp_path, reader, writer))
    assert summary.status == "succeeded"
    assert summary.target["rows"] == 2500
    assert len(summary.target["files"]) == summary.files >= 1
    table = output(tmp_path).sort_by("id")
    assert table.equals(pa.Table.from_batches([plugins.make_batch(0, 2500)]))


@pytest.mark.parametrize("runtime", ["process", "flight"])
def test_writer_is_aborted_when_the_reader_fails(tmp_path, runtime, flight_writer):
    writer: dict[str, Any] = {"type": "process", "command": [*SERVE, "parquet"], "sandbox": {"writable_paths": ["."]}}
    if runtime == "flight":
        writer = {"type": "flight", "endpoint": flight_writer.endpoint}
    reader = {"implementation": f"{PLUGINS}:GeneratedReader", "options": {"rows": 5000, "fail_after": 3}}
    with pytest.raises(SourceError, match="source exploded at batch 3"):
        run(write_job(tmp_path, reader, writer))
    assert no_output(tmp_path)


def test_process_reader_failure_keeps_the_plugins_own_error(tmp_path):
    reader = process_reader([*SERVE, f"{PLUGINS}:GeneratedReader"], options={"rows": 5000, "fail_after": 2})
    with pytest.raises(DativoError) as info:
        run(write_job(tmp_path, reader))
    assert "reader plugin 'python" in str(info.value) and "source exploded at batch 2" in str(info.value)
    assert no_output(tmp_path)


def test_process_reader_schema_change_is_a_schema_error(tmp_path):
    reader = process_reader([*SERVE, f"{PLUGINS}:GeneratedReader"], options={"rows": 3000, "change_schema_at": 1})
    with pytest.raises(SchemaError, match="changed schema mid-stream"):
        run(write_job(tmp_path, reader))
    assert no_output(tmp_path)


def test_plugin_stderr_becomes_log_lines_tagged_with_its_name(tmp_path, caplog):
    reader = process_reader([PY, str(BAD), "good"], name="chatty")
    with caplog.at_level("DEBUG", logger="dativo.plugin.chatty"):
        run(write_job(tmp_path, reader))
    assert any(
        r.name == "dativo.plugin.chatty" and r.getMessage() == "good plugin: reading 10 rows" and r.plugin == "chatty"
        for r in caplog.records
    )


# ------------------------------------------------------------------------------------------------
# Misbehaving plugins
# ------------------------------------------------------------------------------------------------

MISBEHAVIOURS = [
    ("exit-halfway", {}, SourceError, ["exited with code 3", "after 2 batches"]),
    ("signal", {}, SourceError, ["killed by signal SIGSEGV"]),
    ("garbage", {}, PluginError, ["not an Arrow IPC stream"]),
    ("schema-change", {}, SchemaError, ["changed schema mid-stream"]),
    ("silent-start", {"timeouts": {"startup_s": 2}}, PluginError, ["did not answer the handshake", "startup_s = 2"]),
    ("silent", {"timeouts": {"idle_s": 2}}, PluginError, ["produced no output for timeouts.idle_s = 2 s"]),
    ("loop", {"timeouts": {"total_s": 3}}, PluginError, ["ran longer than timeouts.total_s = 3 s"]),
    ("hog", {"sandbox": {"memory_mb": 700}}, SourceError, ["ran out of memory", "memory_mb = 700"]),
    ("spin", {"sandbox": {"cpu_seconds": 1}}, SourceError, ["SIGXCPU", "CPU-time limit (sandbox.cpu_seconds = 1)"]),
    ("fork", {"sandbox": {"max_processes": 24}}, SourceError, ["hit the process limit", "max_processes = 24"]),
]


@pytest.mark.parametrize(("mode", "spec", "error", "fragments"), MISBEHAVIOURS, ids=[m[0] for m in MISBEHAVIOURS])
def test_misbehaving_plugin_fails_clearly_and_leaves_nothing(tmp_path, mode, spec, error, fragments):
    marker = f"dativo-test-{uuid.uuid4().hex}"
    arg = ["200"] if mode == "fork" else []
    reader = process_reader([PY, str(BAD), mode, *arg, "--marker", marker], name="bad", **spec)
    started = time.monotonic()
    with pytest.raises(error) as info:
        run(write_job(tmp_path, reader))
    message = str(info.value)
    assert "reader plugin 'bad'" in message
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message
    assert no_output(tmp_path)
    assert time.monotonic() - started < 60
    assert processes_with(marker) == []
    assert zombie_children() == []


def test_misbehaving_plugin_through_the_cli_prints_one_line(tmp_path):
    job = write_job(tmp_path, process_reader([PY, str(BAD), "exit-halfway"], name="bad"))
    result = dativo("run", job, "--quiet")
    assert_one_line_error(result, "reader plugin 'bad' exited with code 3", code=1)


def test_forked_children_are_ended_with_the_run(tmp_path):
    """Children (one of which left the process group with setsid) die with a successful run too."""
    marker = f"dativo-test-{uuid.uuid4().hex}"
    reader = process_reader([PY, str(BAD), "fork", "5", "--marker", marker], name="forker")
    summary = run(write_job(tmp_path, reader))
    assert summary.rows == 10
    assert processes_with(marker) == []
    assert zombie_children() == []


def test_plugin_sees_only_the_environment_the_job_gives(tmp_path, monkeypatch):
    monkeypatch.setenv("DATIVO_TEST_SECRET", "s3cr3t-value-123")
    monkeypatch.setenv("PG_DSN", "postgresql://u:pw-in-env@db/x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-456")
    reader = process_reader([PY, str(BAD), "env"], env={"ALLOWED": "yes", "FROM_JOB": "${DATIVO_TEST_SECRET}"})
    run(write_job(tmp_path, reader))
    seen = dict(zip(*output(tmp_path).to_pydict().values(), strict=True))
    assert set(seen) - {"PWD"} == {"PATH", "LANG", "TMPDIR", "ALLOWED", "FROM_JOB"}  # bwrap sets PWD
    assert seen["ALLOWED"] == "yes"
    assert seen["FROM_JOB"] == "s3cr3t-value-123"  # passed on purpose, through interpolation
    assert "DATIVO_TEST_SECRET" not in seen and "PG_DSN" not in seen and "AWS_SECRET_ACCESS_KEY" not in seen


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


def test_network_is_forbidden_by_default(tmp_path, listener):
    reader = process_reader([PY, str(BAD), "connect", str(listener)], name="net")
    with pytest.raises(SourceError) as info:
        run(write_job(tmp_path, reader))
    assert "reader plugin 'net'" in str(info.value)
    assert "tried to use the network, which the sandbox forbids" in str(info.value)
    assert no_output(tmp_path)


def test_network_when_the_job_allows_it(tmp_path, listener):
    reader = process_reader([PY, str(BAD), "connect", str(listener)], sandbox={"network": True})
    run(write_job(tmp_path, reader))
    assert output(tmp_path).column("note").to_pylist() == ["connected"]


def test_read_paths_are_read_only_and_writable_paths_writable(tmp_path):
    (tmp_path / "shown").mkdir()
    (tmp_path / "shown" / "in.txt").write_text("visible")
    (tmp_path / "out-dir").mkdir()
    script = (
        "import sys, pathlib\n"
        "assert pathlib.Path('shown/in.txt').read_text() == 'visible'\n"
        "pathlib.Path('out-dir/written.txt').write_text('ok')\n"
        "try:\n    pathlib.Path('shown/not-writable.txt').write_text('x')\n"
        "except OSError as exc:\n    print('blocked:', exc.strerror, file=sys.stderr)\n    sys.exit(5)\n"
    )
    (tmp_path / "probe.py").write_text(script)
    sandbox_spec = {"read_paths": ["shown"], "writable_paths": ["out-dir"]}
    reader = process_reader([PY, "probe.py"], name="probe", sandbox=sandbox_spec)
    with pytest.raises(SourceError, match=r"exited with code 5.*Read-only file system"):
        run(write_job(tmp_path, reader))
    assert not (tmp_path / "shown" / "not-writable.txt").exists()
    assert (tmp_path / "out-dir" / "written.txt").read_text() == "ok"


# ------------------------------------------------------------------------------------------------
# Executable pinning and isolation that the machine cannot give
# ------------------------------------------------------------------------------------------------


def test_checksum_pin_is_checked_before_every_start(tmp_path):
    """An interpreter and its script are pinned together; a changed script is refused."""
    script = tmp_path / "plugin.py"
    script.write_bytes(BAD.read_bytes())
    pins = {PY: sandbox.file_sha256(Path(PY).resolve()), "plugin.py": sandbox.file_sha256(script)}
    reader = process_reader([PY, "plugin.py", "good"], sha256=pins, name="pinned")
    assert run(write_job(tmp_path, reader)).rows == 10
    script.write_bytes(BAD.read_bytes() + b"\n# changed\n")
    shutil.rmtree(tmp_path / "out")
    with pytest.raises(PluginError) as info:
        run(write_job(tmp_path, reader))
    assert "refusing to start" in str(info.value) and pins["plugin.py"] in str(info.value)
    assert no_output(tmp_path)


def test_a_pin_must_name_an_item_of_the_command(tmp_path):
    reader = process_reader([PY, str(BAD), "good"], sha256={"other.py": "sha256:" + "0" * 64})
    with pytest.raises(ConfigError, match=r"sha256 pins \['other.py'\], which is not an item of 'command'"):
        load_job(write_job(tmp_path, reader))


def test_checksum_must_be_well_formed(tmp_path):
    reader = process_reader([PY, str(BAD), "good"], sha256="md5:abc")
    with pytest.raises(ConfigError, match=r"job.yaml:\d+: source.reader.sha256"):
        load_job(write_job(tmp_path, reader))


@pytest.fixture
def without_bwrap(monkeypatch, tmp_path):
    bare = tmp_path / "bare-path"
    bare.mkdir()
    monkeypatch.setenv("PATH", str(bare))
    sandbox.bwrap_usable.cache_clear()
    yield
    sandbox.bwrap_usable.cache_clear()


def test_isolation_the_machine_cannot_give_is_refused(tmp_path, without_bwrap):
    marker = f"dativo-test-{uuid.uuid4().hex}"
    reader = process_reader([PY, str(BAD), "good", "--marker", marker], name="needs-bwrap")
    with pytest.raises(PluginError) as info:
        run(write_job(tmp_path, reader))
    assert "reader plugin 'needs-bwrap': the sandbox needs bubblewrap" in str(info.value)
    assert "a minimal root" in str(info.value) and "require_isolation: false" in str(info.value)
    assert processes_with(marker) == []


def test_isolation_can_be_waived_per_job(tmp_path, without_bwrap, caplog):
    """Without bubblewrap the fallback keeps what it can: as root, the plugin runs as an unprivileged uid."""
    folder = Path(tempfile.mkdtemp(prefix="dativo-fallback-"))  # pytest's tmp folders are root-only
    try:
        folder.chmod(0o755)
        script = shell_plugin(folder / "plugin", pa.table({"n": [1, 2, 3]}), stderr_command="id -u")
        reader = process_reader([str(script)], name="waived", sandbox={"require_isolation": False})
        with caplog.at_level("INFO"):
            assert run(write_job(tmp_path, reader)).rows == 3
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    warnings = [r.getMessage() for r in caplog.records if "runs WITHOUT bubblewrap" in r.getMessage()]
    assert len(warnings) == 1 and "loses a minimal root" in warnings[0] and "network isolation" in warnings[0]
    said = [r.getMessage() for r in caplog.records if r.name == "dativo.plugin.waived"]
    expected_uid = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert said == [f"plugin says: {expected_uid}"]


# ------------------------------------------------------------------------------------------------
# Job syntax
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reader", "fragment"),
    [
        ({"type": "process"}, "type 'process' needs 'command'"),
        ({"type": "flight"}, "type 'flight' needs 'endpoint'"),
        ({"type": "custom"}, "type 'custom' needs 'implementation'"),
        ({"type": "process", "command": ["x"], "implementation": "y"}, "'implementation' does not apply"),
        ({"type": "flight", "endpoint": "http://x"}, "source.reader.endpoint"),
        ({"type": "process", "command": []}, "command must name an executable"),
        ({"type": "process", "command": ["x"], "sandbox": {"memory_mb": 0}}, "source.reader.sandbox.memory_mb"),
        ({"type": "process", "command": ["x"], "token": "t"}, "'token' applies to type 'flight' only"),
    ],
)
def test_plugin_spec_validation_points_at_the_key(tmp_path, reader, fragment):
    with pytest.raises(ConfigError) as info:
        load_job(write_job(tmp_path, reader))
    assert "job.yaml:" in str(info.value) and fragment in str(info.value)


# ------------------------------------------------------------------------------------------------
# Flight: TLS, bearer token, errors
# ------------------------------------------------------------------------------------------------


def test_flight_reader_over_tls_with_a_bearer_token(tmp_path):
    ca, cert, key = self_signed(tmp_path)
    server = FlightServer(plugins.GeneratedReader, tls_certificates=[(cert, key)], token="t0ken-for-test")
    try:
        endpoint = server.endpoint
        reader = {"type": "flight", "endpoint": endpoint, "token": "t0ken-for-test", "tls": {"ca_file": str(ca)}}
        reader["options"] = generated_options(1500)
        assert run(write_job(tmp_path, reader)).rows == 1500
        wrong = dict(reader, token="wrong-token")
        with pytest.raises(PluginError) as info:
            run(write_job(tmp_path, wrong))
        assert "refused the call" in str(info.value) and "wrong-token" not in str(info.value)
        untrusted = {"type": "flight", "endpoint": endpoint, "token": "t0ken-for-test"}
        with pytest.raises(DativoError):
            run(write_job(tmp_path, untrusted))
    finally:
        server.stop()


def test_flight_reader_failure_keeps_the_servers_error(tmp_path, flight_reader):
    reader = {"type": "flight", "endpoint": flight_reader.endpoint, "options": {"rows": 5000, "fail_after": 2}}
    with pytest.raises(SourceError) as info:
        run(write_job(tmp_path, reader))
    assert f"reader plugin '{flight_reader.endpoint}'" in str(info.value) and "source exploded at batch 2" in str(
        info.value
    )
    assert no_output(tmp_path)


def test_flight_endpoint_unreachable_is_transient(tmp_path, listener):
    reader = {"type": "flight", "endpoint": "grpc://127.0.0.1:1"}
    with pytest.raises(DativoError) as info:
        run(write_job(tmp_path, reader))
    assert "grpc://127.0.0.1:1" in str(info.value)
    assert info.value.transient


def test_flight_writer_check(tmp_path, flight_writer):
    writer = {"type": "flight", "endpoint": flight_writer.endpoint}
    reader = {"implementation": f"{PLUGINS}:GeneratedReader"}
    results = pipeline.check(build_plan(load_job(write_job(tmp_path, reader, writer))))
    assert ("target", "reachable") in results


def test_process_writer_check_and_target_error(tmp_path):
    writer = {"type": "process", "command": [*SERVE, "parquet"], "sandbox": {"writable_paths": ["."]}}
    reader = {"implementation": f"{PLUGINS}:GeneratedReader"}
    results = pipeline.check(build_plan(load_job(write_job(tmp_path, reader, writer))))
    assert ("target", "reachable") in results
    # The writer cannot write outside its writable paths: a clear TargetError, nothing published.
    job = write_job(tmp_path, reader, {**writer, "sandbox": {}})
    with pytest.raises((TargetError, PluginError)) as info:
        run(job)
    assert "writer plugin 'python" in str(info.value)
    assert no_output(tmp_path)


# ------------------------------------------------------------------------------------------------
# `dativo serve` as a separate program
# ------------------------------------------------------------------------------------------------


def test_serve_process_refuses_an_unsupported_protocol_version():
    import subprocess

    handshake = b'{"dativo": "handshake", "protocol": 99, "protocols": [99], "kind": "reader", "config": {}}\n'
    result = subprocess.run(
        [PY, "-m", "dativo", "serve", "process", f"{PLUGINS}:GeneratedReader"],
        input=handshake,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert result.stdout == b""
    assert b'"error":"PluginError"' in result.stderr and b"speaks protocol 1" in result.stderr


def test_dativo_serve_flight_with_a_token_file(tmp_path):
    import subprocess

    token = tmp_path / "token"
    token.write_text("file-t0ken\n")
    server = subprocess.Popen(
        [PY, "-m", "dativo", "serve", "flight", f"{PLUGINS}:GeneratedReader", "--port", "0", "--token-file", token],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        assert line.startswith("serving "), line
        endpoint = line.split(" on ")[1].strip()
        reader = {"type": "flight", "endpoint": endpoint, "token": "${file:token}", "options": {"rows": 1200}}
        assert run(write_job(tmp_path, reader)).rows == 1200
    finally:
        server.terminate()
        server.wait(30)  # SIGTERM ends the server; on a loaded machine its shutdown can take seconds


def test_discover_starts_the_reader_only_for_its_schema(tmp_path):
    marker = f"dativo-test-{uuid.uuid4().hex}"
    reader = process_reader([PY, str(BAD), "good", "--marker", marker], name="schema-only")
    schema, _ = pipeline.discover(build_plan(load_job(write_job(tmp_path, reader))))
    assert schema == pa.schema([("id", pa.int64()), ("note", pa.string())])
    assert processes_with(marker) == []
    assert no_output(tmp_path)


def test_without_sandbox_the_plugin_inherits_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DATIVO_TEST_VISIBLE", "inherited-value")
    reader = process_reader([PY, str(BAD), "env"], sandbox={"enabled": False}, env={"EXTRA": "1"})
    run(write_job(tmp_path, reader))
    seen = dict(zip(*output(tmp_path).to_pydict().values(), strict=True))
    assert seen["DATIVO_TEST_VISIBLE"] == "inherited-value" and seen["EXTRA"] == "1"


def test_batches_from_pipes_are_realigned_for_native_plugins():
    import pyarrow as pa

    from dativo.runtimes.protocol import aligned, open_ipc_stream

    batch = pa.record_batch(
        [pa.array(range(100), pa.int64()), pa.array([f"v{i}" for i in range(100)])], names=["a", "b"]
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    raw = sink.getvalue()
    shifted = pa.py_buffer(b"\0" + raw.to_pybytes())[1:]  # an IPC payload starting at an odd address
    assert shifted.address % 8 != 0
    plain = pa.ipc.open_stream(shifted).read_next_batch()
    assert plain.column(0).buffers()[1].address % 8 != 0  # what a native plugin would have crashed on
    read = open_ipc_stream(shifted).read_next_batch()
    assert read.column(0).buffers()[1].address % 8 == 0 and read.column(1).buffers()[1].address % 4 == 0
    assert read.equals(batch)
    fixed = aligned(plain)
    assert fixed.column(0).buffers()[1].address % 8 == 0 and fixed.equals(batch)
    assert aligned(batch) is batch  # already aligned: no copy


def test_flight_untrusted_certificate_is_terminal_and_quiet(tmp_path):
    """No gRPC log lines before dativo's one error line; a certificate problem is not retried."""
    _, cert, key = self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    other_ca, _, _ = self_signed(tmp_path / "other")  # trusted by the job, but it did not sign the server's
    server = FlightServer(plugins.GeneratedReader, tls_certificates=[(cert, key)])
    try:
        reader = {"type": "flight", "name": "tls", "endpoint": server.endpoint, "tls": {"ca_file": str(other_ca)}}
        job = write_job(tmp_path, reader, options=generated_options(10))
        with pytest.raises(DativoError) as info:
            run(job)
        assert not info.value.transient
        assert "certificate" in str(info.value) and "tls.ca_file" in (info.value.hint or "")
        result = dativo("run", job, "--quiet")
    finally:
        server.stop()
    assert_one_line_error(result, "reader plugin 'tls'", "certificate")


def test_flight_wrong_token_is_terminal(tmp_path):
    server = FlightServer(plugins.GeneratedReader, token="right-token")
    try:
        reader = {"type": "flight", "name": "auth", "endpoint": server.endpoint, "token": "wrong-token"}
        with pytest.raises(PluginError) as info:
            run(write_job(tmp_path, reader, options=generated_options(10)))
    finally:
        server.stop()
    assert not info.value.transient
    assert "reader plugin 'auth'" in str(info.value) and "refused the call" in str(info.value)
    assert "wrong-token" not in str(info.value)
