"""The JSON-RPC dispatcher in-process, with a method table made here: geth's error codes and texts for bad
bodies and arguments, ids echoed as sent, notifications, batches, infrastructure errors (HTTP 503) and
the observer that feeds metrics and request logs."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from clave.core.errors import InfraError, InvalidParams, RequestError
from clave.sidecar.rpc.dispatch import MAX_BATCH, CallContext, Dispatcher, Method

IPC = CallContext(transport="ipc")


def _table(calls: list[tuple[str, list[Any]]]) -> dict[str, Method]:
    async def echo(params: list[Any], ctx: CallContext) -> Any:
        calls.append(("echo", params))
        return {"params": params, "transport": ctx.transport}

    async def refuse(params: list[Any], ctx: CallContext) -> Any:
        raise RequestError("validation failed: no")

    async def bad_arg(params: list[Any], ctx: CallContext) -> Any:
        raise InvalidParams("invalid argument 0: hex string without 0x prefix")

    async def infra(params: list[Any], ctx: CallContext) -> Any:
        raise InfraError("enclave unavailable: gone", remedy="start it")

    async def crash(params: list[Any], ctx: CallContext) -> Any:
        raise ZeroDivisionError("the secret 0xdeadbeef was involved")

    async def slow(params: list[Any], ctx: CallContext) -> Any:
        await asyncio.sleep(params[0])
        return params[0]

    return {
        "echo": Method(echo, 1, 3),
        "none": Method(echo),
        "refuse": Method(refuse),
        "bad_arg": Method(bad_arg, 0, 1),
        "infra": Method(infra),
        "crash": Method(crash),
        "slow": Method(slow, 1, 1),
    }


@pytest.fixture
def calls() -> list[tuple[str, list[Any]]]:
    return []


@pytest.fixture
def observed() -> list[tuple[str, str, list[Any]]]:
    return []


@pytest.fixture
def dispatcher(calls: list[tuple[str, list[Any]]], observed: list[tuple[str, str, list[Any]]]) -> Dispatcher:
    def observer(method: str, outcome: str, seconds: float, ctx: CallContext, params: list[Any], error: str) -> None:
        assert seconds >= 0 and ctx.transport in ("http", "ipc")
        observed.append((method, outcome, params))

    return Dispatcher(_table(calls), observer=observer)


async def _reply(dispatcher: Dispatcher, body: Any, ctx: CallContext = IPC) -> tuple[Any, bool]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    out, infra = await dispatcher.handle_body(raw, ctx)
    if out is None:
        return None, infra
    assert out.endswith(b"\n") and b"\n" not in out[:-1], "one compact JSON value per reply line"
    return json.loads(out), infra


def _call(method: str, params: Any = None, request_id: Any = 1, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method, **extra}
    if params is not None:
        message["params"] = params
    return message


async def test_a_call_gets_its_result_and_its_id_back(dispatcher: Dispatcher) -> None:
    for request_id in (1, "abc", 0, None, 1.5, [1], {"a": 1}):
        reply, infra = await _reply(dispatcher, _call("echo", ["x"], request_id))
        assert reply == {"jsonrpc": "2.0", "id": request_id, "result": {"params": ["x"], "transport": "ipc"}}
        assert infra is False
    reply, _ = await _reply(dispatcher, _call("echo", ["x"]), CallContext(transport="http"))
    assert reply["result"]["transport"] == "http"


@pytest.mark.parametrize(
    ("body", "code", "message", "reply_id"),
    [
        (b"{", -32700, "parse error", None),
        (b"", -32700, "parse error", None),
        (b"\xff\xfe", -32700, "parse error", None),
        (b'{"jsonrpc":"2.0","id":1,"method":"echo"} trailing', -32700, "parse error", None),
        (b"[]", -32600, "empty batch", None),
        (b"42", -32600, "invalid request", None),
        (b'"echo"', -32600, "invalid request", None),
        (b'{"jsonrpc":"1.0","id":7,"method":"echo","params":["x"]}', -32600, "invalid request", 7),
        (b'{"id":8,"method":"echo","params":["x"]}', -32600, "invalid request", 8),
        (b'{"jsonrpc":"2.0","id":9,"method":5}', -32600, "invalid request", 9),
        (b'{"jsonrpc":"2.0","id":10}', -32600, "invalid request", 10),
    ],
)
async def test_bad_bodies_get_geths_errors(dispatcher: Dispatcher, calls: list[Any], body: bytes, code: int,
                                           message: str, reply_id: Any) -> None:
    reply, infra = await _reply(dispatcher, body)
    assert reply == {"jsonrpc": "2.0", "id": reply_id, "error": {"code": code, "message": message}}
    assert infra is False and calls == []


@pytest.mark.parametrize(
    ("method", "params", "code", "message"),
    [
        ("nope", [], -32601, "the method nope does not exist/is not available"),
        ("echo", None, -32602, "missing value for required argument 0"),
        ("echo", [], -32602, "missing value for required argument 0"),
        ("echo", [1, 2, 3, 4], -32602, "too many arguments, want at most 3"),
        ("echo", {"a": 1}, -32602, "non-array args"),
        ("echo", "x", -32602, "non-array args"),
        ("none", [1], -32602, "too many arguments, want at most 0"),
        ("refuse", [], -32000, "validation failed: no"),
        ("bad_arg", [], -32602, "invalid argument 0: hex string without 0x prefix"),
    ],
)
async def test_bad_calls_get_json_rpc_errors(dispatcher: Dispatcher, method: str, params: Any, code: int,
                                             message: str) -> None:
    reply, infra = await _reply(dispatcher, _call(method, params, request_id="q"))
    assert reply == {"jsonrpc": "2.0", "id": "q", "error": {"code": code, "message": message}}
    assert infra is False


async def test_trailing_nulls_are_omitted_optional_arguments(dispatcher: Dispatcher, calls: list[Any]) -> None:
    reply, _ = await _reply(dispatcher, _call("echo", ["a", None, None]))
    assert reply["result"]["params"] == ["a"]
    reply, _ = await _reply(dispatcher, _call("echo", ["a", None, "c"]))
    assert reply["result"]["params"] == ["a", None, "c"], "only trailing nulls go"
    reply, _ = await _reply(dispatcher, _call("echo", [None]))
    assert reply["result"]["params"] == [None], "a null required argument is present (Go decodes it to zero)"
    assert calls == [("echo", ["a"]), ("echo", ["a", None, "c"]), ("echo", [None])]


async def test_infrastructure_errors_and_crashes_are_flagged_and_never_leak_text(
    dispatcher: Dispatcher, observed: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    reply, infra = await _reply(dispatcher, _call("infra"))
    assert reply["error"] == {"code": -32000, "message": "enclave unavailable: gone"} and infra is True
    reply, infra = await _reply(dispatcher, _call("crash"))
    assert reply["error"] == {"code": -32603, "message": "method handler crashed"} and infra is True
    assert "deadbeef" not in json.dumps(reply)
    assert [(m, o) for m, o, _ in observed] == [("infra", "infra_error"), ("crash", "crashed")]
    assert any("enclave unavailable: gone (start it)" in r.getMessage() for r in caplog.records)


async def test_notifications_get_no_reply_but_run(dispatcher: Dispatcher, calls: list[Any]) -> None:
    reply, infra = await _reply(dispatcher, {"jsonrpc": "2.0", "method": "echo", "params": ["n"]})
    assert reply is None and infra is False and calls == [("echo", ["n"])]
    reply, _ = await _reply(dispatcher, [{"jsonrpc": "2.0", "method": "echo", "params": ["m"]}])
    assert reply is None, "a batch of notifications only: no reply at all"


async def test_batches_answer_every_call_in_order(dispatcher: Dispatcher, observed: list[Any]) -> None:
    batch = [_call("slow", [0.05], "a"), {"jsonrpc": "2.0", "method": "echo", "params": ["n"]},
             _call("slow", [0.0], "b"), 5, _call("nope", [], "c"), _call("infra", [], "d")]
    reply, infra = await _reply(dispatcher, batch)
    assert [r["id"] for r in reply] == ["a", "b", None, "c", "d"]
    assert reply[0]["result"] == 0.05 and reply[1]["result"] == 0.0
    assert reply[2]["error"]["code"] == -32600 and reply[3]["error"]["code"] == -32601
    assert reply[4]["error"]["code"] == -32000
    assert infra is False, "a batch answers 200 unless its only call failed on infrastructure"
    reply, infra = await _reply(dispatcher, [_call("infra", [], "z")])
    assert [r["id"] for r in reply] == ["z"] and infra is True
    assert {m for m, _, _ in observed} >= {"slow", "echo", "nope", "infra"}


async def test_batch_calls_run_concurrently(dispatcher: Dispatcher) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    reply, _ = await _reply(dispatcher, [_call("slow", [0.2], i) for i in range(10)])
    assert len(reply) == 10 and loop.time() - start < 1.5


async def test_too_large_a_batch_is_one_error_with_the_first_calls_id(dispatcher: Dispatcher,
                                                                      calls: list[Any]) -> None:
    batch = [7, {"jsonrpc": "2.0", "id": "no-method"}] + [_call("echo", ["x"], i) for i in range(MAX_BATCH)]
    reply, infra = await _reply(dispatcher, batch)
    assert reply == [{"jsonrpc": "2.0", "id": 0, "error": {"code": -32600, "message": "batch too large"}}]
    assert calls == [] and infra is False
    reply, _ = await _reply(dispatcher, [_call("echo", ["x"], i) for i in range(MAX_BATCH)])
    assert len(reply) == MAX_BATCH, "exactly the limit is still served"


async def test_the_observer_sees_outcomes_and_params(dispatcher: Dispatcher, observed: list[Any]) -> None:
    await _reply(dispatcher, _call("echo", ["p"]))
    await _reply(dispatcher, _call("refuse"))
    await _reply(dispatcher, _call("bad_arg", ["q"]))
    await _reply(dispatcher, _call("nope", {"not": "a list"}))
    assert observed == [("echo", "ok", ["p"]), ("refuse", "refused", []), ("bad_arg", "bad_request", ["q"]),
                        ("nope", "bad_request", [])]


async def test_go_json_rules_apply_to_the_body(dispatcher: Dispatcher) -> None:
    # Go's decoder matches field names case-insensitively; the dispatcher reads the body with gojson.
    reply, _ = await _reply(dispatcher, b'{"jsonrpc":"2.0","id":3,"method":"echo","params":["x"],"ignored":1}')
    assert reply["result"]["params"] == ["x"]
    reply, _ = await _reply(dispatcher, b'{"jsonrpc":"2.0","id":4,"method":"echo","params":[1e2]}')
    assert reply["id"] == 4 and "result" in reply
