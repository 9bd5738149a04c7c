"""Operator-only custody calls, over IPC only: the policy in force, and changes the enclave authorizes by
admin signatures (it checks them; the sidecar only stores the sealed state it returns)."""

from __future__ import annotations

from typing import Any

from clave.core.errors import InvalidParams
from clave.sidecar.rpc import args
from clave.sidecar.rpc.args import hex_result, ipc_only
from clave.sidecar.rpc.dispatch import CallContext, Method
from clave.sidecar.signing.signer import Signer


def _sequence(params: list[Any], index: int) -> int:
    value = params[index] if len(params) > index else None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidParams(f"invalid argument {index}: sequence must be a positive integer")
    return value


def _signatures(params: list[Any], index: int) -> list[bytes]:
    value = params[index] if len(params) > index else None
    if not isinstance(value, list) or not value:
        raise InvalidParams(f"invalid argument {index}: expected a list of 0x signatures")
    return [args.data(value, i) for i in range(len(value))]


def describe(status: dict[str, Any]) -> dict[str, Any]:
    """The enclave's custody status as JSON."""
    set_id, policy_hash, document = status.get("admin_set_id"), status.get("policy_hash"), status.get("document")
    return {
        "admins": [hex_result(a) for a in status.get("admins", [])],
        "threshold": status.get("threshold"),
        "admin_set_id": hex_result(set_id) if set_id else None,
        "sequence": status.get("sequence"),
        "frozen": status.get("frozen"),
        "policy_hash": hex_result(policy_hash) if policy_hash else None,
        "policy": bytes(document).decode() if document else None,
        "record_refused": status.get("invalid") or None,
        "audit_gap": status.get("gap"),
        "denials": status.get("denials", {}),
        "allowed": status.get("allowed", 0),
    }


def policy_methods(signer: Signer) -> dict[str, Method]:
    async def clave_policy_status(params: list[Any], ctx: CallContext) -> dict[str, Any]:
        ipc_only(ctx, "clave_policyStatus")
        return describe(await signer.custody_status())

    async def clave_policy_apply(params: list[Any], ctx: CallContext) -> dict[str, Any]:
        """canonical JSON document (0x hex), sequence, [admin EIP-712 signatures]."""
        ipc_only(ctx, "clave_policyApply")
        params_ = {"document": args.data(params, 0), "sequence": _sequence(params, 1),
                   "signatures": _signatures(params, 2)}
        return describe(await signer.custody_change("policy_apply", params_))

    async def clave_freeze(params: list[Any], ctx: CallContext) -> dict[str, Any]:
        ipc_only(ctx, "clave_freeze")
        params_ = {"sequence": _sequence(params, 0), "signatures": _signatures(params, 1)}
        return describe(await signer.custody_change("freeze", params_))

    async def clave_unfreeze(params: list[Any], ctx: CallContext) -> dict[str, Any]:
        ipc_only(ctx, "clave_unfreeze")
        params_ = {"sequence": _sequence(params, 0), "signatures": _signatures(params, 1)}
        return describe(await signer.custody_change("unfreeze", params_))

    async def clave_audit_ack(params: list[Any], ctx: CallContext) -> dict[str, Any]:
        ipc_only(ctx, "clave_auditAck")
        params_ = {"sequence": _sequence(params, 0), "signatures": _signatures(params, 1)}
        return describe(await signer.custody_change("audit_ack", params_))

    async def clave_approvals(params: list[Any], ctx: CallContext) -> list[dict[str, Any]]:
        ipc_only(ctx, "clave_approvals")
        return signer.approvals.list()

    async def clave_approve(params: list[Any], ctx: CallContext) -> dict[str, Any]:
        """request id, an admin's EIP-712 `Approval` signature over it."""
        ipc_only(ctx, "clave_approve")
        request_id = params[0] if isinstance(params[0], str) else ""
        return await signer.approvals.approve(request_id, args.data(params, 1))

    async def clave_reject(params: list[Any], ctx: CallContext) -> dict[str, Any]:
        ipc_only(ctx, "clave_reject")
        return await signer.approvals.reject(params[0] if isinstance(params[0], str) else "")

    async def clave_admins_change(params: list[Any], ctx: CallContext) -> dict[str, Any]:
        """new admin addresses, K, sequence, K signatures of the current admins (EIP-712 AdminChange)."""
        ipc_only(ctx, "clave_adminsChange")
        admins = params[0] if isinstance(params[0], list) else []
        threshold = params[1]
        if isinstance(threshold, bool) or not isinstance(threshold, int):
            raise InvalidParams("invalid argument 1: threshold must be an integer")
        params_ = {"admins": [args.address(admins, i) for i in range(len(admins))], "threshold": threshold,
                   "sequence": _sequence(params, 2), "signatures": _signatures(params, 3)}
        return describe(await signer.custody_change("admins_change", params_))

    return {
        "clave_adminsChange": Method(clave_admins_change, 4, 4),
        "clave_approvals": Method(clave_approvals, 0, 0),
        "clave_approve": Method(clave_approve, 2, 2),
        "clave_reject": Method(clave_reject, 1, 1),
        "clave_auditAck": Method(clave_audit_ack, 2, 2),
        "clave_policyStatus": Method(clave_policy_status, 0, 0),
        "clave_policyApply": Method(clave_policy_apply, 3, 3),
        "clave_freeze": Method(clave_freeze, 2, 2),
        "clave_unfreeze": Method(clave_unfreeze, 2, 2),
    }
