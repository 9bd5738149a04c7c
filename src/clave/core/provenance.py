"""Master-key provenance: the commitment to the enclave's master key that its attestation documents carry.

The enclave takes one master key per boot, from KMS over its own TLS session (a second exchange is refused
before anything is sent) and, once it holds one, puts a commitment to it into the `user_data` of every attestation document. The NSM
signs `user_data` with the rest of the document, so the parent cannot forge it. The sidecar pins the
commitment of its store's key (store meta `master_commitment`) and refuses an enclave that reports another
one (or none while it says it is ready); the CLI checks it before sealing a secret to the enclave.

The commitment is HMAC-SHA256 keyed by the master key over a fixed label: a PRF output, so it says
nothing about the key, and the same key always gives the same commitment (boot after boot).

`user_data` is the CBOR map `{"v": 1, "master": <32 bytes>}`, or absent while no key is loaded; once the
enclave holds an operator admin set (export authorization), the map also has `"admins": <32 bytes>`, the
`admin_set_hash` of it. `"kms"` is the ARN of the KMS key that released the master key: the enclave reads
it from KMS's answer inside its own TLS session (`enclave/kms.py`), so the parent cannot choose it; the
sidecar pins it (store meta `kms_key_arn`) and `clave attest` shows it. `"recovery"` (only in the document
`recovery_start` returns) is the enclave's one-time X25519 recovery key (`enclave/backup.py`): custodians
seal their backup shares to it after checking the document. `"policy"` is the custody state (K, sequence,
freeze, the policy's hash; `enclave/policy.py`) and `"audit"` the key that signs this boot's audit-log
checkpoints (`enclave/audit.py`).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import cbor2

from clave.core.errors import RequestError

USER_DATA_VERSION = 1
COMMITMENT_LABEL = b"clave/master-commitment/v1"
COMMITMENT_SIZE = 32
MAX_USER_DATA = 512  # the NSM spec's limit for user_data (hardware accepts 1024); ours is under 200 bytes


class ProvenanceError(RequestError):
    """An attestation document's `user_data` is not a clave provenance map."""


def master_commitment(master_key: bytes) -> bytes:
    """The public commitment to `master_key` (32 bytes)."""
    return hmac.new(master_key, COMMITMENT_LABEL, hashlib.sha256).digest()


ADMINS_LABEL = b"clave/admin-set/v1"
MAX_ADMINS = 16


def admin_set_hash(admins: list[bytes] | tuple[bytes, ...] | frozenset[bytes]) -> bytes:
    """SHA-256 over the sorted 20-byte admin addresses, under a label."""
    return hashlib.sha256(ADMINS_LABEL + b"".join(sorted(admins))).digest()


def export_message(address: bytes, challenge: bytes) -> bytes:
    """The text an admin signs (EIP-191 personal message) to authorize one export of `address`."""
    return f"clave: authorize export of 0x{address.hex()} (challenge 0x{challenge.hex()})".encode()


MAX_ARN = 2048


def encode_user_data(
    master: bytes | None, admins: bytes | None = None, *, kms: str | None = None, recovery: bytes | None = None,
    policy: dict[str, Any] | None = None, audit: bytes | None = None,
) -> bytes | None:
    """The `user_data` an enclave holding a key with commitment `master` (released by the KMS key `kms`, and an
    admin set with hash `admins`) attests to (None: no key yet). `recovery`: a recovery ceremony's one-time
    X25519 key (enclave/backup.py). `policy`: the custody state (threshold "k", sequence "seq", "frozen", and
    the policy "hash" when one is in force; enclave/policy.py). `audit`: the public key that signs this
    boot's audit-log checkpoints (Ed25519, 32 bytes; enclave/audit.py)."""
    if master is None:
        return None
    if len(master) != COMMITMENT_SIZE:
        raise ValueError("a master-key commitment is 32 bytes")
    value: dict[str, Any] = {"v": USER_DATA_VERSION, "master": master}
    if admins is not None:
        value["admins"] = admins
    if kms is not None:
        value["kms"] = kms
    if recovery is not None:
        value["recovery"] = recovery
    if policy is not None:
        value["policy"] = policy
    if audit is not None:
        value["audit"] = audit
    return cbor2.dumps(value)


def decode_recovery(user_data: bytes | None) -> bytes | None:
    """The one-time X25519 recovery key (32 bytes) in `user_data`, or None."""
    value = _decode(user_data)
    recovery = None if value is None else value.get("recovery")
    if recovery is not None and (not isinstance(recovery, bytes) or len(recovery) != 32):
        raise ProvenanceError("attestation user_data: recovery must be a 32-byte X25519 key")
    return recovery


def decode_kms(user_data: bytes | None) -> str | None:
    """The ARN of the KMS key the enclave's master key came from, or None (no key, or none attested)."""
    value = _decode(user_data)
    kms = None if value is None else value.get("kms")
    if kms is not None and (not isinstance(kms, str) or not 0 < len(kms) <= MAX_ARN):
        raise ProvenanceError("attestation user_data: kms must be a key ARN")
    return kms


def decode_audit_key(user_data: bytes | None) -> bytes | None:
    """The audit checkpoint key in `user_data`, or None."""
    value = _decode(user_data)
    key = value.get("audit") if value is not None else None
    if key is not None and (not isinstance(key, bytes) or len(key) != 32):
        raise ProvenanceError("attestation user_data: audit must be 32 bytes")
    return key


def decode_policy(user_data: bytes | None) -> dict[str, Any] | None:
    """The custody state in `user_data` ("policy": k, seq, frozen, hash), or None without an admin set."""
    value = _decode(user_data)
    policy = value.get("policy") if value is not None else None
    if policy is not None and not isinstance(policy, dict):
        raise ProvenanceError("attestation user_data: policy must be a map")
    return policy


def decode_admins(user_data: bytes | None) -> bytes | None:
    """The admin-set hash in `user_data`, or None when the enclave holds no admin set."""
    value = _decode(user_data)
    if value is None:
        return None
    admins = value.get("admins")
    if admins is None:
        return None
    if not isinstance(admins, bytes) or len(admins) != COMMITMENT_SIZE:
        raise ProvenanceError("attestation user_data: admins must be 32 bytes")
    return admins


def decode_user_data(user_data: bytes | None) -> bytes | None:
    """The master-key commitment in an attestation document's `user_data`, or None when there is none
    (the enclave holds no master key yet). Anything else than clave's map is refused."""
    value = _decode(user_data)
    if value is None:
        return None
    master = value.get("master")
    if not isinstance(master, bytes) or len(master) != COMMITMENT_SIZE:
        raise ProvenanceError("attestation user_data: master must be 32 bytes")
    return master


def _decode(user_data: bytes | None) -> dict[str, Any] | None:
    if user_data is None or user_data == b"":
        return None
    if len(user_data) > MAX_USER_DATA:
        raise ProvenanceError("attestation user_data is too large")
    try:
        value: Any = cbor2.loads(user_data)
    except Exception:
        raise ProvenanceError("attestation user_data is not CBOR") from None
    if not isinstance(value, dict) or value.get("v") != USER_DATA_VERSION:
        raise ProvenanceError("attestation user_data is not a clave provenance map (v 1)")
    return value
