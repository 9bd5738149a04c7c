"""The KMS emulator as a real HTTP server driven by boto3, and the sidecar's KMS client against it.

What makes these meaningful: botocore (not code written here) builds the requests and parses the
answers and error codes; `enclave.nitro.cms` opens CiphertextForRecipient with the RSA key whose SPKI
went into the attestation document; the BER shape is compared with real KMS blobs from
../shared/vectors/nitro; documents come from the software NSM and are checked by the production verifier.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import boto3
import botocore
import botocore.exceptions
import cbor2
import pytest
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from clave.core.errors import InfraError
from clave.dev.kmsemu.app import make_app
from clave.dev.kmsemu.auth import credentials_path, load_credentials
from clave.dev.kmsemu.cms_build import build_enveloped_data
from clave.dev.soft_nsm import SoftwareNsm
from clave.enclave.nitro import nsm as nsm_api
from clave.enclave.nitro.cms import open_enveloped_data, parse_enveloped_data
from clave.sidecar.trust.attestation import load_root
from clave.sidecar.trust.kms import KmsRefused, _map_error, call_kms, key_policy, make_kms_client
from tests.vectors import vector

REPO = Path(__file__).resolve().parents[1]
CMS_VECTORS = "nitro/kms_cms_envelopes.json"
ROLE = "arn:aws:iam::111122223333:role/clave-enclave"
OTHER_PCR = "ab" * 48


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def spki(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def nsm_state(tmp_path: Path) -> Path:
    return tmp_path / "nsm"


@pytest.fixture
def nsm(nsm_state: Path) -> SoftwareNsm:
    return SoftwareNsm(nsm_state)


@pytest.fixture
def doc(nsm: SoftwareNsm, rsa_key: rsa.RSAPrivateKey) -> bytes:
    return nsm_api.attestation(nsm, public_key=spki(rsa_key))


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def endpoint(tmp_path: Path, nsm: SoftwareNsm) -> AsyncIterator[str]:
    root = load_root(nsm.root_pem)
    runner, url = await _serve(make_app(tmp_path / "kms", root))
    yield url
    await runner.cleanup()


@pytest.fixture
def kms(endpoint: str, tmp_path: Path) -> Any:
    return make_kms_client("us-east-1", endpoint, credentials_path(tmp_path / "kms"))


async def generate_for(client: Any, key_id: str, doc: bytes) -> tuple[bytes, bytes]:
    """GenerateDataKey for an attested enclave, as the enclave asks for it: (wrapped key, CMS to the enclave)."""
    answer = await call_kms(client, "GenerateDataKey", KeyId=key_id, KeySpec="AES_256", Recipient=recipient(doc))
    assert "Plaintext" not in answer
    return answer["CiphertextBlob"], answer["CiphertextForRecipient"]


async def decrypt_for(client: Any, key_id: str, wrapped: bytes, doc: bytes) -> bytes:
    answer = await call_kms(client, "Decrypt", KeyId=key_id, CiphertextBlob=wrapped, Recipient=recipient(doc))
    assert "Plaintext" not in answer
    return bytes(answer["CiphertextForRecipient"])


async def call(client: Any, op: str, **params: Any) -> dict[str, Any]:
    return await asyncio.to_thread(getattr(client, op), **params)


async def client_error(client: Any, op: str, **params: Any) -> botocore.exceptions.ClientError:
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        await call(client, op, **params)
    return exc.value


def recipient(document: bytes) -> dict[str, Any]:
    return {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": document}


def code(err: botocore.exceptions.ClientError) -> str:
    return str(err.response["Error"]["Code"])


async def enclave_key(client: Any, nsm: SoftwareNsm, pcr0: str | None = None) -> str:
    policy = key_policy(ROLE, {0: pcr0 or nsm.pcrs[0].hex()}, None)
    created = await call(client, "create_key", Policy=json.dumps(policy), Description="test")
    return str(created["KeyMetadata"]["KeyId"])


# --- Recipient: the enclave flow ----------------------------------------------------------------------


async def test_generate_data_key_and_decrypt_reach_only_the_enclave_key(
    kms: Any, nsm: SoftwareNsm, doc: bytes, rsa_key: rsa.RSAPrivateKey
) -> None:
    key_id = await enclave_key(kms, nsm)
    wrapped, for_recipient = await generate_for(kms, key_id, doc)
    data_key = open_enveloped_data(for_recipient, rsa_key, expected_size=32)
    again = await decrypt_for(kms, key_id, wrapped, doc)
    assert open_enveloped_data(again, rsa_key) == data_key
    assert again != for_recipient  # fresh CEK and IV each time

    raw = await call(kms, "decrypt", KeyId=key_id, CiphertextBlob=wrapped, Recipient=recipient(doc))
    assert "Plaintext" not in raw and raw["KeyId"].endswith(key_id)
    raw = await call(kms, "generate_data_key", KeyId=key_id, NumberOfBytes=64, Recipient=recipient(doc))
    assert "Plaintext" not in raw
    assert len(open_enveloped_data(raw["CiphertextForRecipient"], rsa_key)) == 64


async def test_another_rsa_key_cannot_open_the_answer(kms: Any, nsm: SoftwareNsm, doc: bytes) -> None:
    key_id = await enclave_key(kms, nsm)
    _, for_recipient = await generate_for(kms, key_id, doc)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(Exception, match="could not be decrypted"):
        open_enveloped_data(for_recipient, stranger)


async def test_policy_pinning_another_pcr0_is_access_denied(kms: Any, nsm: SoftwareNsm, doc: bytes) -> None:
    key_id = await enclave_key(kms, nsm, pcr0=OTHER_PCR)
    err = await client_error(
        kms, "generate_data_key", KeyId=key_id, KeySpec="AES_256", Recipient=recipient(doc)
    )
    assert code(err) == "AccessDeniedException"
    message = err.response["Error"]["Message"]
    assert (
        "kms:RecipientAttestation:PCR0" in message and OTHER_PCR in message and nsm.pcrs[0].hex() in message
    )

    with pytest.raises(KmsRefused) as refused:
        await generate_for(kms, key_id, doc)
    assert refused.value.kms_code == "AccessDeniedException"
    assert refused.value.message.startswith("KMS GenerateDataKey refused: AccessDeniedException")
    assert "PCR0" in refused.value.message and "measurements" in refused.value.remedy


async def test_pcr_values_compare_case_insensitively_and_image_sha384_is_pcr0(
    kms: Any, nsm: SoftwareNsm, doc: bytes
) -> None:
    policy = key_policy(ROLE, {0: nsm.pcrs[0].hex().upper(), 4: nsm.pcrs[4].hex()}, nsm.pcrs[0].hex())
    key_id = (await call(kms, "create_key", Policy=json.dumps(policy)))["KeyMetadata"]["KeyId"]
    await generate_for(kms, key_id, doc)

    pinned_pcr4_elsewhere = key_policy(ROLE, {4: OTHER_PCR}, nsm.pcrs[0].hex())
    key_id = (await call(kms, "create_key", Policy=json.dumps(pinned_pcr4_elsewhere)))["KeyMetadata"]["KeyId"]
    err = await client_error(
        kms, "generate_data_key", KeyId=key_id, KeySpec="AES_256", Recipient=recipient(doc)
    )
    assert code(err) == "AccessDeniedException" and "PCR4" in err.response["Error"]["Message"]


async def test_attestation_conditions_never_match_without_recipient(kms: Any, nsm: SoftwareNsm) -> None:
    key_id = await enclave_key(kms, nsm)
    err = await client_error(kms, "generate_data_key", KeyId=key_id, KeySpec="AES_256")
    assert code(err) == "AccessDeniedException"
    assert "no Recipient attestation document" in err.response["Error"]["Message"]


async def test_a_replayed_stale_document_is_refused(
    kms: Any, nsm_state: Path, nsm: SoftwareNsm, rsa_key: rsa.RSAPrivateKey
) -> None:
    key_id = await enclave_key(kms, nsm)
    old = SoftwareNsm(nsm_state, clock=lambda: time.time() - 600)  # same PKI, document 10 minutes old
    stale = nsm_api.attestation(old, public_key=spki(rsa_key))
    err = await client_error(
        kms, "generate_data_key", KeyId=key_id, KeySpec="AES_256", Recipient=recipient(stale)
    )
    assert code(err) == "ValidationException" and "old" in err.response["Error"]["Message"]


def _reencode(document: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    protected, unprotected, payload, signature = cbor2.loads(document)
    fields = cbor2.loads(payload)
    edit(fields)
    return cbor2.dumps([protected, unprotected, cbor2.dumps(fields), signature])


async def test_a_swapped_public_key_breaks_the_signature(kms: Any, nsm: SoftwareNsm, doc: bytes) -> None:
    key_id = await enclave_key(kms, nsm)
    attacker = spki(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    forged = _reencode(doc, lambda f: f.__setitem__("public_key", attacker))
    err = await client_error(
        kms, "generate_data_key", KeyId=key_id, KeySpec="AES_256", Recipient=recipient(forged)
    )
    assert code(err) == "ValidationException" and "signature" in err.response["Error"]["Message"]


async def test_an_edited_pcr_is_refused(kms: Any, nsm: SoftwareNsm, doc: bytes) -> None:
    # The key pins the edited value, so only the signature check stands between the forgery and the key.
    key_id = await enclave_key(kms, nsm, pcr0=OTHER_PCR)
    forged = _reencode(doc, lambda f: f["pcrs"].__setitem__(0, bytes.fromhex(OTHER_PCR)))
    err = await client_error(
        kms, "generate_data_key", KeyId=key_id, KeySpec="AES_256", Recipient=recipient(forged)
    )
    assert code(err) == "ValidationException" and "signature" in err.response["Error"]["Message"]


async def test_documents_from_another_root_or_without_rsa_key_are_refused(
    kms: Any, nsm: SoftwareNsm, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    key_id = await enclave_key(kms, nsm)
    foreign = nsm_api.attestation(SoftwareNsm(tmp_path / "elsewhere"), public_key=spki(rsa_key))
    no_key = nsm_api.attestation(nsm)
    for bad, words in ((foreign, "pinned root"), (no_key, "no public_key"), (b"\x84garbage", "attestation")):
        err = await client_error(
            kms, "decrypt", KeyId=key_id, CiphertextBlob=b"x" * 40, Recipient=recipient(bad)
        )
        assert code(err) == "ValidationException" and words in err.response["Error"]["Message"]


async def test_generate_random_with_recipient_uses_chunked_content(
    kms: Any, doc: bytes, rsa_key: rsa.RSAPrivateKey
) -> None:
    raw = await call(kms, "generate_random", NumberOfBytes=1024, Recipient=recipient(doc))
    assert "Plaintext" not in raw
    blob = raw["CiphertextForRecipient"]
    assert blob.count(bytes.fromhex("04820400")) == 1  # 1040 bytes of content in two OCTET STRING chunks
    assert len(parse_enveloped_data(blob).ciphertext) == 1040
    assert len(open_enveloped_data(blob, rsa_key)) == 1024
    plain = await call(kms, "generate_random", NumberOfBytes=16)
    assert len(plain["Plaintext"]) == 16


# --- the BER shape against real KMS blobs ------------------------------------------------------------


def _mask(blob: bytes, parts: dict[str, bytes]) -> bytes:
    rid_at = blob.index(bytes.fromhex("8020")) + 2
    out = blob[:rid_at] + b"R" * 32 + blob[rid_at + 32 :]
    for name, value in parts.items():
        out = out.replace(value, name[0].upper().encode() * len(value))
    return out


@pytest.mark.parametrize(("case", "constructed"), [(0, True), (1, False)])
def test_envelope_is_byte_shaped_like_real_kms(
    rsa_key: rsa.RSAPrivateKey, case: int, constructed: bool
) -> None:
    real_case = json.loads(vector(CMS_VECTORS).read_text())["cases"][case]
    real = bytes.fromhex(real_case["input_ber"])
    real_parts = {k: bytes.fromhex(real_case[k]) for k in ("encrypted_key", "iv", "ciphertext")}
    plaintext_len = len(real_parts["ciphertext"]) - 1  # any length that pads to the same size
    mine = build_enveloped_data(os.urandom(plaintext_len), rsa_key.public_key(), constructed=constructed)
    p = parse_enveloped_data(mine)
    mine_parts = {"encrypted_key": p.encrypted_key, "iv": p.iv, "ciphertext": p.ciphertext}
    assert _mask(mine, mine_parts) == _mask(real, real_parts)


async def test_encryption_context_selects_the_primitive_content_form(
    kms: Any, doc: bytes, rsa_key: rsa.RSAPrivateKey, nsm: SoftwareNsm
) -> None:
    key_id = await enclave_key(kms, nsm)
    ctx = {"purpose": "test"}
    resp = await call(
        kms,
        "generate_data_key",
        KeyId=key_id,
        KeySpec="AES_256",
        EncryptionContext=ctx,
        Recipient=recipient(doc),
    )
    blob = resp["CiphertextForRecipient"]
    assert (
        bytes.fromhex("a080") not in blob[-60:] and bytes.fromhex("8030") in blob
    )  # 48 bytes, primitive [0]
    data_key = open_enveloped_data(blob, rsa_key)
    again = await call(
        kms, "decrypt", CiphertextBlob=resp["CiphertextBlob"], EncryptionContext=ctx, Recipient=recipient(doc)
    )
    assert open_enveloped_data(again["CiphertextForRecipient"], rsa_key) == data_key


# --- plain KMS operations -----------------------------------------------------------------------------


async def test_encrypt_and_decrypt_without_recipient(kms: Any) -> None:
    key = (await call(kms, "create_key", Description="plain"))["KeyMetadata"]
    enc = await call(kms, "encrypt", KeyId=key["KeyId"], Plaintext=b"secret", EncryptionContext={"a": "b"})
    assert enc["KeyId"] == key["Arn"] and b"secret" not in enc["CiphertextBlob"]
    dec = await call(kms, "decrypt", CiphertextBlob=enc["CiphertextBlob"], EncryptionContext={"a": "b"})
    assert dec["Plaintext"] == b"secret" and dec["KeyId"] == key["Arn"]
    dec = await call(
        kms, "decrypt", KeyId=key["Arn"], CiphertextBlob=enc["CiphertextBlob"], EncryptionContext={"a": "b"}
    )
    assert dec["Plaintext"] == b"secret"
    gdk = await call(kms, "generate_data_key", KeyId=key["KeyId"], KeySpec="AES_128")
    assert len(gdk["Plaintext"]) == 16
    dec = await call(kms, "decrypt", CiphertextBlob=gdk["CiphertextBlob"])
    assert dec["Plaintext"] == gdk["Plaintext"]

    assert code(await client_error(kms, "decrypt", CiphertextBlob=enc["CiphertextBlob"])) == (
        "InvalidCiphertextException"  # the encryption context is bound
    )
    tampered = bytearray(enc["CiphertextBlob"])
    tampered[-1] ^= 1
    err = await client_error(kms, "decrypt", CiphertextBlob=bytes(tampered), EncryptionContext={"a": "b"})
    assert code(err) == "InvalidCiphertextException"
    other = (await call(kms, "create_key"))["KeyMetadata"]["KeyId"]
    err = await client_error(
        kms, "decrypt", KeyId=other, CiphertextBlob=enc["CiphertextBlob"], EncryptionContext={"a": "b"}
    )
    assert code(err) == "IncorrectKeyException"


async def test_unknown_keys_aliases_and_bad_parameters(kms: Any) -> None:
    assert code(
        await client_error(kms, "encrypt", KeyId="1234abcd-12ab-34cd-56ef-1234567890ab", Plaintext=b"x")
    ) == ("NotFoundException")
    key_id = (await call(kms, "create_key"))["KeyMetadata"]["KeyId"]
    await call(kms, "create_alias", AliasName="alias/clave", TargetKeyId=key_id)
    enc = await call(kms, "encrypt", KeyId="alias/clave", Plaintext=b"x")
    assert enc["KeyId"].endswith(key_id)
    assert code(await client_error(kms, "create_alias", AliasName="alias/clave", TargetKeyId=key_id)) == (
        "AlreadyExistsException"
    )
    err = await client_error(kms, "generate_data_key", KeyId=key_id, KeySpec="AES_256", NumberOfBytes=32)
    assert code(err) == "ValidationException"
    assert code(await client_error(kms, "generate_data_key", KeyId=key_id)) == "ValidationException"
    err = await client_error(kms, "decrypt", CiphertextBlob=b"\x07" * 64)
    assert code(err) == "InvalidCiphertextException"


async def test_key_policies_round_trip_and_lockout_is_refused(kms: Any, nsm: SoftwareNsm) -> None:
    key_id = (await call(kms, "create_key"))["KeyMetadata"]["KeyId"]
    default = json.loads((await call(kms, "get_key_policy", KeyId=key_id, PolicyName="default"))["Policy"])
    assert default["Statement"][0]["Action"] == "kms:*"
    policy = key_policy(ROLE, {0: nsm.pcrs[0].hex()}, None)
    await call(kms, "put_key_policy", KeyId=key_id, PolicyName="default", Policy=json.dumps(policy))
    stored = await call(kms, "get_key_policy", KeyId=key_id, PolicyName="default")
    assert json.loads(stored["Policy"]) == policy

    enclave_only = {"Version": "2012-10-17", "Statement": [policy["Statement"][1]]}
    err = await client_error(
        kms, "put_key_policy", KeyId=key_id, PolicyName="default", Policy=json.dumps(enclave_only)
    )
    assert code(err) == "MalformedPolicyDocumentException" and "update the key policy" in str(err)
    await call(
        kms,
        "put_key_policy",
        KeyId=key_id,
        PolicyName="default",
        Policy=json.dumps(enclave_only),
        BypassPolicyLockoutSafetyCheck=True,
    )
    # Now nobody may even read the policy, as KMS would have it.
    assert code(await client_error(kms, "get_key_policy", KeyId=key_id, PolicyName="default")) == (
        "AccessDeniedException"
    )
    unsupported = {
        "Statement": [{"Effect": "Allow", "Action": "kms:*", "Condition": {"NumericEquals": {"a": "1"}}}]
    }
    err = await client_error(kms, "create_key", Policy=json.dumps(unsupported))
    assert code(err) == "MalformedPolicyDocumentException"


async def test_the_admin_statement_cannot_use_the_key(kms: Any, nsm: SoftwareNsm, doc: bytes) -> None:
    key_id = await enclave_key(kms, nsm)
    # The admin (and everyone else, principals being unmodelled) still cannot Encrypt or Decrypt plainly.
    assert code(await client_error(kms, "encrypt", KeyId=key_id, Plaintext=b"x")) == "AccessDeniedException"
    assert (await call(kms, "describe_key", KeyId=key_id))["KeyMetadata"]["KeyId"] == key_id


def sign(
    url: str, target: str, body: bytes, secret: str | None = None, *, akid: str | None = None,
    datadir: Path, region: str = "us-east-1", when: datetime.datetime | None = None,
) -> dict[str, str]:
    """Headers of a raw KMS request SigV4-signed by botocore (with the emulator's credentials by default)."""
    creds = load_credentials(credentials_path(datadir))
    request = AWSRequest(
        method="POST", url=url + "/", data=body,
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target},
    )
    signer = SigV4Auth(
        Credentials(akid or creds.access_key_id, secret or creds.secret_access_key), "kms", region
    )
    with mock.patch("botocore.auth.get_current_datetime", return_value=when or datetime.datetime.now(datetime.UTC)):
        signer.add_auth(request)
    return dict(request.headers.items())


async def test_wire_format_errors_are_kms_shaped(endpoint: str, tmp_path: Path) -> None:
    datadir = tmp_path / "kms"
    async with aiohttp.ClientSession() as session:
        headers = sign(endpoint, "TrentService.Nope", b"{}", datadir=datadir)
        async with session.post(endpoint + "/", data=b"{}", headers=headers) as resp:
            assert resp.status == 400 and resp.content_type == "application/x-amz-json-1.1"
            assert (await resp.json(content_type=None))["__type"] == "UnknownOperationException"
        headers = sign(endpoint, "TrentService.Encrypt", b"[1]", datadir=datadir)
        async with session.post(endpoint + "/", data=b"[1]", headers=headers) as resp:
            assert (
                resp.status == 400
                and (await resp.json(content_type=None))["__type"] == "SerializationException"
            )
        bad_blob = {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": "%%%"}
        body = json.dumps({"NumberOfBytes": 8, "Recipient": bad_blob}).encode()
        headers = sign(endpoint, "TrentService.GenerateRandom", body, datadir=datadir)
        async with session.post(endpoint + "/", data=body, headers=headers) as resp:
            assert (
                resp.status == 400
                and (await resp.json(content_type=None))["__type"] == "SerializationException"
            )
        body = json.dumps({"NumberOfBytes": 8}).encode()
        headers = sign(endpoint, "TrentService.GenerateRandom", body, datadir=datadir)
        async with session.post(endpoint + "/", data=body, headers=headers) as resp:
            answer = await resp.json(content_type=None)
            assert resp.status == 200 and len(base64.b64decode(answer["Plaintext"])) == 8


# --- authentication: only the holder of the 0600 credentials file is served -----------------------------

EVERY_OPERATION: dict[str, dict[str, Any]] = {
    "create_key": {},
    "describe_key": {"KeyId": "K"},
    "create_alias": {"AliasName": "alias/stolen", "TargetKeyId": "K"},
    "put_key_policy": {"KeyId": "K", "PolicyName": "default", "Policy": "P"},
    "get_key_policy": {"KeyId": "K", "PolicyName": "default"},
    "encrypt": {"KeyId": "K", "Plaintext": b"x"},
    "decrypt": {"CiphertextBlob": b"B"},
    "generate_data_key": {"KeyId": "K", "KeySpec": "AES_256"},
    "generate_random": {"NumberOfBytes": 32},
}
ALLOW_ALL = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:*",
                                              "Resource": "*"}]}
)


def _params(template: dict[str, Any], key_id: str, blob: bytes) -> dict[str, Any]:
    fill = {"K": key_id, "P": ALLOW_ALL}
    out = {k: fill.get(v, v) if isinstance(v, str) else v for k, v in template.items()}
    if "CiphertextBlob" in out:
        out["CiphertextBlob"] = blob
    return out


def test_credentials_file_is_private_and_kept(tmp_path: Path, nsm: SoftwareNsm) -> None:
    root = load_root(nsm.root_pem)
    make_app(tmp_path / "kms", root)
    path = credentials_path(tmp_path / "kms")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = load_credentials(path)
    make_app(tmp_path / "kms", root)  # a restart keeps them: the sidecar's client stays valid
    assert load_credentials(path) == first and len(first.secret_access_key) >= 40
    assert first.secret_access_key not in repr(first)
    other = tmp_path / "other"
    make_app(other, root)
    assert load_credentials(credentials_path(other)).secret_access_key != first.secret_access_key


async def test_callers_without_the_secret_are_refused_every_operation(
    endpoint: str, kms: Any, tmp_path: Path
) -> None:
    """The review's attack: PutKeyPolicy allow-all, then Decrypt of the stored data key. Also every other op."""
    key_id = (await call(kms, "create_key", Description="victim"))["KeyMetadata"]["KeyId"]
    blob = (await call(kms, "generate_data_key", KeyId=key_id, KeySpec="AES_256"))["CiphertextBlob"]
    policy_before = (await call(kms, "get_key_policy", KeyId=key_id, PolicyName="default"))["Policy"]
    real = load_credentials(credentials_path(tmp_path / "kms"))
    config = Config(retries={"max_attempts": 1})

    def client(**kw: Any) -> Any:
        return boto3.client("kms", endpoint_url=endpoint, **({"config": config, "region_name": "us-east-1"} | kw))

    attackers = {
        "UnrecognizedClientException": [
            client(aws_access_key_id="AKIAOTHERUSER0000000", aws_secret_access_key=real.secret_access_key),
            make_kms_client("us-east-1", endpoint),  # no credentials file: the old fixed dummies
        ],
        "InvalidSignatureException": [
            client(aws_access_key_id=real.access_key_id, aws_secret_access_key="x" * 40),
            client(aws_access_key_id=real.access_key_id, aws_secret_access_key=real.secret_access_key[:-1]),
        ],
        "MissingAuthenticationTokenException": [
            client(config=Config(signature_version=botocore.UNSIGNED, retries={"max_attempts": 1}))
        ],
    }
    for expected, clients in attackers.items():
        for attacker in clients:
            for op, template in EVERY_OPERATION.items():
                err = await client_error(attacker, op, **_params(template, key_id, blob))
                assert (code(err), err.response["ResponseMetadata"]["HTTPStatusCode"]) == (expected, 400), op
    # Nothing changed, and the legitimate client is still served.
    assert (await call(kms, "get_key_policy", KeyId=key_id, PolicyName="default"))["Policy"] == policy_before
    assert len((await call(kms, "decrypt", CiphertextBlob=blob))["Plaintext"]) == 32
    other_region = client(aws_access_key_id=real.access_key_id, aws_secret_access_key=real.secret_access_key,
                          region_name="eu-west-1")  # --kms-region is not a secret: any scope, same key check
    assert (await call(other_region, "describe_key", KeyId=key_id))["KeyMetadata"]["KeyId"] == key_id
    with pytest.raises(botocore.exceptions.ClientError):
        await call(kms, "describe_key", KeyId="alias/stolen")


def _unsigned_target(headers: dict[str, str]) -> dict[str, str]:
    auth = headers["Authorization"].replace("x-amz-target", "").replace(";;", ";").replace("=;", "=").rstrip(";")
    return headers | {"Authorization": auth.replace(";,", ",")}


async def test_raw_http_without_a_valid_signature_is_refused(endpoint: str, kms: Any, tmp_path: Path) -> None:
    datadir = tmp_path / "kms"
    key_id = (await call(kms, "create_key"))["KeyMetadata"]["KeyId"]
    put = json.dumps({"KeyId": key_id, "PolicyName": "default", "Policy": ALLOW_ALL}).encode()
    target = "TrentService.PutKeyPolicy"
    good = sign(endpoint, target, put, datadir=datadir)
    base = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target}
    stale = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=6)
    cases: list[tuple[str, bytes, dict[str, str], str]] = [
        ("no Authorization", put, base, "MissingAuthenticationTokenException"),
        ("garbage", put, base | {"Authorization": "Bearer letmein"}, "IncompleteSignatureException"),
        ("stale date", put, sign(endpoint, target, put, datadir=datadir, when=stale), "InvalidSignatureException"),
        ("other body, same signature", put.replace(b"default", b"defauLt"), good, "InvalidSignatureException"),
        ("other target, same signature", put, good | {"X-Amz-Target": "TrentService.Decrypt"},
         "InvalidSignatureException"),
        ("lying content hash", put + b" ", good | {"X-Amz-Content-SHA256": good.get("X-Amz-Content-SHA256", "0" * 64)},
         "InvalidSignatureException"),
        ("wrong secret", put, sign(endpoint, target, put, "y" * 40, datadir=datadir), "InvalidSignatureException"),
        ("wrong secret, other region", put, sign(endpoint, target, put, "y" * 40, datadir=datadir, region="eu-west-1"),
         "InvalidSignatureException"),
        ("target left unsigned", put, _unsigned_target(good), "InvalidSignatureException"),
        ("non-ASCII content hash", put, good | {"X-Amz-Content-SHA256": "é" * 64}, "InvalidSignatureException"),
        ("unknown key id", put, sign(endpoint, target, put, akid="AKIAOTHER", datadir=datadir),
         "UnrecognizedClientException"),
        ("unknown operation, unsigned", b"{}", base | {"X-Amz-Target": "TrentService.ScheduleKeyDeletion"},
         "MissingAuthenticationTokenException"),
    ]
    async with aiohttp.ClientSession() as session:
        for name, body, headers, expected in cases:
            async with session.post(endpoint + "/", data=body, headers=headers) as resp:
                answer = await resp.json(content_type=None)
                assert (resp.status, answer["__type"]) == (400, expected), (name, answer)
        policy = (await call(kms, "get_key_policy", KeyId=key_id, PolicyName="default"))["Policy"]
        assert json.loads(policy)["Id"] == "key-default-1"  # still the default: no allow-all got through
        async with session.post(endpoint + "/", data=put, headers=good) as resp:  # the signed one is served
            assert resp.status == 200, await resp.text()


# --- the sidecar client's error mapping ----------------------------------------------------------------


def test_transient_failures_are_infra_errors_and_refusals_are_kms_refused() -> None:
    def client_err(code_: str, status: int) -> botocore.exceptions.ClientError:
        return botocore.exceptions.ClientError(
            {"Error": {"Code": code_, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
            "Decrypt",
        )

    throttled = _map_error("decrypt", client_err("ThrottlingException", 400))
    assert isinstance(throttled, InfraError) and not isinstance(throttled, KmsRefused)
    internal = _map_error("decrypt", client_err("KMSInternalException", 500))
    assert not isinstance(internal, KmsRefused)
    unreachable = _map_error("decrypt", botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"))
    assert not isinstance(unreachable, KmsRefused) and "unreachable" in unreachable.message
    refused = _map_error("decrypt", client_err("InvalidCiphertextException", 400))
    assert isinstance(refused, KmsRefused) and refused.kms_code == "InvalidCiphertextException"


def test_key_policy_refuses_what_would_release_keys_to_anyone() -> None:
    pcr0 = "0a" * 48
    with pytest.raises(ValueError, match="at least one"):
        key_policy(ROLE, {}, None)
    with pytest.raises(ValueError, match="96 hex"):
        key_policy(ROLE, {0: "abc"}, None)
    with pytest.raises(ValueError, match="debug"):
        key_policy(ROLE, {0: "0" * 96}, None)
    assert key_policy(ROLE, {0: "0" * 96}, None, allow_debug=True)
    with pytest.raises(ValueError, match="differ"):
        key_policy(ROLE, {0: pcr0}, "0b" * 48)
    with pytest.raises(ValueError, match="role ARN"):
        key_policy("not-an-arn", {0: pcr0}, None)
    policy = key_policy(ROLE, {0: pcr0.upper(), 8: "cd" * 48}, None)
    admin, enclave = policy["Statement"]
    assert admin["Principal"] == {"AWS": "arn:aws:iam::111122223333:root"}
    assert not any(
        a in admin["Action"] for a in ("kms:Decrypt", "kms:GenerateDataKey", "kms:CreateGrant", "kms:*")
    )
    assert enclave["Principal"] == {"AWS": ROLE}
    assert enclave["Condition"] == {
        "StringEqualsIgnoreCase": {
            "kms:RecipientAttestation:PCR0": pcr0,
            "kms:RecipientAttestation:PCR8": "cd" * 48,
        }
    }


# --- the process: readiness line, SIGTERM, restart ---------------------------------------------------------


def _child_env() -> dict[str, str]:
    """This checkout's src/ first, so the child runs the code under test whatever is installed."""
    paths = [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _start(datadir: Path, root: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clave.dev.kmsemu",
            "--datadir",
            str(datadir),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--root",
            str(root),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_child_env(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    prefix = "kms-emulator listening "
    assert line.startswith(prefix), (line, proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
    url = line[len(prefix) :]
    assert not url.endswith(":0")
    return proc, url


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=10)


@pytest.mark.slow  # the emulator as a process
async def test_keys_and_blobs_survive_a_restart(
    tmp_path: Path, nsm: SoftwareNsm, nsm_state: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    datadir = tmp_path / "kms-data"
    proc, url = _start(datadir, nsm_state / "root.pem")
    try:
        client = make_kms_client("us-east-1", url, credentials_path(datadir), datadir / "ca.pem")
        key_id = await enclave_key(client, nsm)
        doc = nsm_api.attestation(nsm, public_key=spki(rsa_key))
        wrapped, first = await generate_for(client, key_id, doc)
        plain_key = (await call(client, "create_key"))["KeyMetadata"]["KeyId"]
        blob = (await call(client, "encrypt", KeyId=plain_key, Plaintext=b"kept"))["CiphertextBlob"]
    finally:
        assert _stop(proc) == 0
    for path in (datadir / "keys").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(datadir.stat().st_mode) == 0o700

    proc, url = _start(datadir, nsm_state / "root.pem")
    try:
        client = make_kms_client("us-east-1", url, credentials_path(datadir), datadir / "ca.pem")
        doc = nsm_api.attestation(nsm, public_key=spki(rsa_key))
        again = await decrypt_for(client, key_id, wrapped, doc)
        assert open_enveloped_data(again, rsa_key) == open_enveloped_data(first, rsa_key)
        assert (await call(client, "decrypt", CiphertextBlob=blob))["Plaintext"] == b"kept"
        policy = json.loads(
            (await call(client, "get_key_policy", KeyId=key_id, PolicyName="default"))["Policy"]
        )
        assert policy["Statement"][1]["Condition"]["StringEqualsIgnoreCase"][
            "kms:RecipientAttestation:PCR0"
        ] == (nsm.pcrs[0].hex())
    finally:
        assert _stop(proc) == 0


@pytest.mark.slow  # the emulator as a process
def test_bad_root_file_exits_with_a_message(tmp_path: Path) -> None:
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "clave.dev.kmsemu",
            "--datadir",
            str(tmp_path / "d"),
            "--root",
            str(tmp_path / "none.pem"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        env=_child_env(),
    )
    assert missing.returncode == 1 and "kms-emulator:" in missing.stderr


async def test_a_squatter_on_the_emulators_port_is_not_believed(tmp_path: Path, nsm: SoftwareNsm, doc: bytes) -> None:
    """A process that took the emulator's port answers well-formed KMS replies (a data key of its choosing)
    but cannot prove it holds the secret: the sidecar's client refuses the answer."""
    make_app(tmp_path / "kms", load_root(nsm.root_pem))  # the real emulator's credentials file
    seen: list[str] = []

    async def squatter(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        body = {"KeyId": "k", "CiphertextBlob": base64.b64encode(b"b").decode(),
                "CiphertextForRecipient": base64.b64encode(b"chosen-by-squatter").decode()}
        headers = {"X-Clave-Emulator-Proof": "0" * 64} if len(seen) > 1 else {}
        return web.json_response(body, content_type="application/x-amz-json-1.1", headers=headers)

    app = web.Application()
    app.router.add_post("/", squatter)
    runner, url = await _serve(app)
    try:
        client = make_kms_client("us-east-1", url, credentials_path(tmp_path / "kms"))
        for _ in range(2):  # no proof, then a wrong one
            with pytest.raises(KmsRefused) as exc:
                await generate_for(client, "k", doc)
            assert exc.value.kms_code == "NotTheEmulator" and "another process holds" in exc.value.message
        assert len(seen) == 2 and all("Signature=" in a for a in seen)  # it saw signatures, never the secret
    finally:
        await runner.cleanup()
