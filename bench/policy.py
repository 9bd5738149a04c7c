"""What the custody policy and the audit log cost.

  python bench/policy.py [--seconds 5] [--rounds 3] [--concurrency 16]

Prints:
  handler     `EnclaveService.call("sign_tx", …)` in this process: no admin set (no policy; every decision
              still goes to the audit log) against a 50-rule policy (49 rules for other accounts, deny rules
              with `to` lists, the allowing rule last, with two windows and the nonce guard)
  stack       `account_signTransaction` through the in-process stack of tests/inproc.py (dispatcher, sidecar,
              unix-socket frames, enclave, audit drain to the datadir): two stacks, no policy and the
              50-rule policy, measured in alternating rounds in the same run; throughput and p50/p99
  audit       one audit entry (encode + SHA-256 + buffer) and one checkpoint (Ed25519 signature + entry),
              and what a checkpoint every 1,000 entries adds per decision

Set PYTHONPATH to `src` of the tree to measure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import latency_summary  # noqa: E402

from tests.accounts import TEST_KEY_ARN  # noqa: E402

DEST = "0x703c4b2bD70c169f5717101CaeE543299Fc946C7"


def fifty_rules(account: str) -> dict[str, Any]:
    rules: list[dict[str, Any]] = []
    for i in range(45):
        other = "0x" + f"{i + 1:040x}"
        rules.append({"name": f"other-{i}", "accounts": [other], "to": [DEST, "0x" + f"{i + 100:040x}"],
                      "value_max": "1 ether", "window": {"value_max": "10 ether", "seconds": 3600}})
    for i in range(4):
        rules.append({"name": f"deny-{i}", "accounts": "*", "action": "deny",
                      "to": ["0x" + f"{i + 900:040x}" for _ in range(1)]})
    rules.append({"name": "hot", "accounts": [account], "to": [DEST], "value_max": "1 ether", "gas_max": 100000,
                  "max_fee_per_gas": "500 gwei",
                  "window": [{"value_max": "1000000 ether", "seconds": 3600},
                             {"value_max": "1000000 ether", "seconds": 86400, "per": "group"}]})
    return {"version": 1, "rules": rules}


def handler_bench(seconds: float) -> dict[str, Any]:
    from eth_account import Account

    from clave.core.audit import line_hash
    from clave.core.policy import authority
    from clave.core.policy.schema import canonical_json
    from clave.dev.soft_nsm import SoftwareNsm
    from clave.enclave.service import EnclaveService

    admin = Account.create()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label in ("none", "policy50"):
            service = EnclaveService(SoftwareNsm(Path(tmp) / label))
            service.state.set_master(os.urandom(32), TEST_KEY_ARN)
            if label == "policy50":
                service.call("init_admins", {"admins": [bytes.fromhex(admin.address[2:])], "threshold": 1})
            service.call("audit_resume", {})
            (record,) = service.call("generate", {"count": 1})["records"]
            address = record["address"]
            if label == "policy50":
                document = canonical_json(fifty_rules("0x" + address.hex()))
                set_id = authority.admin_set_id([bytes.fromhex(admin.address[2:])], 1)
                typed = authority.typed_message("PolicyUpdate", set_id, 1, authority.policy_hash(document))
                signature = bytes(admin.sign_typed_data(full_message=typed).signature)
                service.call("policy_apply", {"document": document, "sequence": 1, "signatures": [signature]})
            to = bytes.fromhex(DEST[2:])
            latencies: list[float] = []
            nonce = 0
            deadline = time.perf_counter() + seconds
            drained: str | None = None
            while time.perf_counter() < deadline:
                tx = {"type": 2, "chainId": 1, "nonce": nonce, "gas": 21000, "maxFeePerGas": 30 * 10**9,
                      "maxPriorityFeePerGas": 10**9, "value": 10**15, "to": to, "data": b"", "accessList": []}
                started = time.perf_counter()
                service.call("sign_tx", {"address": address, "tx": tx})
                latencies.append((time.perf_counter() - started) * 1000)
                nonce += 1
                if nonce % 5000 == 0:  # as the sidecar drains
                    lines = service.call("audit_drain", {"after_hash": drained})["lines"]
                    if lines:
                        drained = line_hash(lines[-1])
            results[label] = {"per_second": len(latencies) / sum(latencies) * 1000, **latency_summary(latencies)}
    results["policy_cost_percent"] = (results["none"]["per_second"] / results["policy50"]["per_second"] - 1) * 100
    return results


def audit_bench(count: int) -> dict[str, Any]:
    from clave.dev.soft_nsm import SoftwareNsm
    from clave.enclave.service import EnclaveService

    with tempfile.TemporaryDirectory() as tmp:
        service = EnclaveService(SoftwareNsm(Path(tmp)))
        service.state.set_master(os.urandom(32), TEST_KEY_ARN)
        audit = service.audit
        audit.every = 10**9
        audit.seconds = 10**9
        service.call("audit_resume", {})
        fields = {"account": "0x" + "aa" * 20, "what": "tx", "chain": 1, "nonce": 1, "to": "0x" + "bb" * 20,
                  "value": 10**18, "fee": 30 * 10**9, "tip": 10**9, "digest": "cc" * 32, "type": 2,
                  "outcome": "allowed", "rule": "hot"}
        started = time.perf_counter()
        for _ in range(count):
            audit.record("sign", **fields)
        entry_us = (time.perf_counter() - started) / count * 1e6
        started = time.perf_counter()
        for _ in range(1000):
            with audit._lock:  # noqa: SLF001 - the benchmark times the checkpoint itself
                audit._checkpoint()  # noqa: SLF001
        checkpoint_us = (time.perf_counter() - started) / 1000 * 1e6
    return {"entry_us": entry_us, "checkpoint_us": checkpoint_us,
            "checkpoint_every_1000_us_per_decision": checkpoint_us / 1000,
            "checkpoint_every_entry_percent_of_entry": checkpoint_us / entry_us * 100}


async def stack_bench(seconds: float, rounds: int, concurrency: int) -> dict[str, Any]:
    from eth_account import Account
    from eth_utils import to_checksum_address

    from clave.core.policy import authority
    from clave.core.policy.schema import canonical_json
    from tests.inproc import running_stack

    admin = Account.create()
    samples: dict[str, list[float]] = {"none": [], "policy50": []}
    rates: dict[str, list[float]] = {"none": [], "policy50": []}
    with tempfile.TemporaryDirectory() as tmp:
        async with running_stack(Path(tmp) / "none", chain_ids=(1,)) as plain, \
                running_stack(Path(tmp) / "policy", chain_ids=(1,), admins=[bytes.fromhex(admin.address[2:])]) as ruled:
            accounts = {}
            for label, stack in (("none", plain), ("policy50", ruled)):
                (accounts[label],) = await stack.rpc("clave_newAccount", {})
            status = await ruled.rpc("clave_policyStatus")
            document = canonical_json(fifty_rules(accounts["policy50"]))
            typed = authority.typed_message("PolicyUpdate", bytes.fromhex(status["admin_set_id"][2:]), 1,
                                            authority.policy_hash(document))
            signature = "0x" + bytes(admin.sign_typed_data(full_message=typed).signature).hex()
            await ruled.rpc("clave_policyApply", "0x" + document.hex(), 1, [signature])
            nonces = {"none": 0, "policy50": 0}
            for round_ in range(rounds):
                order = (("none", plain), ("policy50", ruled))
                for label, stack in order if round_ % 2 == 0 else order[::-1]:  # no order bias
                    account = to_checksum_address(accounts[label])
                    latencies: list[float] = []
                    deadline = time.perf_counter() + seconds

                    async def worker(stack: Any = stack, label: str = label, account: str = account,
                                     latencies: list[float] = latencies, deadline: float = deadline) -> None:
                        while time.perf_counter() < deadline:
                            nonce = nonces[label]
                            nonces[label] += 1
                            args = {"from": account, "to": DEST, "gas": "0x5208", "maxFeePerGas": hex(30 * 10**9),
                                    "maxPriorityFeePerGas": hex(10**9), "nonce": hex(nonce), "value": hex(10**15)}
                            started = time.perf_counter()
                            await stack.rpc("account_signTransaction", args)
                            latencies.append((time.perf_counter() - started) * 1000)

                    started = time.perf_counter()
                    await asyncio.gather(*(worker() for _ in range(concurrency)))
                    rates[label].append(len(latencies) / (time.perf_counter() - started))
                    samples[label] += latencies
            denials = (await ruled.rpc("clave_policyStatus"))["denials"]
    out: dict[str, Any] = {label: {"per_second": statistics.median(rates[label]), "rounds": rates[label],
                                   **latency_summary(samples[label])} for label in samples}
    out["policy_cost_percent"] = (out["none"]["per_second"] / out["policy50"]["per_second"] - 1) * 100
    out["denials"] = denials
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    import json

    print("handler", json.dumps(handler_bench(args.seconds), indent=1))
    print("audit", json.dumps(audit_bench(100_000), indent=1))
    print("stack", json.dumps(asyncio.run(stack_bench(args.seconds, args.rounds, args.concurrency)), indent=1))


if __name__ == "__main__":
    main()
