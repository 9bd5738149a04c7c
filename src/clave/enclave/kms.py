"""The enclave's own KMS calls, request and answer; no I/O (the TLS session is `kms_tls`).

The master key reaches the enclave only this way: the enclave writes the KMS request itself (with its own
attestation document as `Recipient`), the parent signs it (SigV4 with the instance role's credentials, which
never enter the enclave) and relays the bytes of a TLS session that ends here, and the enclave reads KMS's
answer. The parent can withhold or break the exchange, but it can neither read the answer nor make one up,
so it cannot choose the master key. The answer's `KeyId` (the key's ARN, AWS account included) is what the
enclave attests to beside the key's commitment; the operator's tools pin it (THREAT_MODEL.md).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from clave.core.errors import InfraError, RequestError

OPERATIONS = ("GenerateDataKey", "Decrypt")
RECIPIENT_ALGORITHM = "RSAES_OAEP_SHA_256"
# The parent adds only these headers to the request the enclave wrote (its SigV4 signature); any other
# header, and every byte of the body, stays the enclave's.
AUTH_HEADERS = ("Authorization", "X-Amz-Date", "X-Amz-Security-Token")
MAX_KEY_ID = 2048
MAX_BLOB = 6144
MAX_AUTH_HEADER = 8192
MAX_ANSWER = 64 * 1024
KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/(mrk-[0-9a-f]{32}|[0-9a-f-]{36})$")


class KmsAnswerError(RequestError):
    """What came back through the TLS session is not a usable KMS answer (the enclave takes no key)."""


@dataclass(frozen=True)
class PreparedCall:
    """One KMS request, written by the enclave; the parent signs it and the enclave sends it."""

    call_id: bytes
    operation: str
    endpoint: str  # host, or host:port (local emulator): the TLS server name and the Host header
    body: bytes

    @property
    def server_name(self) -> str:
        host, _, port = self.endpoint.rpartition(":")
        return host if port.isdigit() and host else self.endpoint

    def headers(self) -> dict[str, str]:
        return {
            "Host": self.endpoint,
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": f"TrentService.{self.operation}",
        }

    def request_headers(self, auth: Any) -> dict[str, str]:
        """The enclave's headers plus the parent's signature headers (nothing else of the parent's)."""
        if not isinstance(auth, dict) or "Authorization" not in auth:
            raise RequestError("auth: expected the request's SigV4 headers (Authorization, X-Amz-Date, …)")
        headers = self.headers()
        for name, value in auth.items():
            if name not in AUTH_HEADERS:
                raise RequestError(f"auth: {name!r} is not a signature header; the enclave writes the rest")
            if not isinstance(value, str) or not value or len(value) > MAX_AUTH_HEADER or any(c in value for c in "\r\n"):
                raise RequestError(f"auth: {name} must be one line of text")
            headers[name] = value
        return headers


def prepare(call_id: bytes, operation: str, key_id: Any, ciphertext_blob: Any, attestation: bytes, endpoint: str) -> PreparedCall:
    """The request for `operation` (GenerateDataKey of an AES-256 key, or Decrypt of the stored blob)."""
    if operation not in OPERATIONS:
        raise RequestError(f"operation: expected one of {', '.join(OPERATIONS)}")
    if not isinstance(key_id, str) or not 0 < len(key_id) <= MAX_KEY_ID:
        raise RequestError("key_id: expected the KMS key's id, alias or ARN")
    body: dict[str, Any] = {
        "KeyId": key_id,
        "Recipient": {
            "KeyEncryptionAlgorithm": RECIPIENT_ALGORITHM,
            "AttestationDocument": base64.b64encode(attestation).decode(),
        },
    }
    if operation == "GenerateDataKey":
        body["KeySpec"] = "AES_256"
    else:
        if not isinstance(ciphertext_blob, bytes) or not 0 < len(ciphertext_blob) <= MAX_BLOB:
            raise RequestError(f"ciphertext_blob: expected 1..{MAX_BLOB} bytes")
        body["CiphertextBlob"] = base64.b64encode(ciphertext_blob).decode()
    return PreparedCall(call_id, operation, endpoint, json.dumps(body, separators=(",", ":")).encode())


@dataclass(frozen=True)
class KmsAnswer:
    for_recipient: bytes  # CMS to this boot's RSA key
    key_arn: str
    ciphertext_blob: bytes | None  # GenerateDataKey: the wrapped key the parent stores


@dataclass(frozen=True)
class KmsRefusal:
    """KMS answered and said no (4xx): the parent learns the code and message; nothing is loaded."""

    code: str
    message: str


def read_answer(call: PreparedCall, key_id: str, status: int, body: bytes) -> KmsAnswer | KmsRefusal:
    """KMS's answer to `call`, read inside the enclave's TLS session."""
    try:
        value: Any = json.loads(body) if body else {}
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise KmsAnswerError(f"KMS {call.operation}: the answer (HTTP {status}) is not a JSON object")
    if 500 <= status:
        raise InfraError(f"KMS {call.operation} failed: HTTP {status}", remedy="transient KMS error; it is retried")
    if status != 200:
        code = str(value.get("__type", "Unknown")).rpartition("#")[2][:128]
        message = str(value.get("message", value.get("Message", "")))[:1024]
        return KmsRefusal(code, message)
    if value.get("Plaintext"):
        # Recipient is in the request we wrote; a Plaintext answer is not KMS's behaviour. Take nothing.
        raise KmsAnswerError(f"KMS {call.operation} answered with Plaintext despite Recipient; refusing it")
    key_arn = value.get("KeyId")
    if not isinstance(key_arn, str) or not KEY_ARN.match(key_arn):
        raise KmsAnswerError(f"KMS {call.operation}: the answer names no key ARN")
    if key_id.startswith("arn:") and key_arn != key_id:
        raise KmsAnswerError(f"KMS {call.operation}: answered for {key_arn}, not the requested {key_id}")
    for_recipient = _blob(call, value, "CiphertextForRecipient")
    wrapped = _blob(call, value, "CiphertextBlob") if call.operation == "GenerateDataKey" else None
    return KmsAnswer(for_recipient, key_arn, wrapped)


def _blob(call: PreparedCall, value: dict[str, Any], name: str) -> bytes:
    try:
        data = base64.b64decode(value.get(name) or "", validate=True)
    except (binascii.Error, TypeError, ValueError):
        data = b""
    if not data:
        raise KmsAnswerError(f"KMS {call.operation} answered without {name}")
    return data
