"""KMS clients are plugins: found through the `dativo.kms` entry points and the same registry as readers and writers.

A third-party client is installed the way pip installs one (a distribution's
``*.dist-info/entry_points.txt`` on ``sys.path``), then used by name from a job's
``kms: {type: ...}``: an encrypted-parquet run wraps every data key with it, and the
files read back through it.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

from dativo.encryption.kms import KmsClient, KmsError, load_kms
from dativo.encryption.kms.aws import AwsKms
from dativo.encryption.kms.local import LocalKeyFileKms
from dativo.errors import ConfigError, PluginError
from dativo.targets.encrypted_parquet import read_encrypted

from support.cli import assert_one_line_error, dativo
from support.fake_dist import fake_distribution

#: A third party's KMS client: wraps with a per-master-key XOR pad and binds the context (refusing another),
#: like aws-kms: what the caller expects must match what the key was wrapped under.
CLIENT = """
import json
from dativo.encryption.kms import KmsClient, KmsError


class PadKms(KmsClient):
    type_name = "pad"

    def _pad(self, master_key_id):
        pads = self.config.get("pads", {})
        if master_key_id not in pads:
            raise KmsError(f"KMS pad: master key '{master_key_id}' is unknown")
        return bytes.fromhex(pads[master_key_id])

    def wrap_key(self, key, master_key_id, context):
        pad = self._pad(master_key_id)
        wrapped = bytes(b ^ pad[i % len(pad)] for i, b in enumerate(key)).hex()
        return json.dumps({"k": wrapped, "c": dict(context)}, sort_keys=True)

    def unwrap_key(self, wrapped, master_key_id, context):
        data = json.loads(wrapped)
        if context is not None and any(data["c"].get(name) != value for name, value in context.items()):
            raise KmsError(f"KMS pad: key of master key '{master_key_id}' is bound to another context")
        pad = self._pad(master_key_id)
        return bytes(b ^ pad[i % len(pad)] for i, b in enumerate(bytes.fromhex(data["k"])))


class NotAClient:
    pass
"""

PADS = {"footer_key": "5a" * 16, "phi_key": "a5c3" * 8}


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A site dir on sys.path with the distribution 'pad-kms' registering KMS clients through entry points."""
    root = fake_distribution(
        tmp_path / "site",
        "pad-kms",
        "0.1",
        {"dativo.kms": {"pad": "pad_kms:PadKms", "broken": "broken_kms:Client", "not-a-client": "pad_kms:NotAClient"}},
        {
            "pad_kms.py": CLIENT,
            "broken_kms.py": "raise ImportError('needs a vendor SDK that is not installed')\n",
        },
    )
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in ("pad_kms", "broken_kms"):
        sys.modules.pop(name, None)


def test_the_builtin_clients_are_registered_like_any_other():
    registered = {entry.name: entry.value for entry in entry_points(group="dativo.kms")}
    assert registered["local"] == "dativo.encryption.kms.local:LocalKeyFileKms"
    assert registered["aws-kms"] == "dativo.encryption.kms.aws:AwsKms"
    client = load_kms({"type": "aws-kms", "region": "eu-west-1"}, Path("."))
    assert isinstance(client, AwsKms)
    client.close()


def test_a_third_party_client_is_found_by_its_entry_point_name(site, tmp_path):
    client = load_kms({"type": "pad", "pads": PADS}, tmp_path)
    assert type(client).__module__ == "pad_kms" and isinstance(client, KmsClient)
    client.check(["footer_key", "phi_key"])  # wraps and unwraps a throw-away key under each master key
    wrapped = client.wrap_key(b"k" * 16, "phi_key", {"dativo:file": "a.parquet"})
    with pytest.raises(KmsError, match="bound to another context"):
        client.unwrap_key(wrapped, "phi_key", {"dativo:file": "b.parquet"})


def test_unknown_broken_and_wrong_clients_are_one_plugin_error_each(site, tmp_path, key_file):
    with pytest.raises(PluginError) as unknown:
        load_kms({"type": "vault"}, tmp_path)
    message = str(unknown.value)
    assert message.startswith("KMS client 'vault': no installed KMS client has that name")
    assert "installed: aws-kms, broken, local, not-a-client, pad" in message
    assert "'plugins/my_kms_client.py:Class'" in message
    with pytest.raises(PluginError, match=r"did you mean 'local'\?"):
        load_kms({"type": "locl"}, tmp_path)
    with pytest.raises(PluginError, match=r"KMS client 'broken' \(broken_kms:Client\) failed to import: ImportError"):
        load_kms({"type": "broken"}, tmp_path)
    with pytest.raises(PluginError, match=r"not a subclass of dativo\.encryption\.kms\.KmsClient"):
        load_kms({"type": "not-a-client"}, tmp_path)
    with pytest.raises(ConfigError, match=r"'kms\.type' is required"):
        load_kms({"key_file": "keys.json"}, tmp_path)
    # Import paths and files work as for readers and writers.
    local = {"type": "dativo.encryption.kms.local:LocalKeyFileKms", "key_file": "keys.json"}
    assert isinstance(load_kms(local, tmp_path), LocalKeyFileKms)
    (tmp_path / "my_kms.py").write_text(CLIENT)
    from_file = load_kms({"type": "my_kms.py:PadKms", "pads": PADS}, tmp_path)
    assert type(from_file).__name__ == "PadKms"


def test_an_encrypted_run_wraps_its_keys_with_a_third_party_client(site, tmp_path):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "patients.csv").write_text("id,ssn\n1,123-45-0001\n2,123-45-0002\n")
    kms = {"type": "pad", "pads": PADS}
    job = job_dir / "phi.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "name": "phi",
                "source": {"connector": "files", "path": "patients.csv", "format": "csv"},
                "target": {
                    "connector": "encrypted-parquet",
                    "path": "out",
                    "options": {"footer_key": "footer_key", "column_keys": {"phi_key": ["ssn"]}, "kms": kms},
                },
            }
        )
    )
    # A new process, as a user runs it: the distribution is found on PYTHONPATH like an installed one.
    result = dativo("run", job, "--quiet", env={"PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr
    files = sorted((job_dir / "out").glob("*.parquet"))
    assert files
    table = read_encrypted(str(job_dir / "out"), load_kms(kms, job_dir))
    assert sorted(table.column("ssn").to_pylist()) == ["123-45-0001", "123-45-0002"]
    # Without the client's pads, the data keys cannot be unwrapped: the files are encrypted with it.
    with pytest.raises(KmsError, match=r"master key 'footer_key' is unknown"):
        read_encrypted(str(job_dir / "out"), load_kms({"type": "pad", "pads": {}}, job_dir))
    missing = dativo("run", job, "--quiet")  # the same job where pad-kms is not installed
    assert_one_line_error(missing, "KMS client 'pad': no installed KMS client has that name")
