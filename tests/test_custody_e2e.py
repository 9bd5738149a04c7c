"""Custody policy end to end (README "Custody policy"): `clave up --admin A,B,C --admin-threshold 2` with
admin keys made by `cast wallet new`, a policy applied with `clave policy sign|apply`, transactions mined
by anvil or answered with clef's `request denied`, a replay and a one-admin policy refused, `clave freeze`
by one admin, and an edited stored policy row detected after a restart."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest
from eth_utils import to_checksum_address

from clave.core.policy import authority
from clave.core.policy.schema import canonical_json
from tests import secrets_search
from tests.clients import run, send_and_mine
from tests.stack import Anvil, ClaveProcess, get_text, post_json

pytestmark = pytest.mark.slow

PASSWORD = "clave test_custody_e2e admin password"
DESTINATION = "0x703c4b2bD70c169f5717101CaeE543299Fc946C7"
ELSEWHERE = "0x2222222222222222222222222222222222222222"
ETHER = 10**18


def _cast_wallet(cast: str, directory: Path) -> tuple[str, Path]:
    """A keystore made by `cast wallet new`; (address, keyfile). The npm shim exits 0 even on failure."""
    before = set(directory.iterdir()) if directory.exists() else set()
    directory.mkdir(exist_ok=True)
    out = run(cast, "wallet", "new", str(directory), "--unsafe-password", PASSWORD)
    match = re.search(r"Address:\s+(0x[0-9a-fA-F]{40})", out)
    assert match, f"cast wallet new did not make a keystore: {out}"
    (created,) = set(directory.iterdir()) - before
    return match.group(1), created


def _denied(clave: ClaveProcess, *params: Any) -> dict[str, Any]:
    status, reply = post_json(clave.url, {"jsonrpc": "2.0", "id": 1, "method": "account_signTransaction",
                                          "params": list(params)})
    assert status == 200 and "error" in reply, reply
    assert (reply["error"]["code"], reply["error"]["message"]) == (-32000, "request denied")
    return reply["error"]["data"]  # type: ignore[no-any-return]


def _tx(account: str, nonce: int, value: int, to: str = DESTINATION) -> dict[str, Any]:
    return {"from": to_checksum_address(account), "to": to, "gas": "0x5208", "maxFeePerGas": hex(30 * 10**9),
            "maxPriorityFeePerGas": hex(10**9), "nonce": hex(nonce), "value": hex(value), "chainId": hex(31337)}


def _cli(clave: ClaveProcess, *args: str) -> str:
    result = clave.cli(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _clave_with_admins(tmp_path: Path, cast: str, count: int) -> tuple[list[tuple[str, Path]], Path, ClaveProcess]:
    """`count` admin keys made by `cast wallet new`, the file with their password, and a clave (not started)
    whose new datadir needs 2 admin signatures for a custody change."""
    secrets_search.KNOWN_SECRETS.add(PASSWORD)
    admins = [_cast_wallet(cast, tmp_path / "keys") for _ in range(count)]
    password_file = tmp_path / "admin.pw"
    password_file.write_text(PASSWORD + "\n")
    clave = ClaveProcess(tmp_path / "clave", chain_ids="31337",
                         extra=["--admin", ",".join(a for a, _ in admins), "--admin-threshold", "2"])
    return admins, password_file, clave


def _funded_account(clave: ClaveProcess, anvil: Anvil) -> str:
    account = re.findall(r"0x[0-9a-fA-F]{40}", _cli(clave, "account", "new"))[-1]
    anvil.fund(account, 100 * ETHER)
    return account


def test_a_two_of_three_policy_end_to_end(tmp_path: Path, cast: str, anvil: Anvil) -> None:
    admins, password_file, clave = _clave_with_admins(tmp_path, cast, 3)
    stranger = _cast_wallet(cast, tmp_path / "stranger")
    clave.start()
    try:
        account = _funded_account(clave, anvil)
        policy = {"version": 1, "rules": [
            {"name": "hot-payments", "accounts": [account], "to": [DESTINATION], "value_max": "1 ether",
             "window": {"value_max": "3 ether", "seconds": 3600}}]}
        policy_file = tmp_path / "policy.json"
        policy_file.write_text(json.dumps(policy, indent=2))

        def sign(keyfile: Path, *extra: str) -> str:
            out = _cli(clave, "policy", "sign", str(policy_file), "--keyfile", str(keyfile),
                       "--password-file", str(password_file), *extra)
            return str(json.loads(out)["signature"])

        def apply(*signatures: str) -> Any:
            args = [a for s in signatures for a in ("--signature", s)]
            return clave.cli("policy", "apply", str(policy_file), *args)

        # cast, an independent EIP-712 implementation, signs the same message `clave policy sign` does.
        status = json.loads(_cli(clave, "policy", "show"))
        assert status["threshold"] == 2 and status["policy_hash"] is None
        typed = authority.typed_message("PolicyUpdate", bytes.fromhex(status["admin_set_id"][2:]), 1,
                                        authority.policy_hash(canonical_json(policy)))
        typed_file = tmp_path / "typed.json"
        typed_file.write_text(json.dumps(typed))
        by_cast = run(cast, "wallet", "sign", "--data", "--from-file", str(typed_file), "--keystore",
                      str(admins[2][1]), "--password", PASSWORD)
        assert re.fullmatch(r"0x[0-9a-f]{130}", by_cast), by_cast
        assert sign(admins[2][1]) == by_cast

        one = apply(sign(admins[0][1]))
        assert one.returncode != 0 and "1 admin signature(s), 2 needed" in one.stderr
        with_stranger = apply(sign(admins[0][1]), sign(stranger[1]))
        assert with_stranger.returncode != 0 and f"not admins: {stranger[0].lower()}" in with_stranger.stderr
        signatures = (sign(admins[0][1]), by_cast)
        applied = apply(*signatures)
        assert applied.returncode == 0, applied.stderr
        assert json.loads(applied.stdout)["sequence"] == 1
        # A remote client checks which policy the enclave enforces: the attested hash is the file's.
        checked = json.loads(_cli(clave, "policy", "check", str(policy_file)))
        attested = json.loads(_cli(clave, "attest"))
        assert attested["verified"] and attested["policy"] == {"k": 2, "seq": 1, "frozen": False,
                                                               "hash": checked["policy_hash"]}
        assert re.fullmatch(r"[0-9a-f]{64}", attested["audit_key"])
        replayed = apply(*signatures)  # the same signatures again (sequence 2 now needed)
        assert replayed.returncode != 0 and "signature(s), 2 needed" in replayed.stderr
        replayed = clave.cli("policy", "apply", str(policy_file), "--sequence", "1",
                             *[a for s in signatures for a in ("--signature", s)])
        assert replayed.returncode != 0 and "sequence 1 is not above the current 1" in replayed.stderr

        before = int(anvil.rpc("eth_getBalance", DESTINATION, "latest"), 16)
        for nonce in range(3):
            signed = clave.rpc("account_signTransaction", _tx(account, nonce, ETHER))
            assert send_and_mine(anvil, signed["raw"])["status"] == "0x1"
        assert int(anvil.rpc("eth_getBalance", DESTINATION, "latest"), 16) - before == 3 * ETHER
        assert _denied(clave, _tx(account, 3, ETHER, ELSEWHERE)) == {"rule": "hot-payments", "reason": "to"}
        assert _denied(clave, _tx(account, 3, ETHER * 3 // 2)) == {"rule": "hot-payments", "reason": "value_max"}
        assert _denied(clave, _tx(account, 3, ETHER)) == {"rule": "hot-payments", "reason": "window"}
        metrics = get_text(clave.url + "/metrics")[1]
        assert 'clave_policy_denials_total{rule="hot-payments"} 3.0' in metrics

        # One admin freezes: nothing signs, not even what the policy allows.
        frozen = _cli(clave, "freeze", "--keyfile", str(admins[1][1]), "--password-file", str(password_file))
        assert json.loads(frozen)["frozen"] is True
        assert _denied(clave, _tx(account, 3, 1)) == {"rule": "frozen", "reason": "signing is frozen by an admin"}
        # Unfreezing takes K = 2: each signs (`clave unfreeze sign`), then `clave unfreeze` applies both.
        unfreeze = [json.loads(_cli(clave, "unfreeze", "sign", "--keyfile", str(k), "--password-file",
                                    str(password_file)))["signature"] for _, k in (admins[0], admins[2])]
        one = clave.cli("unfreeze", "--signature", unfreeze[0])
        assert one.returncode != 0 and "1 admin signature(s), 2 needed" in one.stderr
        assert json.loads(_cli(clave, "unfreeze", "--signature", unfreeze[0], "--signature", unfreeze[1]))[
            "frozen"] is False
        signed = clave.rpc("account_signTransaction", _tx(account, 3, 0))  # the hour's 3 ether are spent
        assert send_and_mine(anvil, signed["raw"])["status"] == "0x1"
        _cli(clave, "freeze", "--keyfile", str(admins[0][1]), "--password-file", str(password_file))

        # The parent edits the stored policy row (a looser cap): the enclave refuses it after a restart.
        clave.stop()
        store = sqlite3.connect(clave.datadir / "keystore.sqlite")
        (raw,) = store.execute("SELECT value FROM meta WHERE name = 'custody'").fetchone()
        record = cbor2.loads(raw)
        record["document"] = record["document"].replace(b'"1 ether"', b'"90 ether"')
        record["frozen"] = False
        store.execute("UPDATE meta SET value = ? WHERE name = 'custody'", (cbor2.dumps(record),))
        store.commit()
        store.close()
        clave.start()
        health = json.loads(get_text(clave.url + "/healthz")[1])
        assert "does not open" in health["custody"]["record_refused"]
        assert _denied(clave, _tx(account, 4, 50 * ETHER))["rule"] == "custody-record-invalid"
        deadline = time.monotonic() + 10
        while "CUSTODY RECORD REFUSED" not in clave.logs() and time.monotonic() < deadline:
            time.sleep(0.1)  # the log writer thread may not have written the line yet
        assert "CUSTODY RECORD REFUSED" in clave.logs()
    finally:
        clave.stop()

    # Every decision above is in the audit log, chained, checkpointed and bound to two attested boots.
    verified = clave.cli("audit", "verify")
    assert verified.returncode == 0, verified.stderr
    summary = json.loads(verified.stdout)
    assert summary["ok"] and summary["boots"] == 2 and summary["checkpoints"] >= 2
    tail = [json.loads(line) for line in _cli(clave, "audit", "tail", "-n", "1000").splitlines()]
    decisions = [(e["outcome"], e["rule"]) for e in tail if e["kind"] == "sign"]
    assert decisions.count(("allowed", "hot-payments")) == 4
    assert decisions.count(("denied", "hot-payments")) == 3 and ("denied", "frozen") in decisions
    kinds = [e["kind"] for e in tail]
    assert kinds.count("policy") == 1 and kinds.count("freeze") == 2 and kinds.count("unfreeze") == 1
    log_file = clave.datadir / "audit.log"
    lines = log_file.read_bytes().splitlines(keepends=True)
    target = next(n for n, e in enumerate(tail) if e["kind"] == "sign" and e["outcome"] == "denied")
    lines[target] = lines[target].replace(b'"denied"', b'"allowed"')
    log_file.write_bytes(b"".join(lines))
    broken = clave.cli("audit", "verify")
    assert broken.returncode == 1 and f"audit.log:{target + 1}: changed" in broken.stderr


def test_approvals_and_the_nonce_guard_across_a_restart_end_to_end(tmp_path: Path, cast: str, anvil: Anvil) -> None:
    import threading

    admins, password_file, clave = _clave_with_admins(tmp_path, cast, 2)
    clave.start()
    try:
        account = _funded_account(clave, anvil)
        policy_file = tmp_path / "warm.yaml"
        policy_file.write_text(
            "version: 1\nrules:\n  - name: warm\n    accounts: '*'\n    to: ['" + DESTINATION + "']\n"
            "    value_max: 10 ether\n    approval: {above: 1 ether, approvers: 1, timeout: 60}\n")
        signatures = [json.loads(_cli(clave, "policy", "sign", str(policy_file), "--keyfile", str(k),
                                      "--password-file", str(password_file)))["signature"] for _, k in admins]
        _cli(clave, "policy", "apply", str(policy_file), *[a for s in signatures for a in ("--signature", s)])
        nonce = int(anvil.rpc("eth_getTransactionCount", account, "latest"), 16)

        # Held until `clave approve`; then signed, and anvil mines it.
        answer: dict[str, Any] = {}
        caller = threading.Thread(target=lambda: answer.update(post_json(
            clave.url, {"jsonrpc": "2.0", "id": 1, "method": "account_signTransaction",
                        "params": [_tx(account, nonce, 5 * ETHER)]}, timeout=90)[1]))
        caller.start()
        deadline = time.monotonic() + 20
        held: list[dict[str, Any]] = []
        while not held and time.monotonic() < deadline:
            held = [json.loads(line) for line in _cli(clave, "approvals", "list").splitlines()]
        assert held and held[0]["rule"] == "warm" and held[0]["value"] == str(5 * ETHER)
        assert caller.is_alive()
        approved = json.loads(_cli(clave, "approve", held[0]["id"], "--keyfile", str(admins[1][1]),
                                   "--password-file", str(password_file)))
        assert approved["signed"] is True
        caller.join(30)
        assert send_and_mine(anvil, answer["result"]["raw"])["status"] == "0x1"

        # Rejected: request denied.
        caller = threading.Thread(target=lambda: answer.update(post_json(
            clave.url, {"jsonrpc": "2.0", "id": 2, "method": "account_signTransaction",
                        "params": [_tx(account, nonce + 1, 2 * ETHER)]}, timeout=90)[1]))
        answer.clear()
        caller.start()
        held = []
        while not held and time.monotonic() < deadline + 20:
            held = [json.loads(line) for line in _cli(clave, "approvals", "list").splitlines()]
        _cli(clave, "reject", held[0]["id"])
        caller.join(30)
        assert answer["error"] == {"code": -32000, "message": "request denied",
                                   "data": {"rule": "warm", "reason": "approval rejected"}}

        # The nonce guard survives a restart: nonce+1 signed (not sent), then after the restart another
        # transaction with that nonce is refused, and a 10 % fee bump is signed and mined.
        clave.rpc("account_signTransaction", _tx(account, nonce + 1, ETHER // 2))
        clave.stop()
        clave.start()
        other = {**_tx(account, nonce + 1, ETHER // 4)}
        assert _denied(clave, other)["rule"] == "nonce_guard"
        bumped = {**other, "maxFeePerGas": hex(33 * 10**9), "maxPriorityFeePerGas": hex(11 * 10**8)}
        signed = clave.rpc("account_signTransaction", bumped)
        assert send_and_mine(anvil, signed["raw"])["status"] == "0x1"
    finally:
        clave.stop()
