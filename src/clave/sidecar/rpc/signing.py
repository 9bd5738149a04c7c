"""What the clef and eth tables share once a request is parsed: ask the enclave to sign, count it, and
render a signed transaction as clef returns it (`{raw, tx}`, `tx` exactly geth's Transaction JSON)."""

from __future__ import annotations

from typing import Any

from clave.core.errors import RequestError
from clave.core.eth.txjson import geth_tx_json
from clave.core.shapes import NormalizedTx
from clave.sidecar.observe.metrics import Metrics
from clave.sidecar.rpc.args import hex_result
from clave.sidecar.signing.signer import Signer


class SigningCalls:
    def __init__(self, signer: Signer, metrics: Metrics) -> None:
        self.signer = signer
        self.metrics = metrics

    async def message(self, kind: str, method: str, address: bytes, **params: Any) -> bytes:
        """The enclave's 65-byte signature (V = y parity) for one of its `sign_*` methods."""
        signature, _digest = await self.signer.sign(method, address, **params)
        self.metrics.signatures.labels(kind).inc()
        return signature

    async def transaction(self, address: bytes, tx: NormalizedTx) -> dict[str, Any]:
        result = await self.signer.sign_tx(address, tx)
        self.metrics.signatures.labels(f"tx{tx['type']}").inc()
        return {
            "raw": hex_result(result["raw"]),
            "tx": geth_tx_json(tx, result["y_parity"], result["r"], result["s"], result["hash"], checked=True),
        }

    def refuse(self, reason: str, message: str) -> RequestError:
        """A request refused by clef's rules: counted by reason, answered with clef's message (-32000)."""
        self.metrics.refusals.labels(reason).inc()
        return RequestError(message)
