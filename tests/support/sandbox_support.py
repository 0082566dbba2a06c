"""Helpers for the sandbox tests: virtualenvs outside the checkout, an unprivileged user, a shell plugin.

* :func:`make_venv` creates a real virtualenv (``python -m venv``) wherever asked, in
  which dativo imports: a ``.pth`` file adds this interpreter's site-packages and
  dativo's source -- exactly what an editable install does.
* :func:`unprivileged` gives the uid/gid dativo runs as in the "dativo is not root" cases
  (a system user created like the PostgreSQL server's).
* :func:`shell_plugin` writes a process reader in ``/bin/sh`` that answers with a
  precomputed hello and Arrow stream: it needs no Python, so any uid can run it.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pyarrow as pa

import dativo

from .pgserver import _ensure_system_user

SANDBOX_USER = "dativo-sbx"


def unprivileged() -> tuple[int, int]:
    """uid and gid of an unprivileged system user (created when missing)."""
    entry: pwd.struct_passwd = _ensure_system_user(SANDBOX_USER)
    return entry.pw_uid, entry.pw_gid


def _readable_by_all(path: Path) -> bool:
    """Whether any user can reach ``path`` (every folder above it traversable, itself readable)."""
    path = path.resolve()
    if not path.stat().st_mode & 0o004:
        return False
    return all(parent.stat().st_mode & 0o001 for parent in path.parents)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system: copy
        shutil.copy2(source, target)


def _shared(path: Path, where: Path) -> Path:
    """``path`` itself when any user can read it, else a copy (hard links where possible) under ``where``.

    A venv or a checkout under a private home (``/root`` is 0700) is out of an unprivileged
    user's reach; the copy makes the same files reachable without touching the home's mode.
    """
    if _readable_by_all(path):
        return path
    mirror = where / "shared" / path.name  # "src" or "site-packages"
    shutil.copytree(path, mirror, symlinks=True, copy_function=_link_or_copy)
    return mirror


def make_venv(
    where: Path, base_python: str = sys.executable, *, system_site: bool = False, for_all_users: bool = False
) -> Path:
    """A real virtualenv at ``where`` in which ``import dativo`` works; returns its ``bin/python``.

    ``for_all_users``: dativo's source and this interpreter's site-packages are copied next to
    the venv when another user could not read them where they are.
    """
    command = [base_python, "-m", "venv", "--without-pip", *(["--system-site-packages"] if system_site else [])]
    subprocess.run([*command, str(where)], check=True, capture_output=True, timeout=120)
    python = where / "bin" / "python"
    found = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    site = Path(found.stdout.strip())
    source = Path(dativo.__file__).resolve().parent.parent
    ours = Path(sysconfig.get_paths()["purelib"])
    if for_all_users:
        source, ours = _shared(source, where), _shared(ours, where)
    (site / "dativo-test.pth").write_text(f"{source}\n{ours}\n")
    return python


def open_tree(path: Path) -> None:
    """Let any user read ``path`` and traverse its folders."""
    for root, dirs, files in os.walk(path):
        os.chmod(root, 0o755)
        for name in files:
            file = Path(root) / name
            file.chmod(file.stat().st_mode | 0o444)
        for name in dirs:
            os.chmod(Path(root) / name, 0o755)


def shell_plugin(folder: Path, table: pa.Table, stderr_command: str = "id -u") -> Path:
    """A process reader in /bin/sh streaming ``table``; what ``stderr_command`` prints becomes a log line."""
    folder.mkdir(parents=True, exist_ok=True)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    (folder / "stream.arrows").write_bytes(sink.getvalue().to_pybytes())
    schema_only = pa.BufferOutputStream()
    pa.ipc.new_stream(schema_only, table.schema).close()
    hello = {"dativo": "hello", "protocol": 1, "schema": base64.b64encode(schema_only.getvalue().to_pybytes()).decode()}
    (folder / "hello.line").write_text(json.dumps(hello) + "\n")
    script = folder / "plugin.sh"
    script.write_text(
        "#!/bin/sh\n"
        "IFS= read -r handshake\n"
        f'cat "{folder}/hello.line"\n'
        "IFS= read -r command\n"
        f'echo "plugin says: $({stderr_command})" >&2\n'
        f'cat "{folder}/stream.arrows"\n'
    )
    script.chmod(0o755)
    return script
