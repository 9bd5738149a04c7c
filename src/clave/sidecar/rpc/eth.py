"""Node-style `eth_*` signing methods with geth's own rules (`internal/ethapi`), for clients such as
cast, ethers, viem and web3.py. Nothing here signs."""

from __future__ import annotations

import json
from typing import Any

from clave.core.errors import InvalidParams
from clave.sidecar.requests import txargs
from clave.sidecar.rpc import args
from clave.sidecar.rpc.args import hex_result, v27
from clave.sidecar.rpc.dispatch import CallContext, Method
from clave.sidecar.rpc.signing import SigningCalls


def eth_methods(sign: SigningCalls, chain_ids: list[int], tx_fee_cap_wei: int) -> dict[str, Method]:
    signer = sign.signer

    async def eth_accounts(params: list[Any], ctx: CallContext) -> list[str]:
        return [hex_result(a) for a in await signer.addresses()]

    async def eth_sign(params: list[Any], ctx: CallContext) -> str:
        address, data = args.address(params, 0), args.data(params, 1)
        signature = await sign.message("personal", "sign_personal", address, data=data)
        return hex_result(v27(signature))

    async def eth_sign_transaction(params: list[Any], ctx: CallContext) -> dict[str, Any]:
        tx_args = args.arg(params, 0, txargs.parse_transaction_args)
        tx = txargs.ethapi_to_tx(tx_args, chain_ids, fee_cap_ether=tx_fee_cap_wei / 10**18)
        # geth signs for args.from(), the zero address when `from` is missing: "unknown account".
        return await sign.transaction(tx_args.from_ if tx_args.from_ is not None else bytes(20), tx)

    async def eth_sign_typed_data_v4(params: list[Any], ctx: CallContext) -> str:
        address = args.address(params, 0)
        typed = params[1]
        if isinstance(typed, str):
            try:
                typed = json.loads(typed)
            except ValueError:
                raise InvalidParams("invalid argument 1: typed data string is not valid JSON") from None
        if not isinstance(typed, dict):
            raise InvalidParams("invalid argument 1: typed data must be an object or a JSON string")
        typed = args.typed_data([params[0], typed], 1)
        signature = await sign.message("typed", "sign_typed", address, typed_data=typed)
        return hex_result(v27(signature))

    return {
        "eth_accounts": Method(eth_accounts),
        "eth_sign": Method(eth_sign, 2, 2),
        "eth_signTransaction": Method(eth_sign_transaction, 1, 1),
        "eth_signTypedData_v4": Method(eth_sign_typed_data_v4, 2, 2),
    }
