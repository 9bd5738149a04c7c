"""Operator-only backup and recovery calls over IPC (issue 14; enclave side in `enclave/backup.py`).

The sidecar relays: what it sees is the manifest (public), the encrypted payload and shares sealed with HPKE
to custodians or to the enclave's recovery key. The records a recovery returns are sealed under the master
key and stored like generated ones."""

from __future__ import annotations

import asyncio
from typing import Any

from clave.core.errors import InvalidParams
from clave.sidecar.rpc import args
from clave.sidecar.rpc.args import hex_result, ipc_only
from clave.sidecar.rpc.dispatch import CallContext, Method
from clave.sidecar.signing.enclave_client import SLOW_TIMEOUT, EnclaveNotReady
from clave.sidecar.signing.signer import Signer
from clave.sidecar.store.records import StoredRecord


def _hex(value: Any, name: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise InvalidParams(f"invalid argument 0: {name} must be 0x-prefixed hex")
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        raise InvalidParams(f"invalid argument 0: {name} must be 0x-prefixed hex") from None


def _options(params: list[Any]) -> dict[str, Any]:
    options = params[0] if params else None
    if not isinstance(options, dict):
        raise InvalidParams("invalid argument 0: expected an object")
    return options


def backup_methods(signer: Signer) -> dict[str, Method]:
    async def call(method: str, params: dict[str, Any]) -> Any:
        if not signer.ready:
            raise EnclaveNotReady(signer.status.last_error or "keys are being unsealed")
        return await signer.client.call(method, params, timeout=SLOW_TIMEOUT)

    async def clave_backup_challenge(params: list[Any], ctx: CallContext) -> dict[str, str]:
        ipc_only(ctx, "clave_backupChallenge")
        result = await call("backup_challenge", {})
        return {"challenge": hex_result(result["challenge"]), "pcr0": hex_result(result["pcr0"])}

    async def clave_backup_create(params: list[Any], ctx: CallContext) -> dict[str, Any]:
        """{threshold, sequence, custodians: [0x…32 bytes], accounts: [0x…] | null (all), pcr0, challenge,
        signature}: an admin's EIP-191 signature over backup_message(request_digest(…), challenge)."""
        ipc_only(ctx, "clave_backupCreate")
        o = _options(params)
        custodians, accounts = o.get("custodians"), o.get("accounts")
        if not isinstance(custodians, list) or (accounts is not None and not isinstance(accounts, list)):
            raise InvalidParams("invalid argument 0: custodians must be a list, accounts a list or null")
        request = {
            "threshold": o.get("threshold"), "sequence": o.get("sequence"),
            "custodians": [_hex(c, "custodian") for c in custodians],
            "accounts": None if accounts is None else [_hex(a, "account") for a in accounts],
            "pcr0": _hex(o.get("pcr0"), "pcr0"), "challenge": _hex(o.get("challenge"), "challenge"),
            "signature": _hex(o.get("signature"), "signature"),
        }
        result = await call("backup_create", request)
        return {"manifest": hex_result(result["manifest"]), "manifest_id": hex_result(result["manifest_id"]),
                "payload": hex_result(result["payload"]), "shares": result["shares"]}

    async def clave_recovery_start(params: list[Any], ctx: CallContext) -> dict[str, str]:
        ipc_only(ctx, "clave_recoveryStart")
        nonce = args.data(params, 0)
        if len(nonce) < 16:
            raise InvalidParams("invalid argument 0: nonce must be at least 16 bytes")
        result = await call("recovery_start", {"nonce": nonce})
        return {"document": hex_result(result["document"]), "recovery_key": hex_result(result["recovery_key"])}

    async def clave_recovery_finish(params: list[Any], ctx: CallContext) -> dict[str, Any]:
        """{manifest, payload, shares: [sealed-share documents for the enclave]}: the enclave rebuilds and
        seals the keys; their records are stored here."""
        ipc_only(ctx, "clave_recoveryFinish")
        o = _options(params)
        shares = o.get("shares")
        if not isinstance(shares, list):
            raise InvalidParams("invalid argument 0: shares must be a list")
        result = await call("recovery_finish", {"manifest": _hex(o.get("manifest"), "manifest"),
                                                "payload": _hex(o.get("payload"), "payload"), "shares": shares})
        stored = [StoredRecord.from_sealed(r) for r in result["records"]]
        await asyncio.to_thread(signer.store.add_records, stored)
        await signer.catch_up()
        return {"accounts": [hex_result(r.address) for r in stored], "manifest_id": hex_result(result["manifest_id"]),
                "sequence": result["sequence"]}

    return {
        "clave_backupChallenge": Method(clave_backup_challenge),
        "clave_backupCreate": Method(clave_backup_create, 1, 1),
        "clave_recoveryStart": Method(clave_recovery_start, 1, 1),
        "clave_recoveryFinish": Method(clave_recovery_finish, 1, 1),
    }
