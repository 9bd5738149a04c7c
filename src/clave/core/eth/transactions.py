"""Transaction encoding for types 0-4, byte-for-byte what go-ethereum signs and marshals.

Input is the normalized transaction dict described in `enclave.encoding`. `signing_preimage` gives the
bytes whose keccak256 is signed; `encode_signed` gives `Transaction.MarshalBinary()` of the signed
transaction (legacy: RLP; typed: type byte || RLP; blob transactions in their plain form, no sidecar).

Both validate the dict first (`check_tx`): the enclave must never sign something it could not encode
the way geth does, and a parser bug in front of it must surface as a refusal, not as a signature.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from clave.core.errors import RequestError
from clave.core.eth.hashing import keccak256
from clave.core.eth.rlp import EMPTY_STRING, encode_bytes, encode_uint, wrap_list
from clave.core.eth.secp256k1 import SECP256K1_N

LEGACY, ACCESS_LIST, DYNAMIC_FEE, BLOB, SET_CODE = 0, 1, 2, 3, 4

_HALF_N = SECP256K1_N // 2
_UINT64 = 1 << 64
_UINT256 = 1 << 256

# Fields each type carries, besides "type". Key order is irrelevant; encoding order is in the encoders.
_BASE = ("chainId", "nonce", "gas", "value", "to", "data")
_FIELDS: dict[int, frozenset[str]] = {
    LEGACY: frozenset(_BASE + ("gasPrice",)),
    ACCESS_LIST: frozenset(_BASE + ("gasPrice", "accessList")),
    DYNAMIC_FEE: frozenset(_BASE + ("maxPriorityFeePerGas", "maxFeePerGas", "accessList")),
    BLOB: frozenset(
        _BASE
        + ("maxPriorityFeePerGas", "maxFeePerGas", "accessList", "maxFeePerBlobGas", "blobVersionedHashes")
    ),
    SET_CODE: frozenset(_BASE + ("maxPriorityFeePerGas", "maxFeePerGas", "accessList", "authorizationList")),
}
_ALL_FIELDS = frozenset({"type"}).union(*_FIELDS.values())
# Absent or None means "empty" for these; every other applicable field must be given explicitly, so that
# a dropped "to" can never silently turn a transfer into a contract creation.
_DEFAULT_EMPTY = frozenset({"accessList"})
_AUTH_FIELDS = ("chainId", "address", "nonce", "yParity", "r", "s")
_AUTH_BITS = {"chainId": 256, "nonce": 64, "yParity": 8, "r": 256, "s": 256}


def _uint(value: object, name: str, bits: int) -> int:
    if type(value) is not int:  # bool is an int subclass and must not pass
        raise RequestError(f"'{name}' must be an integer")
    if value < 0:
        raise RequestError(f"invalid negative value for '{name}'")
    if value >> bits:
        raise RequestError(f"'{name}' value overflows uint{bits}")
    return value


def _fixed_bytes(value: object, name: str, size: int) -> bytes:
    if type(value) is not bytes or len(value) != size:
        raise RequestError(f"'{name}' must be {size} bytes")
    return value


def _check_access_list(value: object) -> None:
    if not isinstance(value, list):
        raise RequestError("'accessList' must be a list")
    for i, entry in enumerate(value):
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise RequestError(f"'accessList[{i}]' must be an (address, storageKeys) pair")
        _fixed_bytes(entry[0], f"accessList[{i}].address", 20)
        keys = entry[1]
        if not isinstance(keys, list):
            raise RequestError(f"'accessList[{i}].storageKeys' must be a list")
        for j, key in enumerate(keys):
            _fixed_bytes(key, f"accessList[{i}].storageKeys[{j}]", 32)


def _check_blob_hashes(value: object) -> None:
    if not isinstance(value, list):
        raise RequestError("'blobVersionedHashes' must be a list")
    if not value:
        raise RequestError("blob transaction missing blob hashes")  # core.ErrMissingBlobHashes
    for i, h in enumerate(value):
        _fixed_bytes(h, f"blobVersionedHashes[{i}]", 32)
        if h[0] != 0x01:  # kzg4844.IsValidVersionedHash
            raise RequestError(f"blob {i} has invalid hash version")


def _check_auth_list(value: object) -> None:
    if not isinstance(value, list):
        raise RequestError("'authorizationList' must be a list")
    if not value:
        raise RequestError("EIP-7702 transaction with empty auth list")  # core.ErrEmptyAuthList
    for i, auth in enumerate(value):
        if not isinstance(auth, Mapping):
            raise RequestError(f"'authorizationList[{i}]' must be an object")
        extra = set(auth) - set(_AUTH_FIELDS)
        if extra:
            raise RequestError(f"unknown field '{sorted(extra)[0]}' in authorizationList[{i}]")
        for name in _AUTH_FIELDS:
            if auth.get(name) is None:
                raise RequestError(f"missing required field '{name}' for SetCodeAuthorization")
            if name == "address":
                _fixed_bytes(auth[name], f"authorizationList[{i}].address", 20)
            else:
                _uint(auth[name], f"authorizationList[{i}].{name}", _AUTH_BITS[name])


def check_tx(tx: Mapping[str, Any]) -> None:
    """Raise RequestError unless `tx` is a well-formed normalized transaction clave can sign."""
    if not isinstance(tx, Mapping):
        raise RequestError("transaction must be an object")
    t = tx.get("type")
    if type(t) is not int or t not in _FIELDS:
        raise RequestError("transaction type not supported")  # types.ErrTxTypeNotSupported
    fields = _FIELDS[t]
    for key, value in tx.items():
        if key not in fields and key != "type":
            if key not in _ALL_FIELDS:
                raise RequestError(f"unknown transaction field '{key}'")
            if value is not None:
                raise RequestError(f"field '{key}' does not apply to type {t} transactions")
    for key in fields:
        if key not in _DEFAULT_EMPTY and key != "to" and tx.get(key) is None:
            raise RequestError(f"missing required field '{key}' in transaction")
    if "to" not in tx:
        raise RequestError("missing required field 'to' in transaction (use None for contract creation)")

    if _uint(tx["chainId"], "chainId", 256) == 0:
        raise RequestError("'chainId' must not be zero")
    _uint(tx["nonce"], "nonce", 64)
    _uint(tx["gas"], "gas", 64)
    _uint(tx["value"], "value", 256)
    for fee in ("gasPrice", "maxPriorityFeePerGas", "maxFeePerGas", "maxFeePerBlobGas"):
        if fee in fields:
            _uint(tx[fee], fee, 256)
    to = tx["to"]
    if to is None:
        if t == BLOB:
            raise RequestError("blob transaction of type create")  # core.ErrBlobTxCreate
        if t == SET_CODE:
            raise RequestError("EIP-7702 transaction cannot be used to create contract")  # ErrSetCodeTxCreate
    else:
        _fixed_bytes(to, "to", 20)
    if type(tx["data"]) is not bytes:
        raise RequestError("'data' must be bytes")
    if t != LEGACY and tx.get("accessList") is not None:
        _check_access_list(tx["accessList"])
    if t == BLOB:
        _check_blob_hashes(tx["blobVersionedHashes"])
    elif t == SET_CODE:
        _check_auth_list(tx["authorizationList"])


def _enc_to(to: bytes | None) -> bytes:
    return EMPTY_STRING if to is None else b"\x94" + to


def _enc_access_list(access_list: list[tuple[bytes, list[bytes]]] | None) -> bytes:
    if not access_list:
        return b"\xc0"
    return wrap_list(
        b"".join(
            wrap_list(b"\x94" + address + wrap_list(b"".join(b"\xa0" + key for key in keys)))
            for address, keys in access_list
        )
    )


def _enc_auth_list(auths: list[Mapping[str, Any]]) -> bytes:
    return wrap_list(
        b"".join(
            wrap_list(
                encode_uint(a["chainId"])
                + b"\x94"
                + a["address"]
                + encode_uint(a["nonce"])
                + encode_uint(a["yParity"])
                + encode_uint(a["r"])
                + encode_uint(a["s"])
            )
            for a in auths
        )
    )


def _legacy_head(tx: Mapping[str, Any]) -> bytes:
    return (
        encode_uint(tx["nonce"])
        + encode_uint(tx["gasPrice"])
        + encode_uint(tx["gas"])
        + _enc_to(tx["to"])
        + encode_uint(tx["value"])
        + encode_bytes(tx["data"])
    )


def _typed_fields(tx: Mapping[str, Any]) -> bytes:
    """The unsigned field list of a typed transaction, encoded and concatenated (no list header)."""
    t = tx["type"]
    if t == ACCESS_LIST:
        fees = encode_uint(tx["gasPrice"])
    else:
        fees = encode_uint(tx["maxPriorityFeePerGas"]) + encode_uint(tx["maxFeePerGas"])
    out = (
        encode_uint(tx["chainId"])
        + encode_uint(tx["nonce"])
        + fees
        + encode_uint(tx["gas"])
        + _enc_to(tx["to"])
        + encode_uint(tx["value"])
        + encode_bytes(tx["data"])
        + _enc_access_list(tx.get("accessList"))
    )
    if t == BLOB:
        hashes = b"".join(b"\xa0" + h for h in tx["blobVersionedHashes"])
        out += encode_uint(tx["maxFeePerBlobGas"]) + wrap_list(hashes)
    elif t == SET_CODE:
        out += _enc_auth_list(tx["authorizationList"])
    return out


def signing_preimage(tx: Mapping[str, Any]) -> bytes:
    """The bytes whose keccak256 the sender signs (EIP-155 for legacy, EIP-2718 for typed)."""
    check_tx(tx)
    t = tx["type"]
    if t == LEGACY:
        return wrap_list(_legacy_head(tx) + encode_uint(tx["chainId"]) + b"\x80\x80")
    return bytes((t,)) + wrap_list(_typed_fields(tx))


def _check_signature(y_parity: int, r: int, s: int) -> None:
    # Not a RequestError: these come from our own signer, so a bad value is a bug, never the caller's.
    if y_parity not in (0, 1) or not 0 < r < SECP256K1_N or not 0 < s <= _HALF_N:
        raise ValueError("invalid signature values (need yParity 0/1, 0 < r < N, 0 < s <= N/2)")


def legacy_v(chain_id: int, y_parity: int) -> int:
    return 35 + 2 * chain_id + y_parity


def encode_signed(tx: Mapping[str, Any], y_parity: int, r: int, s: int) -> bytes:
    """geth's `Transaction.MarshalBinary()` of the signed transaction."""
    check_tx(tx)
    _check_signature(y_parity, r, s)
    t = tx["type"]
    sig = encode_uint(r) + encode_uint(s)
    if t == LEGACY:
        return wrap_list(_legacy_head(tx) + encode_uint(legacy_v(tx["chainId"], y_parity)) + sig)
    return bytes((t,)) + wrap_list(_typed_fields(tx) + encode_uint(y_parity) + sig)


def prepare(tx: Mapping[str, Any]) -> tuple[bytes, Callable[[int, int, int], bytes]]:
    """Check once and encode the fields once: the preimage to sign, and a function that completes the
    raw signed transaction. The signing hot path; equal to `signing_preimage` + `encode_signed`."""
    check_tx(tx)
    t = tx["type"]
    if t == LEGACY:
        head = _legacy_head(tx)
        preimage = wrap_list(head + encode_uint(tx["chainId"]) + b"\x80\x80")

        def finish_legacy(y_parity: int, r: int, s: int) -> bytes:
            _check_signature(y_parity, r, s)
            return wrap_list(head + encode_uint(legacy_v(tx["chainId"], y_parity)) + encode_uint(r) + encode_uint(s))

        return preimage, finish_legacy
    fields = _typed_fields(tx)
    prefix = bytes((t,))

    def finish_typed(y_parity: int, r: int, s: int) -> bytes:
        _check_signature(y_parity, r, s)
        return prefix + wrap_list(fields + encode_uint(y_parity) + encode_uint(r) + encode_uint(s))

    return prefix + wrap_list(fields), finish_typed


def tx_hash(raw: bytes) -> bytes:
    return keccak256(raw)
