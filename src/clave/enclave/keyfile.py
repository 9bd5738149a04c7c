"""geth V3 keyfiles, opened and written inside the enclave only.

eth-keyfile does the scrypt/pbkdf2 + AES-128-CTR + keccak-MAC work; this module adds geth's checks and
error texts (`accounts/keystore/passphrase.go`) so the CLI can tell operators what go-ethereum would.
"""

from __future__ import annotations

import json
from typing import Any

from eth_keyfile import create_keyfile_json, decode_keyfile_json

from clave.core.errors import RequestError
from clave.core.eth.secp256k1 import address_of
from clave.enclave.keys import key_from_secret

ERR_DECRYPT = "could not decrypt key with given password"


def decrypt_keyfile(keyfile_text: str, password: str) -> bytes:
    try:
        keyfile = json.loads(keyfile_text)
    except ValueError:
        raise RequestError("keyfile is not valid JSON") from None
    crypto = keyfile.get("crypto", keyfile.get("Crypto")) if isinstance(keyfile, dict) else None
    if not isinstance(crypto, dict):
        raise RequestError("keyfile has no crypto section")
    version = keyfile.get("version")
    if version != 3:
        raise RequestError(f"version not supported: {version}")
    if crypto.get("cipher") != "aes-128-ctr":
        raise RequestError(f"cipher not supported: {crypto.get('cipher')}")
    if crypto.get("kdf") not in ("scrypt", "pbkdf2"):
        raise RequestError(f"kdf not supported: {crypto.get('kdf')}")
    try:
        secret = bytes(decode_keyfile_json(keyfile, password.encode()))
    except ValueError as exc:
        if "MAC mismatch" in str(exc):
            raise RequestError(ERR_DECRYPT) from None
        raise RequestError(f"keyfile is malformed: {exc}") from None
    except (KeyError, TypeError):
        raise RequestError("keyfile is malformed") from None
    if len(secret) != 32:
        # geth left-pads short keys (see its 31_byte_key vector); longer ones are corrupt.
        if len(secret) > 32:
            raise RequestError("keyfile holds a key longer than 32 bytes")
        secret = secret.rjust(32, b"\x00")
    try:
        key = key_from_secret(secret)
    except ValueError:
        raise RequestError("keyfile holds an invalid secp256k1 key") from None
    claimed = _claimed_address(keyfile.get("address"))
    actual = address_of(key.public_key)
    if claimed is not None and claimed != actual:
        raise RequestError(f"key content mismatch: have account {actual.hex()}, want {claimed.hex()}")
    return secret


def encrypt_keyfile(secret: bytes, password: str) -> dict[str, Any]:
    """A standard V3 keyfile (scrypt N=2^18, r=8, p=1, as geth's StandardScryptN/P)."""
    return dict(create_keyfile_json(secret, password.encode(), kdf="scrypt", iterations=1 << 18))


def _claimed_address(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    digits = value.removeprefix("0x")
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        return None
    return raw if len(raw) == 20 else None
