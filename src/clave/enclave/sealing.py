"""Sealed key records: AES-256-GCM under the master data key, metadata bound as associated data.

A record is a CBOR map the parent stores and hands back; it cannot read or alter it. The associated data
binds the address and every metadata field, so swapping the ciphertexts of two records, flipping
`exportable`, or relabelling the origin makes unsealing fail instead of producing a usable key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clave.core.errors import RequestError

RECORD_VERSION = 1
ORIGINS = ("generated", "imported")


class SealError(RequestError):
    """A record does not open under this master key (corrupt, altered, or another key's record)."""


@dataclass(frozen=True)
class RecordMeta:
    address: bytes
    origin: str
    exportable: bool
    created: int  # unix seconds, informational

    def associated_data(self) -> bytes:
        return cbor2.dumps(
            ["clave-record", RECORD_VERSION, self.address, self.origin, self.exportable, self.created]
        )


def seal(master_key: bytes, meta: RecordMeta, secret: bytes) -> dict[str, Any]:
    nonce = os.urandom(12)
    ciphertext = AESGCM(master_key).encrypt(nonce, secret, meta.associated_data())
    return {
        "v": RECORD_VERSION,
        "address": meta.address,
        "origin": meta.origin,
        "exportable": meta.exportable,
        "created": meta.created,
        "nonce": nonce,
        "ciphertext": ciphertext,
    }


def record_meta(record: Any) -> RecordMeta:
    if not isinstance(record, dict) or record.get("v") != RECORD_VERSION:
        raise SealError("unsupported sealed record")
    try:
        meta = RecordMeta(
            address=bytes(record["address"]),
            origin=str(record["origin"]),
            exportable=bool(record["exportable"]),
            created=int(record["created"]),
        )
    except (KeyError, TypeError, ValueError):
        raise SealError("malformed sealed record") from None
    if len(meta.address) != 20 or meta.origin not in ORIGINS:
        raise SealError("malformed sealed record")
    return meta


def unseal(master_key: bytes, record: Any) -> tuple[RecordMeta, bytes]:
    meta = record_meta(record)
    nonce, ciphertext = record.get("nonce"), record.get("ciphertext")
    if not isinstance(nonce, bytes) or len(nonce) != 12 or not isinstance(ciphertext, bytes):
        raise SealError("malformed sealed record")
    try:
        secret = AESGCM(master_key).decrypt(nonce, ciphertext, meta.associated_data())
    except InvalidTag:
        raise SealError(f"sealed record for 0x{meta.address.hex()} does not open under this key") from None
    return meta, secret
