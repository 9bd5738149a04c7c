"""Envelopes: secrets the operator's CLI sends to the enclave through the sidecar.

The CLI encrypts a keyfile and its password to the enclave's per-boot RSA key (the one in its attestation
document) so that the sidecar relays them without being able to read them: RSA-OAEP-SHA256 wraps a fresh
AES-256-GCM key, which encrypts the CBOR payload. The RSA ciphertext is the associated data, so the two
halves cannot be recombined.
"""

from __future__ import annotations

import os
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clave.core.errors import RequestError

ENVELOPE_VERSION = 1
_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


class EnvelopeError(RequestError):
    pass


def seal_to(public_key_der: bytes, payload: dict[str, Any]) -> bytes:
    public_key = serialization.load_der_public_key(public_key_der)
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise EnvelopeError("enclave public key is not RSA")
    content_key = AESGCM.generate_key(bit_length=256)
    wrapped = public_key.encrypt(content_key, _OAEP)
    nonce = os.urandom(12)
    body = AESGCM(content_key).encrypt(nonce, cbor2.dumps(payload), wrapped)
    return cbor2.dumps([ENVELOPE_VERSION, wrapped, nonce, body])


def open_envelope(private_key: rsa.RSAPrivateKey, envelope: bytes) -> dict[str, Any]:
    try:
        version, wrapped, nonce, body = cbor2.loads(envelope)
        if version != ENVELOPE_VERSION:
            raise ValueError
        content_key = private_key.decrypt(wrapped, _OAEP)
        payload = cbor2.loads(AESGCM(content_key).decrypt(nonce, body, wrapped))
    except (InvalidTag, ValueError, TypeError):
        # One opaque error: the sidecar must not learn which step failed.
        raise EnvelopeError("envelope does not open: it was not made for this enclave boot") from None
    except Exception:
        raise EnvelopeError("envelope does not open: it was not made for this enclave boot") from None
    if not isinstance(payload, dict):
        raise EnvelopeError("envelope payload is not a map")
    return payload
