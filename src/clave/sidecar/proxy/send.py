"""`eth_sendTransaction` through the downstream node: fill what the request leaves out from the chain,
sign in the enclave with the same checks as `eth_signTransaction`, broadcast with
`eth_sendRawTransaction`, answer the transaction hash.

* chain id: the node's (`eth_chainId`, asked once); it must be one of `--chainid`, and a request's
  `chainId` must match it.
* fees: 1559 (`maxPriorityFeePerGas` from `eth_maxPriorityFeePerGas`, `maxFeePerGas` = twice the next
  block's base fee from `eth_feeHistory` plus the tip); `gasPrice` from `eth_gasPrice` for type 0/1
  requests and on chains without a base fee (pre-London).
* gas: `eth_estimateGas` plus 20% headroom (a plain transfer's 21000 is exact and kept).
* nonce: `NonceTracker`, resynced and retried once when the node says "nonce too low".
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from clave.core.errors import RequestError, UnknownAccount
from clave.sidecar.proxy.downstream import Downstream, DownstreamUnavailable, NodeError
from clave.sidecar.proxy.nonces import NonceTracker
from clave.sidecar.requests import txargs
from clave.sidecar.rpc.eth import eth_build_tx, parse_eth_tx
from clave.sidecar.rpc.signing import SigningCalls

PLAIN_TRANSFER_GAS = 21000
_NOT_ESTIMATED = frozenset({"gas", "nonce", "gasprice", "maxfeepergas", "maxpriorityfeepergas", "maxfeeperblobgas"})
NONCE_CONFLICTS = ("nonce too low", "replacement transaction underpriced", "already known")


def _quantity(value: Any, what: str) -> int:
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise DownstreamUnavailable(f"the downstream node answered {what} with {value!r}, not a quantity")


class Sender:
    def __init__(self, node: Downstream, sign: SigningCalls, chain_ids: list[int], tx_fee_cap_wei: int) -> None:
        self.node = node
        self.sign = sign
        self.chain_ids = chain_ids
        self.tx_fee_cap_wei = tx_fee_cap_wei
        self.nonces = NonceTracker(self._pending_count)
        self._chain_id: int | None = None

    async def _pending_count(self, address: bytes) -> int:
        return _quantity(await self.node.call("eth_getTransactionCount", ["0x" + address.hex(), "pending"]),
                         "eth_getTransactionCount")

    async def chain_id(self) -> int:
        if self._chain_id is None:
            chain_id = _quantity(await self.node.call("eth_chainId", []), "eth_chainId")
            if chain_id not in self.chain_ids:
                raise RequestError(f"the downstream node is on chain {chain_id}, but clave signs for --chainid "
                                   + ",".join(str(c) for c in self.chain_ids))
            self._chain_id = chain_id
        return self._chain_id

    async def _fees(self, args: txargs.TransactionArgs, tx_type: int | None) -> dict[str, int]:
        if args.gas_price is not None or (args.max_fee_per_gas is not None and args.max_priority_fee_per_gas is not None):
            return {}
        if tx_type in (0, 1):
            return {"gas_price": _quantity(await self.node.call("eth_gasPrice", []), "eth_gasPrice")}
        # Both asked at once; the tip is dropped if the chain turns out to have no base fee.
        tip_ask = asyncio.ensure_future(self._tip()) if args.max_priority_fee_per_gas is None else None
        try:
            history = await self.node.call("eth_feeHistory", ["0x1", "latest", []])
            base_fees = history.get("baseFeePerGas") if isinstance(history, dict) else None
            next_base = _quantity(base_fees[-1], "eth_feeHistory") if base_fees else 0
            if not next_base and tx_type is None and args.max_fee_per_gas is None and tip_ask is not None:
                # A chain without a base fee: legacy.
                return {"gas_price": _quantity(await self.node.call("eth_gasPrice", []), "eth_gasPrice")}
            tip = args.max_priority_fee_per_gas if tip_ask is None else await tip_ask
        finally:
            if tip_ask is not None and not tip_ask.done():
                tip_ask.cancel()
            elif tip_ask is not None and not tip_ask.cancelled():
                tip_ask.exception()  # retrieved: a failed ask that was not needed is not an error
        assert tip is not None
        if args.max_fee_per_gas is not None and args.max_priority_fee_per_gas is None:
            tip = min(tip, args.max_fee_per_gas)
        max_fee = args.max_fee_per_gas if args.max_fee_per_gas is not None else 2 * next_base + tip
        return {"max_priority_fee_per_gas": tip, "max_fee_per_gas": max_fee}

    async def _tip(self) -> int:
        return _quantity(await self.node.call("eth_maxPriorityFeePerGas", []), "eth_maxPriorityFeePerGas")

    async def _gas(self, request: Any, args: txargs.TransactionArgs) -> dict[str, int]:
        if args.gas is not None:
            return {}
        # Fees are left out: a half-given fee pair is completed only later, and the gas used does not depend on them.
        call = {k: v for k, v in request.items() if k.lower() not in _NOT_ESTIMATED}
        estimate = _quantity(await self.node.call("eth_estimateGas", [call]), "eth_estimateGas")
        data = args.input if args.input is not None else args.data
        if estimate == PLAIN_TRANSFER_GAS and not data:
            return {"gas": estimate}
        return {"gas": estimate + estimate // 5}

    async def _filled(self, params: list[Any]) -> tuple[bytes, txargs.TransactionArgs, int | None]:
        """The request with chain id, fees and gas filled from the node (not the nonce)."""
        args, tx_type = parse_eth_tx(params)
        address = args.from_
        if address is None:
            raise UnknownAccount()
        await self.sign.signer.require(address)  # before anything is asked of the node
        chain_id = await self.chain_id()
        if args.chain_id is not None and args.chain_id != chain_id:
            raise RequestError(f"chainId {args.chain_id} does not match the downstream node's chain {chain_id}")
        request = params[0] if isinstance(params[0], dict) else {}
        fees, gas = await asyncio.gather(self._fees(args, tx_type), self._gas(request, args))
        args = dataclasses.replace(args, chain_id=chain_id)
        for name, value in {**fees, **gas}.items():
            setattr(args, name, value)
        return address, args, tx_type

    async def sign_transaction(self, params: list[Any]) -> dict[str, Any]:
        """eth_signTransaction in proxy mode: filled as anvil fills it (ethers' JsonRpcSigner sends only
        from/to/value). A missing nonce is the next one this process would use, without reserving it: a
        transaction signed but never broadcast must not leave a gap for the sends after it."""
        address, args, tx_type = await self._filled(params)
        if args.nonce is None:
            args.nonce = self.nonces.peek(address)
            if args.nonce is None:
                args.nonce = await self._pending_count(address)
        tx = eth_build_tx(args, tx_type, self.chain_ids, self.tx_fee_cap_wei)
        return await self.sign.transaction(address, tx)

    async def send(self, params: list[Any]) -> Any:
        address, args, tx_type = await self._filled(params)
        if args.nonce is not None:
            return await self._sign_and_send(address, args, tx_type)
        for attempt in range(2):
            nonce = await self.nonces.reserve(address)
            try:
                return await self._sign_and_send(address, dataclasses.replace(args, nonce=nonce), tx_type)
            except NodeError as exc:
                if attempt == 0 and any(text in exc.message.lower() for text in NONCE_CONFLICTS):
                    self.nonces.resync(address)
                    continue
                self.nonces.release(address, nonce)
                raise
            except BaseException:
                self.nonces.release(address, nonce)
                raise
        raise AssertionError("unreachable")

    async def _sign_and_send(self, address: bytes, args: txargs.TransactionArgs, tx_type: int | None) -> Any:
        tx = eth_build_tx(args, tx_type, self.chain_ids, self.tx_fee_cap_wei)
        signed = await self.sign.transaction(address, tx)
        return await self.node.call("eth_sendRawTransaction", [signed["raw"]])

