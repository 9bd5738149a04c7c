"""Operator-only `clave_*` management calls, over IPC only (the socket is mode 0600): attestation,
account creation, keyfile import and export. Secrets travel sealed to the enclave's attested key."""

from __future__ import annotations

from typing import Any

from clave.core.errors import InvalidParams
from clave.sidecar.observe.logs import result_account
from clave.sidecar.rpc import args
from clave.sidecar.rpc.args import hex_result, ipc_only
from clave.sidecar.rpc.dispatch import CallContext, Method
from clave.sidecar.signing.signer import Signer

# One call holds the sidecar's reply (and the enclave's work) until it is done; `clave account new` sends
# 1,000 per call, so a larger count is a mistake, or someone filling the store.
MAX_NEW_ACCOUNTS = 100_000


def admin_methods(signer: Signer) -> dict[str, Method]:
    async def clave_attest(params: list[Any], ctx: CallContext) -> str:
        ipc_only(ctx, "clave_attest")
        nonce = args.data(params, 0)
        if len(nonce) < 16:
            raise InvalidParams("invalid argument 0: nonce must be at least 16 bytes")
        result = await signer.client.call("attest", {"nonce": nonce}, timeout=30)
        return hex_result(result["document"])

    async def clave_list_accounts(params: list[Any], ctx: CallContext) -> list[dict[str, Any]]:
        ipc_only(ctx, "clave_listAccounts")
        return [
            {"address": hex_result(a.address), "origin": a.origin, "exportable": a.exportable, "created": a.created}
            for a in await signer.accounts()
        ]

    async def clave_new_account(params: list[Any], ctx: CallContext) -> list[str]:
        ipc_only(ctx, "clave_newAccount")
        options = params[0] if params else {}
        if not isinstance(options, dict):
            raise InvalidParams("invalid argument 0: expected an object")
        count = options.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise InvalidParams("invalid argument 0: count must be a positive integer")
        if count > MAX_NEW_ACCOUNTS:
            raise InvalidParams(f"invalid argument 0: count must be at most {MAX_NEW_ACCOUNTS:,} per call")
        addresses = await signer.new_accounts(count, exportable=bool(options.get("exportable", False)))
        return [hex_result(a) for a in addresses]

    async def clave_import_keyfile(params: list[Any], ctx: CallContext) -> str:
        ipc_only(ctx, "clave_importKeyfile")
        envelope = args.data(params, 0)
        exportable = bool(params[1]) if len(params) > 1 else False
        address = hex_result(await signer.import_keyfile(envelope, exportable))
        result_account.set(address)  # the request log's account= (the keyfile is sealed; only its result says)
        return address

    async def clave_export_challenge(params: list[Any], ctx: CallContext) -> str:
        ipc_only(ctx, "clave_exportChallenge")
        return hex_result(await signer.export_challenge(args.address(params, 0)))

    async def clave_export_keyfile(params: list[Any], ctx: CallContext) -> str:
        """address, envelope (password sealed to the enclave), challenge, an admin's EIP-191 signature
        over `export_message(address, challenge)` (the enclave checks it)."""
        ipc_only(ctx, "clave_exportKeyfile")
        return await signer.export_keyfile(
            args.address(params, 0), args.data(params, 1), args.data(params, 2), args.data(params, 3)
        )

    return {
        "clave_attest": Method(clave_attest, 1, 1),
        "clave_listAccounts": Method(clave_list_accounts),
        "clave_newAccount": Method(clave_new_account, 0, 1),
        "clave_importKeyfile": Method(clave_import_keyfile, 1, 2),
        "clave_exportChallenge": Method(clave_export_challenge, 1, 1),
        "clave_exportKeyfile": Method(clave_export_keyfile, 4, 4),
    }
