"""Secrets sent to Ray workers as references (dativo.executors._sealed): sealed on the driver, resolved on a worker."""

from __future__ import annotations

import pickle

import pytest

from dativo._secrets import register_secret
from dativo.errors import ConfigError
from dativo.executors._sealed import Sealed, seal, secret_references, unseal


def test_secrets_from_env_and_files_travel_as_references_and_resolve_on_the_worker(tmp_path, monkeypatch):
    monkeypatch.setenv("SEALED_DB_PASSWORD", "s3cr3t-from-env")
    (tmp_path / "token.txt").write_text("tok-from-file-123\n")
    job = tmp_path / "job.yaml"
    job.write_text(
        "source:\n  connection: {password: '${SEALED_DB_PASSWORD}', user: '${USER:-me}'}\n"
        "target:\n  options: {token: '${file:token.txt}'}\n"
    )
    register_secret("s3cr3t-from-env")
    register_secret("tok-from-file-123")
    references = secret_references(job, tmp_path)
    assert references == {"s3cr3t-from-env": "${SEALED_DB_PASSWORD}", "tok-from-file-123": "${file:token.txt}"}
    config = {
        "connection": {"password": "s3cr3t-from-env", "user": "me"},
        "conninfo": "host=db password=s3cr3t-from-env sslmode=require ${literal}",
        "options": {"token": "tok-from-file-123", "list": ["tok-from-file-123", 3]},
    }
    sealed = seal(config, references)
    sent = pickle.dumps(sealed)
    assert b"s3cr3t-from-env" not in sent and b"tok-from-file-123" not in sent
    assert sealed["connection"]["user"] == "me"  # not a secret: sent as is
    assert isinstance(sealed["conninfo"], Sealed)
    assert unseal(pickle.loads(sent), job, tmp_path) == config  # the literal "${literal}" survives


def test_a_reference_missing_on_the_worker_is_one_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.delenv("SEALED_MISSING", raising=False)
    with pytest.raises(ConfigError, match="SEALED_MISSING is not set") as caught:
        unseal({"password": Sealed("${SEALED_MISSING}")}, tmp_path / "job.yaml", tmp_path)
    assert "Ray worker" in str(caught.value)
