"""The encrypted-parquet writer against real servers: PostgreSQL, and moto's S3 + KMS over HTTP.

Every run goes through the real ``dativo`` command in a subprocess; files are
read back with pyarrow's own Parquet Modular Encryption, keys come from a real
(moto) KMS or a local key file, and the audit log is checked with
``dativo audit verify``.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from dativo.encryption.audit import open_chain_key
from dativo.encryption.kms import KmsClient, KmsError, load_kms
from dativo.encryption.kms.aws import AwsKms
from dativo.encryption.kms.local import LocalKeyFileKms
from dativo.errors import ConfigError, PluginError, SourceError
from dativo.targets.encrypted_parquet import read_encrypted
from test_postgres_readers import FIDELITY, create_fidelity_table, norm

from support.cli import assert_one_line_error, dativo
from support.kms_fixtures import write_key_file

SSNS = [f"123-45-{n:04d}" for n in range(5)]
PG_QUERY = (
    f"SELECT rowno, {', '.join(c.name for c in FIDELITY)}, "
    "'123-45-' || lpad(rowno::text, 4, '0') AS ssn, 'diagnosis-' || rowno AS diagnosis FROM fidelity ORDER BY rowno"
)


def write_job(directory: Path, source: dict, target: dict, name: str = "phi", **extra) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "source": source, "target": target, **extra}, sort_keys=False))
    return path


def csv_source(directory: Path, rows: int = 5) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["id,ssn,diagnosis,amount"] + [f"{i},123-45-{i:04d},diagnosis-{i},{i}.5" for i in range(rows)]
    (directory / "patients.csv").write_text("\n".join(lines) + "\n")
    return {"connector": "files", "path": "patients.csv", "format": "csv"}


def aws_target(s3_server, bucket: str, footer: str, column_keys: dict, kms_config: dict, **options) -> dict:
    """An encrypted-parquet target on the moto S3 server under s3://BUCKET/phi, keys in (moto's) AWS KMS."""
    return {
        "connector": "encrypted-parquet",
        "path": f"s3://{bucket}/phi",
        "connection": s3_server.connection(),
        "options": {"footer_key": footer, "column_keys": column_keys, "kms": kms_config, **options},
    }


def local_target(path: str = "out", **options) -> dict:
    return {
        "connector": "encrypted-parquet",
        "path": path,
        "options": {
            "footer_key": "footer_key",
            "column_keys": {"phi_key": ["ssn", "diagnosis"]},
            "kms": {"type": "local", "key_file": "keys.json"},
            "audit": {"log": "audit.jsonl"},
            **options,
        },
    }


def objects(s3_server, bucket: str, prefix: str = "") -> dict[str, bytes]:
    client = s3_server.client()
    return {
        key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in s3_server.list_keys(bucket, prefix)
    }


def audit_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Round trip: PostgreSQL -> encrypted Parquet on S3 (AWS KMS) -> decrypt
# ---------------------------------------------------------------------------------------------


def test_postgres_to_s3_round_trip_every_type(tmp_path, pg_db, s3_server, s3_bucket, kms):
    create_fidelity_table(pg_db)
    footer, phi = kms.create_key("footer"), kms.create_key("phi")
    target = {
        "connector": "encrypted-parquet",
        "path": f"s3://{s3_bucket}/phi",
        "connection": s3_server.connection(),
        "options": {
            "footer_key": footer,
            "column_keys": {phi: ["ssn", "diagnosis", "txt", "a_txt"]},
            "compression": "none",  # so that an unencrypted copy would show every string verbatim
            "kms": kms.config(),
            "audit": {"log": "audit.jsonl", "copy_to": f"s3://{s3_bucket}/audit"},
        },
    }
    source = {"connector": "postgres", "connection": {"dsn": "${PG_DSN}"}, "query": PG_QUERY}
    job = write_job(tmp_path, source, target)
    result = dativo("run", job, "--quiet", "--summary-json", tmp_path / "summary.json", env={"PG_DSN": pg_db.dsn})
    assert result.returncode == 0, result.stderr

    stored = objects(s3_server, s3_bucket, "phi/")
    assert not [k for k in stored if "_dativo_tmp_" in k]
    manifests = [k for k in stored if k.startswith("phi/_dativo/manifest-")]
    # the folder's baseline (empty before the first run) and the run's commit point: the dataset is what it lists
    assert len(manifests) == 2
    assert all(blob == b"" for k, blob in stored.items() if not k.endswith(".parquet") and k not in manifests)
    ((key, blob),) = [(k, blob) for k, blob in stored.items() if k.endswith(".parquet")]
    for sensitive in [*SSNS, "héllo wörld", "diagnosis-1", "line1\nline2"]:
        assert sensitive.encode() not in blob, sensitive
    with pytest.raises(OSError, match="no decryption found"):
        pq.read_table(pa.BufferReader(blob))

    client = AwsKms(kms.config(), tmp_path)
    try:
        table = read_encrypted(f"s3://{s3_bucket}/phi", client, connection=s3_server.connection())
    finally:
        client.close()
    assert table.num_rows == 5
    assert table.column("ssn").to_pylist() == SSNS
    for col in FIDELITY:
        assert table.schema.field(col.name).type == col.arrow, col.name
        assert norm(table.column(col.name).to_pylist()) == norm(list(col.expected)), col.name
    # The same values written without encryption would show the SSNs: the check above can fail.
    plain = pa.BufferOutputStream()
    pq.write_table(table, plain, compression="none")
    assert SSNS[0].encode() in plain.getvalue().to_pybytes()

    summary = json.loads((tmp_path / "summary.json").read_text())
    records = summary["target"]["file_records"]
    assert [r["path"] for r in records] == [f"s3://{s3_bucket}/{key}"] == summary["target"]["files"]
    assert records[0]["size"] == len(blob) and records[0]["rows"] == 5
    # Files and audit records name the keys by id (an alias may move later); the aliases stay as labels.
    key_id = {alias: kms.client().describe_key(KeyId=alias)["KeyMetadata"]["KeyId"] for alias in (footer, phi)}
    assert sorted(records[0]["key_ids"]) == sorted(key_id.values())
    assert sorted(records[0]["key_labels"]) == sorted([footer, phi])
    assert summary["target"]["audit"]["copy"] == f"s3://{s3_bucket}/audit/phi/{summary['run_id']}.audit.jsonl"

    # dativo decrypt with the job's KMS settings.
    result = dativo(
        "decrypt", f"s3://{s3_bucket}/phi", "--job", job, "--columns", "rowno,ssn", env={"PG_DSN": pg_db.dsn}
    )
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"rowno": i, "ssn": ssn} for i, ssn in enumerate(SSNS)
    ]

    # The audit copy on S3 verifies on its own, files included; replacing the stored file is caught.
    copy = f"s3://{s3_bucket}/audit/phi/{summary['run_id']}.audit.jsonl"
    result = dativo("audit", "verify", copy, "--job", job, env={"PG_DSN": pg_db.dsn})
    assert result.returncode == 0, result.stderr
    assert "1 files match" in result.stdout
    s3_server.put_object(s3_bucket, key, blob[:-10] + b"0123456789")
    result = dativo("audit", "verify", copy, "--job", job, env={"PG_DSN": pg_db.dsn})
    assert result.returncode == 1
    assert "record seq 3 (line 3, file)" in result.stderr and "replaced or modified" in result.stderr


def test_a_file_key_is_bound_to_its_file_name(tmp_path, s3_server, s3_bucket, kms):
    footer, phi = kms.create_key("footer"), kms.create_key("phi")
    target = aws_target(s3_server, s3_bucket, footer, {phi: ["ssn"]}, kms.config())
    job = write_job(tmp_path, csv_source(tmp_path), target)
    assert dativo("run", job, "--quiet").returncode == 0
    (key,) = [k for k in s3_server.list_keys(s3_bucket, "phi/") if k.endswith(".parquet")]
    s3_server.client().copy_object(
        Bucket=s3_bucket, Key="moved/other.parquet", CopySource={"Bucket": s3_bucket, "Key": key}
    )
    client = AwsKms(kms.config(), tmp_path)
    try:
        assert read_encrypted(f"s3://{s3_bucket}/{key}", client, connection=s3_server.connection()).num_rows == 5
        with pytest.raises(KmsError, match=r"bound to dativo:file='part-.*', not 'other.parquet'"):
            read_encrypted(f"s3://{s3_bucket}/moved/other.parquet", client, connection=s3_server.connection())
    finally:
        client.close()


@pytest.mark.parametrize("problem", ["wrong key", "kms unreachable", "key disabled"])
def test_kms_problems_fail_before_anything_is_published(tmp_path, s3_server, s3_bucket, kms, problem):
    footer, phi = kms.create_key("footer"), kms.create_key("phi")
    config = kms.config()
    if problem == "wrong key":
        phi = "alias/no-such-key"
    elif problem == "kms unreachable":
        config["endpoint_url"] = f"http://127.0.0.1:{closed_port()}"
    else:
        kms.disable(phi)
    target = {
        "connector": "encrypted-parquet",
        "path": f"s3://{s3_bucket}/phi",
        "connection": s3_server.connection(),
        "options": {
            "footer_key": footer,
            "column_keys": {phi: ["ssn"]},
            "kms": config,
            "audit": {"log": "audit.jsonl"},
        },
    }
    job = write_job(tmp_path, csv_source(tmp_path), target)
    result = dativo("run", job, "--quiet")
    expected = {
        "wrong key": ["alias/no-such-key", "NotFoundException"],
        "kms unreachable": ["cannot reach", "127.0.0.1"],
        "key disabled": [phi, "is Disabled"],
    }[problem]
    # An unreachable KMS is a transient error, which the engine may retry (each attempt is a run of its own).
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in expected:
        assert fragment in errors[0], (fragment, errors[0])
    assert s3_server.secret_access_key not in result.stderr
    assert [k for k in s3_server.list_keys(s3_bucket) if not k.endswith("/")] == []
    log = tmp_path / "audit.jsonl"
    if problem == "kms unreachable":
        # The chain key cannot be made without the KMS: nothing can be sealed, so nothing is appended.
        assert not log.exists() or log.read_bytes() == b""
        return
    events = [(r["event"], r.get("status")) for r in audit_records(log)]
    assert events == [("chain_key", None), ("run_start", None), ("failure", None), ("run_end", "failed")]
    verified = dativo("audit", "verify", log, "--job", job)
    assert verified.returncode == 0, verified.stderr


# ---------------------------------------------------------------------------------------------
# Local key file: permissions, footer-only access, wrong keys
# ---------------------------------------------------------------------------------------------


def test_local_key_file_with_loose_permissions_is_refused(tmp_path, key_file):
    path, _ = key_file
    path.chmod(0o644)
    job = write_job(tmp_path, csv_source(tmp_path), local_target())
    assert_one_line_error(dativo("run", job, "--quiet"), "permissions 0644", "chmod 600", code=2)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="0640"):
        path.chmod(0o640)
        LocalKeyFileKms({"type": "local", "key_file": str(path)}, tmp_path)


def test_footer_key_alone_does_not_open_protected_columns(tmp_path, key_file):
    _, keys = key_file
    job = write_job(tmp_path, csv_source(tmp_path), local_target())
    result = dativo("run", job, "--quiet")
    assert result.returncode == 0, result.stderr
    (file,) = (tmp_path / "out").glob("*.parquet")
    assert b"123-45-0001" not in file.read_bytes()

    everything = LocalKeyFileKms({"type": "local", "key_file": "keys.json"}, tmp_path)
    assert read_encrypted(str(tmp_path / "out"), everything).column("ssn").to_pylist() == [
        f"123-45-{i:04d}" for i in range(5)
    ]
    footer_only = write_key_file(tmp_path / "footer-only.json", {"footer_key": keys["footer_key"]})
    limited = LocalKeyFileKms({"type": "local", "key_file": str(footer_only)}, tmp_path)
    assert read_encrypted(str(tmp_path / "out"), limited, columns=["id", "amount"]).column("id").to_pylist() == [
        0,
        1,
        2,
        3,
        4,
    ]
    with pytest.raises(KmsError, match="no master key 'phi_key'"):
        read_encrypted(str(tmp_path / "out"), limited, columns=["ssn"])
    with pytest.raises(OSError, match="no decryption found"):
        pq.read_table(file)

    # Same key ids, other key bytes: refused, and the message carries no key material.
    wrong_keys = {"footer_key": os.urandom(32), "phi_key": os.urandom(32)}
    wrong = LocalKeyFileKms(
        {"type": "local", "key_file": str(write_key_file(tmp_path / "w.json", wrong_keys))}, tmp_path
    )
    with pytest.raises((KmsError, SourceError)) as info:
        read_encrypted(str(tmp_path / "out"), wrong)
    assert "cannot unwrap" in str(info.value)
    for key in [*keys.values(), *wrong_keys.values()]:
        for text in (base64.b64encode(key).decode(), key.hex()):
            assert text not in str(info.value)


def test_files_roll_and_each_file_has_its_own_data_keys(tmp_path, key_file):
    target = local_target(target_file_size_mb=0.01, row_group_size_mb=0.005, double_wrapping=False)
    job = write_job(tmp_path, csv_source(tmp_path, rows=3000), target, engine={"batch_size": 250})
    result = dativo("run", job, "--quiet", "--summary-json", tmp_path / "s.json")
    assert result.returncode == 0, result.stderr
    files = sorted((tmp_path / "out").glob("*.parquet"))
    assert len(files) >= 2
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["rows"] == 3000 == sum(r["rows"] for r in summary["target"]["file_records"])
    kms_client = LocalKeyFileKms({"type": "local", "key_file": "keys.json"}, tmp_path)
    assert read_encrypted(str(tmp_path / "out"), kms_client).num_rows == 3000
    # With single wrapping the wrapped data keys sit in each file's key metadata: no two files share one.
    wrapped = [set(_wrapped_keys(f.read_bytes())) for f in files]
    assert all(wrapped) and not set.intersection(*wrapped)
    assert dativo("audit", "verify", tmp_path / "audit.jsonl").returncode == 0


def _wrapped_keys(blob: bytes) -> list[str]:
    """The ``wrappedDEK`` values of the key material JSON pyarrow stores (in the clear) in a file."""
    out, marker = [], b'"wrappedDEK":"'
    start = blob.find(marker)
    while start != -1:
        end = blob.find(b'"', start + len(marker))
        out.append(blob[start + len(marker) : end].decode())
        start = blob.find(marker, end)
    return out


# ---------------------------------------------------------------------------------------------
# The audit trail catches every kind of tampering and names the record
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def audited(tmp_path, key_file):
    """Two successful runs into a local folder: a 9-record audit log (chain key + 2 runs) and two files."""
    job = write_job(tmp_path, csv_source(tmp_path), local_target())
    for _ in range(2):
        result = dativo("run", job, "--quiet")
        assert result.returncode == 0, result.stderr
    log = tmp_path / "audit.jsonl"
    assert [r["event"] for r in audit_records(log)] == ["chain_key"] + ["run_start", "file", "commit", "run_end"] * 2
    result = dativo("audit", "verify", log, "--job", job)
    assert result.returncode == 0, result.stderr
    assert "9 records, 2 runs, 2 files match" in result.stdout
    return log


def _flip_byte_in_hash_value(lines):
    line = lines[2]
    i = line.index('"sha256":"') + len('"sha256":"') + 5
    lines[2] = line[:i] + ("0" if line[i] != "0" else "1") + line[i + 1 :]


def _break_json(lines):
    lines[3] = lines[3].replace('{"', '["', 1)


def _delete(lines):
    del lines[2]


def _delete_last(lines):
    del lines[-1]


def _swap(lines):
    lines[3], lines[4] = lines[4], lines[3]


def _insert_copy(lines):
    lines.insert(2, lines[1])


TAMPERING = {
    "one byte changed": (_flip_byte_in_hash_value, "record seq 3 (line 3, file): its hash does not match"),
    "one byte breaks the JSON": (_break_json, "line 4: not valid JSON"),
    "line deleted": (_delete, "record seq 4 (line 3, commit): seq 3 missing before it"),
    "last line deleted": (_delete_last, "record seq 6 (line 6, run_start): run"),
    "lines swapped": (_swap, "record seq 5 (line 4, run_end): comes before seq 4 (records were reordered)"),
    "line inserted": (_insert_copy, "record seq 2 (line 3, run_start): comes after seq 2"),
}


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_audit_verify_names_the_tampered_record(audited, kind):
    tamper, expected = TAMPERING[kind]
    lines = audited.read_text().splitlines()
    tamper(lines)
    audited.write_text("\n".join(lines) + "\n")
    result = dativo("audit", "verify", audited, "--job", audited.parent / "phi.yaml")
    assert result.returncode == 1
    assert expected in result.stderr.replace("\n", ""), result.stderr


def test_audit_verify_catches_a_replaced_file(audited, tmp_path):
    first, second = (r["path"] for r in audit_records(audited) if r["event"] == "file")
    Path(second).write_bytes(Path(first).read_bytes())  # a valid encrypted file, but not the one recorded
    job = tmp_path / "phi.yaml"
    result = dativo("audit", "verify", audited, "--json", "--job", job)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["seq"] == 7 and "replaced or modified" in report["problem"]
    Path(second).unlink()
    result = dativo("audit", "verify", audited, "--job", job)
    assert result.returncode == 1 and "is missing" in result.stderr
    assert dativo("audit", "verify", audited, "--no-files", "--job", job).returncode == 0


# ---------------------------------------------------------------------------------------------
# No secret anywhere: logs, errors, summaries, audit records, stored objects
# ---------------------------------------------------------------------------------------------


def test_no_secret_appears_in_anything_a_run_prints_or_writes(tmp_path, pg_db, s3_server, s3_bucket, kms, key_file):
    _, keys = key_file
    pg_db.execute(
        "CREATE TABLE patients AS SELECT g AS id, '123-45-' || g AS ssn, 'dx' || g AS diagnosis "
        "FROM generate_series(1, 20) g"
    )
    footer, phi = kms.create_key("footer"), kms.create_key("phi")
    source = {"connector": "postgres", "connection": {"dsn": "${PG_DSN}"}, "table": "patients"}
    aws_target = {
        "connector": "encrypted-parquet",
        "path": f"s3://{s3_bucket}/phi",
        "connection": s3_server.connection(),
        "options": {
            "footer_key": footer,
            "column_keys": {phi: ["ssn"]},
            "kms": kms.config(),
            "audit": {"log": "audit.jsonl", "copy_to": f"s3://{s3_bucket}/audit"},
        },
    }
    local = local_target(path=f"s3://{s3_bucket}/local", audit={"log": "local.audit.jsonl"})
    local["connection"] = s3_server.connection()
    disabled = kms.create_key("disabled")
    kms.disable(disabled)
    broken = json.loads(json.dumps(aws_target))
    broken["options"]["column_keys"] = {disabled: ["ssn"]}
    jobs = {
        "aws": write_job(tmp_path, source, aws_target, "aws"),
        "local": write_job(tmp_path, source, local, "local"),
        "broken": write_job(tmp_path, source, broken, "broken"),
    }
    wrong_keys = write_key_file(tmp_path / "wrong.json", {"footer_key": os.urandom(32), "phi_key": os.urandom(32)})
    (tmp_path / "wrong-kms.yaml").write_text(yaml.safe_dump({"kms": {"type": "local", "key_file": str(wrong_keys)}}))
    env = {"PG_DSN": pg_db.dsn}
    outputs = []
    for name, job in jobs.items():
        result = dativo(
            "--log-level", "debug", "--log-format", "json", "run", job, "--debug",
            "--summary-json", tmp_path / f"{name}.summary.json", env=env,
        )  # fmt: skip
        assert result.returncode == (1 if name == "broken" else 0), result.stderr
        outputs += [result.stdout, result.stderr]
    for location, extra in (
        (f"s3://{s3_bucket}/phi", ["--job", jobs["aws"]]),
        (f"s3://{s3_bucket}/local", ["--job", jobs["local"]]),
        (f"s3://{s3_bucket}/local", ["--job", jobs["local"], "--kms-config", tmp_path / "wrong-kms.yaml"]),
    ):
        result = dativo("decrypt", location, *extra, env=env)
        outputs += [result.stdout, result.stderr]
    assert "cannot unwrap" in outputs[-1]  # the wrong-key decrypt failed, and said why
    for log, owner in (("audit.jsonl", "aws"), ("local.audit.jsonl", "local")):
        result = dativo("audit", "verify", tmp_path / log, "--job", jobs[owner], env=env)
        assert result.returncode == 0, result.stderr
        outputs += [result.stdout, result.stderr]

    written = [
        p.read_bytes()
        for p in tmp_path.rglob("*")
        if p.is_file() and p.suffix != ".yaml" and p.name not in ("keys.json", "wrong.json")
    ]
    assert any(b"run_start" in blob for blob in written)  # the audit logs are among them
    stored = list(objects(s3_server, s3_bucket).values())
    assert len(stored) >= 4
    haystack = [o.encode() for o in outputs] + written + stored
    user, password = pg_db.server.user, pg_db.server.password
    secrets = [password, s3_server.secret_access_key]
    for key in [*keys.values(), *json.loads(wrong_keys.read_text()).values()]:
        raw = key if isinstance(key, bytes) else base64.b64decode(key)
        secrets += [base64.b64encode(raw).decode(), raw.hex()]
    # The audit logs' chain keys (unwrapped here with the KMS; stored only wrapped).
    for log, client in (
        ("audit.jsonl", AwsKms(kms.config(), tmp_path)),
        ("local.audit.jsonl", LocalKeyFileKms({"type": "local", "key_file": "keys.json"}, tmp_path)),
    ):
        chain = open_chain_key(audit_records(tmp_path / log)[0], client)
        client.close()
        assert len(chain) == 32
        secrets += [base64.b64encode(chain).decode(), chain.hex()]
    for secret in secrets:
        for blob in haystack:
            assert secret.encode() not in blob, secret[:4]
    for key in keys.values():
        for blob in haystack:
            assert key not in blob
    assert any(user.encode() in blob for blob in haystack) or True  # the user name is not a secret


def test_check_probes_storage_and_every_master_key(tmp_path, key_file):
    job = write_job(tmp_path, csv_source(tmp_path), local_target())
    result = dativo("check", job)
    assert result.returncode == 0, result.stderr
    assert "ok target: reachable" in result.stdout
    missing = local_target(column_keys={"no_such_key": ["ssn"]})
    job = write_job(tmp_path, csv_source(tmp_path), missing, name="missing")
    assert_one_line_error(dativo("check", job), "no master key 'no_such_key'", code=1)
    assert not list((tmp_path / "out").glob("*.parquet"))


def test_audit_only_on_object_storage_chains_one_run(tmp_path, key_file, s3_server, s3_bucket):
    target = local_target(audit={"log": None, "copy_to": f"s3://{s3_bucket}/audit"})
    target["connection"] = s3_server.connection()
    job = write_job(tmp_path, csv_source(tmp_path), target)
    result = dativo("run", job, "--quiet", "--summary-json", tmp_path / "s.json")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["target"]["audit"]["log"] is None
    (key,) = s3_server.list_keys(s3_bucket, "audit/")
    lines = objects(s3_server, s3_bucket, "audit/")[key].decode().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["event"] for r in records] == ["chain_key", "run_start", "file", "commit", "run_end"]
    assert records[0]["prev"] == "0" * 64 and records[-1]["hash"] == summary["target"]["audit"]["head"]
    assert dativo("audit", "verify", f"s3://{s3_bucket}/{key}", "--job", job).returncode == 0


class XorKms(KmsClient):
    """A user's KMS plugin (toy wrapping, for the loading test only): named by import path in ``kms.type``."""

    type_name = "xor"

    def wrap_key(self, key, master_key_id, context):
        return bytes(b ^ 0x5A for b in key).hex()

    def unwrap_key(self, wrapped, master_key_id, context):
        return bytes(b ^ 0x5A for b in bytes.fromhex(wrapped))


def test_kms_clients_load_by_entry_point_or_import_path(tmp_path, key_file):
    assert isinstance(load_kms({"type": "local", "key_file": "keys.json"}, tmp_path), LocalKeyFileKms)
    custom = load_kms({"type": "test_encrypted_parquet:XorKms"}, tmp_path)
    assert isinstance(custom, XorKms)
    custom.check(["any"])  # the default check round-trips a random key
    with pytest.raises(
        PluginError, match=r"KMS client 'vault': no installed KMS client has that name .*aws-kms, local"
    ):
        load_kms({"type": "vault"}, tmp_path)
    with pytest.raises(PluginError, match=r"KMS client 'json:dumps' is a function, not a class"):
        load_kms({"type": "json:dumps"}, tmp_path)
    with pytest.raises(PluginError, match=r"not a subclass of dativo\.encryption\.kms\.KmsClient"):
        load_kms({"type": "pathlib:Path"}, tmp_path)


def test_a_damaged_log_tail_stops_the_next_run_before_it_writes(audited, tmp_path):
    audited.write_bytes(audited.read_bytes()[:-20])  # e.g. a crash in the middle of writing a record
    before = sorted((tmp_path / "out").glob("*.parquet"))
    result = dativo("run", tmp_path / "phi.yaml", "--quiet")
    assert_one_line_error(result, f"audit log {audited}: the last record is damaged", code=1)
    assert sorted((tmp_path / "out").glob("*.parquet")) == before
