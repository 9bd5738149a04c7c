"""Who may talk to the KMS emulator: whoever can read its credentials file, proven by AWS SigV4.

At its first start the emulator writes `credentials.json` (0600, in its 0700 datadir) with an access key
id and a secret key. Clients (`clave up`, the local-mode sidecar) hand those to boto3 as ordinary AWS
credentials, so botocore signs every request with SigV4. The emulator recomputes the signature with
botocore's own signer (`botocore.auth.SigV4Auth`) over what it received and compares in constant time;
the request's `X-Amz-Date` must be within `MAX_SKEW_S` of now. A request without a valid signature is
answered as KMS answers it (HTTP 400 MissingAuthenticationTokenException, UnrecognizedClientException,
InvalidSignatureException) before the operation is even looked up.

The other way round, every answer to a signed request carries `X-Clave-Emulator-Proof`, an HMAC with
the same secret over the request's signature and the answer's body; the sidecar's client checks it
(sidecar/trust/kms.py), so a process that took the emulator's port while it was down is refused too.

Why SigV4 and not a unix socket: boto3 reaches an endpoint over HTTP(S)/TCP only, and SigV4 is what
production KMS checks, so the sidecar's client is configured exactly as in production (credentials +
endpoint) and the loopback port needs no secrecy: knowing it is not enough to be served.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from clave.dev.kmsemu.store import KmsFault
from clave.sidecar.secretfiles import write_private
from clave.sidecar.trust.kms import PROOF_HEADER, response_proof

__all__ = ["PROOF_HEADER", "EmulatorCredentials", "SigV4Verifier", "credentials_path", "ensure_credentials"]

CREDENTIALS_FILE = "credentials.json"
SERVICE = "kms"
ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW_S = 5 * 60  # what AWS allows between the signer's clock and its own

_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<akid>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)/(?P<service>[^/,\s]+)"
    r"/aws4_request,\s*SignedHeaders=(?P<signed>[a-z0-9;\-]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)


@dataclass(frozen=True)
class EmulatorCredentials:
    access_key_id: str
    secret_access_key: str = ""

    def __repr__(self) -> str:  # never print the secret
        return f"EmulatorCredentials(access_key_id={self.access_key_id!r})"


def credentials_path(datadir: Path) -> Path:
    return Path(datadir) / CREDENTIALS_FILE


def load_credentials(path: Path) -> EmulatorCredentials:
    """Read a credentials file; ValueError when it is not one, OSError when it cannot be read."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a KMS emulator credentials file")
    akid, secret = data.get("aws_access_key_id"), data.get("aws_secret_access_key")
    if not (isinstance(akid, str) and isinstance(secret, str) and akid and len(secret) >= 32):
        raise ValueError(f"{path}: not a KMS emulator credentials file")
    return EmulatorCredentials(akid, secret)


def ensure_credentials(datadir: Path) -> EmulatorCredentials:
    """The emulator's credentials, created (0600) on first use; an existing file is kept."""
    datadir = Path(datadir)
    datadir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = credentials_path(datadir)
    if not path.exists():
        creds = EmulatorCredentials(
            "AKIACLAVE" + secrets.token_hex(6).upper()[:11],
            base64.b64encode(secrets.token_bytes(30)).decode(),
        )
        body = {"aws_access_key_id": creds.access_key_id, "aws_secret_access_key": creds.secret_access_key}
        write_private(path, json.dumps(body) + "\n", replace=False)
    os.chmod(path, 0o600)
    return load_credentials(path)


class SigV4Verifier:
    """Checks one request's SigV4 signature against the emulator's only credentials."""

    def __init__(self, credentials: EmulatorCredentials, region: str, clock: Callable[[], float]) -> None:
        self._creds = credentials
        self._region = region
        self._clock = clock

    def verify(self, method: str, host: str, path_qs: str, headers: dict[str, str], body: bytes) -> str:
        """The request's signature; KmsFault unless it is signed with our secret, for KMS, now."""
        lower = {k.lower(): v for k, v in headers.items()}
        auth = lower.get("authorization")
        if not auth:
            raise KmsFault("MissingAuthenticationTokenException", "Missing Authentication Token")
        match = _AUTH.match(auth.strip())
        if match is None:
            raise KmsFault("IncompleteSignatureException", "Authorization header is not an AWS4-HMAC-SHA256 signature")
        if not hmac.compare_digest(match["akid"].encode(), self._creds.access_key_id.encode()):
            raise KmsFault("UnrecognizedClientException", "The security token included in the request is invalid.")
        if match["service"] != SERVICE:
            raise KmsFault("InvalidSignatureException", f"Credential should be scoped to service {SERVICE}.")
        # Any region: the signing key is derived from the secret *and* the scope's region, so this costs no
        # security, and a sidecar configured for another region (--kms-region) still reaches the emulator.
        region = match["region"]
        amz_date = lower.get("x-amz-date", "")
        try:
            when = datetime.datetime.strptime(amz_date, SIGV4_TIMESTAMP).replace(tzinfo=datetime.UTC)
        except ValueError:
            raise KmsFault("IncompleteSignatureException", "X-Amz-Date is missing or malformed") from None
        if amz_date[:8] != match["date"]:
            raise KmsFault("InvalidSignatureException", "Date in Credential scope does not match X-Amz-Date")
        now = self._clock()
        if abs(now - when.timestamp()) > MAX_SKEW_S:
            raise KmsFault("InvalidSignatureException", f"Signature expired: {amz_date} is now earlier or later than allowed")
        signed = match["signed"].split(";")
        if not {"host", "x-amz-date", "x-amz-target"} <= set(signed):  # the operation is part of what is signed
            raise KmsFault("InvalidSignatureException", "SignedHeaders must include host, x-amz-date and x-amz-target")
        digest = hashlib.sha256(body).hexdigest()
        claimed = lower.get("x-amz-content-sha256")
        if claimed is not None and not hmac.compare_digest(claimed.encode(), digest.encode()):
            raise KmsFault("InvalidSignatureException", "X-Amz-Content-SHA256 does not match the body")
        request_headers: dict[str, str] = {}
        for name in signed:
            if name == "host":
                request_headers["host"] = host
            elif name in lower:
                request_headers[name] = lower[name]
            else:
                raise KmsFault("InvalidSignatureException", f"signed header {name} is missing")
        # Recompute with botocore's own signer, over exactly the headers the client said it signed.
        request = AWSRequest(method=method, url=f"http://{host}{path_qs}", headers=request_headers, data=body)
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(
            Credentials(self._creds.access_key_id, self._creds.secret_access_key), SERVICE, region
        )
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected.encode(), match["signature"].encode()):
            raise KmsFault(
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided.",
            )
        return expected

    def proof(self, request_signature: str, response_body: bytes) -> str:
        """What the answer carries in PROOF_HEADER: that it comes from the holder of the secret too."""
        return response_proof(self._creds.secret_access_key, request_signature, response_body)

