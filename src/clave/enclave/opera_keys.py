"""go-opera / sonic validator keys, born in the enclave.

go-opera and sonic sign consensus events with a key they load themselves from
`<keystore>/validator/c004…` (their `valkeystore`); neither has a remote-signer seam without a source
patch. So for validators clave gives provenance, a KMS-sealed backup and password custody, not key
isolation: the key is generated here, sealed under the master data key, and leaves the enclave only as
go-opera's keyfile, encrypted with a password the operator sent in an envelope. The node then holds the
plaintext key in memory for its whole life (README "Operate" says so plainly).

Validator records are deliberately not account records. Their origin, "validator", is not in
`sealing.ORIGINS`, so `EnclaveService.unseal` (the account path) refuses them: a validator key can never
become an account that signs transactions or messages through the clef API. Only the two handlers here
open them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from coincurve import PrivateKey
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eth_keyfile import create_keyfile_json

from clave.core.errors import InvalidParams
from clave.core.eth.secp256k1 import address_of
from clave.enclave import kdf_pool
from clave.enclave.keys import generate_secret, key_from_secret
from clave.enclave.sealing import RECORD_VERSION, RecordMeta, SealError, seal
from clave.enclave.state import EnclaveState

VALIDATOR_ORIGIN = "validator"
SECP256K1_TYPE = 0xC0  # validatorpk.Types.Secp256k1
# keystore.StandardScryptN / StandardScryptP, which go-opera's NewDefaultFileRawKeystore uses.
SCRYPT_N = 1 << 18
SCRYPT_SALT_BYTES = 32  # geth's EncryptDataV3 draws a 32-byte salt


def opera_pubkey(key: PrivateKey) -> bytes:
    """validatorpk.PubKey.Bytes(): the type byte 0xc0, then the 65-byte uncompressed point."""
    return bytes([SECP256K1_TYPE]) + key.public_key.format(compressed=False)


def opera_keyfile(secret: bytes, password: str) -> str:
    """go-opera's EncryptedKeyJSON, byte for byte as Go's json.Marshal writes it.

    eth-keyfile does the V3 crypto (scrypt, AES-128-CTR with dk[0:16], keccak(dk[16:32] ‖ ciphertext));
    the keys are reordered into geth's CryptoJSON field order (kdfparams is a Go map, so sorted).
    """
    raw = PrivateKey(secret).public_key.format(compressed=False)
    v3 = create_keyfile_json(secret, password.encode(), kdf="scrypt", iterations=SCRYPT_N, salt_size=SCRYPT_SALT_BYTES)
    c = v3["crypto"]
    crypto = {
        "cipher": c["cipher"],
        "ciphertext": c["ciphertext"],
        "cipherparams": {"iv": c["cipherparams"]["iv"]},
        "kdf": c["kdf"],
        "kdfparams": dict(sorted(c["kdfparams"].items())),
        "mac": c["mac"],
    }
    return json.dumps({"type": SECP256K1_TYPE, "pubkey": raw.hex(), "crypto": crypto}, separators=(",", ":"))


def seal_validator(master_key: bytes, secret: bytes, created: int) -> dict[str, Any]:
    key = key_from_secret(secret)
    return seal(master_key, RecordMeta(address_of(key.public_key), VALIDATOR_ORIGIN, False, created), secret)


def unseal_validator(master_key: bytes, record: Any) -> bytes:
    """Open a validator record. `sealing.unseal` would refuse it (origin not in ORIGINS), on purpose."""
    try:
        if not isinstance(record, dict) or record.get("v") != RECORD_VERSION:
            raise ValueError
        meta = RecordMeta(bytes(record["address"]), str(record["origin"]), bool(record["exportable"]),
                          int(record["created"]))
        nonce, ciphertext = bytes(record["nonce"]), bytes(record["ciphertext"])
    except (KeyError, TypeError, ValueError):
        raise SealError("malformed validator record") from None
    if meta.origin != VALIDATOR_ORIGIN or len(meta.address) != 20 or len(nonce) != 12:
        raise SealError("not a validator record")
    try:
        secret = AESGCM(master_key).decrypt(nonce, ciphertext, meta.associated_data())
    except InvalidTag:
        raise SealError(f"validator record 0x{meta.address.hex()} does not open under this key") from None
    try:
        matches = address_of(key_from_secret(secret).public_key) == meta.address
    except ValueError:
        matches = False
    if not matches:
        raise SealError("validator record address does not match its key")
    return secret


def _password(state: EnclaveState, params: dict[str, Any]) -> str:
    envelope = params.get("envelope")
    if not isinstance(envelope, bytes):
        raise InvalidParams("envelope: expected bytes")
    # The password comes sealed to this boot's RSA key, so the sidecar relays it without reading it.
    password = state.open_envelope(envelope).get("password")
    if not isinstance(password, str) or not password:
        raise InvalidParams("envelope must carry a non-empty password")
    return password


def validator_new(state: EnclaveState, params: dict[str, Any]) -> dict[str, Any]:
    """Generate a validator key; return its sealed record, its 0xc0… public key and its opera keyfile."""
    master = state.master()  # fail fast (not ready) before the scrypt work
    password = _password(state, params)
    secret = generate_secret(state.random)
    record = seal_validator(master, secret, state.now())
    keyfile = kdf_pool.run(opera_keyfile, secret, password)
    return {"record": record, "pubkey": opera_pubkey(PrivateKey(secret)), "keyfile": keyfile}


def validator_keyfile(state: EnclaveState, params: dict[str, Any]) -> dict[str, Any]:
    """Restore: write the keyfile again from a sealed record (lost keyfile, new host, new password)."""
    master = state.master()
    password = _password(state, params)
    secret = unseal_validator(master, params.get("record"))
    return {"pubkey": opera_pubkey(PrivateKey(secret)), "keyfile": kdf_pool.run(opera_keyfile, secret, password)}


def validator_handlers(state: EnclaveState) -> dict[str, Callable[[dict[str, Any]], Any]]:
    return {
        "validator_new": lambda params: validator_new(state, params),
        "validator_keyfile": lambda params: validator_keyfile(state, params),
    }

