"""Proxy mode in-process (tests/inproc.py) in front of a scripted node (an aiohttp app here), for what
anvil cannot show: a pre-London chain, a node that answers "nonce too low", error data, a node on another
chain, a node that is down, the auth header, and a WebSocket downstream. The real node (anvil) and the
real clients are in tests/test_client_matrix.py.

Every transaction the scripted node receives is decoded and its sender recovered with eth-account.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import rlp
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer
from eth_account import Account
from eth_account.typed_transactions import TypedTransaction
from hexbytes import HexBytes

from clave.sidecar.proxy.nonces import NonceTracker
from tests.inproc import Stack, running_stack
from tests.stack import RpcFailure

CHAIN = 31337
TO = "0x703c4b2bD70c169f5717101CaeE543299Fc946C7"
REVERT = {"code": 3, "message": "execution reverted: nope", "data": "0x08c379a0" + "00" * 4}


@dataclass
class Node:
    """A scripted JSON-RPC node: chain state is a few numbers; raw transactions are kept."""

    chain_id: int = CHAIN
    base_fee: int | None = 7 * 10**9  # None: pre-London (no baseFeePerGas)
    gas_price: int = 3 * 10**9
    tip: int = 10**9
    pending: int = 5
    nonce_too_low_once: bool = False
    raws: list[bytes] = field(default_factory=list)
    headers: list[str | None] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    def answer(self, message: dict[str, Any]) -> dict[str, Any]:
        method, params = message["method"], message.get("params") or []
        self.calls.append(method)
        result: Any
        if method == "eth_chainId":
            result = hex(self.chain_id)
        elif method == "eth_blockNumber":
            result = "0x2a"
        elif method == "eth_getTransactionCount":
            result = hex(self.pending)
        elif method == "eth_estimateGas":
            result = hex(50_000)
        elif method == "eth_gasPrice":
            result = hex(self.gas_price)
        elif method == "eth_maxPriorityFeePerGas" and self.base_fee is not None:  # pre-London: unknown
            result = hex(self.tip)
        elif method == "eth_feeHistory":
            result = {"oldestBlock": "0x1", "reward": [],
                      "baseFeePerGas": ["0x0", "0x0"] if self.base_fee is None else [hex(self.base_fee)] * 2}
        elif method == "eth_call":
            return {"jsonrpc": "2.0", "id": message["id"], "error": REVERT}
        elif method == "eth_sendRawTransaction":
            if self.nonce_too_low_once:
                self.nonce_too_low_once = False
                self.pending += 3  # someone else sent three
                return {"jsonrpc": "2.0", "id": message["id"], "error": {"code": -32000, "message": "nonce too low"}}
            self.raws.append(bytes.fromhex(params[0][2:]))
            result = "0x" + "ab" * 32
        else:
            return {"jsonrpc": "2.0", "id": message["id"], "error": {"code": -32601, "message": f"no {method}"}}
        return {"jsonrpc": "2.0", "id": message["id"], "result": result}

    def app(self) -> web.Application:
        async def http(request: web.Request) -> web.StreamResponse:
            if request.headers.get("Upgrade", "").lower() == "websocket":
                ws = web.WebSocketResponse()
                await ws.prepare(request)
                async for frame in ws:
                    if frame.type == WSMsgType.TEXT:
                        await ws.send_str(json.dumps(self.answer(json.loads(frame.data))))
                return ws
            self.headers.append(request.headers.get("X-Node-Key"))
            message = await request.json()
            if isinstance(message, dict) and message.get("method") == "eth_getLogs":
                self.calls.append("eth_getLogs")
                return web.Response(text=big_reply(message["id"]), content_type="application/json")
            return web.json_response(self.answer(message))

        app = web.Application()
        app.router.add_route("*", "/", http)
        return app


@pytest.fixture
async def node() -> AsyncIterator[tuple[Node, str]]:
    scripted = Node()
    server = TestServer(scripted.app())
    await server.start_server()
    try:
        yield scripted, str(server.make_url("/"))
    finally:
        await server.close()


def big_reply(request_id: Any) -> str:
    """About 3 MB, formatted as no JSON encoder in clave would write it (spaces, `result` before `id`)."""
    logs = [{"address": TO.lower(), "data": "0x" + "ee" * 1000, "logIndex": hex(i)} for i in range(1500)]
    return '{ "jsonrpc" : "2.0", "result" : ' + json.dumps(logs, indent=1) + ', "id" : ' + json.dumps(request_id) + " }"


def _decode(raw: bytes) -> dict[str, Any]:
    if raw[0] >= 0xC0:
        fields = rlp.decode(raw)
        tx: dict[str, Any] = {"type": 0, "nonce": int.from_bytes(fields[0], "big"),
                              "gasPrice": int.from_bytes(fields[1], "big"), "gas": int.from_bytes(fields[2], "big")}
    else:
        tx = dict(TypedTransaction.from_bytes(HexBytes(raw)).as_dict())
        tx["type"] = raw[0]
    tx["sender"] = Account.recover_transaction(raw).lower()
    return tx


async def _sender(stack: Stack) -> str:
    return str(await stack.rpc("account_new"))


async def test_london_send_fills_1559_fees_gas_and_nonce(node: tuple[Node, str], tmp_path: Path) -> None:
    scripted, url = node
    async with running_stack(tmp_path, chain_ids=(CHAIN,), downstream=url) as stack:
        account = await _sender(stack)
        assert await stack.rpc("eth_sendTransaction", {"from": account, "to": TO, "data": "0x01020304"},
                               transport="http") == "0x" + "ab" * 32
        await stack.rpc("eth_sendTransaction", {"from": account, "to": TO}, transport="http")
    first, second = (_decode(raw) for raw in scripted.raws)
    assert first["type"] == 2 and first["sender"] == account and first["chainId"] == CHAIN
    assert first["maxPriorityFeePerGas"] == 10**9 and first["maxFeePerGas"] == 2 * 7 * 10**9 + 10**9
    assert first["gas"] == 60_000, "estimate plus 20%"
    assert (first["nonce"], second["nonce"]) == (5, 6), "pending count once, then counted here"
    assert scripted.calls.count("eth_getTransactionCount") == 1


async def test_pre_london_chain_gets_legacy_from_gas_price(node: tuple[Node, str], tmp_path: Path) -> None:
    scripted, url = node
    scripted.base_fee = None
    async with running_stack(tmp_path, chain_ids=(CHAIN,), downstream=url) as stack:
        account = await _sender(stack)
        await stack.rpc("eth_sendTransaction", {"from": account, "to": TO, "value": "0x1"}, transport="http")
        raw = await stack.rpc("eth_signTransaction", {"from": account, "to": TO}, transport="http")
    sent = _decode(scripted.raws[0])
    assert sent["type"] == 0 and sent["gasPrice"] == 3 * 10**9 and sent["sender"] == account
    signed = _decode(bytes.fromhex(raw[2:]))
    assert signed["type"] == 0 and signed["nonce"] == 6, "eth_signTransaction peeks the next nonce"


async def test_nonce_too_low_resyncs_and_retries(node: tuple[Node, str], tmp_path: Path) -> None:
    scripted, url = node
    scripted.nonce_too_low_once = True
    async with running_stack(tmp_path, chain_ids=(CHAIN,), downstream=url) as stack:
        account = await _sender(stack)
        await stack.rpc("eth_sendTransaction", {"from": account, "to": TO}, transport="http")
    (sent,) = (_decode(raw) for raw in scripted.raws)
    assert sent["nonce"] == 8 and scripted.calls.count("eth_getTransactionCount") == 2


async def test_node_errors_pass_through_with_data(node: tuple[Node, str], tmp_path: Path) -> None:
    scripted, url = node
    async with running_stack(tmp_path, chain_ids=(CHAIN,), downstream=url) as stack:
        reply, infra = await stack.reply({"jsonrpc": "2.0", "id": "x", "method": "eth_call", "params": [{}, "latest"]},
                                         transport="http")
        assert reply == {"jsonrpc": "2.0", "id": "x", "error": REVERT} and not infra
        assert await stack.rpc("eth_blockNumber", transport="http") == "0x2a"
        with pytest.raises(RpcFailure) as err:
            await stack.rpc("web3_sha3", "0x00", transport="http")
        assert (err.value.code, err.value.message) == (-32601, "no web3_sha3")
        text = await (await stack.http.get("/metrics")).text()
        assert 'clave_requests_total{method="forwarded",outcome="ok"} 1.0' in text
        assert 'clave_requests_total{method="forwarded",outcome="bad_request"} 2.0' in text


async def test_large_replies_are_streamed_unchanged(node: tuple[Node, str], tmp_path: Path) -> None:
    scripted, url = node
    async with running_stack(tmp_path, chain_ids=(CHAIN,), downstream=url) as stack:
        for request_id in (7, "abc", None):
            call = {"jsonrpc": "2.0", "id": request_id, "method": "eth_getLogs", "params": [{}]}
            response = await stack.http.post("/", json=call)
            assert response.status == 200 and response.content_type == "application/json"
            # Byte for byte what the node wrote: not parsed and written again (that would change the spacing).
            assert await response.text() == big_reply(request_id)
        # A body whose keys repeat is not passed on as it is: a node keeping the first "method" would read a
        # call clave never forwards. The dispatcher's own request goes instead.
        smuggled = b'{"jsonrpc":"2.0","id":1,"method":"personal_sendTransaction","method":"eth_getLogs","params":[{}]}'
        response = await stack.http.post("/", data=smuggled, headers={"Content-Type": "application/json"})
        assert await response.json() == json.loads(big_reply(1))
        assert await response.text() != big_reply(1)
        # In a batch, the dispatcher forwards each call; the reply is the same JSON value.
        batch = [{"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs", "params": [{}]},
                 {"jsonrpc": "2.0", "id": 2, "method": "eth_chainId"}]
        replies = await (await stack.http.post("/", json=batch)).json()
        assert replies[0] == json.loads(big_reply(1)) and replies[1]["result"] == hex(CHAIN)
        text = await (await stack.http.get("/metrics")).text()
        assert 'clave_requests_total{method="forwarded",outcome="streamed"} 3.0' in text


async def test_node_on_another_chain_is_refused(node: tuple[Node, str], tmp_path: Path) -> None:
    scripted, url = node
    scripted.chain_id = 5
    async with running_stack(tmp_path, chain_ids=(CHAIN, 1), downstream=url) as stack:
        account = await _sender(stack)
        with pytest.raises(RpcFailure) as err:
            await stack.rpc("eth_sendTransaction", {"from": account, "to": TO}, transport="http")
    assert err.value.message == "the downstream node is on chain 5, but clave signs for --chainid 31337,1"
    assert not scripted.raws


async def test_node_down_is_an_infrastructure_error(tmp_path: Path) -> None:
    from tests.stack import free_port

    async with running_stack(tmp_path, chain_ids=(CHAIN,), downstream=f"http://127.0.0.1:{free_port()}/") as stack:
        with pytest.raises(RpcFailure) as err:
            await stack.rpc("eth_blockNumber", transport="http")
    assert err.value.status == 503 and "downstream node unreachable" in err.value.message


async def test_websocket_downstream_and_auth_header(node: tuple[Node, str], tmp_path: Path) -> None:
    scripted, url = node
    async with running_stack(tmp_path / "ws", chain_ids=(CHAIN,), downstream=url.replace("http", "ws", 1)) as stack:
        account = await _sender(stack)
        assert await stack.rpc("eth_blockNumber", transport="http") == "0x2a"
        await stack.rpc("eth_sendTransaction", {"from": account, "to": TO}, transport="ipc")
    assert _decode(scripted.raws[0])["sender"] == account
    header = tmp_path / "node-auth"
    header.write_text("X-Node-Key: s3cret-node-key\n")
    async with running_stack(tmp_path / "http", chain_ids=(CHAIN,), downstream=url, downstream_auth_file=header) as stack:
        await stack.rpc("eth_blockNumber", transport="http")
    assert scripted.headers[-1] == "s3cret-node-key"


async def test_nonce_tracker_gives_back_only_the_last_nonce() -> None:
    counts = iter([10, 20])

    async def pending(address: bytes) -> int:
        return next(counts)

    tracker = NonceTracker(pending)
    a = b"\x01" * 20
    assert [await tracker.reserve(a) for _ in range(3)] == [10, 11, 12]
    tracker.release(a, 12)  # the last one: given back
    assert await tracker.reserve(a) == 12
    tracker.release(a, 11)  # one in the middle: resync from the node
    assert tracker.peek(a) is None and await tracker.reserve(a) == 20


def test_command_line_options_reach_the_config(tmp_path: Any) -> None:
    from clave.cli.main import build_parser, config_from_args

    def config(*extra: str) -> Any:
        return config_from_args(build_parser().parse_args(["up", "--datadir", str(tmp_path), *extra]))

    assert config().eth_signtx_result == "raw" and config().downstream is None
    chosen = config("--eth.signtx-result", "geth", "--downstream", "wss://node.example:8546",
                    "--downstream.auth-header-file", "hdr")
    assert (chosen.eth_signtx_result, chosen.downstream, str(chosen.downstream_auth_file)) == (
        "geth", "wss://node.example:8546", "hdr")
    for bad, why in ((["--downstream", "ftp://node"], "expected an http(s):// or ws(s):// URL"),
                     (["--downstream", "http://n", "--http.workers", "2"], "needs --http.workers 1"),
                     (["--downstream.auth-header-file", "hdr"], "needs --downstream URL")):
        with pytest.raises(SystemExit) as exited:
            config(*bad)
        assert why in str(exited.value)
    with pytest.raises(SystemExit):
        config("--eth.signtx-result", "object")  # argparse: not one of raw, geth
