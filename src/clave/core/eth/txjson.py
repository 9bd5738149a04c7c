"""go-ethereum's transaction JSON (`core/types/transaction_marshalling.go`), both directions.

geth, acting as the `--signer` client, ignores `raw` and rebuilds the transaction from `tx`, so
`geth_tx_json` must be exactly `Transaction.MarshalJSON`: key order of geth's `txJSON` struct, nil
pointers as null, `omitempty` fields dropped, minimal hex quantities, lower-case addresses.

`parse_geth_tx_json` is geth's `Transaction.UnmarshalJSON`: per-type required fields and geth's error
texts, on `core.gojson`'s decoders (hexutil rules, case-insensitive keys, Go's error context). The tests
use it to play geth's side. `decode_access_list` and `decode_authorization_list` are the field decoders
of core/types' gencodec structs, for every Go struct that embeds them (txJSON, TransactionArgs, SendTxArgs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clave.core.errors import RequestError
from clave.core.eth.secp256k1 import SECP256K1_N
from clave.core.eth.transactions import (
    ACCESS_LIST,
    BLOB,
    DYNAMIC_FEE,
    LEGACY,
    SET_CODE,
    check_tx,
    legacy_v,
)
from clave.core.gojson import (
    GoJSONError,
    decode_address,
    decode_big,
    decode_bytes,
    decode_hash,
    decode_struct,
    decode_u256,
    decode_uint64,
    nested,
    pointer,
    slice_of,
)
from clave.core.shapes import Authorization


def _hex_bytes(b: bytes) -> str:
    return "0x" + b.hex()


def _access_list_json(access_list: list[tuple[bytes, list[bytes]]] | None) -> list[dict[str, Any]]:
    return [
        {"address": _hex_bytes(address), "storageKeys": [_hex_bytes(k) for k in keys]}
        for address, keys in access_list or ()
    ]


def geth_tx_json(
    tx: Mapping[str, Any], y_parity: int, r: int, s: int, tx_hash: bytes, *, checked: bool = False
) -> dict[str, Any]:
    """The `tx` object of `account_signTransaction` / `eth_signTransaction` results.

    `checked=True` skips `check_tx` for a transaction the enclave has just checked and signed.
    """
    if not checked:
        check_tx(tx)
    t = tx["type"]
    typed = t != LEGACY
    dynamic = t in (DYNAMIC_FEE, BLOB, SET_CODE)
    to = tx["to"]
    out: dict[str, Any] = {
        "type": hex(t),
        # omitempty, but always set: typed transactions carry it, and clave's legacy ones are EIP-155.
        "chainId": hex(tx["chainId"]),
        "nonce": hex(tx["nonce"]),
        "to": None if to is None else _hex_bytes(to),
        "gas": hex(tx["gas"]),
        "gasPrice": None if dynamic else hex(tx["gasPrice"]),
        "maxPriorityFeePerGas": hex(tx["maxPriorityFeePerGas"]) if dynamic else None,
        "maxFeePerGas": hex(tx["maxFeePerGas"]) if dynamic else None,
    }
    if t == BLOB:
        out["maxFeePerBlobGas"] = hex(tx["maxFeePerBlobGas"])
    out["value"] = hex(tx["value"])
    out["input"] = _hex_bytes(tx["data"])
    if typed:
        # A non-nil pointer to a (possibly empty) slice: geth prints [] rather than omitting it.
        out["accessList"] = _access_list_json(tx.get("accessList"))
    if t == BLOB:
        out["blobVersionedHashes"] = [_hex_bytes(h) for h in tx["blobVersionedHashes"]]
    if t == SET_CODE:
        out["authorizationList"] = [
            {
                "chainId": hex(a["chainId"]),
                "address": _hex_bytes(a["address"]),
                "nonce": hex(a["nonce"]),
                "yParity": hex(a["yParity"]),
                "r": hex(a["r"]),
                "s": hex(a["s"]),
            }
            for a in tx["authorizationList"]
        ]
    out["v"] = hex(y_parity if typed else legacy_v(tx["chainId"], y_parity))
    out["r"] = hex(r)
    out["s"] = hex(s)
    if typed:
        out["yParity"] = hex(y_parity)
    out["hash"] = _hex_bytes(tx_hash)
    return out


# --- decoding: the JSON of core/types (gencodec unmarshalers), on Go's JSON rules from core.gojson ---------

_ACCESS_TUPLE_FIELDS = {"address": pointer(decode_address), "storageKeys": slice_of(decode_hash, "[]common.Hash")}


def decode_access_tuple(value: Any) -> tuple[bytes, list[bytes]]:
    """types.AccessTuple (gencodec UnmarshalJSON): both fields required; a null tuple lacks them."""
    got = decode_struct(value, _ACCESS_TUPLE_FIELDS, "AccessTuple", "types.AccessTuple")
    if got.get("address") is None:
        raise GoJSONError("missing required field 'address' for AccessTuple")
    if got.get("storageKeys") is None:
        raise GoJSONError("missing required field 'storageKeys' for AccessTuple")
    return got["address"], got["storageKeys"]


# A `*types.AccessList` field (txJSON, TransactionArgs, SendTxArgs): null is nil.
decode_access_list = pointer(slice_of(nested(decode_access_tuple), "types.AccessList"))

_AUTHORIZATION_FIELDS = {
    "chainId": pointer(decode_u256),
    "address": pointer(decode_address),
    "nonce": pointer(decode_uint64),
    "yParity": pointer(decode_uint64),
    "r": pointer(decode_u256),
    "s": pointer(decode_u256),
}


def decode_authorization(value: Any) -> Authorization:
    """types.SetCodeAuthorization (gencodec UnmarshalJSON): every field required."""
    got = decode_struct(value, _AUTHORIZATION_FIELDS, "SetCodeAuthorization", "types.SetCodeAuthorization")
    for name in _AUTHORIZATION_FIELDS:
        if got.get(name) is None:
            raise GoJSONError(f"missing required field '{name}' for SetCodeAuthorization")
    return {
        "chainId": got["chainId"],
        "address": got["address"],
        "nonce": got["nonce"],
        "yParity": got["yParity"] & 0xFF,  # Go stores it as uint8(*dec.V)
        "r": got["r"],
        "s": got["s"],
    }


# A `[]types.SetCodeAuthorization` field: null is nil.
decode_authorization_list = slice_of(nested(decode_authorization), "[]types.SetCodeAuthorization")

# geth's txJSON. Every field but `type` and `hash` is a pointer or slice, which null leaves nil (absent);
# those two are values, so null reaches their UnmarshalJSON and fails as a non-string.
_TX_FIELDS = {
    "type": decode_uint64,
    "chainId": pointer(decode_big),
    "nonce": pointer(decode_uint64),
    "to": pointer(decode_address),
    "gas": pointer(decode_uint64),
    "gasPrice": pointer(decode_big),
    "maxPriorityFeePerGas": pointer(decode_big),
    "maxFeePerGas": pointer(decode_big),
    "maxFeePerBlobGas": pointer(decode_big),
    "value": pointer(decode_big),
    "input": pointer(decode_bytes),
    "accessList": decode_access_list,
    "blobVersionedHashes": slice_of(decode_hash, "[]common.Hash"),
    "authorizationList": decode_authorization_list,
    "v": pointer(decode_big),
    "r": pointer(decode_big),
    "s": pointer(decode_big),
    "yParity": pointer(decode_uint64),
    "hash": decode_hash,
}


def _decode_tx_json(obj: object) -> dict[str, Any]:
    """json.Unmarshal into txJSON: the fields that are set (null pointers dropped), or RequestError."""
    try:
        dec = decode_struct(obj, _TX_FIELDS, "txJSON", "types.txJSON")
    except GoJSONError as exc:
        raise RequestError(exc.message) from None
    return {name: value for name, value in dec.items() if value is not None}


# --- decoding: Transaction.UnmarshalJSON --------------------------------------------------------------


def _y_parity_value(dec: Mapping[str, Any]) -> int:
    if "yParity" in dec:
        y = dec["yParity"]
        if y not in (0, 1):
            raise RequestError("'yParity' field must be 0 or 1")
        if "v" in dec and dec["v"] != y:
            raise RequestError("'v' and 'yParity' fields do not match")
        return int(y)
    if "v" in dec:
        return int(dec["v"])
    raise RequestError("missing 'yParity' or 'v' field in transaction")


_U64 = 1 << 64


def _is_protected_v(v: int) -> bool:
    return v.bit_length() > 8 or v not in (27, 28, 1, 0)


def _derive_chain_id(v: int) -> int:
    if v.bit_length() <= 64:
        if v in (27, 28):
            return 0
        return ((v - 35) % _U64) // 2  # geth does this in uint64 arithmetic
    return (v - 35) >> 1


def _sanity_check_signature(v: int, r: int, s: int, maybe_protected: bool) -> None:
    """types.sanityCheckSignature, including its uint64 wrap-around."""
    protected = _is_protected_v(v)
    if protected and not maybe_protected:
        raise RequestError("transaction type does not supported EIP-155 protected signatures")
    if protected:
        plain = ((v % _U64) - 35 - 2 * (_derive_chain_id(v) % _U64)) % _U64 & 0xFF
    elif maybe_protected:
        plain = (v - 27) % _U64 & 0xFF
    else:
        plain = v & 0xFF
    if plain not in (0, 1) or not (1 <= r < SECP256K1_N and 1 <= s < SECP256K1_N):
        raise RequestError("invalid transaction v, r, s values")


def _need(dec: Mapping[str, Any], name: str, suffix: str = "in transaction") -> Any:
    if name not in dec:
        raise RequestError(f"missing required field '{name}' {suffix}")
    return dec[name]


def _overflow_check(value: int, name: str) -> int:
    if value >> 256:
        raise RequestError(f"'{name}' value overflows uint256")
    return value


def parse_geth_tx_json(obj: object) -> tuple[dict[str, Any], int, int, int]:
    """Decode a geth transaction JSON object into (normalized tx, yParity, r, s), as geth would.

    Legacy transactions must be EIP-155 protected (clave's normalized form always carries chainId).
    """
    dec = _decode_tx_json(obj)
    t = dec.get("type", 0)
    if t not in (LEGACY, ACCESS_LIST, DYNAMIC_FEE, BLOB, SET_CODE):
        raise RequestError("transaction type not supported")
    tx: dict[str, Any] = {"type": t}
    txdata = "for txdata"  # geth uses this older suffix for some fields of types 2-4

    if t == LEGACY:
        tx["nonce"] = _need(dec, "nonce")
        tx["to"] = dec.get("to")
        tx["gas"] = _need(dec, "gas")
        tx["gasPrice"] = _need(dec, "gasPrice")
        tx["value"] = _need(dec, "value")
        tx["data"] = _need(dec, "input")
        r, s, v = _need(dec, "r"), _need(dec, "s"), _need(dec, "v")
        if v or r or s:
            _sanity_check_signature(v, r, s, True)
        if not _is_protected_v(v):
            raise RequestError("unprotected (pre-EIP-155) legacy transaction")
        chain_id = _derive_chain_id(v)
        y = v - 35 - 2 * chain_id
        if y not in (0, 1):  # v in 29..34 slips through geth's uint64 arithmetic; no real chain id
            raise RequestError("invalid transaction v, r, s values")
        tx["chainId"] = chain_id
        return tx, y, r, s

    tx["chainId"] = _need(dec, "chainId")
    if t in (BLOB, SET_CODE):
        _overflow_check(tx["chainId"], "chainId")
    tx["nonce"] = _need(dec, "nonce")
    if t in (BLOB, SET_CODE):
        tx["to"] = _need(dec, "to")
    else:
        tx["to"] = dec.get("to")
    if t == ACCESS_LIST:
        tx["gas"] = _need(dec, "gas")
        tx["gasPrice"] = _need(dec, "gasPrice")
    else:
        tx["gas"] = _need(dec, "gas", txdata)
        tx["maxPriorityFeePerGas"] = _need(dec, "maxPriorityFeePerGas", txdata)
        tx["maxFeePerGas"] = _need(dec, "maxFeePerGas", txdata)
    if t == BLOB:
        tx["maxFeePerBlobGas"] = _need(dec, "maxFeePerBlobGas", txdata)
    tx["value"] = _need(dec, "value")
    tx["data"] = _need(dec, "input")
    tx["accessList"] = dec.get("accessList", [])
    if t == BLOB:
        tx["blobVersionedHashes"] = _need(dec, "blobVersionedHashes")
    if t == SET_CODE:
        tx["authorizationList"] = _need(dec, "authorizationList")
    r, s = _need(dec, "r"), _need(dec, "s")
    if t in (BLOB, SET_CODE):
        _overflow_check(r, "r")
        _overflow_check(s, "s")
    y = _y_parity_value(dec)
    if t in (BLOB, SET_CODE):
        _overflow_check(y, "v")
    if y or r or s:
        _sanity_check_signature(y, r, s, False)
    return tx, y, r, s
