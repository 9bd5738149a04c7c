"""The audit log (core/audit.py, enclave/audit.py, sidecar/audit.py): every signing decision and custody
change is chained and checkpointed by the enclave and carried to `<datadir>/audit.log` by the sidecar;
`verify_lines` (what `clave audit verify` runs) accepts it, checks each boot's attestation binding, and
names the first bad line after one byte is changed, an entry removed, or two entries swapped."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from eth_utils import keccak

from clave.core.audit import Verdict, line_hash, verify_lines
from clave.core.policy.schema import canonical_json
from clave.core.provenance import decode_audit_key
from clave.dev.soft_nsm import SoftwareNsm
from clave.enclave.service import EnclaveService
from clave.sidecar.trust.attestation import PcrPolicy, load_root, parse_attestation, verify_attestation
from tests.accounts import TEST_KEY_ARN
from tests.inproc import Stack, running_stack
from tests.test_custody import (
    ADMINS,
    _admin_addresses,
    _apply,
    _denied,
    _restart_enclave,
    _sign,
    _status,
    _tx,
)

ETHER = 10**18


def _attestation_check(root_pem: bytes) -> Any:
    root = load_root(root_pem)

    def check(entry: dict[str, Any]) -> str | None:
        document = bytes.fromhex(entry["attestation"])
        at_ms = parse_attestation(document)[0].timestamp_ms + 1000  # when it was made (X.509: whole seconds)
        verified = verify_attestation(document, root=root, now_ms=at_ms, pcr_policy=PcrPolicy(allow_debug=True))
        key = decode_audit_key(verified.user_data)
        return None if key is not None and key.hex() == entry["checkpoint_key"] else "key mismatch"

    return check


async def _drained(stack: Stack) -> list[bytes]:
    assert stack.sidecar.audit is not None
    await stack.sidecar.audit.drain_once()
    return (stack.config.datadir / "audit.log").read_bytes().splitlines(keepends=True)


def _entries(lines: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines]


@pytest.mark.slow  # seconds in process: the fast tier stays under a minute
async def test_decisions_and_changes_are_chained_checkpointed_and_survive_a_restart(tmp_path: Path) -> None:
    async with running_stack(tmp_path, admins=_admin_addresses(), admin_threshold=2) as stack:
        (account,) = await stack.rpc("clave_newAccount", {})
        await stack.rpc("account_signTransaction", _tx(account, 0, 5 * ETHER))  # no policy yet: open
        policy = {"version": 1, "rules": [{"name": "small", "accounts": "*", "value_max": "1 ether"}]}
        await _apply(stack, policy, ADMINS[:2])
        await stack.rpc("account_signTransaction", _tx(account, 1, ETHER))
        assert (await _denied(stack, "account_signTransaction", _tx(account, 2, 2 * ETHER)))["reason"] == "value_max"
        status = await _status(stack)
        await stack.rpc("clave_freeze", 2, [_sign(ADMINS[2], "Freeze", status, 2)])
        lines = await _drained(stack)
        entries = _entries(lines)
        kinds = [e["kind"] for e in entries]
        assert kinds[0] == "admins" or "boot" in kinds
        assert kinds.count("boot") == 1 and "checkpoint" in kinds
        signs = [e for e in entries if e["kind"] == "sign" and e["what"] == "tx"]
        assert [(e["outcome"], e["rule"], e["value"]) for e in signs] == [
            ("allowed", "no-policy", 5 * ETHER), ("allowed", "small", ETHER), ("denied", "small", 2 * ETHER)]
        assert signs[0]["account"] == account and signs[2]["reason"] == "value_max"
        (change,) = [e for e in entries if e["kind"] == "policy"]
        assert change["policy"] == keccak(canonical_json(policy)).hex() and change["sequence"] == 1
        assert sorted(change["signers"]) == sorted(a.address.lower() for a in ADMINS[:2])
        (freeze,) = [e for e in entries if e["kind"] == "freeze"]
        assert freeze["signers"] == [ADMINS[2].address.lower()]
        verdict = verify_lines(lines, attestation=_attestation_check(stack.root_pem))
        assert verdict.ok, verdict
        assert verdict.entries == len(lines) and verdict.boots == 1

        # A new boot (new checkpoint key) continues the same chain from the file's head.
        await _restart_enclave(stack)
        assert (await _denied(stack, "account_signTransaction", _tx(account, 2, 1)))["rule"] == "frozen"
        lines = await _drained(stack)
        verdict = verify_lines(lines, attestation=_attestation_check(stack.root_pem))
        assert verdict.ok, verdict
        assert verdict.boots == 2 and len(set(verdict.boot_keys)) == 2
        last = _entries(lines)
        assert [e["i"] for e in last] == list(range(len(last)))
        assert any(e["kind"] == "custody_load" and e.get("frozen") is True for e in last)
        # A boot entry whose attestation names another key is refused.
        assert not verify_lines(lines, attestation=lambda entry: "key mismatch").ok


@pytest.mark.slow  # seconds in process: the fast tier stays under a minute
async def test_windows_and_the_nonce_guard_survive_a_restart_and_a_gap_waits_for_an_admin(tmp_path: Path) -> None:
    async with running_stack(tmp_path, admins=_admin_addresses(), admin_threshold=2) as stack:
        (account,) = await stack.rpc("clave_newAccount", {})
        policy = {"version": 1, "rules": [{"name": "hot", "accounts": "*", "value_max": "1 ether",
                                           "window": {"value_max": "3 ether", "seconds": 3600}}]}
        await _apply(stack, policy, ADMINS[:2])
        first = await stack.rpc("account_signTransaction", _tx(account, 0, ETHER))
        await stack.rpc("account_signTransaction", _tx(account, 1, ETHER))
        await _drained(stack)
        await _restart_enclave(stack)
        # The new boot knows nonce 1 is taken and 2 ether of the hour are spent.
        assert await _denied(stack, "account_signTransaction", _tx(account, 1, ETHER // 2)) == {
            "rule": "nonce_guard", "reason": "nonce 1 already signed; a replacement needs a fee bump of at least 10%"}
        again = await stack.rpc("account_signTransaction", _tx(account, 0, ETHER))
        assert again["raw"] == first["raw"]  # the same transaction: allowed, and charged again (conservative)
        assert await _denied(stack, "account_signTransaction", _tx(account, 2, ETHER)) == {
            "rule": "hot", "reason": "window"}
        health = await (await stack.http.get("/healthz")).json()
        assert health["custody"]["sequence"] == 1

        # The parent drops the end of the log (the last sealed head with it): the next boot denies all.
        lines = await _drained(stack)
        (stack.config.datadir / "audit.log").write_bytes(b"".join(lines[:3]))
        await _restart_enclave(stack)
        status = await _status(stack)
        assert "does not contain the last sealed head" in status["audit_gap"]
        assert (await _denied(stack, "account_signTransaction", _tx(account, 5, 1)))["rule"] == "audit-gap"
        assert "AUDIT LOG GAP" in stack.log_file.read_text()
        # One admin acknowledges it; signing resumes under the policy.
        acked = await stack.rpc("clave_auditAck", status["sequence"] + 1,
                                [_sign(ADMINS[1], "AuditAck", status, status["sequence"] + 1)])
        assert acked["audit_gap"] is None
        await stack.rpc("account_signTransaction", _tx(account, 5, 1))
        lines = await _drained(stack)
        assert any(json.loads(line)["kind"] == "gap" for line in lines)
        assert json.loads([x for x in lines if json.loads(x)["kind"] == "gap_ack"][0])["signers"] == [
            ADMINS[1].address.lower()]


@pytest.mark.slow  # seconds in process: the fast tier stays under a minute
async def test_a_process_that_resumes_the_log_first_after_a_restart_gets_a_gap_not_fresh_windows(
        tmp_path: Path) -> None:
    from clave.sidecar.signing.enclave_client import EnclaveClient

    async with running_stack(tmp_path, admins=_admin_addresses(), admin_threshold=2) as stack:
        (account,) = await stack.rpc("clave_newAccount", {})
        policy = {"version": 1, "rules": [{"name": "hot", "accounts": "*",
                                           "window": {"value_max": "1 ether", "seconds": 3600}}]}
        await _apply(stack, policy, ADMINS[:2])
        await stack.rpc("account_signTransaction", _tx(account, 0, ETHER))
        await _drained(stack)
        signer = stack.signer

        async def attacker_resumes() -> None:
            """A process on the parent that reaches the restarted enclave first and starts the audit chain
            with nothing (no replay, no sealed head), hoping for empty windows."""
            direct = EnclaveClient(stack.enclave.address)
            try:
                await direct.call("audit_resume", {})
            finally:
                await direct.close()

        # 1. before the sidecar has loaded the custody state into the new boot
        settle = signer._settle_custody  # noqa: SLF001 - the test puts the race at a chosen point

        async def racing_settle() -> None:
            await attacker_resumes()
            await settle()

        signer._settle_custody = racing_settle  # type: ignore[method-assign]  # noqa: SLF001
        await _restart_enclave(stack)
        signer._settle_custody = settle  # type: ignore[method-assign]  # noqa: SLF001
        assert "after the audit log was resumed" in (await _status(stack))["audit_gap"]
        assert (await _denied(stack, "account_signTransaction", _tx(account, 1, ETHER)))["rule"] == "audit-gap"

        # 2. after the custody state is loaded, before the sidecar resumes the log with its sealed head
        resume = signer.on_bring_up

        async def racing_resume() -> None:
            await attacker_resumes()
            assert resume is not None
            await resume()

        signer.on_bring_up = racing_resume
        await _restart_enclave(stack)
        signer.on_bring_up = resume
        assert "without the sealed head" in (await _status(stack))["audit_gap"]
        assert (await _denied(stack, "account_signTransaction", _tx(account, 1, ETHER)))["rule"] == "audit-gap"

        # The chains those boots wrote do not continue the file's: the next boot finds the log broken and
        # keeps denying; once an admin acknowledges, the window rebuilt from the log still holds.
        await _restart_enclave(stack)
        status = await _status(stack)
        assert "AUDIT CHAIN BREAK" in stack.log_file.read_text()  # the sidecar wrote them, and said so
        assert status["audit_gap"] is not None
        assert (await _denied(stack, "account_signTransaction", _tx(account, 1, ETHER)))["rule"] == "audit-gap"
        await stack.rpc("clave_auditAck", status["sequence"] + 1,
                        [_sign(ADMINS[0], "AuditAck", status, status["sequence"] + 1)])
        assert await _denied(stack, "account_signTransaction", _tx(account, 1, ETHER)) == {
            "rule": "hot", "reason": "window"}


def _tampered(lines: list[bytes], how: str, at: int) -> list[bytes]:
    out = list(lines)
    if how == "byte":
        line = out[at]
        position = line.index(b'"value":') + len(b'"value":')  # 1000000000000000000 -> 9000000000000000000
        out[at] = line[:position] + b"9" + line[position + 1:]
    elif how == "remove":
        del out[at]
    elif how == "swap":
        out[at], out[at + 1] = out[at + 1], out[at]
    return out


def _service_log(tmp_path: Path, decisions: int, *, every: int = 1000, wait: float = 0.0) -> tuple[list[bytes], bytes]:
    """`decisions` signing decisions through the enclave's custody check (no ECDSA: the decision is what
    is logged), drained as the sidecar drains them, `wait` seconds (injected clock) after the last one."""
    nsm = SoftwareNsm(tmp_path / "nsm")
    now = [time.time()]
    service = EnclaveService(nsm, clock=lambda: now[0])
    service.audit.every = every
    service.state.set_master(os.urandom(32), TEST_KEY_ARN)
    service.call("audit_resume", {})
    account = bytes.fromhex("aa" * 20)
    tx = {"type": 2, "chainId": 1, "gas": 21000, "value": ETHER, "to": bytes.fromhex("bb" * 20), "data": b"",
          "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9, "accessList": []}
    for nonce in range(decisions):
        service.custody.check_tx(account, {**tx, "nonce": nonce}, nonce.to_bytes(8, "big"))
    now[0] += wait
    lines: list[bytes] = []
    after: str | None = None
    while True:
        result = service.call("audit_drain", {"after_hash": after})
        lines += [line + b"\n" for line in result["lines"]]
        after = line_hash(result["lines"][-1]) if result["lines"] else after
        if not result["more"]:
            return lines, nsm.root_pem


@pytest.mark.parametrize(("how", "at", "named"), [
    ("byte", 500, 501), ("byte", 999, 1000), ("remove", 500, 501), ("remove", 1001, 1002), ("swap", 700, 701)])
def test_verify_names_the_first_bad_line(tmp_path: Path, how: str, at: int, named: int) -> None:
    lines, root_pem = _service_log(tmp_path, 2000)
    good = verify_lines(lines, attestation=_attestation_check(root_pem))
    assert good.ok and good.entries == len(lines) and good.checkpoints >= 3, good
    bad: Verdict = verify_lines(_tampered(lines, how, at))
    assert not bad.ok and bad.first_bad == named, bad  # 1-based line numbers


def test_entries_are_checkpointed_within_t_seconds_and_the_unsigned_tail_is_reported(tmp_path: Path) -> None:
    # Drained at once: 10 decisions after the boot checkpoint, not yet vouched for by a signature.
    lines, _ = _service_log(tmp_path / "a", 10, every=1000)
    verdict = verify_lines(lines)
    assert verdict.ok and verdict.unsigned_tail == 10
    # Drained 10 s (T) later: the drain checkpoints them first, so a change to the last one is caught.
    lines, _ = _service_log(tmp_path / "b", 10, every=1000, wait=10.0)
    verdict = verify_lines(lines)
    assert verdict.ok and verdict.unsigned_tail == 0 and json.loads(lines[-1])["kind"] == "checkpoint"
    changed = verify_lines(_tampered(lines, "byte", len(lines) - 2))  # the last decision
    assert not changed.ok and changed.first_bad == len(lines) - 1


@pytest.mark.slow
def test_verify_a_log_of_100000_decisions_and_time_it(tmp_path: Path) -> None:
    started = time.perf_counter()
    lines, root_pem = _service_log(tmp_path, 100_000)
    made = time.perf_counter() - started
    started = time.perf_counter()
    verdict = verify_lines(lines, attestation=_attestation_check(root_pem))
    seconds = time.perf_counter() - started
    print(f"\n100,000 decisions: logged in {made:.2f} s; verified ({len(lines)} lines, "
          f"{verdict.checkpoints} checkpoints) in {seconds:.2f} s")
    assert verdict.ok and verdict.entries == len(lines) > 100_000
    assert verify_lines(_tampered(lines, "swap", 54_321)).first_bad == 54_322


@pytest.mark.slow  # seconds in process: the fast tier stays under a minute
async def test_rotation_keeps_one_chain_and_a_restart_reads_across_segments(tmp_path: Path, capsys: Any) -> None:
    import argparse

    from clave.cli.audit import cmd_audit_verify
    from clave.sidecar.audit import segments

    async with running_stack(tmp_path, admins=_admin_addresses(), admin_threshold=2) as stack:
        assert stack.sidecar.audit is not None
        stack.sidecar.audit.rotate_bytes = 1  # every write closes a segment
        (account,) = await stack.rpc("clave_newAccount", {})
        policy = {"version": 1, "rules": [{"name": "hot", "accounts": "*",
                                           "window": {"value_max": "3 ether", "seconds": 3600}}]}
        await _apply(stack, policy, ADMINS[:2])
        for nonce in range(3):
            await stack.rpc("account_signTransaction", _tx(account, nonce, ETHER))
            await stack.sidecar.audit.drain_once()
        log_path = stack.config.datadir / "audit.log"
        assert len(segments(log_path)) >= 3
        await _restart_enclave(stack)
        # The 3 ether of the hour, spread over rotated segments, are all counted by the new boot.
        assert await _denied(stack, "account_signTransaction", _tx(account, 3, 1)) == {"rule": "hot", "reason": "window"}
        assert (await _status(stack))["audit_gap"] is None
        await stack.sidecar.audit.drain_once()
        root = tmp_path / "root.pem"
        root.write_bytes(stack.root_pem)
        args = argparse.Namespace(file=None, datadir=str(stack.config.datadir), root=str(root), aws_root=False,
                                  allow_debug=True, no_attestation=False)
        assert cmd_audit_verify(args) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["ok"] and summary["boots"] == 2 and summary["files"] == len(segments(log_path)) >= 3
        # One changed byte in a middle segment is named by file and line.
        middle = segments(log_path)[1]
        lines = middle.read_bytes().splitlines(keepends=True)
        lines[0] = lines[0].replace(b'"t":', b'"t":1', 1)
        middle.write_bytes(b"".join(lines))
        assert cmd_audit_verify(args) == 1
        out = json.loads(capsys.readouterr().out)
        assert (out["file"], out["ok"]) == (str(middle), False)


@pytest.mark.slow  # seconds in process: the fast tier stays under a minute
async def test_a_damaged_log_tail_is_set_aside_and_the_policy_waits_for_an_admin(tmp_path: Path) -> None:
    async with running_stack(tmp_path, admins=_admin_addresses(), admin_threshold=2) as stack:
        (account,) = await stack.rpc("clave_newAccount", {})
        await _apply(stack, {"version": 1, "rules": [{"name": "any", "accounts": "*"}]}, ADMINS[:2])
        await _drained(stack)
        log_path = stack.config.datadir / "audit.log"
        with log_path.open("ab") as f:
            f.write(b'{"i": broken\n')
        await _restart_enclave(stack)  # brought up, not stuck on the damaged file
        assert [p.name.split(".unreadable-")[0] for p in stack.config.datadir.glob("audit.log.unreadable-*")] == [
            "audit.log"]
        assert "AUDIT LOG UNREADABLE" in stack.log_file.read_text()
        assert (await _denied(stack, "account_signTransaction", _tx(account, 0, 1)))["rule"] == "audit-gap"
