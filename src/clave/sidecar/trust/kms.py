"""AWS KMS as the sidecar uses it: credentials, the key policy, and its own management calls.

The data key itself is never asked for here: the enclave writes those requests and reads the answers
over its own TLS session (`enclave/kms.py`); the sidecar signs them with these credentials and relays the
bytes (`kms_relay.py`). The boto3 client made here serves the local key provisioning (CreateKey,
PutKeyPolicy) against the emulator. The same code talks to real KMS and to the local emulator
(`clave.dev.kmsemu`); only `endpoint_url` (and the emulator's CA) differ.

Errors: KMS saying no (policy, bad ciphertext, bad attestation, missing key) is `KmsRefused`, with
KMS's message and what to do; KMS or the network failing (throttling, 5xx, timeouts) is a plain
`InfraError`. Both are InfraError because for the caller of the sidecar either means "not ready".
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import json
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import botocore.session
from botocore.config import Config
from botocore.credentials import CredentialProvider, Credentials, DeferredRefreshableCredentials

from clave.core.errors import InfraError

ATTESTATION_PREFIX = "kms:RecipientAttestation:"

# KMS answers that retrying cannot fix; everything else (throttling, 5xx, timeouts) is transient.
REFUSALS = frozenset(
    {
        "AccessDeniedException",
        "DisabledException",
        "IncorrectKeyException",
        "InvalidCiphertextException",
        "InvalidGrantTokenException",
        "InvalidKeyUsageException",
        "KMSInvalidStateException",
        "MalformedPolicyDocumentException",
        "NotFoundException",
        "UnsupportedOperationException",
        "ValidationException",
        "SerializationException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "MissingAuthenticationTokenException",
        "IncompleteSignatureException",
    }
)

REMEDIES = {
    "AccessDeniedException": (
        "KMS refused this enclave: the key policy's kms:RecipientAttestation conditions (PCR0/ImageSha384, "
        "PCR1, PCR2, PCR8 …) probably do not match the running enclave's measurements, or the instance role "
        "is not the policy's principal. Compare `clave kms-policy` for this build with the key policy."
    ),
    "NotFoundException": "check --kms-key-id and the region: KMS does not know this key",
    "InvalidCiphertextException": "the stored wrapped data key is not from this KMS key; restore the datadir",
    "IncorrectKeyException": "the stored wrapped data key belongs to another KMS key; check --kms-key-id",
    "ValidationException": "KMS rejected the request or the attestation document (stale or unverifiable?)",
    "DisabledException": "enable the KMS key",
    "UnrecognizedClientException": (
        "KMS does not know these credentials; with the local emulator, pass its credentials.json "
        "(CLAVE_KMS_CREDENTIALS, or `clave up`, which does it)"
    ),
    "InvalidSignatureException": "the request signature is wrong: check the credentials and the clock",
    "KMSInvalidStateException": "the KMS key is pending deletion or disabled; cancel deletion / enable it",
}
_NOT_KMS = "check that --kms-endpoint (if set) is AWS KMS or the local emulator"


class KmsRefused(InfraError):
    """KMS answered and said no; `kms_code` is its error code (e.g. AccessDeniedException)."""

    remedy = "see the KMS error code in the message and the key's policy and state in AWS"

    def __init__(self, kms_code: str, message: str, remedy: str = "") -> None:
        super().__init__(message, remedy)
        self.kms_code = kms_code


def make_kms_client(
    region: str, endpoint_url: str | None = None, credentials_file: Path | None = None, ca_file: Path | None = None
) -> Any:
    """A boto3 KMS client. With `endpoint_url` (the local emulator) it signs with the emulator's credentials.

    The emulator refuses any request not SigV4-signed with the access key in its 0600 credentials file
    (`clave.dev.kmsemu.auth`); `credentials_file` (default: $CLAVE_KMS_CREDENTIALS) is that file. It is
    read when the first request is signed and again every few minutes, so the sidecar may start before
    the emulator has written it. A developer's own AWS credentials are never used against an emulator.
    `ca_file` is the emulator's dev CA (it serves TLS only).
    """
    config = Config(
        retries={"max_attempts": 4, "mode": "standard"},  # standard mode retries throttling and 5xx
        connect_timeout=5,
        read_timeout=30,
    )
    if endpoint_url is None:
        return boto3.client("kms", region_name=region, config=config)
    credentials_file = _emulator_credentials_file(credentials_file)
    session = botocore.session.Session()
    provider = _EmulatorCredentialProvider(credentials_file)
    session.get_component("credential_provider").insert_before("env", provider)
    client = boto3.Session(botocore_session=session).client(
        "kms", region_name=region, endpoint_url=endpoint_url, config=config,
        verify=str(ca_file) if ca_file is not None else None,
    )
    if credentials_file is not None:
        check = _ProofCheck(endpoint_url, provider.load())
        client.meta.events.register("before-send.kms", check.sent)
        client.meta.events.register("before-parse.kms", check.answered)
    return client


def signing_credentials(endpoint_url: str | None, credentials_file: Path | None = None) -> Callable[[], Any]:
    """What signs the enclave's KMS requests: the instance role (boto3's default chain) against AWS, the
    emulator's credentials file against the emulator. Returns a function giving frozen credentials."""
    if endpoint_url is None:
        credentials = boto3.Session().get_credentials()
        if credentials is None:
            raise InfraError("KMS: no AWS credentials", remedy="attach an instance role to the parent instance")
    else:
        credentials = _EmulatorCredentialProvider(_emulator_credentials_file(credentials_file)).load()
    return credentials.get_frozen_credentials  # type: ignore[no-any-return]


def _emulator_credentials_file(path: Path | None) -> Path | None:
    if path is None and os.environ.get(CREDENTIALS_ENV):
        return Path(os.environ[CREDENTIALS_ENV])
    return path


CREDENTIALS_ENV = "CLAVE_KMS_CREDENTIALS"
_CREDENTIALS_TTL = datetime.timedelta(minutes=5)
PROOF_HEADER = "X-Clave-Emulator-Proof"
_SIGNATURE = re.compile(r"Signature=([0-9a-f]{64})")


def response_proof(secret: str, request_signature: str, response_body: bytes) -> str:
    """The local emulator's proof that an answer comes from the holder of its secret: an HMAC over the
    request's SigV4 signature and the answer's body. A process that took the emulator's port while it was
    down never learns the secret, so the sidecar never takes a data key (or a refusal) from it."""
    message = b"clave-kmsemu-response\n" + request_signature.encode() + b"\n" + hashlib.sha256(response_body).digest()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


class NotTheEmulator(botocore.exceptions.BotoCoreError):
    fmt = (
        "the answer from {endpoint} does not carry the KMS emulator's proof (HTTP {status}): another process "
        "holds the emulator's port, or the emulator has other credentials"
    )


class _ProofCheck:
    """botocore hooks: remember each request's signature (before-send), check the answer's proof (before-parse).

    One API call sends and parses on one thread, so the signature is kept per thread."""

    def __init__(self, endpoint: str, credentials: Credentials) -> None:
        self._endpoint, self._credentials = endpoint, credentials
        self._local = threading.local()

    def sent(self, request: Any, **_: Any) -> None:
        auth = request.headers.get("Authorization", b"")
        match = _SIGNATURE.search(auth.decode() if isinstance(auth, bytes) else str(auth))
        self._local.signature = match.group(1) if match else ""

    def answered(self, response_dict: dict[str, Any], **_: Any) -> None:
        signature = getattr(self._local, "signature", "")
        body = response_dict.get("body", b"")
        claimed = str(response_dict.get("headers", {}).get(PROOF_HEADER, ""))
        secret = self._credentials.get_frozen_credentials().secret_key
        expected = response_proof(secret, signature, body if isinstance(body, bytes) else b"")
        if not (signature and hmac.compare_digest(claimed.encode(), expected.encode())):
            raise NotTheEmulator(endpoint=self._endpoint, status=response_dict.get("status_code"))


class _EmulatorCredentialProvider(CredentialProvider):  # type: ignore[misc]
    """The local emulator's credentials file; without one, fixed dummies (the emulator refuses them)."""

    METHOD = "clave-kms-emulator-file"
    CANONICAL_NAME = "clave-kms-emulator-file"

    def __init__(self, path: Path | None) -> None:
        super().__init__()
        self._credentials = self._make(path)

    def load(self) -> Credentials:
        return self._credentials  # one object: the signer and the proof check see the same secret

    def _make(self, path: Path | None) -> Credentials:
        if path is None:
            return Credentials("clave-local", "clave-local", method=self.METHOD)

        def refresh() -> dict[str, Any]:
            try:
                data = json.loads(path.read_text())
                access, secret = data["aws_access_key_id"], data["aws_secret_access_key"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise botocore.exceptions.CredentialRetrievalError(
                    provider=self.METHOD, error_msg=f"cannot read the KMS emulator credentials {path}: {exc}"
                ) from None
            expiry = datetime.datetime.now(datetime.UTC) + _CREDENTIALS_TTL
            return {"access_key": access, "secret_key": secret, "token": None, "expiry_time": expiry.isoformat()}

        return DeferredRefreshableCredentials(refresh_using=refresh, method=self.METHOD)


async def call_kms(client: Any, op: str, **params: Any) -> dict[str, Any]:
    """Call KMS operation `op` (its API name, e.g. "CreateKey") with boto3 in a worker thread, so the loop never
    blocks; errors become KmsRefused (KMS said no) or InfraError (transient)."""
    method = getattr(client, re.sub(r"(?<!^)(?=[A-Z])", "_", op).lower())
    try:
        return await asyncio.to_thread(method, **params)  # type: ignore[no-any-return]
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _map_error(op, exc) from None


def _map_error(op: str, exc: Exception) -> InfraError:
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "Unknown"))
        message = str(err.get("Message", ""))
        if code in REFUSALS:
            return KmsRefused(code, f"KMS {op} refused: {code}: {message}", REMEDIES.get(code, ""))
        return InfraError(f"KMS {op} failed: {code}: {message}", remedy="transient KMS error; it is retried")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return InfraError(
            f"KMS {op}: no AWS credentials", remedy="attach an instance role to the parent instance"
        )
    if isinstance(exc, NotTheEmulator):
        return KmsRefused(
            "NotTheEmulator", f"KMS {op}: {exc}",
            "see the kms-emulator log: if its port is taken, stop that process (clave up restarts the emulator)",
        )
    if isinstance(exc, botocore.exceptions.CredentialRetrievalError):
        return InfraError(f"KMS {op}: {exc}", remedy="check that the KMS emulator has started and the file is readable")
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        return KmsRefused("ParamValidationError", f"KMS {op}: invalid request: {exc}")
    return InfraError(f"KMS {op} unreachable: {exc}", remedy="check network access to the KMS endpoint")


# --- key policy -----------------------------------------------------------------------------------

_HEX96 = re.compile(r"^[0-9a-fA-F]{96}$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}):(role|user)/.+$")
# What key administrators may do. Deliberately no Decrypt/GenerateDataKey/Encrypt/ReEncrypt and no
# CreateGrant (a grant could hand out Decrypt without the attestation conditions).
ADMIN_ACTIONS = [
    "kms:CreateAlias",
    "kms:DeleteAlias",
    "kms:UpdateAlias",
    "kms:Describe*",
    "kms:List*",
    "kms:Get*",
    "kms:PutKeyPolicy",
    "kms:Enable*",
    "kms:Disable*",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
    "kms:RevokeGrant",
    "kms:RetireGrant",
]


def key_policy(
    role_arn: str,
    pcrs: dict[int, str],
    image_sha384: str | None,
    *,
    admin_arn: str | None = None,
    allow_debug: bool = False,
) -> dict[str, Any]:
    """The KMS key policy that releases data keys only to an enclave with these measurements.

    `pcrs` maps PCR index → 96 hex chars (as `nitro-cli describe-eif` prints them); `image_sha384`
    is the same value as PCR0 under KMS's other condition name. At least one must be given: a policy
    without attestation conditions would hand the data key to anything running with the role.
    The administrator statement (default: the role's account root, i.e. whoever IAM lets administer
    keys) can manage the key and its policy but not use it; KMS refuses policies that lock
    everyone out of PutKeyPolicy, hence it is always present. Pinning an all-zero PCR0–2 (what every
    debug-mode enclave reports) needs `allow_debug=True`.
    """
    match = _ROLE_ARN.match(role_arn)
    if match is None:
        raise ValueError(f"not an IAM role ARN: {role_arn!r}")
    conditions: dict[str, str] = {}

    def checked(name: str, value: str, measured_image: bool) -> str:
        if not isinstance(value, str) or not _HEX96.match(value):
            raise ValueError(f"{name} must be 96 hex characters")
        if measured_image and not allow_debug and not any(int(c, 16) for c in value):
            raise ValueError(f"{name} is all zeros, as every debug-mode enclave reports: refusing to pin it")
        return value.lower()

    if image_sha384 is not None:
        conditions[f"{ATTESTATION_PREFIX}ImageSha384"] = checked("image_sha384", image_sha384, True)
    for index in sorted(pcrs):
        if not 0 <= index < 32:
            raise ValueError(f"PCR index {index} is outside 0..31")
        conditions[f"{ATTESTATION_PREFIX}PCR{index}"] = checked(f"PCR{index}", pcrs[index], index <= 2)
    image = conditions.get(f"{ATTESTATION_PREFIX}ImageSha384")
    if image is not None and 0 in pcrs and image != conditions[f"{ATTESTATION_PREFIX}PCR0"]:
        raise ValueError("image_sha384 and PCR0 are the same measurement but differ: no enclave could match")
    if not conditions:
        raise ValueError("a key policy needs at least one PCR or the image SHA-384 to pin")
    admin = admin_arn or f"arn:aws:iam::{match.group(1)}:root"
    return {
        "Version": "2012-10-17",
        "Id": "clave-enclave-key",
        "Statement": [
            {
                "Sid": "KeyAdministration",
                "Effect": "Allow",
                "Principal": {"AWS": admin},
                "Action": ADMIN_ACTIONS,
                "Resource": "*",
            },
            {
                "Sid": "EnclaveUnseal",
                "Effect": "Allow",
                "Principal": {"AWS": role_arn},
                "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                "Resource": "*",
                "Condition": {"StringEqualsIgnoreCase": conditions},
            },
        ],
    }
