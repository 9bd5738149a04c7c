"""The parent's part of the enclave's KMS calls: sign the request the enclave wrote, and say where the proxy is.

The enclave writes each request (GenerateDataKey or Decrypt, with its own attestation as `Recipient`),
the sidecar adds a SigV4 signature made with its credentials (the instance role; in local mode the
emulator's), and the enclave sends it over its own TLS session through the proxy (AWS's vsock-proxy on
Nitro, `vsock://3:8000` by default; the emulator's TCP port locally) and reads the answer. The sidecar
learns the key's ARN, the wrapped key to store (first provisioning), or KMS's refusal; never the key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from clave.core.errors import RequestError
from clave.sidecar.signing.enclave_client import SLOW_TIMEOUT, EnclaveClient
from clave.sidecar.trust.kms import REMEDIES, KmsRefused

DEFAULT_PROXY = "vsock://3:8000"  # vsock-proxy on the parent (CID 3), forwarding to KMS's port 443
SIGNED_BY_PARENT = ("Authorization", "X-Amz-Date", "X-Amz-Security-Token")


@dataclass(frozen=True)
class KmsLoad:
    """What the parent learns when the enclave has loaded its master key."""

    key_arn: str
    ciphertext_blob: bytes | None  # GenerateDataKey: the wrapped data key to store


def enclave_endpoint(region: str, endpoint_url: str | None) -> tuple[str, str]:
    """(KMS endpoint name the enclave talks TLS to, proxy address it connects through). Against the local
    emulator both come from its URL; against AWS it is the region's public endpoint through vsock-proxy."""
    if endpoint_url is None:
        return f"kms.{region}.amazonaws.com", DEFAULT_PROXY
    parts = urlsplit(endpoint_url)
    if parts.scheme != "https" or not parts.hostname or parts.port is None:
        raise ValueError(f"--kms-endpoint {endpoint_url!r}: the enclave reaches KMS over TLS: expected https://HOST:PORT")
    return parts.netloc, f"tcp://{parts.hostname}:{parts.port}"


class EnclaveKms:
    """The sidecar's SealingProvider: the master key travels from KMS to the enclave without touching us."""

    def __init__(self, credentials: Callable[[], Any], region: str, endpoint: str, proxy: str) -> None:
        self._credentials = credentials  # frozen credentials, fresh for each signature (instance roles rotate)
        self._region = region
        self.endpoint = endpoint
        self.proxy = proxy

    async def generate_data_key(self, enclave: EnclaveClient, key_id: str) -> KmsLoad:
        return await self._load(enclave, "GenerateDataKey", {"key_id": key_id})

    async def decrypt(self, enclave: EnclaveClient, key_id: str, ciphertext_blob: bytes) -> KmsLoad:
        return await self._load(enclave, "Decrypt", {"key_id": key_id, "ciphertext_blob": ciphertext_blob})

    async def _load(self, enclave: EnclaveClient, operation: str, params: dict[str, Any]) -> KmsLoad:
        try:
            prepared = await enclave.call(
                "kms_prepare", {"operation": operation, "endpoint": self.endpoint, **params}, timeout=SLOW_TIMEOUT
            )
            auth = await asyncio.to_thread(self.sign, prepared)
            result = await enclave.call(
                "kms_send", {"call_id": prepared["call_id"], "proxy": self.proxy, "auth": auth}, timeout=SLOW_TIMEOUT
            )
        except RequestError as exc:
            raise KmsRefused(
                "EnclaveKms", f"KMS {operation} through the enclave: {exc.message}",
                f"check that {self.proxy} forwards to {self.endpoint}:443 (vsock-proxy on Nitro) and that the "
                "enclave image is current",
            ) from None
        refused = result.get("refused")
        if refused is not None:
            code, message = str(refused.get("code", "")), str(refused.get("message", ""))
            raise KmsRefused(code, f"KMS {operation} refused: {code}: {message}", REMEDIES.get(code, ""))
        return KmsLoad(str(result["key_arn"]), result.get("ciphertext_blob"))

    def sign(self, prepared: dict[str, Any]) -> dict[str, str]:
        """SigV4 headers for exactly the request the enclave wrote (its headers and body, unchanged)."""
        request = AWSRequest(
            method="POST", url=f"https://{prepared['endpoint']}/", data=prepared["body"], headers=dict(prepared["headers"])
        )
        SigV4Auth(self._credentials(), "kms", self._region).add_auth(request)
        return {name: str(request.headers[name]) for name in SIGNED_BY_PARENT if name in request.headers}
