"""What the enclave's handlers share: this boot's NSM, clock and RSA key, and the master key once loaded.

`EnclaveService` owns one `EnclaveState` and hands it to every group of handlers (its own, and the
validator handlers in `opera_keys`), so that no handler module reaches into another's internals.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from clave.core.envelope import open_envelope
from clave.core.errors import InfraError, RequestError
from clave.core.provenance import encode_user_data, master_commitment
from clave.enclave.admins import AdminSet
from clave.enclave.nitro import nsm as nsm_api


class NotReady(InfraError):
    """The master key is not loaded yet, so nothing can be sealed or unsealed."""

    remedy = "the sidecar loads the master key through KMS once it has attested the enclave; see its log"


class EnclaveState:
    def __init__(self, nsm: Any, clock: Callable[[], float] = time.time) -> None:
        self.nsm = nsm
        self.clock = clock
        # A fresh RSA key per boot: KMS encrypts the data key to it, the CLI encrypts keyfiles to it.
        self.boot_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.boot_public = self.boot_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.master_key: bytes | None = None
        self.commitment: bytes | None = None  # master_commitment(master_key), attested in user_data
        self.kms_key_arn: str | None = None  # the KMS key that released master_key (its answer's KeyId), attested
        self.admin_set = AdminSet()  # who may authorize exports; its hash is attested too
        self.policy_summary: Callable[[], dict[str, Any] | None] = lambda: None  # enclave/policy.py
        self.audit_key: bytes | None = None  # this boot's audit checkpoint key (enclave/audit.py)

    @property
    def ready(self) -> bool:
        return self.master_key is not None

    def master(self) -> bytes:
        """The master data key, or NotReady."""
        if self.master_key is None:
            raise NotReady("master key not loaded")
        return self.master_key

    def set_master(self, key: bytes, kms_key_arn: str) -> None:
        """Take this boot's master key, as KMS released it over this enclave's own TLS session: once. With
        one key per boot, the commitment attested in user_data names the only key this boot will ever seal
        under, and the ARN beside it the KMS key (and AWS account) it came from."""
        self.check_master_free()
        self.master_key = key
        self.commitment = master_commitment(key)
        self.kms_key_arn = kms_key_arn

    def check_master_free(self) -> None:
        """RequestError once this boot has its master key."""
        if self.master_key is not None:
            raise RequestError(
                "a master key is already loaded in this enclave boot; it takes one per boot "
                "(restart the enclave to load another)"
            )

    def user_data(self, recovery: bytes | None = None) -> bytes | None:
        """What attestation documents carry in user_data once a key is loaded: the master-key commitment, the
        KMS key, the admin set, the custody state and the audit key (and a recovery ceremony's key)."""
        return encode_user_data(
            self.commitment, self.admin_set.hash, kms=self.kms_key_arn, recovery=recovery,
            policy=self.policy_summary(), audit=self.audit_key,
        )

    def random(self, count: int) -> bytes:
        """`count` bytes from the NSM's random source."""
        return nsm_api.get_random(self.nsm, count)

    def open_envelope(self, envelope: bytes) -> dict[str, Any]:
        """A payload the CLI sealed to this boot's key (keyfile, password)."""
        return open_envelope(self.boot_key, envelope)

    def now(self) -> int:
        return int(self.clock())
