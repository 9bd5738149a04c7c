"""Custodian key files: an X25519 (HPKE) private key under a password, in the shape of a geth V3 keyfile.

    {"version": 1, "kind": "clave-custodian-key", "public": <hex>,
     "crypto": {"cipher": "aes-256-gcm", "cipherparams": {"nonce": <hex>}, "ciphertext": <hex>,
                "kdf": "scrypt", "kdfparams": {"n", "r", "p", "dklen": 32, "salt": <hex>}}}

The KDF is scrypt with V3's standard cost (n = 2^18, r = 8, p = 1); the cipher is AES-256-GCM (its tag
replaces V3's keccak MAC), with the public key as associated data so that swapping it is caught. Pure: the
caller reads and writes the file; randomness is injected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from clave.core.errors import RequestError

RandomSource = Callable[[int], bytes]
KIND = "clave-custodian-key"
SCRYPT_N = 1 << 18


class CustodianKeyError(RequestError):
    """A custodian key file that is malformed, or a wrong password."""


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(password.encode())


def encrypt_custodian_key(key: X25519PrivateKey, password: str, random: RandomSource, *, n: int = SCRYPT_N) -> dict[str, Any]:
    if not password:
        raise CustodianKeyError("a custodian key needs a non-empty password")
    salt, nonce = random(32), random(12)
    public = key.public_key().public_bytes_raw()
    ciphertext = AESGCM(_derive(password, salt, n, 8, 1)).encrypt(nonce, key.private_bytes_raw(), public)
    return {"version": 1, "kind": KIND, "public": public.hex(), "crypto": {
        "cipher": "aes-256-gcm", "cipherparams": {"nonce": nonce.hex()}, "ciphertext": ciphertext.hex(),
        "kdf": "scrypt", "kdfparams": {"n": n, "r": 8, "p": 1, "dklen": 32, "salt": salt.hex()}}}


def custodian_public(document: Any) -> bytes:
    if not isinstance(document, dict) or document.get("kind") != KIND or document.get("version") != 1:
        raise CustodianKeyError("not a clave custodian key file (version 1)")
    try:
        public = bytes.fromhex(document["public"])
    except (KeyError, TypeError, ValueError):
        raise CustodianKeyError("custodian key file: malformed public key") from None
    if len(public) != 32:
        raise CustodianKeyError("custodian key file: malformed public key")
    return public


def decrypt_custodian_key(document: Any, password: str) -> X25519PrivateKey:
    public = custodian_public(document)
    try:
        crypto = document["crypto"]
        params = crypto["kdfparams"]
        salt, nonce = bytes.fromhex(params["salt"]), bytes.fromhex(crypto["cipherparams"]["nonce"])
        ciphertext = bytes.fromhex(crypto["ciphertext"])
        n, r, p = int(params["n"]), int(params["r"]), int(params["p"])
    except (KeyError, TypeError, ValueError):
        raise CustodianKeyError("custodian key file: malformed crypto section") from None
    if crypto.get("kdf") != "scrypt" or crypto.get("cipher") != "aes-256-gcm" or not 1 < n <= 1 << 20 or r > 16 or p > 4:
        raise CustodianKeyError("custodian key file: unsupported kdf or cipher")
    try:
        raw = AESGCM(_derive(password, salt, n, r, p)).decrypt(nonce, ciphertext, public)
    except InvalidTag:
        raise CustodianKeyError("custodian key file: wrong password (or the file was altered)") from None
    key = X25519PrivateKey.from_private_bytes(raw)
    if key.public_key().public_bytes_raw() != public:
        raise CustodianKeyError("custodian key file: the private key does not match the public key")
    return key
