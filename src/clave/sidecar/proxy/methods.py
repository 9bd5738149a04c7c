"""The method-table side of proxy mode: `eth_sendTransaction` (and `wallet_sendTransaction`), an
`eth_signTransaction` that fills what the request leaves out from the node (as anvil does), and the
dispatcher's fallback for every method the table does not have.

With `--downstream`, the fallback forwards the call to the node unchanged (its params as received; the
dispatcher keeps the caller's id and batch), except methods that would make the node sign or administer
(`NOT_FORWARDED`). Without it, node methods answer geth's -32601 with a remedy
that names `--downstream`; any other unknown method gets geth's plain -32601.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass
from typing import Any

from clave.core.errors import MethodNotFound
from clave.sidecar.config import SidecarConfig
from clave.sidecar.proxy.downstream import Downstream, read_auth_header
from clave.sidecar.proxy.send import Sender
from clave.sidecar.proxy.stream import Streamer
from clave.sidecar.rpc.dispatch import CallContext, Fallback, Method, Observer
from clave.sidecar.rpc.signing import SigningCalls

# Never forwarded: a node's own signing and account methods would sign with the node's keys (anvil's dev
# accounts, a geth keystore), and its admin methods are no client's business through a signer.
NOT_FORWARDED = ("eth_sign", "personal_", "account_", "clave_", "admin_", "miner_", "engine_")
NODE_PREFIXES = ("eth_", "net_", "web3_", "txpool_", "debug_", "trace_", "wallet_", "anvil_", "evm_", "hardhat_")


class NotForwarded(MethodNotFound):
    def __init__(self, method: str) -> None:
        super().__init__(method)
        self.message += ": clave does not forward signing, account or admin methods to the --downstream node"


class NeedsDownstream(MethodNotFound):
    def __init__(self, method: str) -> None:
        super().__init__(method)
        self.message += ": clave answers signing methods only; start it with --downstream URL to forward node methods"


async def no_downstream(name: str, params: Any, ctx: CallContext) -> Any:
    if name.startswith(NODE_PREFIXES):
        raise NeedsDownstream(name)
    raise MethodNotFound(name)


@dataclass
class Proxy:
    methods: dict[str, Method]  # added to (and overriding) the table
    fallback: Fallback  # for every method not in the table
    close: Callable[[], Awaitable[None]] | None = None  # at shutdown
    node: Downstream | None = None

    def streamer(self, answered_here: Container[str], observer: Observer | None) -> Streamer | None:
        """HTTP's streaming of forwarded single calls (`proxy.stream`), once the whole table is known."""
        return None if self.node is None else Streamer(self.node, answered_here, NOT_FORWARDED, observer)


def proxy_methods(sign: SigningCalls, config: SidecarConfig) -> Proxy:
    if config.downstream is None:
        return Proxy({}, no_downstream)
    headers = dict([read_auth_header(config.downstream_auth_file)]) if config.downstream_auth_file else {}
    node = Downstream(config.downstream, headers)
    sender = Sender(node, sign, config.chain_ids, config.tx_fee_cap_wei)

    async def send_transaction(params: list[Any], ctx: CallContext) -> Any:
        return await sender.send(params)

    async def sign_transaction(params: list[Any], ctx: CallContext) -> Any:
        result = await sender.sign_transaction(params)
        return result if config.eth_signtx_result == "geth" else result["raw"]

    async def forward(name: str, params: Any, ctx: CallContext) -> Any:
        if name.startswith(NOT_FORWARDED):
            raise NotForwarded(name)
        return await node.call(name, params)

    methods = {
        "eth_signTransaction": Method(sign_transaction, 1, 1),
        "eth_sendTransaction": Method(send_transaction, 1, 1),
        "wallet_sendTransaction": Method(send_transaction, 1, 1),
    }
    return Proxy(methods, forward, node.close, node)
