"""Operator-only (IPC) methods for go-opera / sonic validator keys.

`clave_validatorNew(envelope)` asks the enclave for a new validator key and returns its `0xc0…` public
key and go-opera's keyfile (ciphertext only: the password travels sealed to the enclave). The sealed
record is kept in the store's metadata table, not among the account records, so it is never unsealed
as an account at start; `clave_validatorKeyfile(pubkey, envelope)` turns it back into a keyfile
(restore, or a new password).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import cbor2

from clave.core.errors import InvalidParams, RequestError
from clave.sidecar.rpc import args
from clave.sidecar.rpc.args import ipc_only
from clave.sidecar.rpc.dispatch import CallContext, Method
from clave.sidecar.signing.enclave_client import SLOW_TIMEOUT, EnclaveNotReady
from clave.sidecar.signing.signer import Signer

META_PREFIX = "validator:"
_PUBKEY = re.compile(r"^0xc004[0-9a-f]{128}$")


def _meta_name(pubkey: bytes) -> str:
    return META_PREFIX + pubkey.hex()


def opera_methods(signer: Signer) -> dict[str, Method]:
    async def call(method: str, params: dict[str, Any]) -> dict[str, Any]:
        if not signer.ready:
            raise EnclaveNotReady(signer.status.last_error or "keys are being unsealed")
        return await signer.client.call(method, params, timeout=SLOW_TIMEOUT)  # type: ignore[no-any-return]

    async def clave_validator_new(params: list[Any], ctx: CallContext) -> dict[str, str]:
        ipc_only(ctx, "clave_validatorNew")
        result = await call("validator_new", {"envelope": args.data(params, 0)})
        pubkey = bytes(result["pubkey"])
        # Persisted before the keyfile is handed out: a keyfile whose backup was lost is worse than none.
        await asyncio.to_thread(signer.store.set_meta, _meta_name(pubkey), cbor2.dumps(result["record"]))
        return {"pubkey": "0x" + pubkey.hex(), "keyfile": str(result["keyfile"])}

    async def clave_validator_keyfile(params: list[Any], ctx: CallContext) -> dict[str, str]:
        ipc_only(ctx, "clave_validatorKeyfile")
        text = params[0]
        if not isinstance(text, str) or not _PUBKEY.match(text.lower()):
            raise InvalidParams("invalid argument 0: expected a 0xc004… validator public key")
        pubkey = bytes.fromhex(text[2:])
        blob = await asyncio.to_thread(signer.store.get_meta, _meta_name(pubkey))
        if blob is None:
            raise RequestError(f"no sealed backup of validator key {text.lower()} in this store")
        try:
            record = cbor2.loads(blob)
        except Exception:  # a damaged store row: say so, rather than "method handler crashed"
            raise RequestError(f"the sealed backup of validator key {text.lower()} in this store is damaged") from None
        result = await call("validator_keyfile", {"record": record, "envelope": args.data(params, 1)})
        if bytes(result["pubkey"]) != pubkey:
            raise RequestError("sealed validator record does not match its public key")
        return {"pubkey": "0x" + pubkey.hex(), "keyfile": str(result["keyfile"])}

    return {
        "clave_validatorNew": Method(clave_validator_new, 1, 1),
        "clave_validatorKeyfile": Method(clave_validator_keyfile, 2, 2),
    }
