"""The HTTP transport in-process, with aiohttp's test server and client: clef's rules for methods, content
types, body sizes, Host (vhosts), CORS and the bearer token; 503 for infrastructure errors; /upcheck,
/healthz and /metrics. A method table made here stands behind it, and once the real wiring
(`build_sidecar`) reads the token file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from clave.core.errors import ConfigError, InfraError
from clave.sidecar.rpc.dispatch import CallContext, Dispatcher, Method
from clave.sidecar.transports.http import MAX_BODY, HttpConfig, host_allowed, make_http_app
from tests.inproc import running_stack

CALL = {"jsonrpc": "2.0", "id": 1, "method": "echo", "params": ["x"]}


def _dispatcher(seen: list[CallContext]) -> Dispatcher:
    async def echo(params: list[Any], ctx: CallContext) -> Any:
        seen.append(ctx)
        return params

    async def down(params: list[Any], ctx: CallContext) -> Any:
        raise InfraError("enclave unavailable: test")

    return Dispatcher({"echo": Method(echo, 0, 1), "down": Method(down)})


async def _client(config: HttpConfig, seen: list[CallContext] | None = None,
                  health: tuple[int, dict[str, object]] = (200, {"ready": True})) -> TestClient:
    async def healthz() -> tuple[int, dict[str, object]]:
        return health

    def metrics() -> tuple[bytes, str]:
        return b"clave_up 1\n", "text/plain; version=0.0.4; charset=utf-8"

    app = make_http_app(_dispatcher(seen if seen is not None else []), config, healthz, metrics)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def plain() -> AsyncIterator[tuple[TestClient, list[CallContext]]]:
    seen: list[CallContext] = []
    client = await _client(HttpConfig(), seen)
    try:
        yield client, seen
    finally:
        await client.close()


async def test_json_rpc_over_post_on_any_path(plain: tuple[TestClient, list[CallContext]]) -> None:
    client, seen = plain
    for path in ("/", "/anything/at/all"):
        response = await client.post(path, json=CALL, headers={"User-Agent": "Geth/v1", "Origin": "x"})
        assert response.status == 200 and response.content_type == "application/json"
        assert await response.json() == {"jsonrpc": "2.0", "id": 1, "result": ["x"]}
    ctx = seen[-1]
    assert ctx.transport == "http" and ctx.user_agent == "Geth/v1" and ctx.origin == "x"
    assert ctx.remote.startswith("127.0.0.1:")


@pytest.mark.parametrize("content_type", ["application/json", "application/json-rpc", "application/jsonrequest",
                                          "Application/JSON; charset=utf-8"])
async def test_json_content_types_are_accepted(plain: tuple[TestClient, list[CallContext]], content_type: str) -> None:
    client, _ = plain
    response = await client.post("/", data=b'{"jsonrpc":"2.0","id":2,"method":"echo"}',
                                 headers={"Content-Type": content_type})
    assert response.status == 200 and (await response.json())["result"] == []


async def test_clefs_transport_rules(plain: tuple[TestClient, list[CallContext]]) -> None:
    client, seen = plain
    response = await client.post("/", data=b"{}", headers={"Content-Type": "text/plain"})
    assert response.status == 415
    assert await response.text() == "invalid content type, only application/json is supported\n"
    for method in ("PUT", "DELETE"):
        response = await client.request(method, "/", json=CALL)
        assert response.status == 405 and await response.text() == "method not allowed\n"
    response = await client.get("/")
    assert response.status == 200 and await response.read() == b"", "a GET without a body is a health probe"
    response = await client.post("/", data=b"x" * (MAX_BODY + 1), headers={"Content-Type": "application/json"})
    assert response.status == 413 and await response.text() == "content length too large\n"
    response = await client.post("/", json={"jsonrpc": "2.0", "method": "echo"})  # a notification
    assert response.status == 200 and await response.read() == b""
    response = await client.post("/", data=b"{bad", headers={"Content-Type": "application/json"})
    assert response.status == 200
    assert (await response.json())["error"] == {"code": -32700, "message": "parse error"}
    assert len(seen) == 1, "only the notification reached a method"


async def test_infrastructure_errors_answer_503(plain: tuple[TestClient, list[CallContext]]) -> None:
    client, _ = plain
    response = await client.post("/", json={"jsonrpc": "2.0", "id": 3, "method": "down"})
    assert response.status == 503
    assert await response.json() == {"jsonrpc": "2.0", "id": 3,
                                     "error": {"code": -32000, "message": "enclave unavailable: test"}}
    batch = [{"jsonrpc": "2.0", "id": 4, "method": "down"}, CALL]
    response = await client.post("/", json=batch)
    assert response.status == 200 and len(await response.json()) == 2


async def test_upcheck_healthz_and_metrics() -> None:
    client = await _client(HttpConfig(), health=(503, {"ready": False, "last_error": "sealed"}))
    try:
        response = await client.get("/upcheck")
        assert response.status == 200 and await response.text() == "OK"
        response = await client.get("/healthz")
        assert response.status == 503 and await response.json() == {"ready": False, "last_error": "sealed"}
        response = await client.get("/metrics")
        assert response.status == 200 and await response.read() == b"clave_up 1\n"
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("host", "vhosts", "allowed"),
    [
        (None, ("localhost",), True),
        ("localhost", ("localhost",), True),
        ("LOCALHOST:8550", ("localhost",), True),
        ("signer.example", ("localhost",), False),
        ("signer.example:8550", ("Signer.Example",), True),
        ("evil.example", ("*",), True),
        ("127.0.0.1:8550", ("localhost",), True),
        ("10.1.2.3", (), True),
        ("[::1]:8550", ("localhost",), True),
        ("::1", ("localhost",), True),
        ("localhost.evil.example", ("localhost",), False),
    ],
)
def test_host_allowed(host: str | None, vhosts: tuple[str, ...], allowed: bool) -> None:
    assert host_allowed(host, vhosts) is allowed


async def test_vhosts_cors_and_bearer_token() -> None:
    config = HttpConfig(vhosts=("signer.example",), cors_domains=("https://app.example",), auth_token="s3cret")
    client = await _client(config)
    token = {"Authorization": "Bearer s3cret"}
    try:
        response = await client.post("/", json=CALL, headers={"Host": "evil.example", **token})
        assert response.status == 403 and await response.text() == "invalid host specified\n"
        response = await client.post("/", json=CALL, headers={"Host": "signer.example"})
        assert response.status == 401 and await response.text() == "missing or invalid bearer token\n"
        for wrong in ("Bearer s3cre", "Bearer s3cretX", "s3cret", "Basic czNjcmV0"):
            response = await client.post("/", json=CALL, headers={"Host": "signer.example", "Authorization": wrong})
            assert response.status == 401, wrong
        response = await client.post("/", json=CALL, headers={"Host": "signer.example", **token})
        assert response.status == 200 and "Access-Control-Allow-Origin" not in response.headers
        for open_path in ("/upcheck", "/healthz"):
            assert (await client.get(open_path, headers={"Host": "signer.example"})).status == 200
        assert (await client.get("/metrics", headers={"Host": "signer.example"})).status == 401

        origin = {"Origin": "https://app.example", "Host": "signer.example"}
        response = await client.post("/", json=CALL, headers={**origin, **token})
        assert response.status == 200 and response.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
        response = await client.post("/", json=CALL, headers={"Origin": "https://evil.example",
                                                               "Host": "signer.example", **token})
        assert response.status == 200 and "Access-Control-Allow-Origin" not in response.headers
    finally:
        await client.close()


async def test_cors_preflight_and_wildcard() -> None:
    client = await _client(HttpConfig(cors_domains=("https://app.example",)))
    try:
        response = await client.options("/", headers={"Origin": "https://app.example"})
        assert response.status == 204 and response.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert response.headers["Access-Control-Allow-Methods"] == "POST, GET"
        response = await client.options("/", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in response.headers
    finally:
        await client.close()
    client = await _client(HttpConfig(cors_domains=("*",)))
    try:
        response = await client.post("/", json=CALL, headers={"Origin": "https://any.example"})
        assert response.headers["Access-Control-Allow-Origin"] == "https://any.example"
        response = await client.post("/", json=CALL)
        assert "Access-Control-Allow-Origin" not in response.headers, "no Origin, no CORS headers"
    finally:
        await client.close()


async def test_the_wiring_reads_the_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  wired-token\n")
    async with running_stack(tmp_path / "stack", auth_token_file=token_file) as stack:
        version = CALL | {"method": "account_version", "params": []}
        assert (await stack.http.post("/", json=version)).status == 401
        response = await stack.http.post("/", json=version, headers={"Authorization": "Bearer wired-token"})
        assert response.status == 200 and (await response.json())["result"] == "6.1.0"
        assert await stack.rpc("account_version") == "6.1.0", "IPC needs no token: the socket is 0600"
    token_file.write_text("\n")
    with pytest.raises(ConfigError, match="auth token file is empty"):
        async with running_stack(tmp_path / "empty", auth_token_file=token_file):
            pass
