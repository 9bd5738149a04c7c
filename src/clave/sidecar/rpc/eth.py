"""Node-style `eth_*` signing methods with geth's own rules (`internal/ethapi`), for clients such as
cast, ethers, viem and web3.py, and the few node-identity calls they make first (`eth_chainId`,
`net_version`, `web3_clientVersion`). Nothing here signs.

Where the clients and geth disagree, clave follows the clients and anvil: an explicit transaction `type`
is honoured (`requests.ethtype`), and `eth_signTransaction` answers a bare raw transaction by default
(`signtx_result="raw"`, as anvil, hardhat and Web3Signer do); `"geth"` keeps geth's `{raw, tx}`.
"""

from __future__ import annotations

import json
from typing import Any

from clave import __version__
from clave.core.errors import InvalidParams, RequestError
from clave.core.shapes import NormalizedTx
from clave.sidecar.requests import ethtype, txargs
from clave.sidecar.rpc import args
from clave.sidecar.rpc.args import hex_result, v27
from clave.sidecar.rpc.dispatch import CallContext, Method
from clave.sidecar.rpc.signing import SigningCalls

SIGNTX_RESULTS = ("raw", "geth")
CLIENT_VERSION = f"clave/{__version__}"
LEGACY_TYPED_DATA = (
    "eth_signTypedData with the legacy (v1) array of values is not supported; "
    "send [address, typedData] (EIP-712) or use eth_signTypedData_v4"
)


def parse_eth_tx(params: list[Any], index: int = 0) -> tuple[txargs.TransactionArgs, int | None]:
    """An `eth_*` transaction request: geth's TransactionArgs plus the explicit type, if any."""
    request, tx_type = ethtype.split_type(params[index], index)
    return args.arg([request], 0, txargs.parse_transaction_args), tx_type


def eth_build_tx(tx_args: txargs.TransactionArgs, tx_type: int | None, chain_ids: list[int],
                 tx_fee_cap_wei: int) -> NormalizedTx:
    return ethtype.typed_to_tx(tx_args, tx_type, chain_ids, fee_cap_ether=tx_fee_cap_wei / 10**18)


def _typed_object(params: list[Any], index: int) -> dict[str, Any]:
    typed = params[index]
    if isinstance(typed, str):
        try:
            typed = json.loads(typed)
        except ValueError:
            raise InvalidParams(f"invalid argument {index}: typed data string is not valid JSON") from None
    if not isinstance(typed, dict):
        raise InvalidParams(f"invalid argument {index}: typed data must be an object or a JSON string")
    return typed


def _uses_arrays(typed: dict[str, Any]) -> bool:
    types = typed.get("types")
    if not isinstance(types, dict):
        return False
    return any(isinstance(field, dict) and isinstance(field.get("type"), str) and field["type"].endswith("]")
               for fields in types.values() if isinstance(fields, list) for field in fields)


def eth_methods(sign: SigningCalls, chain_ids: list[int], tx_fee_cap_wei: int, *,
                signtx_result: str = "raw") -> dict[str, Method]:
    if signtx_result not in SIGNTX_RESULTS:
        raise ValueError(f"signtx_result must be one of {SIGNTX_RESULTS}")
    signer = sign.signer

    async def eth_accounts(params: list[Any], ctx: CallContext) -> list[str]:
        return [hex_result(a) for a in await signer.addresses()]

    async def eth_chain_id(params: list[Any], ctx: CallContext) -> str:
        return hex(chain_ids[0])

    async def net_version(params: list[Any], ctx: CallContext) -> str:
        return str(chain_ids[0])

    async def web3_client_version(params: list[Any], ctx: CallContext) -> str:
        return CLIENT_VERSION

    async def eth_sign(params: list[Any], ctx: CallContext) -> str:
        address, data = args.address(params, 0), args.data(params, 1)
        signature = await sign.message("personal", "sign_personal", address, data=data)
        return hex_result(v27(signature))

    async def personal_sign(params: list[Any], ctx: CallContext) -> str:
        # MetaMask's order (and geth's old personal_sign): the message first, then the address.
        data, address = args.data(params, 0), args.address(params, 1)
        if len(params) > 2 and params[2] not in ("", None):
            raise RequestError("personal_sign: clave accounts have no password; omit the third argument")
        signature = await sign.message("personal", "sign_personal", address, data=data)
        return hex_result(v27(signature))

    async def eth_sign_transaction(params: list[Any], ctx: CallContext) -> Any:
        tx_args, tx_type = parse_eth_tx(params)
        tx = eth_build_tx(tx_args, tx_type, chain_ids, tx_fee_cap_wei)
        # geth signs for args.from(), the zero address when `from` is missing: "unknown account".
        result = await sign.transaction(tx_args.from_ if tx_args.from_ is not None else bytes(20), tx)
        return result if signtx_result == "geth" else result["raw"]

    async def typed(params: list[Any], *, v3: bool = False) -> str:
        address = args.address(params, 0)
        typed = _typed_object(params, 1)
        if v3 and _uses_arrays(typed):
            # eth_signTypedData_v3 (MetaMask's eth-sig-util V3) cannot encode arrays; V4 can.
            raise RequestError("eth_signTypedData_v3 does not support array types; use eth_signTypedData_v4")
        typed = args.typed_data([params[0], typed], 1)
        signature = await sign.message("typed", "sign_typed", address, typed_data=typed)
        return hex_result(v27(signature))

    async def eth_sign_typed_data_v4(params: list[Any], ctx: CallContext) -> str:
        return await typed(params)

    async def eth_sign_typed_data_v3(params: list[Any], ctx: CallContext) -> str:
        return await typed(params, v3=True)

    async def eth_sign_typed_data(params: list[Any], ctx: CallContext) -> str:
        # web3.py and ethers send [address, typedData]; MetaMask's v1 sent [values[], address].
        if isinstance(params[0], list):
            raise RequestError(LEGACY_TYPED_DATA)
        return await typed(params)

    return {
        "eth_accounts": Method(eth_accounts),
        "eth_requestAccounts": Method(eth_accounts),
        "eth_chainId": Method(eth_chain_id),
        "net_version": Method(net_version),
        "web3_clientVersion": Method(web3_client_version),
        "eth_sign": Method(eth_sign, 2, 2),
        "personal_sign": Method(personal_sign, 2, 3),
        "eth_signTransaction": Method(eth_sign_transaction, 1, 1),
        "eth_signTypedData": Method(eth_sign_typed_data, 2, 2),
        "eth_signTypedData_v3": Method(eth_sign_typed_data_v3, 2, 2),
        "eth_signTypedData_v4": Method(eth_sign_typed_data_v4, 2, 2),
    }
