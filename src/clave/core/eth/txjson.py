"""go-ethereum's transaction JSON (`core/types/transaction_marshalling.go`), both directions.

geth, acting as the `--signer` client, ignores `raw` and rebuilds the transaction from `tx`, so
`geth_tx_json` must be exactly `Transaction.MarshalJSON`: key order of geth's `txJSON` struct, nil
pointers as null, `omitempty` fields dropped, minimal hex quantities, lower-case addresses.

`parse_geth_tx_json` is geth's `Transaction.UnmarshalJSON`: per-type required fields and geth's error
texts, hexutil decoding rules, case-insensitive keys. The tests use it to play geth's side.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from clave.core.errors import RequestError
from clave.core.eth.transactions import (
    ACCESS_LIST,
    BLOB,
    DYNAMIC_FEE,
    LEGACY,
    SECP256K1_N,
    SET_CODE,
    check_tx,
    legacy_v,
)


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


# --- decoding: common/hexutil and encoding/json behaviour -------------------------------------------

_HEX_DIGITS = re.compile(r"[0-9a-fA-F]*")
# The Go type named in encoding/json's "cannot unmarshal" errors, per decoding kind.
_GO_TYPES = {
    "uint64": "hexutil.Uint64",
    "big": "*hexutil.Big",
    "u256": "*uint256.Int",
    "bytes": "hexutil.Bytes",
    "address": "common.Address",
    "hash": "common.Hash",
}


class _DecodeError(Exception):
    """A hexutil decError: wrapped by encoding/json into 'cannot unmarshal ... into Go struct field'."""


def _type_error(msg: str, struct: str, field: str, gotype: str) -> RequestError:
    return RequestError(
        f"json: cannot unmarshal {msg} into Go struct field {struct}.{field} of type {gotype}"
    )


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "string" if isinstance(value, str) else "null"


def _number_text(text: str) -> str:
    """hexutil.checkNumberText: the digits after 0x, or '' for the (allowed) empty string."""
    if text == "":
        return ""
    if not text.startswith(("0x", "0X")):
        raise _DecodeError("hex string without 0x prefix")
    raw = text[2:]
    if raw == "":
        raise _DecodeError('hex string "0x"')
    if len(raw) > 1 and raw[0] == "0":
        raise _DecodeError("hex number with leading zero digits")
    return raw


def _quantity(text: str, max_bits: int) -> int:
    raw = _number_text(text)
    if len(raw) > max_bits // 4:
        raise _DecodeError(f"hex number > {max_bits} bits")
    if not _HEX_DIGITS.fullmatch(raw):
        raise _DecodeError("invalid hex string")
    return int(raw, 16) if raw else 0


def _data(text: str) -> bytes:
    if text == "":
        return b""  # hexutil.Bytes accepts the empty string
    if not text.startswith(("0x", "0X")):
        raise _DecodeError("hex string without 0x prefix")
    raw = text[2:]
    if len(raw) % 2:
        raise _DecodeError("hex string of odd length")
    if not _HEX_DIGITS.fullmatch(raw):
        raise _DecodeError("invalid hex string")
    return bytes.fromhex(raw)


def _fixed(text: str, size: int, gotype: str) -> bytes:
    """hexutil.UnmarshalFixedText: prefix and parity, then the length (a plain error), then digits."""
    raw = text
    if text:
        if not text.startswith(("0x", "0X")):
            raise _DecodeError("hex string without 0x prefix")
        raw = text[2:]
        if len(raw) % 2:
            raise _DecodeError("hex string of odd length")
    if len(raw) != 2 * size:
        raise RequestError(f"hex string has length {len(raw)}, want {2 * size} for {gotype}")
    return _data(text)


def _decode_value(value: object, kind: str, struct: str, field: str) -> Any:
    """Decode one JSON value the way the hexutil/common type named by `kind` does."""
    gotype = _GO_TYPES[kind]
    if not isinstance(value, str):
        raise _type_error("non-string", struct, field, gotype)
    try:
        if kind == "uint64":
            return _quantity(value, 64)
        if kind == "big":
            return _quantity(value, 256)
        if kind == "u256":
            if not value:
                raise _DecodeError("hex string without 0x prefix")  # unlike Big, U256 needs the prefix
            return _quantity(value, 256)
        if kind == "bytes":
            return _data(value)
        return _fixed(value, 20 if kind == "address" else 32, gotype)
    except _DecodeError as e:
        raise _type_error(str(e), struct, field, gotype) from None


# txJSON fields geth reads, with their decoding kind. Pointer fields treat null as absent.
_TX_FIELDS = {
    "type": "uint64",
    "chainId": "big",
    "nonce": "uint64",
    "to": "address",
    "gas": "uint64",
    "gasPrice": "big",
    "maxPriorityFeePerGas": "big",
    "maxFeePerGas": "big",
    "maxFeePerBlobGas": "big",
    "value": "big",
    "input": "bytes",
    "accessList": "accessList",
    "blobVersionedHashes": "hashes",
    "authorizationList": "authList",
    "v": "big",
    "r": "big",
    "s": "big",
    "yParity": "uint64",
}


def _fold_keys(obj: Mapping[str, Any], names: Mapping[str, Any]) -> dict[str, Any]:
    """encoding/json matches object keys to field names case-insensitively; the last match wins."""
    by_lower = {n.lower(): n for n in names}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = key if key in names else by_lower.get(key.lower())
        if name is not None:
            out[name] = value
    return out


def _decode_struct(obj: object, fields: Mapping[str, str], struct: str, gotype: str) -> dict[str, Any]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise RequestError(f"json: cannot unmarshal {_json_kind(obj)} into Go value of type {gotype}")
    out: dict[str, Any] = {}
    for name, value in _fold_keys(obj, fields).items():
        kind = fields[name]
        if value is None and not (struct == "txJSON" and name == "type"):
            # A nil pointer or slice is the same as absent. `type` is no pointer: geth hands the null
            # to hexutil.Uint64.UnmarshalJSON, which rejects it as a non-string.
            out.pop(name, None)
            continue
        if kind == "accessList":
            out[name] = _decode_access_list(value)
        elif kind == "hashes":
            out[name] = _decode_list(value, "hash", struct, name, "[]common.Hash")
        elif kind == "authList":
            out[name] = _decode_auth_list(value)
        else:
            out[name] = _decode_value(value, kind, struct, name)
    return out


def _decode_list(value: object, kind: str, struct: str, field: str, gotype: str) -> list[Any]:
    if not isinstance(value, list):
        raise _type_error(_json_kind(value), struct, field, gotype)
    return [_decode_value(v, kind, struct, field) for v in value]


def _decode_access_list(value: object) -> list[tuple[bytes, list[bytes]]]:
    if not isinstance(value, list):
        raise _type_error(_json_kind(value), "txJSON", "accessList", "types.AccessList")
    out = []
    for item in value:  # null items reach AccessTuple.UnmarshalJSON and fail its required-field check
        dec = _decode_struct(
            item, {"address": "address", "storageKeys": "hashes"}, "AccessTuple", "types.AccessTuple"
        )
        if "address" not in dec:
            raise RequestError("missing required field 'address' for AccessTuple")
        if "storageKeys" not in dec:
            raise RequestError("missing required field 'storageKeys' for AccessTuple")
        out.append((dec["address"], dec["storageKeys"]))
    return out


_AUTH_JSON = {
    "chainId": "u256",
    "address": "address",
    "nonce": "uint64",
    "yParity": "uint64",
    "r": "u256",
    "s": "u256",
}


def _decode_auth_list(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _type_error(_json_kind(value), "txJSON", "authorizationList", "[]types.SetCodeAuthorization")
    out = []
    for item in value:
        dec = _decode_struct(item, _AUTH_JSON, "SetCodeAuthorization", "types.SetCodeAuthorization")
        for name in _AUTH_JSON:
            if name not in dec:
                raise RequestError(f"missing required field '{name}' for SetCodeAuthorization")
        dec["yParity"] &= 0xFF  # geth stores V as uint8(*dec.V)
        out.append({name: dec[name] for name in _AUTH_JSON})
    return out


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
    dec = _decode_struct(obj, _TX_FIELDS, "txJSON", "types.txJSON")
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
