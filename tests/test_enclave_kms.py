"""The enclave's own KMS request and the reading of KMS's answer (enclave/kms.py), and which TLS servers count
as KMS (enclave/kms_tls.py). The end-to-end attacks on this path are in test_provenance.py."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import certifi
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from clave.core.errors import InfraError, RequestError
from clave.dev.kmsemu.auth import EmulatorCredentials, SigV4Verifier
from clave.dev.kmsemu.store import KmsFault
from clave.enclave import kms
from clave.enclave.kms_tls import AMAZON_ROOTS, AWS_KMS_HOST, amazon_roots, aws_transport, dev_transport
from tests.accounts import TEST_KEY_ARN

DOC = b"attestation document"


def _call(operation: str = "Decrypt") -> kms.PreparedCall:
    blob = b"wrapped" if operation == "Decrypt" else None
    return kms.prepare(b"i" * 16, operation, TEST_KEY_ARN, blob, DOC, "kms.us-east-1.amazonaws.com")


def _answer(**fields: object) -> bytes:
    value = {"KeyId": TEST_KEY_ARN, "CiphertextForRecipient": base64.b64encode(b"cms").decode(), **fields}
    return json.dumps(value).encode()


def test_the_request_carries_recipient_and_only_what_the_enclave_chose() -> None:
    body = json.loads(_call().body)
    assert body["KeyId"] == TEST_KEY_ARN and base64.b64decode(body["CiphertextBlob"]) == b"wrapped"
    assert body["Recipient"] == {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                                 "AttestationDocument": base64.b64encode(DOC).decode()}
    assert json.loads(_call("GenerateDataKey").body)["KeySpec"] == "AES_256"
    for bad in (("Encrypt", TEST_KEY_ARN, b"x"), ("Decrypt", "", b"x"), ("Decrypt", TEST_KEY_ARN, None),
                ("Decrypt", TEST_KEY_ARN, b"x" * 7000)):
        with pytest.raises(RequestError):
            kms.prepare(b"i" * 16, bad[0], bad[1], bad[2], DOC, "kms.us-east-1.amazonaws.com")


def test_the_parent_adds_signature_headers_and_nothing_else() -> None:
    call = _call()
    headers = call.request_headers({"Authorization": "AWS4-HMAC-SHA256 …", "X-Amz-Date": "20261205T000000Z"})
    assert headers["X-Amz-Target"] == "TrentService.Decrypt" and headers["Host"] == "kms.us-east-1.amazonaws.com"
    for auth in ({"X-Amz-Date": "x"}, {"Authorization": "a", "X-Amz-Target": "TrentService.Encrypt"},
                 {"Authorization": "a", "Host": "evil"}, {"Authorization": "a\r\nX-Evil: 1"}, "Authorization"):
        with pytest.raises(RequestError):
            call.request_headers(auth)


def test_the_sidecars_signature_is_valid_for_the_enclaves_exact_request(tmp_path: Path) -> None:
    """What the sidecar signs (botocore SigV4 over the enclave's headers and body) is what the emulator's
    verifier (the same check as AWS's) accepts, and an edited body no longer matches."""
    call = kms.prepare(b"i" * 16, "Decrypt", TEST_KEY_ARN, b"wrapped", DOC, "127.0.0.1:8443")
    request = AWSRequest(method="POST", url="https://127.0.0.1:8443/", data=call.body, headers=call.headers())
    credentials = Credentials("AKIDCLAVETEST", "secret-for-the-test")
    SigV4Auth(credentials, "kms", "us-east-1").add_auth(request)
    sent = call.request_headers({k: request.headers[k] for k in ("Authorization", "X-Amz-Date")})
    verifier = SigV4Verifier(EmulatorCredentials("AKIDCLAVETEST", "secret-for-the-test"), "us-east-1", time.time)
    lowered = {k.lower(): v for k, v in sent.items()}
    verifier.verify("POST", "127.0.0.1:8443", "/", lowered, call.body)
    with pytest.raises(KmsFault):
        verifier.verify("POST", "127.0.0.1:8443", "/", lowered, call.body.replace(b"d3JhcHBlZA==", b"b3RoZXI="))  # another blob


def test_an_answer_is_taken_only_whole_and_without_plaintext() -> None:
    call = _call()
    answer = kms.read_answer(call, TEST_KEY_ARN, 200, _answer())
    assert isinstance(answer, kms.KmsAnswer) and answer.for_recipient == b"cms" and answer.key_arn == TEST_KEY_ARN
    assert answer.ciphertext_blob is None
    made = kms.read_answer(_call("GenerateDataKey"), TEST_KEY_ARN, 200,
                           _answer(CiphertextBlob=base64.b64encode(b"blob").decode()))
    assert isinstance(made, kms.KmsAnswer) and made.ciphertext_blob == b"blob"
    for body, why in (
        (_answer(Plaintext=base64.b64encode(b"k" * 32).decode()), "Plaintext"),
        (_answer(KeyId="k"), "no key ARN"),
        (_answer(KeyId=TEST_KEY_ARN.replace("111122223333", "444455556666")), "not the requested"),
        (_answer(CiphertextForRecipient=""), "without CiphertextForRecipient"),
        (_answer(CiphertextForRecipient="%%%"), "without CiphertextForRecipient"),
        (b"[1]", "not a JSON object"),
        (b"<html>", "not a JSON object"),
    ):
        with pytest.raises(kms.KmsAnswerError, match=why):
            kms.read_answer(call, TEST_KEY_ARN, 200, body)
    with pytest.raises(kms.KmsAnswerError, match="without CiphertextBlob"):
        kms.read_answer(_call("GenerateDataKey"), TEST_KEY_ARN, 200, _answer())
    refused = kms.read_answer(call, TEST_KEY_ARN, 400, b'{"__type":"AccessDeniedException","message":"no"}')
    assert refused == kms.KmsRefusal("AccessDeniedException", "no")
    with pytest.raises(InfraError, match="HTTP 503"):
        kms.read_answer(call, TEST_KEY_ARN, 503, b"{}")


def test_the_image_trusts_only_amazons_roots_and_aws_kms_names() -> None:
    roots = amazon_roots(Path(certifi.where()).read_bytes())
    assert roots.count("BEGIN CERTIFICATE") == len(AMAZON_ROOTS) == 5
    with pytest.raises(RuntimeError, match="lacks"):
        amazon_roots(roots.split("-----END CERTIFICATE-----")[0].encode() + b"-----END CERTIFICATE-----\n")
    transport = aws_transport()
    for good in ("kms.us-east-1.amazonaws.com", "kms-fips.us-gov-west-1.amazonaws.com", "kms.cn-north-1.amazonaws.com.cn",
                 "kms.ap-southeast-3.amazonaws.com"):
        assert AWS_KMS_HOST.match(good), good
        transport.check_endpoint(good)
    for bad in ("kms.us-east-1.amazonaws.com.evil.example", "evil.example", "kms.us-east-1.amazonaws.com:8443",
                "127.0.0.1:8443", "s3.us-east-1.amazonaws.com", "kms.us-east-1.amazonaws.co", ""):
        with pytest.raises(RequestError, match="not a KMS endpoint"):
            transport.check_endpoint(bad)


def test_the_local_transport_trusts_the_dev_ca_alone(tmp_path: Path) -> None:
    from clave.dev.kmsemu.tls import ensure_tls

    ca = ensure_tls(tmp_path / "kms")
    again = ensure_tls(tmp_path / "kms")
    assert again == ca and ca.read_bytes() == again.read_bytes(), "made once, kept across restarts"
    assert (tmp_path / "kms" / "tls-key.pem").stat().st_mode & 0o777 == 0o600
    assert b"PRIVATE KEY" not in ca.read_bytes()
    assert not any(b"PRIVATE KEY" in p.read_bytes() for p in (tmp_path / "kms").iterdir() if p.name != "tls-key.pem"), \
        "the CA's own key is never written"
    dev_transport(ca.read_bytes()).check_endpoint("127.0.0.1:8443")
