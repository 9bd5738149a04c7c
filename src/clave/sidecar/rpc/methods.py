"""The whole JSON-RPC method table: clef's `account_*` (`clef`), geth's node-style `eth_*` (`eth`), the
operator-only `clave_*` calls over IPC (`admin`, `opera`), and `rpc_modules`."""

from __future__ import annotations

from typing import Any

from clave.sidecar.config import SidecarConfig
from clave.sidecar.observe.metrics import Metrics
from clave.sidecar.rpc.admin import admin_methods
from clave.sidecar.rpc.backup import backup_methods
from clave.sidecar.rpc.clef import clef_methods
from clave.sidecar.rpc.dispatch import CallContext, Method
from clave.sidecar.rpc.eth import eth_methods
from clave.sidecar.rpc.opera import opera_methods
from clave.sidecar.rpc.policy import policy_methods
from clave.sidecar.rpc.signing import SigningCalls
from clave.sidecar.signing.signer import Signer


async def rpc_modules(params: list[Any], ctx: CallContext) -> dict[str, str]:
    # go-ethereum's rpc server answers this for every server; clef listed {"account", "rpc"}.
    modules = {"account": "1.0", "eth": "1.0", "rpc": "1.0"}
    if ctx.transport == "ipc":
        modules["clave"] = "1.0"
    return dict(sorted(modules.items()))


def build_methods(signer: Signer, config: SidecarConfig, metrics: Metrics) -> dict[str, Method]:
    sign = SigningCalls(signer, metrics)
    return {
        **clef_methods(sign, config.chain_ids, http_account_new=config.auth_token_file is not None),
        "rpc_modules": Method(rpc_modules),
        **eth_methods(sign, config.chain_ids, config.tx_fee_cap_wei, signtx_result=config.eth_signtx_result),
        **admin_methods(signer),
        **policy_methods(signer),
        **opera_methods(signer),
        **backup_methods(signer),
    }
