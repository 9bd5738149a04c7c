"""account_signGnosisSafeTx (clef extapi 6.1.0, `signer/core/gnosis_safe.go`).

The request is a Safe Transaction Service record. clef validates it as a transaction from the safe,
turns it into EIP-712 `SafeTx` typed data, checks the digest against the record's `safeTxHash`, signs
the typed data like account_signTypedData and returns the record plus `signature`,
`contractTransactionHash` and `sender`.

The digest check keeps clef's quirk: only when the record has no `chainId` and the digest differs is
the signer's chain id tried, and only then can it fail (`mismatched safeTxHash`). With a `chainId`
present a mismatch is not an error and the computed digest is what gets signed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from clave.core.errors import RequestError
from clave.core.gojson import (
    ZERO_ADDRESS,
    ZERO_MIXEDCASE,
    MixedcaseAddress,
    checksum,
    decode_address,
    decode_big_int,
    decode_bytes,
    decode_decimal256,
    decode_hash,
    decode_hex_or_decimal256,
    decode_mixedcase,
    decode_struct,
    decode_uint8,
    go_sharp_x,
    pointer,
)
from clave.sidecar.requests.txargs import SendTxArgs

_UINT64 = (1 << 64) - 1


@dataclass
class GnosisSafeTx:
    """signer/core.GnosisSafeTx (input fields; the output-only ones are recomputed)."""

    safe: MixedcaseAddress = ZERO_MIXEDCASE
    to: MixedcaseAddress = ZERO_MIXEDCASE
    value: int = 0
    gas_price: int = 0
    data: bytes | None = None
    operation: int = 0
    gas_token: bytes = ZERO_ADDRESS
    refund_receiver: bytes = ZERO_ADDRESS
    base_gas: int = 0
    safe_tx_gas: int = 0
    nonce: int = 0
    safe_tx_hash: bytes = bytes(32)
    chain_id: int | None = None


_FIELDS = {
    # Output-only fields are still decoded (and can fail) when a caller sends them back.
    "signature": decode_bytes,
    "contractTransactionHash": decode_hash,
    "sender": decode_mixedcase,
    "safe": decode_mixedcase,
    "to": decode_mixedcase,
    "value": decode_decimal256,
    "gasPrice": decode_decimal256,
    "data": pointer(decode_bytes),
    "operation": decode_uint8,
    "gasToken": decode_address,
    "refundReceiver": decode_address,
    "baseGas": decode_big_int,
    "safeTxGas": decode_big_int,
    "nonce": decode_big_int,
    "safeTxHash": decode_hash,
    "chainId": pointer(decode_hex_or_decimal256),
}

_ATTR = {
    "gasPrice": "gas_price",
    "gasToken": "gas_token",
    "refundReceiver": "refund_receiver",
    "baseGas": "base_gas",
    "safeTxGas": "safe_tx_gas",
    "safeTxHash": "safe_tx_hash",
    "chainId": "chain_id",
}


def parse_gnosis_tx(obj: Any) -> GnosisSafeTx:
    """Decode the second parameter. Raises GoJSONError (wrap with invalid_argument(1, …))."""
    got = decode_struct(obj, _FIELDS, "GnosisSafeTx", "core.GnosisSafeTx")
    tx = GnosisSafeTx()
    for key, value in got.items():
        if key in ("signature", "contractTransactionHash", "sender"):
            continue
        name = _ATTR.get(key, key)
        if value is None and name not in ("data", "chain_id"):
            continue  # null leaves the Go value field at zero
        setattr(tx, name, value)
    return tx


def _low64(value: int) -> int:
    # big.Int.Uint64(): the low 64 bits of the magnitude.
    return abs(value) & _UINT64


def gnosis_validation_args(tx: GnosisSafeTx) -> SendTxArgs:
    """ArgsForValidation: the transaction clef's validator grades (the safe as sender)."""
    return SendTxArgs(
        from_=tx.safe,
        to=tx.to,
        gas=_low64(tx.safe_tx_gas),
        gas_price=tx.gas_price,
        value=tx.value,
        nonce=_low64(tx.nonce),
        data=tx.data,
        chain_id=tx.chain_id,
    )


def gnosis_typed_data(tx: GnosisSafeTx, chain_id: int | None) -> dict[str, Any]:
    """ToTypedData, as the JSON object account_signTypedData would receive."""
    domain_type = [{"name": "verifyingContract", "type": "address"}]
    domain: dict[str, Any] = {"verifyingContract": checksum(tx.safe.address)}
    if chain_id is not None:
        domain_type.insert(0, {"name": "chainId", "type": "uint256"})
        domain["chainId"] = chain_id
    safe_tx = [
        ("to", "address"),
        ("value", "uint256"),
        ("data", "bytes"),
        ("operation", "uint8"),
        ("safeTxGas", "uint256"),
        ("baseGas", "uint256"),
        ("gasPrice", "uint256"),
        ("gasToken", "address"),
        ("refundReceiver", "address"),
        ("nonce", "uint256"),
    ]
    return {
        "types": {
            "EIP712Domain": domain_type,
            "SafeTx": [{"name": name, "type": kind} for name, kind in safe_tx],
        },
        "primaryType": "SafeTx",
        "domain": domain,
        "message": {
            "to": checksum(tx.to.address),
            "value": str(tx.value),
            "data": "0x" + (tx.data or b"").hex(),
            "operation": str(tx.operation),
            "safeTxGas": str(tx.safe_tx_gas),
            "baseGas": str(tx.base_gas),
            "gasPrice": str(tx.gas_price),
            "gasToken": checksum(tx.gas_token),
            "refundReceiver": checksum(tx.refund_receiver),
            "nonce": str(_low64(tx.nonce)),  # clef formats tx.Nonce.Uint64()
        },
    }


@dataclass(frozen=True)
class GnosisPlan:
    tx: GnosisSafeTx  # chain_id filled in when clef's retry supplied it
    typed_data: dict[str, Any]
    digest: bytes


def gnosis_prepare(
    tx: GnosisSafeTx, signer_chain_id: int, digest_of: Callable[[dict[str, Any]], bytes]
) -> GnosisPlan:
    """Build the typed data to sign and check it against `safeTxHash`, with clef's chain-id quirk.

    `digest_of(typed)` is keccak256 of the EIP-712 preimage; its errors propagate on the first try and,
    as in clef, are swallowed on the retry (which then fails the comparison).
    """
    typed = gnosis_typed_data(tx, tx.chain_id)
    digest = digest_of(typed)
    if digest != tx.safe_tx_hash and tx.chain_id is None:
        tx = replace(tx, chain_id=signer_chain_id)
        typed = gnosis_typed_data(tx, tx.chain_id)
        try:
            digest = digest_of(typed)
        except Exception:
            digest = b""
        if digest != tx.safe_tx_hash:
            raise RequestError(
                f"mismatched safeTxHash; have {go_sharp_x(digest)} want {go_sharp_x(tx.safe_tx_hash)}"
            )
    return GnosisPlan(tx, typed, digest)


def _hex_or_decimal_text(value: int) -> str:
    # HexOrDecimal256.MarshalText: Go's %#x of a big.Int.
    return ("-" if value < 0 else "") + hex(abs(value))


def gnosis_result(tx: GnosisSafeTx, signature: bytes, digest: bytes, sender: bytes | str) -> dict[str, Any]:
    """The GnosisSafeTx JSON clef returns, keys in Go struct order."""
    sender_bytes = bytes.fromhex(sender[2:]) if isinstance(sender, str) else sender
    out: dict[str, Any] = {
        "signature": "0x" + signature.hex(),
        "contractTransactionHash": "0x" + digest.hex(),
        "sender": checksum(sender_bytes),  # relays require the checksummed form
        "safe": tx.safe.to_json(),
        "to": tx.to.to_json(),
        "value": str(tx.value),
        "gasPrice": str(tx.gas_price),
        "data": None if tx.data is None else "0x" + tx.data.hex(),
        "operation": tx.operation,
        "gasToken": "0x" + tx.gas_token.hex(),
        "refundReceiver": "0x" + tx.refund_receiver.hex(),
        "baseGas": tx.base_gas,
        "safeTxGas": tx.safe_tx_gas,
        "nonce": tx.nonce,
        "safeTxHash": "0x" + tx.safe_tx_hash.hex(),
    }
    if tx.chain_id is not None:
        out["chainId"] = _hex_or_decimal_text(tx.chain_id)
    return out
