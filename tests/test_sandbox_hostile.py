"""A hostile plugin against the sandbox (issue #12): every attack is refused, with dativo as root and as a user.

Each case runs the real ``dativo run`` in a subprocess -- once as root (as in
containers and CI) and once as an unprivileged system user (``setpriv``), with
a virtualenv of the system Python that user can read -- and a plugin
(``support/hostile_plugin.py``) that tries one attack and reports what
happened in its error record. The run must fail with that plugin's one-line
error saying ``refused``; ``ESCAPED`` would mean the sandbox let it through.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from support.sandbox_support import make_venv, open_tree, shell_plugin, unprivileged

HOSTILE = Path(__file__).parent / "support" / "hostile_plugin.py"
SYSTEM_PYTHON = "/usr/bin/python3"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs dativo both as root and as another user")


@dataclass
class Runner:
    """How to run dativo as one identity: its python, and the uid/gid (None: root, as we are)."""

    who: str
    python: str
    ids: tuple[int, int] | None

    def command(self, *args: str) -> list[str]:
        drop = []
        if self.ids is not None:
            uid, gid = self.ids
            drop = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
        return [*drop, self.python, *args]

    def run(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": str(cwd)}
        if "PYTHONPATH" in os.environ:  # e.g. to run this suite against another dativo source tree
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        return subprocess.run(
            self.command(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=180, check=False
        )

    def own(self, path: Path) -> None:
        if self.ids is not None:
            for root, dirs, files in os.walk(path):
                for name in [root, *(Path(root) / d for d in dirs), *(Path(root) / f for f in files)]:
                    os.chown(name, *self.ids)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """A folder under /tmp that any user can traverse (pytest's own tmp folders are root-only)."""
    base = Path(tempfile.mkdtemp(prefix="dativo-hostile-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def user_python(scratch: Path) -> str:
    """A virtualenv of the system Python (which the unprivileged user can run) with dativo importable."""
    python = make_venv(scratch / "user-venv", SYSTEM_PYTHON, for_all_users=True)
    open_tree(scratch / "user-venv")
    return str(python)


@pytest.fixture(params=["root", "user"])
def runner(request: pytest.FixtureRequest, user_python: str) -> Runner:
    if request.param == "root":
        return Runner("root", sys.executable, None)
    return Runner("user", user_python, unprivileged())


@pytest.fixture(scope="module")
def root_secret() -> Iterator[Path]:
    secret = Path("/root") / f".dativo-hostile-{uuid.uuid4().hex}"
    secret.write_text("root's secret")
    secret.chmod(0o600)
    yield secret
    secret.unlink()


@pytest.fixture(scope="module")
def host_sockets() -> Iterator[list[str]]:
    """Listening Unix sockets on the host: one under /run (any user may connect), one abstract."""
    tag = uuid.uuid4().hex[:12]
    path = f"/run/dativo-hostile-{tag}.sock"
    listeners = []
    for address in (path, f"\0dativo-hostile-{tag}"):
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(address)
        server.listen(4)
        listeners.append(server)
    os.chmod(path, 0o777)
    yield [path, f"@dativo-hostile-{tag}"]
    for server in listeners:
        server.close()
    os.unlink(path)


def job_folder(scratch: Path, runner: Runner, reader: dict[str, object]) -> Path:
    folder = scratch / f"job-{runner.who}-{uuid.uuid4().hex[:8]}"
    (folder / "secrets").mkdir(parents=True)
    (folder / "secrets" / "token").write_text("job secret")
    (folder / "secrets" / "token").chmod(0o600)
    job = {
        "name": "hostile",
        "source": {"connector": "custom", "reader": {"type": "process", "name": "hostile", **reader}},
        "target": {"connector": "parquet", "path": "out"},
    }
    (folder / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    runner.own(folder)
    return folder


def attack(scratch: Path, runner: Runner, name: str, *args: str) -> str:
    """Run the hostile plugin through ``dativo run``; returns dativo's one error line."""
    reader = {"command": [runner.python, str(HOSTILE), name], "env": {"HOSTILE_ARGS": json.dumps(args)}}
    folder = job_folder(scratch, runner, reader)
    result = runner.run("-m", "dativo", "run", "job.yaml", "--quiet", cwd=folder)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: reader plugin 'hostile': "), result.stderr
    assert not (folder / "out").exists()
    return lines[0]


def test_remounting_the_read_only_root_is_refused(scratch, runner):
    line = attack(scratch, runner, "remount")
    assert "remount: refused (EPERM, EPERM, EPERM, EROFS)" in line
    assert not Path("/usr/dativo-hostile").exists()


def test_ptrace_reaches_no_process_outside(scratch, runner):
    line = attack(scratch, runner, "ptrace", str(os.getpid()))
    # Its own PID namespace shows only bubblewrap's reaper (pid 1), and the syscall filter refuses
    # ptrace whatever the target: the reaper, or the test process (dativo's parent) by its host pid.
    assert f"ptrace: refused (1:EPERM {os.getpid()}:EPERM; other processes visible: [1])" in line


def test_root_home_and_the_jobs_secrets_are_not_there(scratch, runner, root_secret):
    line = attack(scratch, runner, "read", str(root_secret), "/root/.ssh", "/home", "secrets/token", "job.yaml")
    assert "read: refused (" in line, line
    for path in (str(root_secret), "/root/.ssh", "/home", "secrets/token", "job.yaml"):
        assert f"{path}:ENOENT" in line  # not hidden by permissions: absent from its root


def test_host_unix_sockets_are_unreachable(scratch, runner, host_sockets):
    line = attack(scratch, runner, "unix", *host_sockets)
    path, abstract = host_sockets
    assert f"unix: refused ({path}:ENOENT {abstract}:ECONNREFUSED)" in line


def test_limits_cannot_be_raised(scratch, runner):
    line = attack(scratch, runner, "rlimits")
    assert "rlimits: refused (RLIMIT_NOFILE:ValueError RLIMIT_AS:ValueError RLIMIT_NPROC:ValueError)" in line


def test_no_capability_is_left(scratch, runner):
    line = attack(scratch, runner, "capabilities")
    assert "capabilities: refused (no capabilities" in line


SWAP = textwrap.dedent(
    """
    import json, subprocess, sys
    from pathlib import Path
    from dativo.config.models import PluginSpec
    from dativo.runtimes.sandbox import prepare_launch
    folder = Path(sys.argv[1])
    script = folder / "plugin" / "plugin.sh"
    spec = PluginSpec.model_validate(json.loads(sys.argv[2]))
    launch = prepare_launch("reader plugin 'swap'", spec, folder)
    # Checked: now swap the file before it runs, as an attacker racing dativo would.
    script.write_text("#!/bin/sh\\necho swapped-in >&2\\nexit 9\\n")
    proc = subprocess.run(launch.argv, env=launch.env, input=b"{}\\n{}\\n", capture_output=True, timeout=60)
    launch.release()
    print(json.dumps({"code": proc.returncode, "stderr": proc.stderr.decode(), "stdout": len(proc.stdout)}))
    """
)


@pytest.mark.parametrize("sandboxed", [True, False], ids=["bwrap", "no-sandbox"])
def test_a_pinned_file_swapped_after_the_check_does_not_run(scratch, runner, sandboxed):
    folder = scratch / f"swap-{runner.who}-{uuid.uuid4().hex[:8]}"
    script = shell_plugin(folder / "plugin", pa.table({"n": [1, 2, 3]}), stderr_command="echo original")
    from dativo.runtimes.sandbox import file_sha256

    spec = {"type": "process", "command": [str(script)], "sha256": file_sha256(script)}
    if not sandboxed:
        spec["sandbox"] = {"enabled": False}
    runner.own(folder)
    result = runner.run("-c", SWAP, str(folder), json.dumps(spec), cwd=folder)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["code"] == 0, outcome
    assert "plugin says: original" in outcome["stderr"]
    assert "swapped-in" not in outcome["stderr"]
    assert outcome["stdout"] > 100  # the hello and the Arrow stream of the file that was checked
    assert "swapped-in" in script.read_text()  # the file really was replaced before the start
