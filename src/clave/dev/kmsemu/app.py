"""A local AWS KMS for `clave up` and tests, reached by boto3 through `endpoint_url`.

It speaks KMS's JSON protocol (POST /, `X-Amz-Target: TrentService.<Op>`, application/x-amz-json-1.1,
base64 blobs, errors as HTTP 400 `{"__type": "...Exception", "message": ...}` so botocore raises the
same ClientError codes) for the operations clave uses: CreateKey, DescribeKey, CreateAlias,
PutKeyPolicy, GetKeyPolicy, Encrypt, Decrypt, GenerateDataKey, GenerateRandom.

With `Recipient` (Decrypt, GenerateDataKey, GenerateRandom) it does what KMS does for Nitro: verifies
the attestation document (chain to the pinned dev root, signature, freshness) with the sidecar's own
verifier, evaluates the key policy with the document's PCRs as `kms:RecipientAttestation:*` condition
keys, and returns `CiphertextForRecipient` (BER CMS to the document's RSA key) with no `Plaintext`.
Every request must carry a valid SigV4 signature made with the credentials in the emulator's 0600
credentials file (auth.py); principals are not modelled beyond that (see policy.py).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from clave.dev.kmsemu import policy
from clave.dev.kmsemu.auth import PROOF_HEADER, SigV4Verifier, ensure_credentials
from clave.dev.kmsemu.cms_build import build_enveloped_data
from clave.dev.kmsemu.store import Key, KeyStore, KmsFault
from clave.sidecar.trust.attestation import AttestationError, verify_attestation

JSON_CONTENT_TYPE = "application/x-amz-json-1.1"
TARGET_PREFIX = "TrentService."
RECIPIENT_ALGORITHM = "RSAES_OAEP_SHA_256"
DEFAULT_MAX_AGE_MS = 5 * 60 * 1000  # how old an attestation document may be when it reaches us
MIN_RSA_BITS = 2048
KEY_SPEC_BYTES = {"AES_256": 32, "AES_128": 16}

Clock = Callable[[], float]
Body = dict[str, Any]


class Emulator:
    """The operations, I/O-free apart from the key store; the aiohttp handler only frames them."""

    def __init__(self, store: KeyStore, root: x509.Certificate, clock: Clock, max_age_ms: int) -> None:
        self.store, self.root, self.clock, self.max_age_ms = store, root, clock, max_age_ms

    # -- helpers

    @staticmethod
    def _blob(body: Body, name: str, *, required: bool = True, max_len: int = 6144) -> bytes | None:
        value = body.get(name)
        if value is None:
            if required:
                raise KmsFault("ValidationException", f"1 validation error detected: Value null at '{name}'")
            return None
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise KmsFault("SerializationException", f"{name} is not valid base64") from None
        if not 1 <= len(data) <= max_len:
            raise KmsFault("ValidationException", f"{name} must be 1 to {max_len} bytes long")
        return data

    @staticmethod
    def _str(body: Body, name: str, *, required: bool = True) -> str | None:
        value = body.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise KmsFault(
                "ValidationException", f"1 validation error detected: Value at '{name}' must be a string"
            )
        return value

    @staticmethod
    def _context(body: Body) -> dict[str, str] | None:
        ctx = body.get("EncryptionContext")
        if ctx is None:
            return None
        if not isinstance(ctx, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in ctx.items()
        ):
            raise KmsFault("ValidationException", "EncryptionContext must map strings to strings")
        return ctx

    def _key(self, body: Body) -> Key:
        return self.store.get(self._str(body, "KeyId"))  # type: ignore[arg-type]

    def _authorize(self, key: Key, op: str, context: dict[str, str]) -> None:
        decision = policy.evaluate(policy.parse(key.policy), f"kms:{op}", context)
        if not decision.allowed:
            raise KmsFault(
                "AccessDeniedException",
                f"User is not authorized to perform: kms:{op} on resource: {key.arn} because "
                f"{decision.reason}",
            )

    def _recipient(self, body: Body) -> tuple[rsa.RSAPublicKey, dict[str, str]] | None:
        """Verify `Recipient` if present: the key to encrypt to and the attestation condition keys."""
        recipient = body.get("Recipient")
        if recipient is None:
            return None
        if not isinstance(recipient, dict):
            raise KmsFault("ValidationException", "Recipient must be an object")
        if recipient.get("KeyEncryptionAlgorithm") != RECIPIENT_ALGORITHM:
            raise KmsFault(
                "ValidationException",
                f"Recipient.KeyEncryptionAlgorithm must be {RECIPIENT_ALGORITHM}",
            )
        document = self._blob(recipient, "AttestationDocument", max_len=262144)
        assert document is not None
        try:
            doc = verify_attestation(
                document, root=self.root, now_ms=int(self.clock() * 1000), max_age_ms=self.max_age_ms
            )
        except AttestationError as exc:
            raise KmsFault(
                "ValidationException", f"The attestation document is not valid: {exc.message}"
            ) from None
        if not doc.public_key:
            raise KmsFault(
                "ValidationException", "The attestation document carries no public_key to encrypt to"
            )
        try:
            public_key = load_der_public_key(doc.public_key)
        except ValueError:
            raise KmsFault(
                "ValidationException", "The attestation document's public_key is not a DER SPKI"
            ) from None
        if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size < MIN_RSA_BITS:
            raise KmsFault(
                "ValidationException", "The attestation document's public_key must be RSA-2048 or larger"
            )
        return public_key, policy.attestation_context(doc.pcrs)

    def _secret_response(
        self,
        out: Body,
        plaintext: bytes,
        recipient: tuple[rsa.RSAPublicKey, dict[str, str]] | None,
        body: Body,
    ) -> Body:
        if recipient is None:
            out["Plaintext"] = plaintext
        else:
            # KMS leaves Plaintext out entirely when it answers a Recipient. Its two published blobs
            # differ in content encoding (constructed for "plain", primitive for "with_context");
            # we follow that split so both reach the parser.
            constructed = not body.get("EncryptionContext")
            out["CiphertextForRecipient"] = build_enveloped_data(
                plaintext, recipient[0], constructed=constructed
            )
        return out

    def _metadata(self, key: Key) -> Body:
        return {
            "AWSAccountId": self.store.account,
            "KeyId": key.key_id,
            "Arn": key.arn,
            "CreationDate": key.created,
            "Enabled": True,
            "Description": key.description,
            "KeyUsage": "ENCRYPT_DECRYPT",
            "KeyState": "Enabled",
            "Origin": "AWS_KMS",
            "KeyManager": "CUSTOMER",
            "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
            "KeySpec": "SYMMETRIC_DEFAULT",
            "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
            "MultiRegion": False,
        }

    def _checked_policy(self, body: Body) -> str | None:
        text = self._str(body, "Policy", required=False)
        if text is None:
            return None
        try:
            doc = policy.parse(text)
        except policy.PolicyError as exc:
            raise KmsFault("MalformedPolicyDocumentException", str(exc)) from None
        if not body.get("BypassPolicyLockoutSafetyCheck") and not policy.unconditionally_allows(
            doc, "kms:PutKeyPolicy"
        ):
            # Real KMS refuses a policy that would stop the caller from ever changing it again.
            raise KmsFault(
                "MalformedPolicyDocumentException",
                "The new key policy will not allow you to update the key policy in the future.",
            )
        return text

    # -- operations

    def CreateKey(self, body: Body) -> Body:
        for name, only in (("KeySpec", "SYMMETRIC_DEFAULT"), ("KeyUsage", "ENCRYPT_DECRYPT")):
            if body.get(name, only) != only:
                raise KmsFault("UnsupportedOperationException", f"this emulator only creates {only} keys")
        key = self.store.create(description=body.get("Description") or "", policy=self._checked_policy(body))
        return {"KeyMetadata": self._metadata(key)}

    def DescribeKey(self, body: Body) -> Body:
        key = self._key(body)
        self._authorize(key, "DescribeKey", {})
        return {"KeyMetadata": self._metadata(key)}

    def CreateAlias(self, body: Body) -> Body:
        key = self.store.get(self._str(body, "TargetKeyId"))  # type: ignore[arg-type]
        self._authorize(key, "CreateAlias", {})
        self.store.create_alias(self._str(body, "AliasName"), key)  # type: ignore[arg-type]
        return {}

    def PutKeyPolicy(self, body: Body) -> Body:
        key = self._key(body)
        self._authorize(key, "PutKeyPolicy", {})
        text = self._checked_policy(body)
        if text is None:
            raise KmsFault("ValidationException", "1 validation error detected: Value null at 'policy'")
        self.store.set_policy(key, text)
        return {}

    def GetKeyPolicy(self, body: Body) -> Body:
        key = self._key(body)
        self._authorize(key, "GetKeyPolicy", {})
        return {"Policy": key.policy, "PolicyName": "default"}

    def Encrypt(self, body: Body) -> Body:
        key = self._key(body)
        plaintext = self._blob(body, "Plaintext", max_len=4096)
        assert plaintext is not None
        self._authorize(key, "Encrypt", {})
        blob = self.store.encrypt(key, plaintext, self._context(body))
        return {"CiphertextBlob": blob, "KeyId": key.arn, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}

    def Decrypt(self, body: Body) -> Body:
        blob = self._blob(body, "CiphertextBlob")
        assert blob is not None
        recipient = self._recipient(body)
        key, plaintext = self.store.decrypt(
            blob, self._context(body), self._str(body, "KeyId", required=False)
        )
        self._authorize(key, "Decrypt", recipient[1] if recipient else {})
        out: Body = {"KeyId": key.arn, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}
        return self._secret_response(out, plaintext, recipient, body)

    def GenerateDataKey(self, body: Body) -> Body:
        key = self._key(body)
        size = self._data_key_size(body)
        recipient = self._recipient(body)
        self._authorize(key, "GenerateDataKey", recipient[1] if recipient else {})
        plaintext = os.urandom(size)
        out: Body = {
            "CiphertextBlob": self.store.encrypt(key, plaintext, self._context(body)),
            "KeyId": key.arn,
        }
        return self._secret_response(out, plaintext, recipient, body)

    def GenerateRandom(self, body: Body) -> Body:
        n = body.get("NumberOfBytes")
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 1024:
            raise KmsFault("ValidationException", "NumberOfBytes must be an integer from 1 to 1024")
        recipient = self._recipient(body)
        return self._secret_response({}, os.urandom(n), recipient, body)

    @staticmethod
    def _data_key_size(body: Body) -> int:
        spec, n = body.get("KeySpec"), body.get("NumberOfBytes")
        if (spec is None) == (n is None):
            raise KmsFault("ValidationException", "Specify either KeySpec or NumberOfBytes, but not both")
        if spec is not None:
            if spec not in KEY_SPEC_BYTES:
                raise KmsFault("ValidationException", f"KeySpec must be one of {sorted(KEY_SPEC_BYTES)}")
            return KEY_SPEC_BYTES[spec]
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 1024:
            raise KmsFault("ValidationException", "NumberOfBytes must be an integer from 1 to 1024")
        return n


OPERATIONS = (
    "CreateKey",
    "DescribeKey",
    "CreateAlias",
    "PutKeyPolicy",
    "GetKeyPolicy",
    "Encrypt",
    "Decrypt",
    "GenerateDataKey",
    "GenerateRandom",
)
EMULATOR = web.AppKey("kms_emulator", Emulator)
VERIFIER = web.AppKey("kms_sigv4", SigV4Verifier)


def _encode(out: Body) -> Body:
    return {k: base64.b64encode(v).decode() if isinstance(v, bytes) else v for k, v in out.items()}


def _json(payload: Body, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(payload).encode(),
        content_type=JSON_CONTENT_TYPE,
        headers={"x-amzn-RequestId": str(uuid.uuid4())},
    )


async def _handle(request: web.Request) -> web.Response:
    emulator, verifier = request.app[EMULATOR], request.app[VERIFIER]
    signature = ""
    try:
        raw = await request.read()
        # Nothing is looked at before the signature is: an unauthenticated caller learns nothing.
        signature = verifier.verify(request.method, request.host, request.path_qs, dict(request.headers), raw)
        target = request.headers.get("X-Amz-Target", "")
        op = target.removeprefix(TARGET_PREFIX)
        if not target.startswith(TARGET_PREFIX) or op not in OPERATIONS:
            raise KmsFault("UnknownOperationException", f"unknown operation {target!r}")
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise KmsFault("SerializationException", "request body is not JSON") from None
        if not isinstance(body, dict):
            raise KmsFault("SerializationException", "request body must be a JSON object")
        handler: Callable[[Body], Body] = getattr(emulator, op)
        response = _json(_encode(handler(body)))
    except KmsFault as fault:
        response = _json({"__type": fault.type, "message": fault.message}, status=fault.status)
    if signature:
        assert isinstance(response.body, bytes)
        response.headers[PROOF_HEADER] = verifier.proof(signature, response.body)
    return response


@web.middleware
async def _internal_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:  # a bug here must still look like KMS to botocore (retryable 500)
        return _json(
            {"__type": "KMSInternalException", "message": f"{type(exc).__name__}: {exc}"}, status=500
        )


def make_app(
    datadir: Path,
    root: x509.Certificate,
    *,
    clock: Clock = time.time,
    region: str = "us-east-1",
    account: str = "111122223333",
    max_age_ms: int = DEFAULT_MAX_AGE_MS,
) -> web.Application:
    store = KeyStore(Path(datadir), region=region, account=account, clock=clock)
    app = web.Application(middlewares=[_internal_errors], client_max_size=1024 * 1024)
    app[EMULATOR] = Emulator(store, root, clock, max_age_ms)
    app[VERIFIER] = SigV4Verifier(ensure_credentials(Path(datadir)), region, clock)
    app.router.add_post("/", _handle)
    return app
