"""Issue 13 end to end: a real `clave up --downstream <anvil>` (default bare-hex eth_signTransaction),
foundry keystores imported from a directory written by the real `cast wallet new DIR`, node methods
forwarded, and `eth_sendTransaction` filled, signed in the enclave and mined by anvil: one at a time,
by type, and 200 at once from one account with no nonce gap or duplicate.

Oracles: anvil mines (and reports the sender of) every transaction; cast writes the keystores.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from tests import secrets_search
from tests.accounts import new_account
from tests.clients import KNOWN_SECRETS, concurrent_posts, run, wait_mined
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
    # The node's own signing and admin methods are not reachable through clave: anvil would sign with its
    # unlocked dev accounts. clave answers personal_sign itself (for its own accounts only).
    dev_account = anvil.rpc("eth_accounts")[0]
    with pytest.raises(RpcFailure) as err:
        proxy.rpc("personal_sign", "0x00", dev_account)
    assert (err.value.code, err.value.message) == (-32000, "unknown account")
    for method, params in (("eth_signTypedData_v1", [dev_account, []]), ("personal_sendTransaction", [{}, ""]),
                           ("admin_nodeInfo", [])):
        with pytest.raises(RpcFailure) as err:
            proxy.rpc(method, *params)
        assert err.value.code == -32601 and "does not forward" in err.value.message, method


def test_send_transaction_fills_signs_and_mines(proxy: ClaveProcess, anvil: Anvil, funded: str) -> None:
    for request in (
        {"from": funded, "to": RECIPIENT, "value": "0x1"},  # 1559, everything filled
        {"from": funded, "to": RECIPIENT, "value": "0x2", "type": "0x0"},  # legacy: eth_gasPrice
        {"from": funded, "to": RECIPIENT, "value": "0x3", "type": "0x1",
         "accessList": [{"address": RECIPIENT, "storageKeys": ["0x" + "00" * 32]}]},
        {"from": funded, "to": RECIPIENT, "data": "0x12345678", "maxPriorityFeePerGas": "0x1"},
    ):
        tx_hash = proxy.rpc("eth_sendTransaction", request)
        receipt = wait_mined(anvil, tx_hash)
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
    assert wait_mined(anvil, tx_hash)["status"] == "0x1"


def test_nonce_too_low_resyncs(proxy: ClaveProcess, anvil: Anvil, funded: str) -> None:
    """Another wallet moved the account's nonce on (here: anvil_setNonce); clave resyncs and retries."""
    first = proxy.rpc("eth_sendTransaction", {"from": funded, "to": RECIPIENT, "value": "0x1"})
    wait_mined(anvil, first)
    ahead = int(anvil.rpc("eth_getTransactionCount", funded, "latest"), 16) + 5
    anvil.rpc("anvil_setNonce", funded, hex(ahead))
    tx_hash = proxy.rpc("eth_sendTransaction", {"from": funded, "to": RECIPIENT, "value": "0x1"})
    assert wait_mined(anvil, tx_hash)["status"] == "0x1"
    assert int(anvil.rpc("eth_getTransactionByHash", tx_hash)["nonce"], 16) == ahead


def _p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def test_200_concurrent_sends_from_one_account(proxy: ClaveProcess, anvil: Anvil, funded: str) -> None:
    start = int(anvil.rpc("eth_getTransactionCount", funded, "pending"), 16)
    requests = [{"from": funded, "to": RECIPIENT, "value": hex(i + 1)} for i in range(200)]
    replies, latencies, seconds = asyncio.run(concurrent_posts(proxy.url, requests, "eth_sendTransaction"))
    errors = [r["error"] for r in replies if "error" in r]
    assert not errors, errors[:3]
    hashes = [r["result"] for r in replies]
    assert len(set(hashes)) == 200
    nonces = []
    for tx_hash in hashes:
        receipt = wait_mined(anvil, tx_hash)
        assert receipt["status"] == "0x1" and receipt["from"] == funded
        nonces.append(int(anvil.rpc("eth_getTransactionByHash", tx_hash)["nonce"], 16))
    assert sorted(nonces) == list(range(start, start + 200)), "no gap, no duplicate"
    assert int(anvil.rpc("eth_getTransactionCount", funded, "latest"), 16) == start + 200
    # The same 200 requests signed only (eth_signTransaction), for the figures in the report.
    signed = [{**q, "gas": "0x5208", "maxFeePerGas": hex(10**10), "maxPriorityFeePerGas": "0x1", "nonce": hex(i)}
              for i, q in enumerate(requests)]
    sign_replies, sign_latencies, sign_seconds = asyncio.run(concurrent_posts(proxy.url, signed, "eth_signTransaction"))
    assert all(isinstance(r.get("result"), str) and r["result"].startswith("0x02") for r in sign_replies)
    print(f"\n200 concurrent eth_sendTransaction: {200 / seconds:.0f}/s, p99 {_p99(latencies) * 1000:.1f} ms; "
          f"eth_signTransaction: {200 / sign_seconds:.0f}/s, p99 {_p99(sign_latencies) * 1000:.1f} ms")


# --- the clients, each through its ordinary remote-signer path ------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
CLIENT_JS = Path(__file__).with_name("js") / "client.cjs"


def _node_modules() -> Path:
    modules = ROOT / ".tools" / "node_modules"
    if not (modules / "ethers").is_dir() or not (modules / "viem").is_dir():
        from tests.vectors import skip_or_fail

        skip_or_fail("ethers/viem not installed: run `make tools`")
    return modules


def _js_client(client: str, proxy: ClaveProcess, account: str, *, ipc: bool = False) -> dict[str, Any]:
    config = {"client": client, "url": proxy.url, "ipc": str(proxy.ipc) if ipc else None, "account": account,
              "recipient": RECIPIENT, "chainId": CHAIN}
    result = subprocess.run(["node", str(CLIENT_JS), json.dumps(config)], capture_output=True, text=True, timeout=180,
                            env={**os.environ, "NODE_PATH": str(_node_modules())})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _mined_from(anvil: Anvil, receipt: dict[str, Any], account: str) -> None:
    assert receipt["status"] == 1 and receipt["from"].lower() == account
    on_chain = anvil.rpc("eth_getTransactionReceipt", receipt["hash"])
    assert on_chain["status"] == "0x1" and on_chain["from"] == account


@pytest.mark.parametrize("transport", ["http", "ipc"])
def test_ethers_json_rpc_signer(proxy: ClaveProcess, anvil: Anvil, funded: str, transport: str) -> None:
    out = _js_client("ethers", proxy, funded, ipc=transport == "ipc")
    assert out["network"] == CHAIN
    assert out["message"].lower() == funded and out["typed"].lower() == funded  # ethers.verifyMessage / verifyTypedData
    assert out["signed"] == {"from": out["signed"]["from"], "type": 2, "chainId": CHAIN}
    assert out["signed"]["from"].lower() == funded  # ethers.Transaction.from(raw).from
    _mined_from(anvil, out["signedReceipt"], funded)
    _mined_from(anvil, out["sentReceipt"], funded)


def test_viem_wallet_client_with_json_rpc_account(proxy: ClaveProcess, anvil: Anvil, funded: str) -> None:
    out = _js_client("viem", proxy, funded)
    assert out["network"] == CHAIN and funded in [a.lower() for a in out["addresses"]]
    assert out["messageValid"] is True and out["typedValid"] is True  # viem's verifyMessage / verifyTypedData
    assert out["message"].lower() == funded and out["typed"].lower() == funded
    for viem_type, signed in out["signed"].items():
        assert signed["type"] == viem_type and signed["from"].lower() == funded
        _mined_from(anvil, signed["receipt"], funded)
    assert out["signed"]["eip2930"]["accessList"] == 1
    _mined_from(anvil, out["sentReceipt"], funded)


@pytest.fixture(scope="module")
def proxy_geth(anvil: Anvil, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClaveProcess]:
    """web3.py reads eth_signTransaction's result as geth's {raw, tx}: `--eth.signtx-result geth`."""
    proc = ClaveProcess(tmp_path_factory.mktemp("proxy-geth"), chain_ids=str(CHAIN),
                        extra=["--downstream", anvil.url, "--eth.signtx-result", "geth"])
    proc.start()
    yield proc
    proc.stop()


@pytest.mark.parametrize("transport", ["http", "ipc"])
def test_web3py(proxy_geth: ClaveProcess, anvil: Anvil, transport: str) -> None:
    from eth_account.messages import encode_defunct, encode_typed_data
    from web3 import Web3

    account = new_account(proxy_geth)
    anvil.fund(account, 10**20)
    provider = Web3.IPCProvider(str(proxy_geth.ipc)) if transport == "ipc" else Web3.HTTPProvider(proxy_geth.url)
    w3 = Web3(provider)
    assert w3.is_connected() and w3.eth.chain_id == CHAIN  # web3_clientVersion, eth_chainId
    sender = Web3.to_checksum_address(account)
    signature = w3.eth.sign(sender, text="gm from web3.py")
    assert w3.eth.account.recover_message(encode_defunct(text="gm from web3.py"), signature=signature) == sender
    typed = {
        "types": {"EIP712Domain": [{"name": "name", "type": "string"}, {"name": "chainId", "type": "uint256"}],
                  "Mail": [{"name": "contents", "type": "string"}, {"name": "tags", "type": "uint256[]"}]},
        "primaryType": "Mail", "domain": {"name": "clave", "chainId": CHAIN},
        "message": {"contents": "hello", "tags": [1, 2]},
    }
    signature = w3.eth.sign_typed_data(sender, typed)  # eth_signTypedData
    assert w3.eth.account.recover_message(encode_typed_data(full_message=typed), signature=signature) == sender
    request = {"from": sender, "to": RECIPIENT, "value": 5, "gas": 21000, "maxFeePerGas": 10**10,
               "maxPriorityFeePerGas": 1, "nonce": w3.eth.get_transaction_count(sender, "pending"), "chainId": CHAIN}
    signed = w3.eth.sign_transaction(request)  # eth_signTransaction, geth's {raw, tx}
    assert w3.eth.account.recover_transaction(signed.raw) == sender
    tx_hash = w3.eth.send_raw_transaction(signed.raw)
    assert w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)["status"] == 1
    tx_hash = w3.eth.send_transaction({"from": sender, "to": RECIPIENT, "value": 6})  # eth_sendTransaction
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
    assert receipt["status"] == 1 and receipt["from"] == sender
    assert anvil.rpc("eth_getTransactionReceipt", "0x" + bytes(tx_hash).hex())["from"] == account


@pytest.mark.parametrize("transport", ["http", "ipc"])
def test_cast_send_unlocked_and_rpc(proxy: ClaveProcess, anvil: Anvil, cast: str, funded: str, transport: str) -> None:
    rpc_url = str(proxy.ipc) if transport == "ipc" else proxy.url
    assert run(cast, "chain-id", "--rpc-url", rpc_url) == str(CHAIN)
    sent = json.loads(run(cast, "send", "--unlocked", "--from", funded, RECIPIENT, "--value", "7", "--json",
                          "--rpc-url", rpc_url))
    assert sent["status"] == "0x1" and sent["from"].lower() == funded
    assert anvil.rpc("eth_getTransactionReceipt", sent["transactionHash"])["from"] == funded
    message = "gm from cast"
    signature = json.loads(run(cast, "rpc", "personal_sign", "0x" + message.encode().hex(), funded, "--rpc-url", rpc_url))
    verified = run(cast, "wallet", "verify", "--address", funded, message, signature)  # exits 1 when it does not
    assert "validation succeeded" in verified.lower() and funded in verified.lower()
