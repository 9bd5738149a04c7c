"""secp256k1 signing through libsecp256k1 (coincurve): RFC 6979 nonces, low-S.

Callers hand over a *preimage* produced by `enclave.encoding`; this module hashes it with keccak256 and
signs. Signing a digest the parent chose is possible only through `unsafe_sign_digest`, which nothing on
the request path uses.
"""

from __future__ import annotations

from typing import NamedTuple

from coincurve import PrivateKey

from clave.core.eth.hashing import keccak256 as keccak


class Signature(NamedTuple):
    y_parity: int
    r: int
    s: int

    def to_bytes(self, v_offset: int = 0) -> bytes:
        """65 bytes r‖s‖v with v = y_parity + v_offset (27 for EIP-191 results, 0 for raw)."""
        return self.r.to_bytes(32, "big") + self.s.to_bytes(32, "big") + bytes([self.y_parity + v_offset])


def sign_preimage(key: PrivateKey, preimage: bytes) -> tuple[Signature, bytes]:
    """Sign keccak256(preimage); return the signature and the digest."""
    digest = keccak(preimage)
    return unsafe_sign_digest(key, digest), digest


def unsafe_sign_digest(key: PrivateKey, digest: bytes) -> Signature:
    """Sign a 32-byte digest as is. Never call this with a digest the parent supplied."""
    sig = key.sign_recoverable(digest, hasher=None)
    return Signature(sig[64], int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"))

