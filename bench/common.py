"""What every load generator shares: the workloads (requests that differ per call), the check of each
response (an independent signer recovery with eth-account), and latency statistics.

A workload is named by `kind`:
  tx        clave `account_signTransaction`, EIP-1559 (type 2), nonce = the request's sequence number
  sign      `eth_sign` over 8 bytes that encode the sequence number
  typed     `eth_signTypedData_v4`, an EIP-712 Mail whose `nonce` is the sequence number
  anvil_tx  anvil's `eth_signTransaction` with the same type-2 fields (the node baseline)
"""

from __future__ import annotations

import json
import math
from typing import Any

KINDS = ("tx", "sign", "typed", "anvil_tx")
METHODS = {
    "tx": "account_signTransaction",
    "sign": "eth_sign",
    "typed": "eth_signTypedData_v4",
    "anvil_tx": "eth_signTransaction",
}

TO = "0x000000000000000000000000000000000000dEaD"
GAS = 21000
MAX_FEE = 2 * 10**9
PRIORITY_FEE = 10**9
VALUE = 1

TYPED_TEMPLATE: dict[str, Any] = {
    "types": {
        "EIP712Domain": [
            {"name": "name", "type": "string"},
            {"name": "version", "type": "string"},
            {"name": "chainId", "type": "uint256"},
            {"name": "verifyingContract", "type": "address"},
        ],
        "Person": [{"name": "name", "type": "string"}, {"name": "wallet", "type": "address"}],
        "Mail": [
            {"name": "from", "type": "Person"},
            {"name": "to", "type": "Person"},
            {"name": "contents", "type": "string"},
            {"name": "nonce", "type": "uint256"},
        ],
    },
    "primaryType": "Mail",
    "domain": {
        "name": "clave bench",
        "version": "1",
        "chainId": 1,
        "verifyingContract": "0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC",
    },
    "message": {
        "from": {"name": "Cow", "wallet": "0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826"},
        "to": {"name": "Bob", "wallet": "0xbBbBBBBbbBBBbbbBbbBbbbbBBbBbbbbBbBbbBBbB"},
        "contents": "Hello, Bob!",
        "nonce": 0,
    },
}


def tx_fields(sender: str, nonce: int, chain_id: int) -> dict[str, str]:
    return {
        "from": sender,
        "to": TO,
        "gas": hex(GAS),
        "maxFeePerGas": hex(MAX_FEE),
        "maxPriorityFeePerGas": hex(PRIORITY_FEE),
        "value": hex(VALUE),
        "nonce": hex(nonce),
        "input": "0x",
        "chainId": hex(chain_id),
    }


def typed_message(seq: int, chain_id: int) -> dict[str, Any]:
    message = json.loads(json.dumps(TYPED_TEMPLATE))
    message["domain"]["chainId"] = chain_id
    message["message"]["nonce"] = seq
    return message


def sign_data(seq: int) -> str:
    return "0x" + seq.to_bytes(8, "big").hex()


def build_params(kind: str, sender: str, seq: int, chain_id: int) -> list[Any]:
    """JSON-RPC params for request number `seq` from `sender` (EIP-55 address)."""
    if kind in ("tx", "anvil_tx"):
        return [tx_fields(sender, seq, chain_id)]
    if kind == "sign":
        return [sender, sign_data(seq)]
    if kind == "typed":
        return [sender, typed_message(seq, chain_id)]
    raise ValueError(f"unknown workload {kind!r}")


def request_body(kind: str, request_id: int, sender: str, seq: int, chain_id: int) -> bytes:
    message = {"jsonrpc": "2.0", "id": request_id, "method": METHODS[kind], "params": build_params(kind, sender, seq, chain_id)}
    return json.dumps(message, separators=(",", ":")).encode()


class Verifier:
    """Checks one reply: a JSON-RPC result whose signature recovers to the account that was asked to sign.

    Recovery uses eth-account (an implementation clave does not share), so a wrong key, a wrong digest or a
    garbled encoding all show up as failures.
    """

    def __init__(self, kind: str, chain_id: int) -> None:
        from eth_account import Account
        from eth_account.messages import encode_defunct, encode_typed_data
        from eth_account.typed_transactions import TypedTransaction
        from eth_utils import keccak
        from hexbytes import HexBytes

        self.kind = kind
        self.chain_id = chain_id
        self._account = Account
        self._defunct = encode_defunct
        self._typed = encode_typed_data
        self._typed_tx = TypedTransaction
        self._keccak = keccak
        self._hexbytes = HexBytes

    def check(self, reply: Any, sender: str, seq: int) -> str | None:
        """Return None if the reply is a valid signature by `sender` over request `seq`, else why not."""
        if not isinstance(reply, dict):
            return "reply is not a JSON object"
        if "error" in reply:
            return f"JSON-RPC error {reply['error']}"
        if "result" not in reply:
            return "reply has no result"
        result = reply["result"]
        try:
            if self.kind == "tx":
                return self._check_tx(result["raw"], sender, seq, tx_json=result["tx"])
            if self.kind == "anvil_tx":
                return self._check_tx(result, sender, seq, tx_json=None)
            if self.kind == "sign":
                signable = self._defunct(hexstr=sign_data(seq))
            else:
                signable = self._typed(full_message=typed_message(seq, self.chain_id))
            signature = bytes.fromhex(result[2:])
            if len(signature) != 65 or signature[64] not in (27, 28):
                return "signature is not 65 bytes with V 27/28"
            signer = self._account.recover_message(signable, signature=signature)
        except Exception as exc:  # any decoding problem is a failed response, not a crash of the generator
            return f"{type(exc).__name__}: {exc}"
        if signer.lower() != sender.lower():
            return f"signature recovers to {signer}, expected {sender}"
        return None

    def _check_tx(self, raw_hex: str, sender: str, seq: int, tx_json: Any) -> str | None:
        raw = bytes.fromhex(raw_hex[2:])
        if raw[:1] != b"\x02":
            return "raw transaction is not type 2"
        fields = self._typed_tx.from_bytes(self._hexbytes(raw)).as_dict()
        expected = {"chainId": self.chain_id, "nonce": seq, "gas": GAS, "maxFeePerGas": MAX_FEE,
                    "maxPriorityFeePerGas": PRIORITY_FEE, "value": VALUE}
        for name, value in expected.items():
            if fields.get(name) != value:
                return f"raw transaction {name}={fields.get(name)!r}, requested {value!r}"
        if bytes(fields["to"]).hex() != TO[2:].lower():
            return "raw transaction has the wrong recipient"
        signer = self._account.recover_transaction(raw)
        if signer.lower() != sender.lower():
            return f"transaction recovers to {signer}, expected {sender}"
        if tx_json is not None:
            if tx_json.get("hash") != "0x" + self._keccak(raw).hex():
                return "tx.hash is not keccak256(raw)"
            if int(tx_json.get("nonce", "0x0"), 16) != seq:
                return "tx.nonce differs from the request"
        return None


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (p in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary(latencies_ms: list[float]) -> dict[str, float]:
    values = sorted(latencies_ms)
    return {
        "p50_ms": percentile(values, 50),
        "p90_ms": percentile(values, 90),
        "p99_ms": percentile(values, 99),
        "max_ms": values[-1] if values else float("nan"),
    }
