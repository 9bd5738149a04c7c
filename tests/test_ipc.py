"""IPC in-process: the JSON stream splitter, the unix-socket server and the blocking client.

The splitter is graded against `json.JSONDecoder.raw_decode` (not clave code): concatenated values,
values cut at every byte, strings holding brackets and escaped quotes, multi-byte UTF-8 cut inside a
character, bare scalars, garbage and the size limit. The server runs on a unix socket in tmp_path with a
method table made here; the client (`IpcClient`, blocking) runs in a thread against it.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clave.sidecar.rpc.dispatch import CallContext, Dispatcher, Method
from clave.sidecar.transports.ipc import MAX_MESSAGE, IpcServer, JsonStreamSplitter
from clave.sidecar.transports.ipc_client import IpcClient, RpcCallError
from tests.inproc import ipc_exchange

# --- the splitter -----------------------------------------------------------------------------------------


def _split_all(chunks: list[bytes]) -> list[str]:
    splitter = JsonStreamSplitter()
    out: list[str] = []
    for chunk in chunks:
        out += splitter.feed(chunk)
    return out


def test_concatenated_values_without_separators() -> None:
    stream = b'{"a":1}{"b":[1,2,{"c":"}"}]}[1,2][]{}'
    assert _split_all([stream]) == ['{"a":1}', '{"b":[1,2,{"c":"}"}]}', "[1,2]", "[]", "{}"]


def test_whitespace_and_newlines_between_values_are_skipped() -> None:
    assert _split_all([b'  \n{"a":1}\n\n\t [2] \r\n']) == ['{"a":1}', "[2]"]


def test_strings_with_brackets_quotes_and_escapes() -> None:
    values = ['{"s":"]}[{"}', '{"s":"\\"}"}', '{"s":"\\\\"}', '{"s":"\\\\\\"]"}', '{"s":"\\u007d"}']
    for value in values:
        assert json.loads(value)  # each is valid JSON
    assert _split_all(["".join(values).encode()]) == values


def test_every_cut_of_a_stream_gives_the_same_values() -> None:
    values = ['{"jsonrpc":"2.0","id":1,"method":"m","params":["}{\\"",{"x":[1,[2]]}]}', '["ü€😀",{"k":"]"}]',
              '{"a":"\\\\"}']
    stream = "\n".join(values).encode()
    for cut in range(len(stream) + 1):
        assert _split_all([stream[:cut], stream[cut:]]) == values, cut
    assert _split_all([bytes([b]) for b in stream]) == values, "one byte at a time"


def test_an_incomplete_value_waits_for_the_rest() -> None:
    splitter = JsonStreamSplitter()
    assert splitter.feed(b'{"a":"unterminated') == []
    assert splitter.feed(b' string\\"') == []
    assert splitter.feed(b'"}{"b"') == ['{"a":"unterminated string\\""}']
    assert splitter.feed(b":2}") == ['{"b":2}']


def test_bare_scalars_are_cut_at_the_next_delimiter() -> None:
    splitter = JsonStreamSplitter()
    assert splitter.feed(b"123") == [], "a scalar at the end of the buffer may continue"
    assert splitter.feed(b"4 true{") == ["1234", "true"]
    assert splitter.feed(b'"a":1}') == ['{"a":1}']
    assert _split_all([b'garbage{"x":1}']) == ["garbage", '{"x":1}']


def test_invalid_utf8_and_oversized_input_raise_value_error() -> None:
    with pytest.raises(ValueError):
        JsonStreamSplitter().feed(b'{"a":"\xff"}')
    splitter = JsonStreamSplitter()
    with pytest.raises(ValueError, match="too large"):
        splitter.feed(b'{"a":"' + b"x" * (MAX_MESSAGE + 1))
    # Split UTF-8 is not invalid: the incremental decoder waits for the rest of the character.
    splitter = JsonStreamSplitter()
    euro = '{"e":"€"}'.encode()
    assert splitter.feed(euro[:7]) == [] and splitter.feed(euro[7:]) == ['{"e":"€"}']


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


@given(
    st.lists(st.one_of(st.lists(json_values, max_size=3), st.dictionaries(st.text(max_size=5), json_values,
                                                                        max_size=3)), min_size=1, max_size=5),
    st.lists(st.integers(min_value=0, max_value=400), max_size=6),
    st.sampled_from(["", "\n", " ", "\r\n\t"]),
)
def test_splitter_agrees_with_the_standard_decoder(values: list[Any], cuts: list[int], gap: str) -> None:
    texts = [json.dumps(v, ensure_ascii=bool(len(gap) % 2)) for v in values]
    stream = gap.join(texts).encode()
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    got = _split_all(chunks)
    assert [json.loads(t) for t in got] == values
    # The reference: Python's decoder reading values one after another.
    decoder, rest, reference = json.JSONDecoder(), stream.decode(), []
    while rest.strip():
        value, end = decoder.raw_decode(rest.lstrip())
        reference.append(value)
        rest = rest.lstrip()[end:]
    assert reference == values


# --- the server -------------------------------------------------------------------------------------------


def _methods(log: list[str]) -> dict[str, Method]:
    async def echo(params: list[Any], ctx: CallContext) -> Any:
        log.append(f"echo:{ctx.transport}")
        return params

    async def sleep(params: list[Any], ctx: CallContext) -> Any:
        await asyncio.sleep(params[0])
        log.append(f"sleep:{params[0]}")
        return params[0]

    async def refuse(params: list[Any], ctx: CallContext) -> Any:
        from clave.core.errors import RequestError

        raise RequestError("unknown account")

    return {"echo": Method(echo, 0, 2), "sleep": Method(sleep, 1, 1), "refuse": Method(refuse, 0, 1)}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[IpcServer, list[str]]]:
    log: list[str] = []
    path = tmp_path / "sub" / "clave.ipc"
    ipc = IpcServer(path, Dispatcher(_methods(log)))
    await ipc.start()
    try:
        yield ipc, log
    finally:
        await ipc.close()


def _msg(method: str, params: list[Any], request_id: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}).encode()


async def test_socket_is_private_and_removed_on_close(tmp_path: Path) -> None:
    path = tmp_path / "clave.ipc"
    ipc = IpcServer(path, Dispatcher({}))
    await ipc.start()
    assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600
    await ipc.close()
    assert not path.exists()
    # A stale socket from a crashed run is replaced.
    import socket

    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    again = IpcServer(path, Dispatcher({}))
    await again.start()
    try:
        assert (await ipc_exchange(path, _msg("x", [], 1), 1))[0]["error"]["code"] == -32601
    finally:
        await again.close()


async def test_concatenated_requests_are_answered_as_they_complete(server: tuple[IpcServer, list[str]]) -> None:
    ipc, log = server
    payload = _msg("sleep", [0.3], "slow") + _msg("sleep", [0.0], "fast") + _msg("echo", ["e"], 3)
    replies = await ipc_exchange(ipc.path, payload, 3)
    assert {r["id"]: r["result"] for r in replies} == {"slow": 0.3, "fast": 0.0, 3: ["e"]}
    assert replies[-1]["id"] == "slow", "a slow call does not hold back the ones behind it"
    assert "echo:ipc" in log


async def test_a_request_split_over_many_writes(server: tuple[IpcServer, list[str]]) -> None:
    ipc, _ = server
    reader, writer = await asyncio.open_unix_connection(str(ipc.path))
    try:
        for byte in _msg("echo", ["ünï", "}{"], 9):
            writer.write(bytes([byte]))
            await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
        assert json.loads(line) == {"jsonrpc": "2.0", "id": 9, "result": ["ünï", "}{"]}
    finally:
        writer.close()


async def test_garbage_gets_parse_errors_and_the_connection_goes_on(server: tuple[IpcServer, list[str]]) -> None:
    ipc, _ = server
    payload = b'{"jsonrpc":} 12 ' + _msg("echo", ["after"], 5) + b" [] " + _msg("refuse", [], 6)
    replies = await ipc_exchange(ipc.path, payload, 5)
    anonymous = sorted((r["error"]["code"], r["error"]["message"]) for r in replies if r["id"] is None)
    assert anonymous == [(-32700, "parse error"), (-32600, "empty batch"), (-32600, "invalid request")]
    by_id = {r["id"]: r for r in replies if r["id"] is not None}
    assert by_id[5]["result"] == ["after"]
    assert by_id[6]["error"] == {"code": -32000, "message": "unknown account"}


async def test_invalid_utf8_is_a_parse_error_then_the_connection_closes(server: tuple[IpcServer, list[str]]) -> None:
    ipc, _ = server
    reader, writer = await asyncio.open_unix_connection(str(ipc.path))
    try:
        writer.write(b'{"a":"\xff"}')
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
        assert json.loads(line)["error"] == {"code": -32700, "message": "parse error"}
        assert await asyncio.wait_for(reader.read(), 10) == b"", "the server hangs up"
    finally:
        writer.close()


async def test_batches_and_notifications(server: tuple[IpcServer, list[str]]) -> None:
    ipc, log = server
    batch = json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": [1]},
                        {"jsonrpc": "2.0", "method": "echo", "params": [2]},
                        {"jsonrpc": "2.0", "id": 3, "method": "nope"}]).encode()
    notification = json.dumps({"jsonrpc": "2.0", "method": "echo", "params": ["n"]}).encode()
    replies = await ipc_exchange(ipc.path, notification + batch + _msg("echo", [4], 4), 2)
    replies.sort(key=lambda r: isinstance(r, dict))  # each request is its own task: any order
    assert replies[0] == [{"jsonrpc": "2.0", "id": 1, "result": [1]},
                          {"jsonrpc": "2.0", "id": 3, "error": {"code": -32601,
                                                                "message": "the method nope does not exist/is not available"}}]
    assert replies[1] == {"jsonrpc": "2.0", "id": 4, "result": [4]}
    assert log.count("echo:ipc") == 4, "the notification ran too"


async def test_close_ends_open_connections(tmp_path: Path) -> None:
    ipc = IpcServer(tmp_path / "c.ipc", Dispatcher(_methods([])))
    await ipc.start()
    reader, writer = await asyncio.open_unix_connection(str(ipc.path))
    writer.write(_msg("sleep", [30], 1))
    await writer.drain()
    await asyncio.sleep(0.05)
    await asyncio.wait_for(ipc.close(), 5)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


# --- the blocking client ----------------------------------------------------------------------------------


async def test_client_calls_matches_ids_and_raises_errors(server: tuple[IpcServer, list[str]]) -> None:
    ipc, _ = server

    def use() -> tuple[Any, Any, RpcCallError]:
        with IpcClient(ipc.path, timeout=10) as client:
            first = client.call("echo", "a", {"b": [1]})
            second = client.call("sleep", 0.01)
            try:
                client.call("refuse")
            except RpcCallError as exc:
                return first, second, exc
            raise AssertionError("refuse did not raise")

    first, second, error = await asyncio.to_thread(use)
    assert first == ["a", {"b": [1]}] and second == 0.01
    assert (error.code, error.message) == (-32000, "unknown account")


async def test_client_skips_replies_to_other_ids(tmp_path: Path) -> None:
    """A peer that answers with a stray reply first, in two writes cut mid-value: the client returns the
    reply whose id it sent."""
    path = tmp_path / "fake.ipc"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = json.loads(await reader.readline())
        reply = b'{"jsonrpc":"2.0","id":999,"result":"stray"}' + json.dumps(
            {"jsonrpc": "2.0", "id": request["id"], "result": request["params"]}).encode()
        writer.write(reply[:50])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(reply[50:])
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(handle, path=str(path))
    try:
        def use() -> Any:
            with IpcClient(path, timeout=10) as client:
                return client.call("m", "x", 2)

        assert await asyncio.to_thread(use) == ["x", 2]
    finally:
        server.close()
        await server.wait_closed()


def test_client_without_a_server_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConnectionError, match=r"cannot reach clave at .*is `clave up` running\?"):
        IpcClient(tmp_path / "nobody.ipc")
    (tmp_path / "file.ipc").write_text("")
    os.chmod(tmp_path / "file.ipc", 0o600)
    with pytest.raises(ConnectionError, match="cannot reach clave"):
        IpcClient(tmp_path / "file.ipc")
