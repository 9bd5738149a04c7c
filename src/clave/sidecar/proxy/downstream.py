"""A JSON-RPC client for the downstream node (aiohttp): HTTP(S) with one pooled session, or one
WebSocket connection whose replies are matched to calls by id.

A reply with an `error` raises `NodeError`, which the dispatcher answers with the node's own code,
message and data, so a caller sees what it would have seen talking to the node. A node that cannot be
reached, or answers something that is not JSON-RPC, raises `DownstreamUnavailable` (an InfraError:
retryable, logged, HTTP 503).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import aiohttp

from clave.core.errors import ConfigError, InfraError, RequestError

TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=10)


class NodeError(RequestError):
    """The node answered with a JSON-RPC error: passed through with its code, message and data."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message, code)
        self.data = data


class DownstreamUnavailable(InfraError):
    remedy = "check that the --downstream node is running and reachable"


def read_auth_header(path: Path) -> tuple[str, str]:
    """`Name: value` from the first non-empty line of `path` (e.g. `Authorization: Bearer …`)."""
    try:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}", remedy="check --downstream.auth-header-file") from None
    name, sep, value = lines[0].partition(":") if lines else ("", "", "")
    if not sep or not name.strip() or not value.strip():
        raise ConfigError(f"{path}: expected one 'Name: value' header line",
                          remedy="write e.g. 'Authorization: Bearer TOKEN' into it")
    return name.strip(), value.strip()


class Downstream:
    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.websocket = url.startswith(("ws://", "wss://"))
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ws_lock = asyncio.Lock()
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No cookie jar, no environment proxies: the node is named explicitly.
            self._session = aiohttp.ClientSession(timeout=TIMEOUT, cookie_jar=aiohttp.DummyCookieJar(),
                                                  connector=aiohttp.TCPConnector(limit=64))
        return self._session

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, params: Any = None) -> Any:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self._ids), "method": method}
        if params is not None:
            message["params"] = params
        reply = await (self._ws_call(message) if self.websocket else self._http_call(message))
        if not isinstance(reply, dict) or ("result" not in reply and "error" not in reply):
            raise DownstreamUnavailable(f"the downstream node answered {method} with something that is not JSON-RPC")
        error = reply.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise DownstreamUnavailable(f"the downstream node answered {method} with a malformed error")
            code = error.get("code")
            raise NodeError(code if isinstance(code, int) else -32000, str(error.get("message", "")), error.get("data"))
        return reply["result"]

    def post_raw(self, body: bytes) -> Any:
        """POST a request body as it is (HTTP(S) only); an aiohttp response context, for streaming."""
        return self._client().post(self.url, data=body, headers=self.headers)

    async def _http_call(self, message: dict[str, Any]) -> Any:
        try:
            async with self._client().post(self.url, data=json.dumps(message), headers=self.headers) as response:
                body = await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise DownstreamUnavailable(f"downstream node unreachable: {type(exc).__name__}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise DownstreamUnavailable(
                f"the downstream node answered HTTP {response.status} without JSON-RPC") from None

    async def _connect_ws(self) -> aiohttp.ClientWebSocketResponse:
        async with self._ws_lock:
            if self._ws is None or self._ws.closed:
                try:
                    headers = {k: v for k, v in self.headers.items() if k != "Content-Type"}
                    self._ws = await self._client().ws_connect(self.url, headers=headers, max_msg_size=0)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    raise DownstreamUnavailable(f"downstream node unreachable: {type(exc).__name__}") from None
                self._reader = asyncio.create_task(self._read(self._ws))
            return self._ws

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    reply = json.loads(frame.data)
                except ValueError:
                    continue
                reply_id = reply.get("id") if isinstance(reply, dict) else None
                future = self._pending.pop(reply_id, None) if isinstance(reply_id, int) else None
                if future is not None and not future.done():
                    future.set_result(reply)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(DownstreamUnavailable("downstream WebSocket closed"))
            self._pending.clear()

    async def _ws_call(self, message: dict[str, Any]) -> Any:
        ws = await self._connect_ws()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message["id"]] = future
        try:
            await ws.send_str(json.dumps(message))
            async with asyncio.timeout(TIMEOUT.total):  # not wait_for: it can lose a cancellation on 3.11
                return await future
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            raise DownstreamUnavailable(f"downstream node unreachable: {type(exc).__name__}") from None
        finally:
            self._pending.pop(message["id"], None)
