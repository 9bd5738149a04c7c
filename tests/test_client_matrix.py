"""Issue 13 end to end: a real `clave up --downstream <anvil>` (default bare-hex eth_signTransaction),
foundry keystores imported from a directory written by the real `cast wallet new DIR`, node methods
forwarded, and `eth_sendTransaction` filled, signed in the enclave and mined by anvil: one at a time,
by type, and 200 at once from one account with no nonce gap or duplicate.

Oracles: anvil mines (and reports the sender of) every transaction; cast writes the keystores.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from eth_account import Account

from tests import secrets_search
from tests.accounts import new_account
from tests.clients import KNOWN_SECRETS, run
from tests.stack import Anvil, ClaveProcess, RpcFailure, post_json

CHAIN = 31337
RECIPIENT = "0x703c4b2bD70c169f5717101CaeE543299Fc946C7"

pytestmark = pytest.mark.clients


@pytest.fixture(scope="module")
def proxy(anvil: Anvil, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClaveProcess]:
    """`clave up --downstream` in front of the session's anvil, with eth_signTransaction's default result."""
    proc = ClaveProcess(tmp_path_factory.mktemp("proxy"), chain_ids=str(CHAIN), extra=["--downstream", anvil.url])
    proc.start()
    yield proc
    proc.stop()
    leaks = secrets_search.search(secrets_search.clave_haystack(proc), secrets_search.KNOWN_SECRETS)
    assert not leaks, "secrets leaked: " + secrets_search.describe(leaks)


@pytest.fixture(scope="module")
def funded(proxy: ClaveProcess, anvil: Anvil) -> str:
    address = new_account(proxy)
    anvil.fund(address, 10**21)
    return address


def _receipt(anvil: Anvil, tx_hash: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        receipt = anvil.rpc("eth_getTransactionReceipt", tx_hash)
        if receipt is not None:
            return receipt  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"anvil did not mine {tx_hash}")


# --- foundry keystores ---------------------------------------------------------------------------------------


def test_foundry_keystore_directory_imports(proxy: ClaveProcess, cast: str, tmp_path: Path) -> None:
    password = "foundry keystore dir password 3"
    KNOWN_SECRETS.add(password)
    keystores = tmp_path / "keystores"
    keystores.mkdir()
    out = run(cast, "wallet", "new", str(keystores), "--number", "3", "--unsafe-password", password)
    addresses = {a.lower() for a in re.findall(r"Address:\s+(0x[0-9a-fA-F]{40})", out)}
    assert len(addresses) == 3
    files = sorted(keystores.iterdir())
    assert len(files) == 3 and all("address" not in json.loads(f.read_text()) for f in files)
    # A hidden copy and an editor backup are skipped, as geth skips them.
    (keystores / ".hidden").write_text(files[0].read_text())
    (keystores / (files[1].name + "~")).write_text(files[1].read_text())
    pw = tmp_path / "pw"
    pw.write_text(password + "\n")
    result = proxy.cli("account", "import", str(keystores), "--password-file", str(pw))
    assert result.returncode == 0, result.stderr
    imported = {a.lower() for a in re.findall(r"Imported (0x[0-9a-fA-F]{40})", result.stdout)}
    assert imported == addresses
    assert "importing 3 keyfiles" in result.stderr and "[3/3]" in result.stderr
    assert ".hidden" not in result.stdout + result.stderr and "~" not in result.stdout
    assert addresses <= set(proxy.rpc("eth_accounts"))


# --- forwarding -------------------------------------------------------------------------------------------


def test_node_methods_are_forwarded_with_ids_and_errors(proxy: ClaveProcess, anvil: Anvil, funded: str) -> None:
    batch = [
        {"jsonrpc": "2.0", "id": "a", "method": "eth_chainId", "params": []},
        {"jsonrpc": "2.0", "id": 7, "method": "eth_getBalance", "params": [funded, "latest"]},
        {"jsonrpc": "2.0", "id": [1], "method": "eth_blockNumber"},
        {"jsonrpc": "2.0", "id": 9, "method": "eth_getBlockByNumber", "params": ["0xnotanumber", False]},
        {"jsonrpc": "2.0", "id": 10, "method": "anvil_nodeInfo", "params": []},
    ]
    status, replies = post_json(proxy.url, batch)
    assert status == 200
    by_id = {json.dumps(r["id"]): r for r in replies}
    assert by_id['"a"']["result"] == hex(CHAIN)
    assert by_id["7"]["result"] == anvil.rpc("eth_getBalance", funded, "latest")
    assert int(by_id["[1]"]["result"], 16) <= int(anvil.rpc("eth_blockNumber"), 16)
    _, direct = post_json(anvil.url, {**batch[3], "id": 1})
    assert by_id["9"]["error"] == direct["error"], "the node's error is passed through unchanged"
    assert by_id["10"]["result"]["environment"]["chainId"] == CHAIN


def test_send_transaction_fills_signs_and_mines(proxy: ClaveProcess, anvil: Anvil, funded: str) -> None:
    for request in (
        {"from": funded, "to": RECIPIENT, "value": "0x1"},  # 1559, everything filled
        {"from": funded, "to": RECIPIENT, "value": "0x2", "type": "0x0"},  # legacy: eth_gasPrice
        {"from": funded, "to": RECIPIENT, "value": "0x3", "type": "0x1",
         "accessList": [{"address": RECIPIENT, "storageKeys": ["0x" + "00" * 32]}]},
        {"from": funded, "to": RECIPIENT, "data": "0x12345678", "maxPriorityFeePerGas": "0x1"},
    ):
        tx_hash = proxy.rpc("eth_sendTransaction", request)
        receipt = _receipt(anvil, tx_hash)
        assert receipt["status"] == "0x1" and receipt["from"] == funded
        mined = anvil.rpc("eth_getTransactionByHash", tx_hash)
        assert mined["type"] == request.get("type", "0x2") and int(mined["chainId"], 16) == CHAIN
        if mined["type"] == "0x1":
            assert len(mined["accessList"]) == 1
        # The receipt is also reachable through clave (forwarded).
        assert proxy.rpc("eth_getTransactionReceipt", tx_hash)["transactionHash"] == tx_hash


def test_send_transaction_refusals(proxy: ClaveProcess, anvil: Anvil, funded: str) -> None:
    poor = new_account(proxy)
    with pytest.raises(RpcFailure) as err:
        proxy.rpc("eth_sendTransaction", {"from": poor, "to": RECIPIENT, "value": hex(10**18)})
    # anvil refuses the broadcast; clave passes its code and message through.
    unfunded = Account.create()
    raw = unfunded.sign_transaction({"chainId": CHAIN, "nonce": 0, "to": RECIPIENT, "value": 10**18, "gas": 21000,
                                     "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 1})
    with pytest.raises(RpcFailure) as direct:
        anvil.rpc("eth_sendRawTransaction", "0x" + bytes(raw.raw_transaction).hex())
    assert (err.value.code, err.value.message) == (direct.value.code, direct.value.message)
    with pytest.raises(RpcFailure) as err:
        proxy.rpc("eth_sendTransaction", {"from": "0x" + "5a" * 20, "to": RECIPIENT})
    assert (err.value.code, err.value.message) == (-32000, "unknown account")
    with pytest.raises(RpcFailure) as err:
        proxy.rpc("eth_sendTransaction", {"from": funded, "to": RECIPIENT, "chainId": "0x1"})
    assert err.value.message == "chainId 1 does not match the downstream node's chain 31337"
    # A refused send burns no nonce: the next one still mines.
    tx_hash = proxy.rpc("eth_sendTransaction", {"from": funded, "to": RECIPIENT, "value": "0x5"})
    assert _receipt(anvil, tx_hash)["status"] == "0x1"


def test_nonce_too_low_resyncs(proxy: ClaveProcess, anvil: Anvil, funded: str) -> None:
    """Another wallet moved the account's nonce on (here: anvil_setNonce); clave resyncs and retries."""
    first = proxy.rpc("eth_sendTransaction", {"from": funded, "to": RECIPIENT, "value": "0x1"})
    _receipt(anvil, first)
    ahead = int(anvil.rpc("eth_getTransactionCount", funded, "latest"), 16) + 5
    anvil.rpc("anvil_setNonce", funded, hex(ahead))
    tx_hash = proxy.rpc("eth_sendTransaction", {"from": funded, "to": RECIPIENT, "value": "0x1"})
    assert _receipt(anvil, tx_hash)["status"] == "0x1"
    assert int(anvil.rpc("eth_getTransactionByHash", tx_hash)["nonce"], 16) == ahead


async def _concurrent(url: str, requests: list[dict[str, Any]], method: str) -> tuple[list[Any], list[float], float]:
    async with aiohttp.ClientSession() as session:
        async def one(i: int, request: dict[str, Any]) -> tuple[Any, float]:
            started = time.perf_counter()
            async with session.post(url, json={"jsonrpc": "2.0", "id": i, "method": method, "params": [request]}) as r:
                reply = await r.json()
            return reply, time.perf_counter() - started

        began = time.perf_counter()
        results = await asyncio.gather(*(one(i, q) for i, q in enumerate(requests)))
        return [r for r, _ in results], [t for _, t in results], time.perf_counter() - began


def _p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def test_200_concurrent_sends_from_one_account(proxy: ClaveProcess, anvil: Anvil, funded: str) -> None:
    start = int(anvil.rpc("eth_getTransactionCount", funded, "pending"), 16)
    requests = [{"from": funded, "to": RECIPIENT, "value": hex(i + 1)} for i in range(200)]
    replies, latencies, seconds = asyncio.run(_concurrent(proxy.url, requests, "eth_sendTransaction"))
    errors = [r["error"] for r in replies if "error" in r]
    assert not errors, errors[:3]
    hashes = [r["result"] for r in replies]
    assert len(set(hashes)) == 200
    nonces = []
    for tx_hash in hashes:
        receipt = _receipt(anvil, tx_hash)
        assert receipt["status"] == "0x1" and receipt["from"] == funded
        nonces.append(int(anvil.rpc("eth_getTransactionByHash", tx_hash)["nonce"], 16))
    assert sorted(nonces) == list(range(start, start + 200)), "no gap, no duplicate"
    assert int(anvil.rpc("eth_getTransactionCount", funded, "latest"), 16) == start + 200
    # The same 200 requests signed only (eth_signTransaction), for the figures in the report.
    signed = [{**q, "gas": "0x5208", "maxFeePerGas": hex(10**10), "maxPriorityFeePerGas": "0x1", "nonce": hex(i)}
              for i, q in enumerate(requests)]
    sign_replies, sign_latencies, sign_seconds = asyncio.run(_concurrent(proxy.url, signed, "eth_signTransaction"))
    assert all(isinstance(r.get("result"), str) and r["result"].startswith("0x02") for r in sign_replies)
    print(f"\n200 concurrent eth_sendTransaction: {200 / seconds:.0f}/s, p99 {_p99(latencies) * 1000:.1f} ms; "
          f"eth_signTransaction: {200 / sign_seconds:.0f}/s, p99 {_p99(sign_latencies) * 1000:.1f} ms")
