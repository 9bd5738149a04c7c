"""The enclave frame protocol over socketpairs and unix sockets: the same code that runs over vsock."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clave.dev.soft_nsm import SoftwareNsm
from clave.enclave.server import FrameServer
from clave.enclave.service import EnclaveService
from clave.link import frames as protocol
from clave.link.sockets import parse_address, start_server
from clave.sidecar.signing.enclave_client import EnclaveClient, EnclaveUnavailable
from tests.accounts import TEST_KEY_ARN


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> EnclaveService:
    return EnclaveService(SoftwareNsm(tmp_path_factory.mktemp("nsm")))


async def _socketpair_server(service: EnclaveService) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.Task[None]]:
    ours, theirs = socket.socketpair()
    server_reader, server_writer = await asyncio.open_connection(sock=theirs)
    task = asyncio.create_task(FrameServer(service).handle_connection(server_reader, server_writer))
    reader, writer = await asyncio.open_connection(sock=ours)
    return reader, writer, task


async def _roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: object) -> dict:
    writer.write(protocol.encode_frame(message))  # type: ignore[arg-type]
    body = await protocol.read_frame(reader)
    assert body is not None
    return protocol.decode_body(body)


def test_parse_addresses() -> None:
    assert str(parse_address("vsock://16:5000")) == "vsock://16:5000"
    assert parse_address("vsock://-1:5000").cid == 0xFFFFFFFF
    assert parse_address("unix:/run/x.sock").path == "/run/x.sock"
    assert str(parse_address("tcp://127.0.0.1:8443")) == "tcp://127.0.0.1:8443"  # the enclave's KMS proxy only
    for bad in ("tcp://1.2.3.4", "tcp://:5", "tcp://h:99999", "http://h:5", "vsock://3", "unix:", "5000"):
        with pytest.raises(ValueError):
            parse_address(bad)


async def test_socketpair_errors_never_crash(service: EnclaveService) -> None:
    reader, writer, task = await _socketpair_server(service)
    reply = await _roundtrip(reader, writer, {"id": 1, "method": "hello", "params": {}})
    assert reply["id"] == 1 and reply["result"]["version"]
    reply = await _roundtrip(reader, writer, {"id": 2, "method": "no_such", "params": {}})
    assert reply["error"]["code"] == -32601
    reply = await _roundtrip(reader, writer, {"id": 3, "method": "sign_personal", "params": {"address": b"x"}})
    assert reply["error"]["code"] == -32602
    writer.write(struct.pack(">I", 5) + b"\xff\xff\xff\xff\xff")  # malformed CBOR: an error frame, connection stays
    body = await protocol.read_frame(reader)
    assert body is not None and protocol.decode_body(body)["error"]["code"] == protocol.E_MALFORMED
    reply = await _roundtrip(reader, writer, {"id": 4, "method": "hello"})
    assert reply["id"] == 4 and "result" in reply
    writer.write(struct.pack(">I", protocol.MAX_FRAME + 1))  # oversized: an error frame, then the connection closes
    body = await protocol.read_frame(reader)
    assert body is not None and protocol.decode_body(body)["error"]["code"] == protocol.E_TOO_LARGE
    assert await protocol.read_frame(reader) is None
    await asyncio.wait_for(task, 5)
    writer.close()
    reader2, writer2, task2 = await _socketpair_server(service)  # the service itself is unharmed
    assert "result" in await _roundtrip(reader2, writer2, {"id": 5, "method": "hello"})
    writer2.close()
    await asyncio.wait_for(task2, 5)


async def test_unix_client_multiplexes_out_of_order(service: EnclaveService, tmp_path: Path, inline_kdf: None) -> None:
    address = parse_address(f"unix:{tmp_path / 'enclave.sock'}")
    server = await start_server(address, FrameServer(service).handle_connection)
    client = EnclaveClient(address)
    try:
        service.state.set_master(b"\x42" * 32, TEST_KEY_ARN)  # as kms_send does with KMS's answer
        order: list[str] = []

        async def tracked(name: str, method: str, params: dict) -> object:
            result = await client.call(method, params, timeout=60)
            order.append(name)
            return result

        slow = asyncio.create_task(tracked("generate", "generate", {"count": 3000}))
        await asyncio.sleep(0.05)
        quick = await asyncio.gather(*(tracked(f"hello{i}", "hello", {}) for i in range(20)))
        records = (await slow)["records"]  # type: ignore[index]
        assert len(records) == 3000 and len(quick) == 20
        assert order[-1] == "generate", "quick calls must not wait behind the slow one"
        accounts = await client.call("accounts")
        assert len(accounts["addresses"]) == 3000
        signed = await client.call("sign_personal", {"address": accounts["addresses"][0], "data": b"hi"})
        assert len(signed["signature"]) == 65
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def test_dead_enclave_is_a_prompt_error(tmp_path: Path) -> None:
    client = EnclaveClient(parse_address(f"unix:{tmp_path / 'nobody.sock'}"))
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(EnclaveUnavailable):
        await client.call("hello")
    assert loop.time() - start < 3


def test_frame_encoding_limits() -> None:
    with pytest.raises(protocol.FrameError):
        protocol.encode_frame({"blob": b"\0" * (protocol.MAX_FRAME + 1)})
    with pytest.raises(protocol.FrameError):
        protocol.decode_body(cbor2.dumps([1, 2, 3]))


@given(st.lists(st.binary(max_size=300), max_size=20), st.lists(st.integers(1, 64), min_size=1, max_size=50))
def test_splitter_reassembles_any_chunking(bodies: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(struct.pack(">I", len(b)) + b for b in bodies)
    splitter = protocol.FrameSplitter()
    got: list[bytes] = []
    position, i = 0, 0
    while position < len(stream):
        step = cuts[i % len(cuts)]
        got += splitter.feed(stream[position : position + step])
        position, i = position + step, i + 1
    assert got == bodies and splitter.pending == 0


def test_splitter_refuses_oversized_length_before_the_body_arrives() -> None:
    splitter = protocol.FrameSplitter()
    with pytest.raises(protocol.FrameError):
        splitter.feed(struct.pack(">I", protocol.MAX_FRAME + 1)[:3] + b"")
        splitter.feed(struct.pack(">I", protocol.MAX_FRAME + 1)[3:])
