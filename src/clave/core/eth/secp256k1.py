"""secp256k1 facts every side needs: the group order and Ethereum's address of a public key.

Signing itself lives in `enclave.signing`; recovery (account_ecRecover, checks in the tests) is here,
because it needs no key and both processes use it.
"""

from __future__ import annotations

from coincurve import PublicKey

from clave.core.eth.hashing import keccak256

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def address_of(public_key: PublicKey) -> bytes:
    """The 20-byte address: the last 20 bytes of keccak256 of the uncompressed point without its 0x04."""
    return keccak256(public_key.format(compressed=False)[1:])[-20:]


def recover_address(digest: bytes, signature: bytes) -> bytes:
    """The signer of a 32-byte digest, from a 65-byte r‖s‖recid signature (recid 0/1).

    Raises ValueError (or coincurve's Exception) when no public key can be recovered."""
    return address_of(PublicKey.from_signature_and_message(signature, digest, hasher=None))
