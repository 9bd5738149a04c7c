"""Bounded work for every input: each attack from the security review, reproduced, and refused cleanly.

- EIP-712: a 1,300-type document (encodeType cubic in the types) is refused before anything is decoded
  or hashed; encodeType runs once per type per document; depth, array, field and value limits; real
  documents (a Seaport bulk order, checked against eth-account) still sign.
- JSON: `[` nested 10,000 deep gets a -32700 answer over HTTP (was a 500) and IPC (was no answer at all);
  an id of `1e400` (inf in Python) is refused with -32600 and a null id (was `"id":Infinity`).
- Frames: a frame the enclave cannot decode is answered with its id, so the sidecar fails that call at
  once instead of waiting for the 10 s timeout.
- IPC: the JSON stream splitter looks at each character a bounded number of times (was: every read rescanned
  the whole buffered message, 29 s for 4.8 MB). bench/split.py prints the times.

Timings are not asserted here: bench/typed_bomb.py and bench/split.py print them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import cbor2
import pytest
import pytest_asyncio
from eth_account.messages import encode_typed_data
from eth_utils import keccak

from clave.core import gojson
from clave.core.errors import RequestError
from clave.core.eth import typed_data
from clave.core.eth.typed_data import TypedDataLimitError, typed_data_preimage
from clave.link import frames
from clave.sidecar.signing.enclave_client import EnclaveClient, EnclaveFailed
from clave.sidecar.transports import ipc
from tests.inproc import Stack, running_stack

DOMAIN_TYPE = [{"name": "name", "type": "string"}]


def _bomb(types: int) -> dict[str, Any]:
    """The review's shape: one primary type with a field per leaf type (geth's encodeType is cubic here)."""
    return {
        "types": {
            "EIP712Domain": DOMAIN_TYPE,
            "Bomb": [{"name": f"f{i}", "type": f"T{i}"} for i in range(types - 2)],
            **{f"T{i}": [{"name": "v", "type": "uint256"}] for i in range(types - 2)},
        },
        "primaryType": "Bomb",
        "domain": {"name": "bomb"},
        "message": {f"f{i}": {"v": i} for i in range(types - 2)},
    }


def _chain(depth: int) -> dict[str, Any]:
    """Structs nested `depth` deep: S0 { S1 next } … S{depth-1} { uint256 v }."""
    types: dict[str, Any] = {"EIP712Domain": DOMAIN_TYPE}
    message: dict[str, Any] = {"v": 1}
    types[f"S{depth - 1}"] = [{"name": "v", "type": "uint256"}]
    for i in reversed(range(depth - 1)):
        types[f"S{i}"] = [{"name": "next", "type": f"S{i + 1}"}]
        message = {"next": message}
    return {"types": types, "primaryType": "S0", "domain": {"name": "chain"}, "message": message}


def _array(length: int, enc_type: str = "uint256[]", value: Any = 1) -> dict[str, Any]:
    return {
        "types": {"EIP712Domain": DOMAIN_TYPE, "A": [{"name": "xs", "type": enc_type}]},
        "primaryType": "A",
        "domain": {"name": "array"},
        "message": {"xs": [value] * length},
    }


def _limit_error(document: dict[str, Any]) -> str:
    with pytest.raises(TypedDataLimitError) as err:
        typed_data_preimage(document)
    assert err.value.code == -32000
    return err.value.message


# --- EIP-712 ----------------------------------------------------------------------------------------------


def test_the_type_bomb_is_refused_before_anything_is_decoded_or_hashed(monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[str] = []
    original = typed_data._TypedData.encode_type
    monkeypatch.setattr(typed_data._TypedData, "encode_type",
                        lambda self, t: encoded.append(t) or original(self, t))
    assert _limit_error(_bomb(1300)) == "typed data has 1300 types, more than the 256 allowed"
    assert encoded == []
    typed_data_preimage(_bomb(typed_data.MAX_TYPES))  # at the limit: signed
    assert len(encoded) == typed_data.MAX_TYPES  # every type's encodeType once (the domain included)


def test_encode_type_runs_once_per_type_per_document(monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[str] = []
    original = typed_data._TypedData.encode_type
    monkeypatch.setattr(typed_data._TypedData, "encode_type",
                        lambda self, t: encoded.append(t) or original(self, t))
    document = _array(500, "Item[]", {"v": 7})
    document["types"]["Item"] = [{"name": "v", "type": "uint256"}]
    document["types"]["A"] = [{"name": "xs", "type": "Item[]"}]
    preimage = typed_data_preimage(document)
    assert sorted(encoded) == ["A", "EIP712Domain", "Item"]  # geth computes Item's 500 times
    assert preimage == _eth_account_preimage(document)


def test_struct_and_array_depth_is_limited() -> None:
    typed_data_preimage(_chain(typed_data.MAX_DEPTH))
    assert _limit_error(_chain(typed_data.MAX_DEPTH + 1)) == "typed data nested deeper than 64 structs and arrays"
    nested = "uint256" + "[]" * (typed_data.MAX_DEPTH + 1)
    value: Any = 1
    for _ in range(typed_data.MAX_DEPTH):
        value = [value]
    assert _limit_error(_array(1, nested, value)) == "typed data nested deeper than 64 structs and arrays"


def test_arrays_fields_and_values_are_limited() -> None:
    typed_data_preimage(_array(typed_data.MAX_ARRAY))
    assert _limit_error(_array(typed_data.MAX_ARRAY + 1)) == (
        "typed data array of 1025 elements, more than the 1024 allowed")
    wide = _array(1)
    wide["types"]["A"] = [{"name": f"x{i}", "type": "uint256"} for i in range(typed_data.MAX_FIELDS)]
    assert _limit_error(wide) == "typed data has 2049 fields, more than the 2048 allowed"
    # 1024 x 1024 values (a 2 MB request): each array within its limit, the document beyond MAX_VALUES.
    assert _limit_error(_array(1024, "uint256[][]", [1] * 1024)) == "typed data has more than 65536 values"


def test_a_message_nested_too_deep_is_refused_not_a_recursion_error() -> None:
    value: Any = "x"
    for _ in range(2000):
        value = [value]
    document = _array(1, "string", None)
    document["message"] = {"xs": value}
    assert _limit_error(document) == "typed data nested deeper than 128 levels"


def _eth_account_preimage(document: dict[str, Any]) -> bytes:
    signable = encode_typed_data(full_message=document)
    return b"\x19" + signable.version + signable.header + signable.body


def test_a_seaport_bulk_order_is_within_the_limits() -> None:
    """Seaport's bulk orders: a tree of OrderComponents `[2]` levels deep (Seaport allows 24 levels)."""
    offer = [{"name": n, "type": t} for n, t in (("itemType", "uint8"), ("token", "address"),
             ("identifierOrCriteria", "uint256"), ("startAmount", "uint256"), ("endAmount", "uint256"))]
    consideration = [*offer, {"name": "recipient", "type": "address"}]
    order = [{"name": n, "type": t} for n, t in (
        ("offerer", "address"), ("zone", "address"), ("offer", "OfferItem[]"),
        ("consideration", "ConsiderationItem[]"), ("orderType", "uint8"), ("startTime", "uint256"),
        ("endTime", "uint256"), ("zoneHash", "bytes32"), ("salt", "uint256"), ("conduitKey", "bytes32"),
        ("counter", "uint256"))]
    item = {"itemType": 2, "token": "0x" + "11" * 20, "identifierOrCriteria": "7", "startAmount": "1",
            "endAmount": "1"}
    components = {"offerer": "0x" + "22" * 20, "zone": "0x" + "00" * 20, "offer": [item] * 3,
                  "consideration": [{**item, "recipient": "0x" + "33" * 20}] * 4, "orderType": 0,
                  "startTime": "0", "endTime": "99999999999", "zoneHash": "0x" + "00" * 32, "salt": "12",
                  "conduitKey": "0x" + "00" * 32, "counter": "0"}
    height = 6
    tree: Any = components
    for _ in range(height):
        tree = [tree, tree]
    document = {
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
            "BulkOrder": [{"name": "tree", "type": "OrderComponents" + "[2]" * height}],
            "OrderComponents": order, "OfferItem": offer, "ConsiderationItem": consideration,
        },
        "primaryType": "BulkOrder",
        "domain": {"name": "Seaport", "version": "1.5", "chainId": 1, "verifyingContract": "0x" + "44" * 20},
        "message": {"tree": tree},
    }
    assert typed_data_preimage(document) == _eth_account_preimage(document)


# --- JSON ------------------------------------------------------------------------------------------------


def test_json_nesting_is_limited_and_brackets_in_strings_do_not_count() -> None:
    depth = gojson.MAX_JSON_DEPTH
    assert gojson.loads("[" * depth + "]" * depth) is not None
    for text in ("[" * (depth + 1) + "]" * (depth + 1), "[" * 10_000, '{"a":' * 5000):
        with pytest.raises(gojson.JSONDepthError):
            gojson.loads(text)
    inside = '["' + '[{\\"' * 1000 + '", {"a": [1]}]'
    assert gojson.loads(inside)[1] == {"a": [1]}


def _strict(text: str) -> Any:
    """Parse a reply as Go would: Infinity and NaN are not JSON."""
    def refuse(name: str) -> Any:
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


# --- frames ----------------------------------------------------------------------------------------------


def test_the_id_of_an_undecodable_frame_is_read_from_its_header() -> None:
    deep: Any = 1
    for _ in range(500):
        deep = [deep]
    for request_id in (7, 0, 2**40, -3, "x"):
        body = cbor2.dumps({"id": request_id, "method": "sign_typed", "params": {"typed_data": deep}})
        with pytest.raises(frames.FrameError):
            frames.decode_body(body)
        assert frames.peek_id(body) == request_id
    assert frames.peek_id(cbor2.dumps({"method": "m", "params": deep, "id": 1})) is None  # id behind params
    for garbage in (b"", b"\xa1", b"\xbf", b"\x81\x01", b"\xa1\x62id\x1b\x00"):
        assert frames.peek_id(garbage) is None


# --- IPC splitting ---------------------------------------------------------------------------------------


class _Counting:
    def __init__(self, pattern: Any, calls: list[int]) -> None:
        self._pattern, self._calls = pattern, calls

    def search(self, *args: Any) -> Any:
        self._calls[0] += 1
        return self._pattern.search(*args)

    def match(self, *args: Any) -> Any:
        self._calls[0] += 1
        return self._pattern.match(*args)


def test_the_ipc_splitter_scans_each_character_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = [0]
    for name in ("_STRUCTURE", "_IN_STRING", "_STRING_REST"):
        if hasattr(ipc, name):
            monkeypatch.setattr(ipc, name, _Counting(getattr(ipc, name), calls))
    items = [[i, 'a\\"[{'] for i in range(60_000)]
    message = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "m", "params": items}).encode()
    structural = sum(message.count(c) for c in b'[]{}"')
    splitter, texts = ipc.JsonStreamSplitter(), []
    for offset in range(0, len(message), 1 << 16):
        texts += splitter.feed(message[offset : offset + (1 << 16)])
    assert texts == [message.decode()]
    # Linear: at most about one pattern call per structural character, whatever the number of reads (the
    # quadratic splitter rescanned everything buffered on each of the 16 reads: ~8 calls per character).
    assert calls[0] <= structural, (calls[0], structural)


# --- the stack, over HTTP and IPC ------------------------------------------------------------------------

pytestmark_stack = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path_factory.mktemp("bounds")) as running:
        yield running


async def _http(stack: Stack, body: bytes) -> tuple[int, Any]:
    response = await stack.http.post("/", data=body, headers={"Content-Type": "application/json"})
    return response.status, _strict(await response.text())


async def _ipc(stack: Stack, body: bytes) -> list[Any]:
    replies = await stack.ipc_raw(body + b"\n", timeout=5)
    return [_strict(json.dumps(r)) for r in replies]


@pytestmark_stack
async def test_deep_nesting_gets_a_parse_error_over_http_and_ipc(stack: Stack) -> None:
    deep_typed = (b'{"jsonrpc":"2.0","id":3,"method":"account_signTypedData","params":["0x' + b"00" * 20
                  + b'",{"message":' + b"[" * 600 + b"]" * 600 + b"}]}")
    for body in (b"[" * 10_000 + b"]" * 10_000, b"[" * 10_000, deep_typed):
        status, reply = await _http(stack, body)
        assert status == 200 and reply["error"] == {"code": -32700, "message": "parse error"}, (status, reply)
        if body.endswith((b"]", b"}")):  # a complete value: over IPC it gets exactly one answer
            replies = await _ipc(stack, body)
            assert len(replies) == 1 and replies[0]["error"]["code"] == -32700, replies


@pytestmark_stack
async def test_a_non_finite_id_is_an_invalid_request(stack: Stack) -> None:
    for raw_id in (b"1e400", b"-1e400"):
        body = b'{"jsonrpc":"2.0","id":' + raw_id + b',"method":"account_version"}'
        status, reply = await _http(stack, body)
        assert status == 200 and reply == {"jsonrpc": "2.0", "id": None,
                                           "error": {"code": -32600, "message": "invalid request"}}
        assert await _ipc(stack, body) == [reply]
        status, batch = await _http(stack, b"[" + body + b"]")
        assert batch == [reply]
    status, reply = await _http(stack, b'{"jsonrpc":"2.0","id":1e300,"method":"account_version"}')
    assert reply["id"] == 1e300 and reply["result"] == "6.1.0"


@pytestmark_stack
async def test_a_frame_the_enclave_cannot_decode_fails_its_call_at_once(stack: Stack) -> None:
    deep: Any = 1
    for _ in range(500):
        deep = [deep]
    client = EnclaveClient(stack.enclave.address)
    try:
        async with asyncio.timeout(5):  # the call's own timeout is 10 s: an unmatched reply waits that long
            with pytest.raises(EnclaveFailed, match="malformed CBOR"):
                await client.call("sign_typed", {"typed_data": deep})
            with pytest.raises(RequestError, match="typed_data: expected a map"):  # the connection goes on
                await client.call("sign_typed", {"typed_data": "x"})
            # The enclave runs the same typed-data code: the same limits hold for a caller that skips the sidecar.
            with pytest.raises(RequestError, match="typed data has 1300 types, more than the 256 allowed"):
                await client.call("sign_typed", {"address": b"\x5a" * 20, "typed_data": _bomb(1300)})
    finally:
        await client.close()


@pytestmark_stack
async def test_the_type_bomb_is_refused_while_others_sign(stack: Stack) -> None:
    account = await stack.rpc("account_new")
    bomb = {"jsonrpc": "2.0", "id": 9, "method": "account_signTypedData", "params": [account, _bomb(1300)]}
    status, reply = await _http(stack, json.dumps(bomb).encode())
    assert status == 200 and reply["error"] == {
        "code": -32000, "message": "typed data has 1300 types, more than the 256 allowed"}
    v4 = {"jsonrpc": "2.0", "id": 10, "method": "eth_signTypedData_v4", "params": [account, _bomb(300)]}
    refused, signed = await asyncio.gather(
        stack.ipc_raw(json.dumps(v4).encode(), timeout=5), stack.rpc("eth_sign", account, "0x" + keccak(b"x").hex()))
    assert refused[0]["error"]["message"] == "typed data has 300 types, more than the 256 allowed"
    assert len(signed) == 132


@pytestmark_stack
async def test_an_unexpected_dispatch_failure_still_gets_one_answer(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: Any, message: Any, ctx: Any) -> Any:
        raise RecursionError("somewhere deep")
    monkeypatch.setattr(type(stack.dispatcher), "_handle_one", broken)
    body = b'{"jsonrpc":"2.0","id":1,"method":"account_version"}'
    status, reply = await _http(stack, body)
    assert status == 503 and reply["error"] == {"code": -32603, "message": "internal error"}
    assert [r["error"]["code"] for r in await _ipc(stack, body)] == [-32603]
