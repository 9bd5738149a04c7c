"""EIP-191 messages: `personal_sign` / `eth_sign` (version 0x45) and data with validator (version 0x00)."""

from __future__ import annotations

from clave.core.errors import RequestError
from clave.core.eth.hashing import keccak256

_PERSONAL_PREFIX = b"\x19Ethereum Signed Message:\n"


def personal_message(data: bytes) -> bytes:
    """accounts.TextHash preimage: the length is the decimal byte count of the decoded data."""
    if type(data) is not bytes:
        raise RequestError("message must be bytes")
    return _PERSONAL_PREFIX + str(len(data)).encode() + data


def text_hash(data: bytes) -> bytes:
    """accounts.TextHash: the digest a personal message is signed (and ecRecover'd) under."""
    return keccak256(personal_message(data))


def validator_message(validator: bytes, data: bytes) -> bytes:
    """clef's data/validator preimage: 0x19 0x00 || validator address || data."""
    if type(validator) is not bytes or len(validator) != 20:
        raise RequestError("validator address must be 20 bytes")
    if type(data) is not bytes:
        raise RequestError("message must be bytes")
    if not data:
        raise RequestError("message is undefined")  # clef's UnmarshalValidatorData refuses empty data
    return b"\x19\x00" + validator + data
