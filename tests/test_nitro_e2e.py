"""The Nitro path end to end through `clave up`: attestation, KMS with Recipient, the key policy's PCR pin.

The local stack runs the production sidecar code against the software NSM and the KMS emulator; these
tests change what production would see changed (the enclave code, the document) and check the refusals.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import cbor2
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.accounts import new_account
from tests.conftest import ROOT
from tests.stack import ClaveProcess, free_port
from tests.vectors import vector

pytestmark = pytest.mark.slow


def _meta(datadir: Path, name: str) -> bytes:
    with sqlite3.connect(datadir / "keystore.sqlite") as db:
        return bytes(db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()[0])


def _modified_tree(tmp: Path) -> Path:
    """A copy of the code whose enclave differs by one comment: a new build with a new PCR0."""
    src = tmp / "src"
    shutil.copytree(ROOT / "src" / "clave", src / "clave", ignore=shutil.ignore_patterns("__pycache__"))
    with open(src / "clave" / "enclave" / "service.py", "a") as handle:
        handle.write("\n# a rebuilt enclave image\n")
    return src


def test_changed_pcr0_is_refused_by_key_policy(tmp_path: Path) -> None:
    datadir = tmp_path / "data"
    clave = ClaveProcess(datadir)
    clave.start()
    address = new_account(clave)
    clave.stop()
    key_id = _meta(datadir, "kms_key_id").decode()

    src = _modified_tree(tmp_path)
    changed = ClaveProcess(datadir, env={"PYTHONPATH": str(src)}, cwd=src)
    changed.start(until_waiting=True)
    try:
        assert "AccessDenied" in changed.waiting_line, changed.waiting_line
        assert "PCR0" in changed.waiting_line or "ImageSha384" in changed.waiting_line, changed.waiting_line
        print(changed.waiting_line)
        try:
            urllib.request.urlopen(changed.url + "/healthz", timeout=5)
            raise AssertionError("healthz must be 503 while the enclave is refused")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            body = json.loads(exc.read())
        assert body["keys_unsealed"] is False and "AccessDenied" in body["last_error"]
    finally:
        changed.stop()
    assert _meta(datadir, "kms_key_id").decode() == key_id  # nothing re-provisioned behind the pin

    clave.start()  # the original build still opens everything
    try:
        assert clave.rpc("account_list") == [address]
    finally:
        clave.stop()

    # The operator's way forward for a rebuilt enclave (in AWS: put-key-policy with the new PCR0).
    accepted = ClaveProcess(datadir, env={"PYTHONPATH": str(src)}, cwd=src, extra=["--accept-new-enclave"])
    accepted.start()
    try:
        assert accepted.rpc("account_list") == [address]
    finally:
        accepted.stop()


def test_attest_cli(clave: ClaveProcess, tmp_path: Path) -> None:
    out = tmp_path / "doc.cbor"
    result = clave.cli("attest", "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verified"] is True
    # The enclave attests to its master key's commitment (user_data), the one the store pins.
    assert re.fullmatch(r"[0-9a-f]{64}", report["master_commitment"])
    assert report["master_commitment_pinned"] == report["master_commitment"]
    assert report["master_commitment_matches"] is True
    pcr0 = report["document"]["pcrs"]["0"] if "0" in report["document"]["pcrs"] else report["document"]["pcrs"][0]
    assert re.fullmatch(r"[0-9a-f]{96}", pcr0)
    root = clave.datadir / "nsm" / "root.pem"
    ok = subprocess.run([sys.executable, "-m", "clave.cli", "attest", "verify", str(out), "--root", str(root)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    pinned = subprocess.run([sys.executable, "-m", "clave.cli", "attest", "verify", str(out), "--root", str(root),
                             "--pcr", f"0={'00' * 48}"], capture_output=True, text=True)
    assert pinned.returncode == 1 and "PCR0" in pinned.stdout
    later = subprocess.run([sys.executable, "-m", "clave.cli", "attest", "verify", str(out), "--root", str(root),
                            "--at", str(int(time.time() * 1000) + 4 * 3600 * 1000)], capture_output=True, text=True)
    assert later.returncode == 1 and json.loads(later.stdout)["verified"] is False
    policy = subprocess.run([sys.executable, "-m", "clave.cli", "kms-policy", "--role-arn",
                             "arn:aws:iam::123456789012:role/clave", "--pcr0", pcr0], capture_output=True, text=True)
    assert policy.returncode == 0, policy.stderr
    assert pcr0 in policy.stdout and "kms:RecipientAttestation:PCR0" in policy.stdout


def _kms(endpoint: str, kms_dir: Path):  # type: ignore[no-untyped-def]
    """A client with the emulator's own credentials (it serves nothing else: dev/kmsemu/auth.py)."""
    creds = json.loads((kms_dir / "credentials.json").read_text())
    return boto3.client("kms", region_name="us-east-1", endpoint_url=endpoint, config=Config(retries={"max_attempts": 1}),
                        aws_access_key_id=creds["aws_access_key_id"], aws_secret_access_key=creds["aws_secret_access_key"],
                        verify=str(kms_dir / "ca.pem"))  # it serves TLS only, under its dev CA


def _tampered(document: bytes, edit) -> bytes:  # type: ignore[no-untyped-def]
    protected, unprotected, payload, signature = cbor2.loads(document)
    fields = cbor2.loads(payload)
    edit(fields)
    return cbor2.dumps([protected, unprotected, cbor2.dumps(fields), signature])


def test_emulator_refuses_replayed_swapped_and_edited_documents(clave: ClaveProcess, tmp_path: Path) -> None:
    """A short-lived emulator on the same dev root and key store as `clave up`'s, fed the enclave's real
    documents: fresh and genuine works; replayed (too old), a swapped RSA key and edited PCRs do not."""
    out = tmp_path / "doc.cbor"
    assert clave.cli("attest", "--out", str(out)).returncode == 0
    document = out.read_bytes()
    port = free_port()
    kms_dir = tmp_path / "kms"
    shutil.copytree(clave.datadir / "kms", kms_dir)
    emulator = subprocess.Popen(
        [sys.executable, "-m", "clave.dev.kmsemu", "--datadir", str(kms_dir), "--port", str(port),
         "--root", str(clave.datadir / "nsm" / "root.pem"), "--max-age-ms", "3000"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert "listening" in (emulator.stdout.readline() if emulator.stdout else "")
        kms = _kms(f"https://127.0.0.1:{port}", kms_dir)
        key_id = _meta(clave.datadir, "kms_key_id").decode()
        blob = _meta(clave.datadir, "kms_data_key")
        recipient = {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256"}
        genuine = kms.decrypt(KeyId=key_id, CiphertextBlob=blob, Recipient={**recipient, "AttestationDocument": document})
        assert "CiphertextForRecipient" in genuine and "Plaintext" not in genuine

        def refused(doc: bytes) -> str:
            with pytest.raises(ClientError) as err:
                kms.decrypt(KeyId=key_id, CiphertextBlob=blob, Recipient={**recipient, "AttestationDocument": doc})
            return str(err.value.response["Error"]["Code"])

        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        assert refused(_tampered(document, lambda f: f.__setitem__("public_key", other))) == "ValidationException"
        assert refused(_tampered(document, lambda f: f["pcrs"].__setitem__(0, bytes(48)))) == "ValidationException"
        assert refused(_tampered(document, lambda f: f["pcrs"].__setitem__(3, b"\x01" * 48))) == "ValidationException"
        time.sleep(3.2)
        assert refused(document) == "ValidationException"  # the same genuine document, now too old: a replay
    finally:
        emulator.terminate()
        emulator.wait(10)


def test_attest_verify_cli_on_the_real_aws_document() -> None:
    nitro = vector("nitro")
    base = [sys.executable, "-m", "clave.cli", "attest", "verify", "--root", str(nitro / "aws_nitro_root_g1.pem"),
            "--aws-root", "--at", "1668034320696"]
    good = subprocess.run([*base, str(nitro / "aws_nitro_document.cbor")], capture_output=True, text=True)
    assert good.returncode == 0 and json.loads(good.stdout)["verified"] is True, good.stdout + good.stderr
    bad = subprocess.run([*base, str(nitro / "aws_nitro_document_bad_sig.cbor")], capture_output=True, text=True)
    assert bad.returncode == 1 and "signature" in json.loads(bad.stdout)["error"]
