"""Streaming forwarded replies over HTTP: a single call (not a batch, not a notification) for a method
clave does not answer goes to the node as the caller's own request body, id included, and the node's
reply is copied to the caller as it arrives, never parsed or held whole (`eth_getLogs`,
`debug_traceTransaction`). Anything else — batches, IPC, a WebSocket downstream, a node that cannot be
reached or answers other than HTTP 200 with JSON before the first byte is sent — goes through the
dispatcher, whose forwarding answers the same calls (and their failures) the ordinary way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Container
from typing import Any

import aiohttp
from aiohttp import web

from clave.sidecar.proxy.downstream import Downstream
from clave.sidecar.rpc.dispatch import CallContext, Observer

CHUNK = 1 << 16


def forwardable_call(body: bytes, answered_here: Container[str], not_forwarded: tuple[str, ...]) -> str | None:
    """The method of a single JSON-RPC call the node would answer, or None."""
    try:
        message = json.loads(body, object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None  # duplicate keys included: a node that keeps the first "method" would read another call
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0" or "id" not in message:
        return None
    method = message.get("method")
    if not isinstance(method, str) or method in answered_here or method.startswith(not_forwarded):
        return None
    request_id = message["id"]
    if not (request_id is None or isinstance(request_id, (str, int))) or isinstance(request_id, bool):
        return None  # odd ids (floats, objects) take the dispatcher's path, which answers them geth's way
    return method


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


class Streamer:
    def __init__(self, node: Downstream, answered_here: Container[str], not_forwarded: tuple[str, ...],
                 observer: Observer | None = None) -> None:
        self.node = node
        self.answered_here = answered_here
        self.not_forwarded = not_forwarded
        self.observer = observer

    async def __call__(self, body: bytes, ctx: CallContext, request: web.Request) -> web.StreamResponse | None:
        if self.node.websocket:
            return None
        method = forwardable_call(body, self.answered_here, self.not_forwarded)
        if method is None:
            return None
        started = time.perf_counter()
        response: web.StreamResponse | None = None
        try:
            async with self.node.post_raw(body) as upstream:
                if upstream.status != 200 or upstream.content_type not in ("application/json", "application/json-rpc"):
                    return None
                response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(CHUNK):
                    await response.write(chunk)
            await response.write_eof()
        except (TimeoutError, aiohttp.ClientError, ConnectionError):
            if response is None:
                return None  # nothing sent yet: the dispatcher tries and answers the failure
            if request.transport is not None:
                request.transport.close()  # cut mid-reply: the caller sees a truncated body, not a wrong one
            self._observe(method, "infra_error", started, ctx)
            return response
        self._observe(method, "streamed", started, ctx)
        return response

    def _observe(self, method: str, outcome: str, started: float, ctx: CallContext) -> None:
        if self.observer is not None:
            params: list[Any] = []
            self.observer(method, outcome, time.perf_counter() - started, ctx, params,
                          "the downstream node's reply was cut off" if outcome == "infra_error" else "")
