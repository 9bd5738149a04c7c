"""Proxy mode (issue 13): N concurrent `eth_sendTransaction` from one account through
`clave up --downstream <anvil>`, beside the same N `eth_signTransaction` (sign only), on one stack.

Every send is checked: mined by anvil with status 1 from the account, and the nonces are exactly
start..start+N-1 (no gap, no duplicate). Every signed transaction is recovered with eth-account.

    python bench/proxy_send.py [--count 200] [--rounds 3]

prints the two rows; `bench/run.py` runs it as its "proxy sends" phase (rows `send` and `eth_tx`).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack as stk  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.clients import concurrent_posts  # noqa: E402

RECIPIENT = "0x703c4b2bD70c169f5717101CaeE543299Fc946C7"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def _row(kind: str, count: int, rounds: list[tuple[list[float], float]], verified: int, failures: int) -> dict[str, Any]:
    latencies = [t for lat, _ in rounds for t in lat]
    seconds = sum(s for _, s in rounds)
    return {
        "kind": kind, "transport": "http", "generator": f"python (aiohttp), {count} at once × {len(rounds)}",
        "concurrency": count, "rps": count * len(rounds) / seconds, "duration_s": seconds,
        "p50_ms": _percentile(latencies, 0.50), "p90_ms": _percentile(latencies, 0.90),
        "p99_ms": _percentile(latencies, 0.99), "max_ms": max(latencies) * 1000,
        "verified": verified, "failures": failures, "rounds_rps": [count / s for _, s in rounds],
    }


def _mined(anvil_url: str, hashes: list[str], sender: str, start: int) -> tuple[int, int]:
    nonces = []
    bad = 0
    for tx_hash in hashes:
        deadline = time.monotonic() + 30
        receipt = None
        while receipt is None and time.monotonic() < deadline:
            receipt = stk.rpc(anvil_url, "eth_getTransactionReceipt", tx_hash)
            if receipt is None:
                time.sleep(0.05)
        if receipt is None or receipt["status"] != "0x1" or receipt["from"] != sender:
            bad += 1
            continue
        nonces.append(int(stk.rpc(anvil_url, "eth_getTransactionByHash", tx_hash)["nonce"], 16))
    if sorted(nonces) != list(range(start, start + len(hashes))):
        bad += 1
    return len(nonces), bad


def measure(anvil_url: str, clave_url: str, sender: str, count: int, rounds: int) -> list[dict[str, Any]]:
    from eth_account import Account

    send_rounds, sign_rounds = [], []
    send_ok = send_bad = sign_ok = sign_bad = 0
    for _ in range(rounds):
        start = int(stk.rpc(anvil_url, "eth_getTransactionCount", sender, "pending"), 16)
        requests = [{"from": sender, "to": RECIPIENT, "value": hex(i + 1)} for i in range(count)]
        replies, latencies, seconds = asyncio.run(concurrent_posts(clave_url, requests, "eth_sendTransaction"))
        hashes = [r["result"] for r in replies if "result" in r]
        send_bad += count - len(hashes)
        ok, bad = _mined(anvil_url, hashes, sender, start)
        send_ok, send_bad = send_ok + ok, send_bad + bad
        send_rounds.append((latencies, seconds))
        signed = [{**q, "gas": "0x5208", "maxFeePerGas": hex(10**10), "maxPriorityFeePerGas": "0x1", "nonce": hex(i),
                   "chainId": stk.rpc(anvil_url, "eth_chainId")} for i, q in enumerate(requests)]
        replies, latencies, seconds = asyncio.run(concurrent_posts(clave_url, signed, "eth_signTransaction"))
        for reply in replies:
            raw = reply.get("result")
            if isinstance(raw, str) and Account.recover_transaction(raw).lower() == sender:
                sign_ok += 1
            else:
                sign_bad += 1
        sign_rounds.append((latencies, seconds))
    return [_row("send", count, send_rounds, send_ok, send_bad), _row("eth_tx", count, sign_rounds, sign_ok, sign_bad)]


def run(anvil_binary: str, count: int = 200, rounds: int = 3, chain_id: int = 31337,
        workdir: Path | None = None) -> list[dict[str, Any]]:
    """Start anvil and `clave up --downstream`, fund one new account, measure; stop both."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="clave-bench-proxy-"))
    anvil = stk.AnvilProcess(anvil_binary, chain_id, workdir / "anvil.log")
    anvil.start()
    clave = stk.ClaveStack(workdir / "datadir", chain_id=chain_id, extra=["--downstream", anvil.url])
    try:
        clave.start()
        sender = stk.IpcClient(clave.ipc).call("account_new")
        stk.rpc(anvil.url, "anvil_setBalance", sender, hex(10**24))
        return measure(anvil.url, clave.url.rstrip("/") + "/", sender, count, rounds)
    finally:
        clave.stop()
        anvil.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    binary = stk.find_anvil()
    if binary is None:
        print("anvil not found: make tools", file=sys.stderr)
        return 2
    rows = run(binary, args.count, args.rounds)
    for row in rows:
        print(f"{row['kind']:7} {row['rps']:7.0f}/s  p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
              f"max {row['max_ms']:7.1f} ms  ok {row['verified']}  bad {row['failures']}  "
              f"rounds {', '.join(f'{r:.0f}/s' for r in row['rounds_rps'])}")
    print(f"sends/sign-only throughput: {rows[0]['rps'] / rows[1]['rps']:.2f}; "
          f"median round {statistics.median(rows[0]['rounds_rps']):.0f}/s vs {statistics.median(rows[1]['rounds_rps']):.0f}/s")
    return 0 if not any(r["failures"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
