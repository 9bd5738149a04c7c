"""What admins sign to change the custody state, and the K-of-N check. Pure.

Each change is an EIP-712 message (domain `{"name": "clave", "version": "1"}`) naming the datadir's admin
set id and a sequence number that must exceed the enclave's current one, so a signed change cannot be
replayed, nor an older one re-applied:

    PolicyUpdate(bytes32 adminSetId, bytes32 policyHash, uint64 sequence)   K signatures
    Freeze(bytes32 adminSetId, uint64 sequence)                              one admin
    Unfreeze(bytes32 adminSetId, uint64 sequence)                            K signatures
    AuditAck(bytes32 adminSetId, uint64 sequence)                            one admin: accept an audit-log gap
    Approval(bytes32 adminSetId, bytes32 request)                            a rule's approvers: one transaction
    AdminChange(bytes32 adminSetId, bytes32 newAdminSetId, uint64 sequence)  K signatures: a new admin set and K

`request` is `approval_request(account, preimage)`: the exact transaction the enclave will sign, for whom.

`policyHash` is keccak256 of the canonical JSON of the document (`schema.canonical_json`).
`adminSetId` is `admin_set_id(admins, threshold)`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from clave.core.errors import RequestError
from clave.core.eth.hashing import keccak256
from clave.core.eth.secp256k1 import recover_address
from clave.core.eth.typed_data import typed_data_preimage

ADMIN_SET_ID_LABEL = b"clave/admin-set-id/v1"
MAX_SIGNATURES = 16
DOMAIN = {"name": "clave", "version": "1"}
_DOMAIN_TYPE = [{"name": "name", "type": "string"}, {"name": "version", "type": "string"}]
TYPES: dict[str, list[dict[str, str]]] = {
    "PolicyUpdate": [{"name": "adminSetId", "type": "bytes32"}, {"name": "policyHash", "type": "bytes32"},
                     {"name": "sequence", "type": "uint64"}],
    "Freeze": [{"name": "adminSetId", "type": "bytes32"}, {"name": "sequence", "type": "uint64"}],
    "Unfreeze": [{"name": "adminSetId", "type": "bytes32"}, {"name": "sequence", "type": "uint64"}],
    "AuditAck": [{"name": "adminSetId", "type": "bytes32"}, {"name": "sequence", "type": "uint64"}],
    "Approval": [{"name": "adminSetId", "type": "bytes32"}, {"name": "request", "type": "bytes32"}],
    "AdminChange": [{"name": "adminSetId", "type": "bytes32"}, {"name": "newAdminSetId", "type": "bytes32"},
                    {"name": "sequence", "type": "uint64"}],
}


class AuthorizationError(RequestError):
    """A custody change without the admin signatures it needs."""


def admin_set_id(admins: Iterable[bytes], threshold: int) -> bytes:
    """SHA-256 over the threshold and the sorted admin addresses, under a label: what admins sign for."""
    return hashlib.sha256(ADMIN_SET_ID_LABEL + bytes([threshold]) + b"".join(sorted(admins))).digest()


def policy_hash(canonical: bytes) -> bytes:
    return keccak256(canonical)


def approval_request(account: bytes, preimage: bytes) -> bytes:
    """What an approval names: keccak256(account ‖ keccak256(signing preimage of the transaction))."""
    return keccak256(account + keccak256(preimage))


def approval_message(set_id: bytes, request: bytes) -> dict[str, Any]:
    return {"types": {"EIP712Domain": _DOMAIN_TYPE, "Approval": TYPES["Approval"]}, "primaryType": "Approval",
            "domain": dict(DOMAIN), "message": {"adminSetId": "0x" + set_id.hex(), "request": "0x" + request.hex()}}


def approval_digest(set_id: bytes, request: bytes) -> bytes:
    return keccak256(typed_data_preimage(approval_message(set_id, request)))


def admin_change_message(set_id: bytes, new_set_id: bytes, sequence: int) -> dict[str, Any]:
    return {"types": {"EIP712Domain": _DOMAIN_TYPE, "AdminChange": TYPES["AdminChange"]},
            "primaryType": "AdminChange", "domain": dict(DOMAIN),
            "message": {"adminSetId": "0x" + set_id.hex(), "newAdminSetId": "0x" + new_set_id.hex(),
                        "sequence": sequence}}


def admin_change_digest(set_id: bytes, new_set_id: bytes, sequence: int) -> bytes:
    return keccak256(typed_data_preimage(admin_change_message(set_id, new_set_id, sequence)))


def typed_message(action: str, set_id: bytes, sequence: int, document_hash: bytes | None = None) -> dict[str, Any]:
    """The EIP-712 document (eth_signTypedData_v4 JSON shape) an admin signs for `action`."""
    if action not in TYPES or action in ("Approval", "AdminChange"):
        raise ValueError(f"unknown action {action}")
    message: dict[str, Any] = {"adminSetId": "0x" + set_id.hex(), "sequence": sequence}
    if action == "PolicyUpdate":
        if document_hash is None:
            raise ValueError("PolicyUpdate needs the policy hash")
        message["policyHash"] = "0x" + document_hash.hex()
    return {"types": {"EIP712Domain": _DOMAIN_TYPE, action: TYPES[action]}, "primaryType": action,
            "domain": dict(DOMAIN), "message": message}


def digest(action: str, set_id: bytes, sequence: int, document_hash: bytes | None = None) -> bytes:
    return keccak256(typed_data_preimage(typed_message(action, set_id, sequence, document_hash)))


def signers(message_digest: bytes, signatures: Any) -> set[bytes]:
    """The addresses that signed `message_digest` (65-byte r||s||v signatures, v 0/1/27/28)."""
    if not isinstance(signatures, list) or not 0 < len(signatures) <= MAX_SIGNATURES:
        raise AuthorizationError(f"signatures: expected 1..{MAX_SIGNATURES}")
    found: set[bytes] = set()
    for i, signature in enumerate(signatures):
        if not isinstance(signature, bytes) or len(signature) != 65:
            raise AuthorizationError(f"signatures[{i}]: expected 65 bytes")
        v = signature[64]
        recid = v - 27 if v in (27, 28) else v
        if recid not in (0, 1):
            raise AuthorizationError(f"signatures[{i}]: bad recovery id")
        try:
            found.add(recover_address(message_digest, signature[:64] + bytes([recid])))
        except Exception:
            raise AuthorizationError(f"signatures[{i}]: no signer can be recovered") from None
    return found


def require_admins(message_digest: bytes, signatures: Any, admins: Iterable[bytes], needed: int, what: str) -> list[bytes]:
    """The distinct admins who signed, or AuthorizationError unless there are at least `needed`."""
    admin_set = set(admins)
    found = signers(message_digest, signatures)
    strangers = sorted(found - admin_set)
    good = sorted(found & admin_set)
    if len(good) < needed:
        extra = f"; not admins: {', '.join('0x' + s.hex() for s in strangers)}" if strangers else ""
        raise AuthorizationError(f"{what} refused: {len(good)} admin signature(s), {needed} needed{extra}")
    return good
