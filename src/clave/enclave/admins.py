"""The operator admin set: who may authorize a keyfile export, and the single-use export challenges.

The set is fixed at datadir creation (or once, later, on a datadir that has none) and kept by the parent
only sealed under the master key (AES-256-GCM, the address list bound as associated data), so the parent
cannot alter it: an altered record does not open. The enclave takes one admin set per boot, and only in a
boot that holds no account key yet, so that nobody can give a running enclave an admin set of their own;
after that only K signatures of the current admins replace it (`replace`, checked in enclave/policy.py).
The threshold K is sealed with the set (record version 2). Its hash is attested in `user_data` next to the master-key commitment (`core/provenance.py`).

An export needs an EIP-191 signature by an admin over `export_message(address, challenge)`, where the
challenge is one this enclave issued for that address, at most `CHALLENGE_TTL` seconds ago, and not used
before (it is consumed by the first attempt, right or wrong).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clave.core.errors import InvalidParams, RequestError
from clave.core.eth.messages import text_hash
from clave.core.eth.secp256k1 import recover_address
from clave.core.provenance import MAX_ADMINS, admin_set_hash, export_message

ADMIN_RECORD_VERSION = 2  # 2 adds the threshold K (custody changes need K admin signatures); 1 reads as K = 1
CHALLENGE_TTL = 300  # seconds
MAX_CHALLENGES = 1024  # outstanding; the oldest are dropped beyond that


class NoAdminSet(RequestError):
    """No admin set in this boot: exports are refused (the message carries the remedy across the link)."""


def parse_admins(value: Any) -> tuple[bytes, ...]:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_ADMINS:
        raise InvalidParams(f"admins: expected 1..{MAX_ADMINS} addresses")
    if not all(isinstance(a, bytes) and len(a) == 20 for a in value) or len(set(value)) != len(value):
        raise InvalidParams("admins: expected distinct 20-byte addresses")
    return tuple(sorted(value))


def parse_threshold(value: Any, admins: tuple[bytes, ...]) -> int:
    """K of `--admin-threshold K`: 1..len(admins); absent means 1."""
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= len(admins):
        raise InvalidParams(f"threshold: expected 1..{len(admins)} (the number of admins)")
    return value


def _associated_data(admins: tuple[bytes, ...], threshold: int, version: int) -> bytes:
    if version == 1:
        return cbor2.dumps(["clave-admins", 1, list(admins)])
    return cbor2.dumps(["clave-admins", version, list(admins), threshold])


def seal_admins(master_key: bytes, admins: tuple[bytes, ...], threshold: int = 1) -> dict[str, Any]:
    nonce = os.urandom(12)
    tag = AESGCM(master_key).encrypt(nonce, b"", _associated_data(admins, threshold, ADMIN_RECORD_VERSION))
    return {"v": ADMIN_RECORD_VERSION, "admins": list(admins), "threshold": threshold, "nonce": nonce, "tag": tag}


def unseal_admins(master_key: bytes, record: Any) -> tuple[tuple[bytes, ...], int]:
    """The admin set and its threshold from a sealed record (version 1 records have K = 1)."""
    if not isinstance(record, dict) or record.get("v") not in (1, ADMIN_RECORD_VERSION):
        raise RequestError("unsupported admin-set record")
    version = record["v"]
    admins = parse_admins(record.get("admins"))
    threshold = 1 if version == 1 else parse_threshold(record.get("threshold"), admins)
    nonce, tag = record.get("nonce"), record.get("tag")
    if not isinstance(nonce, bytes) or len(nonce) != 12 or not isinstance(tag, bytes):
        raise RequestError("malformed admin-set record")
    try:
        AESGCM(master_key).decrypt(nonce, tag, _associated_data(admins, threshold, version))
    except InvalidTag:
        raise RequestError("the admin-set record does not open under this master key (altered?)") from None
    return admins, threshold


class AdminSet:
    """This boot's admin set (one per boot) and its outstanding export challenges."""

    def __init__(self) -> None:
        self.admins: tuple[bytes, ...] | None = None
        self.threshold = 1  # K: admin signatures a custody change needs (core/policy/authority.py)
        self._challenges: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()

    @property
    def hash(self) -> bytes | None:
        return admin_set_hash(self.admins) if self.admins is not None else None

    def set(self, admins: tuple[bytes, ...], threshold: int = 1) -> None:
        if self.admins is not None:
            raise RequestError("an admin set is already loaded in this enclave boot (one per boot)")
        self.admins = admins
        self.threshold = threshold

    def replace(self, admins: tuple[bytes, ...], threshold: int) -> None:
        """A new admin set, authorized by K signatures of the current one (enclave/policy.py checks them)."""
        self.require()
        self.admins = admins
        self.threshold = threshold
        self._challenges.clear()  # issued to the old set's authority

    def challenge(self, address: bytes, now: float) -> bytes:
        self.require()
        challenge = os.urandom(32)
        self._challenges[challenge] = (address, now + CHALLENGE_TTL)
        while len(self._challenges) > MAX_CHALLENGES:
            self._challenges.popitem(last=False)
        return challenge

    def require(self) -> tuple[bytes, ...]:
        if self.admins is None:
            raise NoAdminSet(
                "export refused: this enclave has no admin set (make one: `clave up --admin 0xADDR` on a new "
                "datadir, or `clave admin init --admin 0xADDR` once, then restart the enclave)"
            )
        return self.admins

    def authorize(self, address: bytes, challenge: Any, signature: Any, now: float) -> bytes:
        """The admin who authorized exporting `address`, or RequestError. The challenge is used up."""
        admins = self.require()
        if not isinstance(challenge, bytes) or not isinstance(signature, bytes) or len(signature) != 65:
            raise RequestError("export refused: it needs an admin's signature over an export challenge")
        issued = self._challenges.pop(challenge, None)
        if issued is None:
            raise RequestError("export refused: unknown or already used challenge")
        if issued[0] != address:
            raise RequestError("export refused: the challenge was issued for another address")
        if now > issued[1]:
            raise RequestError("export refused: the challenge has expired")
        v = signature[64]
        recid = v - 27 if v in (27, 28) else v
        if recid not in (0, 1):
            raise RequestError("export refused: bad signature")
        try:
            signer = recover_address(text_hash(export_message(address, challenge)), signature[:64] + bytes([recid]))
        except Exception:
            raise RequestError("export refused: bad signature") from None
        if signer not in admins:
            raise RequestError(f"export refused: 0x{signer.hex()} is not an admin")
        return signer
