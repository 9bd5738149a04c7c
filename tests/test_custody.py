"""Custody policy in the enclave (README "Custody policy"), in process: K-of-N policy changes, denials that
speak clef (`-32000 request denied`, the rule in `data`), value windows, the nonce guard, freeze, a
tampered stored record, and what the attestation commits to. Admin signatures are made by eth-account;
the enclave recovers them with its own EIP-712 encoder."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest
from eth_account import Account
from eth_utils import keccak, to_checksum_address

from clave.core.errors import RequestError
from clave.core.policy import authority
from clave.core.policy.schema import canonical_json
from clave.core.provenance import decode_policy
from clave.sidecar.signing.signer import META_CUSTODY
from clave.sidecar.trust.attestation import PcrPolicy, load_root, verify_attestation
from tests.inproc import Stack, running_stack
from tests.stack import RpcFailure

ADMINS = [Account.from_key(keccak(f"clave test_custody admin {i}".encode())) for i in range(3)]
STRANGER = Account.from_key(keccak(b"clave test_custody stranger"))
ALLOWED_TO = "0x703c4b2bD70c169f5717101CaeE543299Fc946C7"
OTHER_TO = "0x1111111111111111111111111111111111111111"
ETHER = 10**18


def _policy(account: str) -> dict[str, Any]:
    return {"version": 1, "rules": [
        {"name": "hot-payments", "accounts": [to_checksum_address(account)], "to": [ALLOWED_TO],
         "value_max": "1 ether", "window": {"value_max": "3 ether", "seconds": 3600}},
        {"name": "hot-messages", "accounts": "*", "kind": "message", "messages": ["personal"]},
    ]}


async def _status(stack: Stack) -> dict[str, Any]:
    return await stack.rpc("clave_policyStatus")  # type: ignore[no-any-return]


def _sign(admin: Any, action: str, status: dict[str, Any], sequence: int, document: bytes | None = None) -> str:
    set_id = bytes.fromhex(status["admin_set_id"][2:])
    doc_hash = authority.policy_hash(document) if document is not None else None
    typed = authority.typed_message(action, set_id, sequence, doc_hash)
    return "0x" + bytes(admin.sign_typed_data(full_message=typed).signature).hex()


async def _apply(stack: Stack, policy: dict[str, Any], signers: list[Any], sequence: int | None = None) -> Any:
    status = await _status(stack)
    sequence = sequence if sequence is not None else status["sequence"] + 1
    document = canonical_json(policy)
    signatures = [_sign(a, "PolicyUpdate", status, sequence, document) for a in signers]
    return await stack.rpc("clave_policyApply", "0x" + document.hex(), sequence, signatures)


def _tx(account: str, nonce: int, value: int, to: str = ALLOWED_TO, fee: int = 30 * 10**9) -> dict[str, Any]:
    return {"from": to_checksum_address(account), "to": to, "gas": "0x5208", "maxFeePerGas": hex(fee),
            "maxPriorityFeePerGas": hex(10**9), "nonce": hex(nonce), "value": hex(value)}


async def _denied(stack: Stack, method: str, *params: Any) -> dict[str, Any]:
    reply, infra = await stack.reply({"jsonrpc": "2.0", "id": 7, "method": method, "params": list(params)})
    assert not infra and "error" in reply, reply
    error = reply["error"]
    assert (error["code"], error["message"]) == (-32000, "request denied"), error
    return error["data"]  # type: ignore[no-any-return]


async def _attested_policy(stack: Stack) -> dict[str, Any] | None:
    nonce = os.urandom(16)
    document = bytes.fromhex((await stack.rpc("clave_attest", "0x" + nonce.hex()))[2:])
    verified = verify_attestation(document, root=load_root(stack.root_pem), now_ms=int(time.time() * 1000),
                                  pcr_policy=PcrPolicy(allow_debug=True), expected_nonce=nonce)
    return decode_policy(verified.user_data)


async def _restart_enclave(stack: Stack) -> None:
    """Restart the enclave (a new boot, nothing loaded) and wait until the sidecar has brought it up."""
    await stack.enclave.restart()
    for _ in range(200):
        await asyncio.sleep(0.05)
        hello = await stack.signer.client.call("hello")
        if stack.signer.ready and stack.signer.boot_public == hello["public_key"]:
            return
    raise AssertionError(f"not brought up again: {stack.signer.status.last_error}")


def _admin_addresses() -> list[bytes]:
    return [bytes.fromhex(a.address[2:]) for a in ADMINS]


async def test_two_of_three_policy_limits_destination_value_and_window(tmp_path: Path) -> None:
    async with running_stack(tmp_path, admins=_admin_addresses(), admin_threshold=2) as stack:
        (account,) = await stack.rpc("clave_newAccount", {})
        # Before any policy: signing is open (today's behaviour), and the attestation says so (no hash).
        await stack.rpc("account_signTransaction", _tx(account, 0, 2 * ETHER, OTHER_TO))
        assert await _attested_policy(stack) == {"k": 2, "seq": 0, "frozen": False}
        # One admin, a non-admin with one admin, a non-admin alone: refused; nothing changes.
        policy = _policy(account)
        for signers, text in (([ADMINS[0]], r"1 admin signature\(s\), 2 needed"),
                              ([ADMINS[0], STRANGER], "not admins: 0x" + STRANGER.address[2:].lower()),
                              ([STRANGER], r"0 admin signature\(s\), 2 needed")):
            with pytest.raises(RpcFailure, match=text):
                await _apply(stack, policy, signers)
        assert (await _status(stack))["policy_hash"] is None
        applied = await _apply(stack, policy, [ADMINS[0], ADMINS[2]])
        assert applied["sequence"] == 1
        document = canonical_json(policy)
        assert applied["policy_hash"] == "0x" + keccak(document).hex()
        attested = await _attested_policy(stack)
        assert attested == {"k": 2, "seq": 1, "frozen": False, "hash": keccak(document)}
        # Replaying the same signatures (sequence 1 again), or an older sequence: refused.
        status = await _status(stack)
        replay = [_sign(a, "PolicyUpdate", status, 1, document) for a in ADMINS[:2]]
        with pytest.raises(RpcFailure, match="sequence 1 is not above the current 1"):
            await stack.rpc("clave_policyApply", "0x" + document.hex(), 1, replay)

        # Allowed: 1 ether to the one destination, three times; recovered by eth-account.
        for nonce in range(1, 4):
            signed = await stack.rpc("account_signTransaction", _tx(account, nonce, ETHER))
            assert Account.recover_transaction(signed["raw"]).lower() == account
        assert await _denied(stack, "account_signTransaction", _tx(account, 4, ETHER, OTHER_TO)) == {
            "rule": "hot-payments", "reason": "to"}
        assert await _denied(stack, "account_signTransaction", _tx(account, 4, ETHER * 3 // 2)) == {
            "rule": "hot-payments", "reason": "value_max"}
        assert await _denied(stack, "account_signTransaction", _tx(account, 4, ETHER)) == {
            "rule": "hot-payments", "reason": "window"}
        assert await _denied(stack, "eth_signTransaction", _tx(account, 4, ETHER)) == {
            "rule": "hot-payments", "reason": "window"}
        # Messages: personal allowed by hot-messages, typed data not (default deny).
        await stack.rpc("eth_sign", account, "0x" + b"hello".hex())
        typed = {"types": {"EIP712Domain": [{"name": "name", "type": "string"}], "M": [{"name": "a", "type": "uint8"}]},
                 "primaryType": "M", "domain": {"name": "x"}, "message": {"a": 1}}
        assert (await _denied(stack, "eth_signTypedData_v4", account, json.dumps(typed)))["rule"] == "hot-messages"
        # Counted by rule in the metrics and in the enclave's status; logged with the rule.
        metrics = await (await stack.http.get("/metrics")).text()
        assert 'clave_policy_denials_total{rule="hot-payments"} 4.0' in metrics
        assert (await _status(stack))["denials"] == {"hot-payments": 4, "hot-messages": 1}
        assert "request denied by custody policy: rule=hot-payments reason=window" in stack.log_file.read_text()


@pytest.mark.slow  # seconds in process: the fast tier stays under a minute
async def test_nonce_guard_allows_only_a_fee_bump_and_freeze_stops_everything(tmp_path: Path) -> None:
    async with running_stack(tmp_path, admins=_admin_addresses(), admin_threshold=2) as stack:
        (account,) = await stack.rpc("clave_newAccount", {})
        policy = {"version": 1, "rules": [{"name": "any", "accounts": "*"},
                                          {"name": "msgs", "accounts": "*", "kind": "message", "messages": ["personal"]}]}
        await _apply(stack, policy, ADMINS[:2])
        first = await stack.rpc("account_signTransaction", _tx(account, 5, 1, fee=100 * 10**9))
        again = await stack.rpc("account_signTransaction", _tx(account, 5, 1, fee=100 * 10**9))
        assert again["raw"] == first["raw"]  # the same transaction again: allowed
        assert await _denied(stack, "account_signTransaction", _tx(account, 5, 2, fee=100 * 10**9)) == {
            "rule": "nonce_guard",
            "reason": "nonce 5 already signed; a replacement needs a fee bump of at least 10%"}
        assert (await _denied(stack, "account_signTransaction", {**_tx(account, 5, 1, fee=109 * 10**9),
                                                                  "maxPriorityFeePerGas": hex(2 * 10**9)}))["rule"] == "nonce_guard"
        await stack.rpc("account_signTransaction", {**_tx(account, 5, 1, fee=110 * 10**9),
                                                    "maxPriorityFeePerGas": hex(11 * 10**8)})

        # Freeze: any one admin; a stranger cannot. Then nothing signs, messages included.
        status = await _status(stack)
        with pytest.raises(RpcFailure, match="0 admin signature"):
            await stack.rpc("clave_freeze", 2, [_sign(STRANGER, "Freeze", status, 2)])
        frozen = await stack.rpc("clave_freeze", 2, [_sign(ADMINS[1], "Freeze", status, 2)])
        assert frozen["frozen"] is True
        assert await _denied(stack, "account_signTransaction", _tx(account, 6, 1)) == {
            "rule": "frozen", "reason": "signing is frozen by an admin"}
        assert (await _denied(stack, "eth_sign", account, "0x00"))["rule"] == "frozen"
        assert (await _attested_policy(stack) or {}).get("frozen") is True
        # Unfreezing needs K = 2.
        with pytest.raises(RpcFailure, match="1 admin signature"):
            await stack.rpc("clave_unfreeze", 3, [_sign(ADMINS[0], "Unfreeze", status, 3)])
        await stack.rpc("clave_unfreeze", 3, [_sign(a, "Unfreeze", status, 3) for a in ADMINS[1:]])
        await stack.rpc("account_signTransaction", _tx(account, 6, 1))

        # The freeze survives an enclave restart (sealed state in the store, loaded again).
        await stack.rpc("clave_freeze", 4, [_sign(ADMINS[2], "Freeze", status, 4)])
        await _restart_enclave(stack)
        assert (await _status(stack))["frozen"] is True
        assert (await _denied(stack, "account_signTransaction", _tx(account, 7, 1)))["rule"] == "frozen"


@pytest.mark.slow  # seconds in process: the fast tier stays under a minute
async def test_an_edited_stored_policy_is_refused_and_stops_signing(tmp_path: Path) -> None:
    async with running_stack(tmp_path, admins=_admin_addresses(), admin_threshold=2) as stack:
        (account,) = await stack.rpc("clave_newAccount", {})
        await _apply(stack, _policy(account), ADMINS[:2])
        # The parent loosens the stored policy: value_max 1 ether -> 100 ether, in the sealed row.
        record = cbor2.loads(stack.store.get_meta(META_CUSTODY))
        record["document"] = record["document"].replace(b'"value_max":"1 ether"', b'"value_max":"100 ether"')
        assert b"100 ether" in record["document"]
        stack.store.set_meta(META_CUSTODY, cbor2.dumps(record))
        await _restart_enclave(stack)
        assert "does not open" in stack.signer.status.custody_error
        health = await (await stack.http.get("/healthz")).json()
        assert "does not open" in health["custody"]["record_refused"]
        assert await _denied(stack, "account_signTransaction", _tx(account, 0, 50 * ETHER)) == {
            "rule": "custody-record-invalid", "reason": "the stored custody record was refused"}
        assert "CUSTODY RECORD REFUSED" in stack.log_file.read_text()
        # K admins restore a policy; signing resumes under it.
        await _apply(stack, _policy(account), ADMINS[1:])
        await stack.rpc("account_signTransaction", _tx(account, 0, ETHER))


async def test_without_admins_signing_is_open_and_the_log_says_so(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        (account,) = await stack.rpc("clave_newAccount", {})
        await stack.rpc("account_signTransaction", _tx(account, 0, 100 * ETHER, OTHER_TO))
        assert "no admin set: no custody policy protects the keys" in stack.log_file.read_text()
        assert await _attested_policy(stack) is None
        with pytest.raises(RpcFailure, match="no admin set"):
            await stack.rpc("clave_freeze", 1, ["0x" + "00" * 65])


@pytest.mark.slow  # seconds in process: the fast tier stays under a minute
async def test_a_rule_that_needs_approval_holds_the_request_until_admins_sign_it(tmp_path: Path) -> None:
    async with running_stack(tmp_path, admins=_admin_addresses(), admin_threshold=2) as stack:
        (account,) = await stack.rpc("clave_newAccount", {})
        policy = {"version": 1, "rules": [
            {"name": "warm", "accounts": "*", "value_max": "10 ether",
             "approval": {"above": "1 ether", "approvers": 2, "timeout": 1}}]}
        await _apply(stack, policy, ADMINS[:2])
        status = await _status(stack)
        set_id = bytes.fromhex(status["admin_set_id"][2:])
        await stack.rpc("account_signTransaction", _tx(account, 0, ETHER))  # at the limit: no approval needed

        async def waiting() -> dict[str, Any]:
            for _ in range(100):
                listed = await stack.rpc("clave_approvals")
                if listed:
                    return listed[0]  # type: ignore[no-any-return]
                await asyncio.sleep(0.01)
            raise AssertionError("nothing held")

        def approval(admin: Any, item: dict[str, Any]) -> str:
            typed = authority.approval_message(set_id, bytes.fromhex(item["request"][2:]))
            return "0x" + bytes(admin.sign_typed_data(full_message=typed).signature).hex()

        # Approved by two admins: signed only then; the approval names this exact transaction.
        held = asyncio.create_task(stack.rpc("account_signTransaction", _tx(account, 1, 5 * ETHER)))
        item = await waiting()
        assert (item["rule"], item["approvers"], item["approvals"], item["value"]) == ("warm", 2, 0, str(5 * ETHER))
        assert not held.done()
        with pytest.raises(RpcFailure, match=f"0x{STRANGER.address[2:].lower()} is not an admin"):
            await stack.rpc("clave_approve", item["id"], approval(STRANGER, item))
        first = await stack.rpc("clave_approve", item["id"], approval(ADMINS[0], item))
        assert first == {"id": item["id"], "approvals": 1, "signed": False}
        assert not held.done()
        assert (await stack.rpc("clave_approve", item["id"], approval(ADMINS[2], item)))["signed"] is True
        signed = await held
        assert Account.recover_transaction(signed["raw"]).lower() == account and int(signed["tx"]["value"], 16) == 5 * ETHER
        assert await stack.rpc("clave_approvals") == []
        # The enclave itself checks: approvals for another transaction do not sign this one.
        direct_tx = {"type": 2, "chainId": 31337, "nonce": 2, "gas": 21000, "value": 5 * ETHER,
                     "to": bytes.fromhex(ALLOWED_TO[2:]), "data": b"", "maxFeePerGas": 1, "maxPriorityFeePerGas": 1,
                     "accessList": []}
        with pytest.raises(RequestError, match="0 admin signature"):
            await stack.signer.client.call("sign_tx", {"address": bytes.fromhex(account[2:]), "tx": direct_tx,
                                                       "approvals": [bytes.fromhex(approval(ADMINS[0], item)[2:])]})

        # Rejected: request denied at once. Not approved within the timeout (1 s): request denied.
        held = asyncio.create_task(_denied(stack, "account_signTransaction", _tx(account, 2, 2 * ETHER)))
        item = await waiting()
        await stack.rpc("clave_reject", item["id"])
        assert await held == {"rule": "warm", "reason": "approval rejected"}
        assert await _denied(stack, "account_signTransaction", _tx(account, 2, 3 * ETHER)) == {
            "rule": "warm", "reason": "approval timed out"}
        lines = (stack.config.datadir / "audit.log")
        assert stack.sidecar.audit is not None
        await stack.sidecar.audit.drain_once()
        outcomes = [json.loads(line).get("outcome") for line in lines.read_bytes().splitlines()]
        assert [o for o in outcomes if o] == ["allowed", "pending", "approved", "pending", "rejected", "pending",
                                              "timed_out"]


@pytest.mark.slow  # seconds in process: the fast tier stays under a minute
async def test_k_admins_change_the_admin_set_and_the_new_set_takes_over(tmp_path: Path) -> None:
    async with running_stack(tmp_path, admins=_admin_addresses(), admin_threshold=2) as stack:
        (account,) = await stack.rpc("clave_newAccount", {})
        await _apply(stack, _policy(account), ADMINS[:2])
        newcomer = Account.from_key(keccak(b"clave test_custody new admin"))
        new_set = sorted([bytes.fromhex(ADMINS[0].address[2:]), bytes.fromhex(newcomer.address[2:])])
        new_id = authority.admin_set_id(new_set, 1)
        status = await _status(stack)
        set_id = bytes.fromhex(status["admin_set_id"][2:])

        def sig(admin: Any, sequence: int) -> str:
            typed = authority.admin_change_message(set_id, new_id, sequence)
            return "0x" + bytes(admin.sign_typed_data(full_message=typed).signature).hex()

        new_admins = ["0x" + a.hex() for a in new_set]
        with pytest.raises(RpcFailure, match=r"1 admin signature\(s\), 2 needed"):
            await stack.rpc("clave_adminsChange", new_admins, 1, 2, [sig(ADMINS[0], 2)])
        changed = await stack.rpc("clave_adminsChange", new_admins, 1, 2, [sig(ADMINS[0], 2), sig(ADMINS[1], 2)])
        assert changed["admins"] == new_admins and changed["threshold"] == 1
        assert changed["admin_set_id"] == "0x" + new_id.hex()
        assert await _attested_policy(stack) == {"k": 1, "seq": 2, "frozen": False, "hash": keccak(canonical_json(_policy(account)))}
        # The policy stays in force; the old admins' signatures no longer count, the newcomer's alone does.
        assert (await _denied(stack, "account_signTransaction", _tx(account, 0, 2 * ETHER)))["reason"] == "value_max"
        status = await _status(stack)
        with pytest.raises(RpcFailure, match="not admins"):
            await stack.rpc("clave_freeze", 3, [_sign(ADMINS[2], "Freeze", status, 3)])
        loose = {"version": 1, "rules": [{"name": "any", "accounts": "*"}]}
        await _apply(stack, loose, [newcomer])
        # After an enclave restart the new set (and K) is what the store gives back, and still in force.
        await _restart_enclave(stack)
        restarted = await _status(stack)
        assert restarted["admins"] == new_admins and restarted["threshold"] == 1 and restarted["sequence"] == 3
        await stack.rpc("account_signTransaction", _tx(account, 0, 2 * ETHER))
