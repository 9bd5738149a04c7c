"""JSON-RPC 2.0 dispatch with go-ethereum's conventions (`rpc/json.go`, `rpc/handler.go`).

Transport-free: `Dispatcher.handle_body(bytes, ctx)` returns the response bytes (or None when every
message was a notification) and whether an infrastructure failure happened, so HTTP can answer 503.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from clave.core import gojson
from clave.core.errors import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    PARSE_ERROR,
    SERVER_ERROR,
    ClaveError,
    InfraError,
    InvalidParams,
    MethodNotFound,
)

log = logging.getLogger("clave.rpc")

MAX_BATCH = 1000


@dataclass
class CallContext:
    transport: str  # "http" | "ipc"
    remote: str = "NA"
    user_agent: str = "NA"
    origin: str = "NA"
    extra: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[list[Any], CallContext], Awaitable[Any]]


@dataclass(frozen=True)
class Method:
    handler: Handler
    required: int = 0  # leading arguments that must be present
    total: int = 0  # all arguments, optional trailing ones included


# method, outcome, seconds, context, params, and the error's message ("" when the call succeeded)
Observer = Callable[[str, str, float, CallContext, list[Any], str], None]
# Called for a method not in the table, with its name and raw params (proxy mode forwards it to a node).
Fallback = Callable[[str, Any, CallContext], Awaitable[Any]]


class Dispatcher:
    def __init__(self, methods: dict[str, Method], observer: Observer | None = None,
                 fallback: Fallback | None = None) -> None:
        self.methods = methods
        self.observer = observer
        self.fallback = fallback

    async def handle_body(self, body: bytes, ctx: CallContext) -> tuple[bytes | None, bool]:
        try:
            message = gojson.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # JSONDepthError is a ValueError
            return _dump(_error(None, PARSE_ERROR, "parse error")), False
        return await self.handle_message(message, ctx)

    async def handle_message(self, message: Any, ctx: CallContext) -> tuple[bytes | None, bool]:
        try:
            return await self._handle_message(message, ctx)
        except Exception:
            # A safety net, never reached by design (each call's errors are answered by _handle_one): the
            # peer still gets one answer, never an HTTP 500 or, over IPC, silence.
            log.exception("dispatching a message crashed")
            return _dump(_error(None, INTERNAL_ERROR, "internal error")), True

    async def _handle_message(self, message: Any, ctx: CallContext) -> tuple[bytes | None, bool]:
        if isinstance(message, list):
            if not message:
                return _dump(_error(None, INVALID_REQUEST, "empty batch")), False
            if len(message) > MAX_BATCH:
                # geth answers with a one-element batch carrying the first call's id (handler.go).
                first = next((m.get("id") for m in message if isinstance(m, dict) and "id" in m
                              and isinstance(m.get("method"), str)), None)
                first = first if _valid_id(first) else None
                return _dump([_error(first, INVALID_REQUEST, "batch too large")]), False
            results = await asyncio.gather(*(self._handle_one(m, ctx) for m in message))
            replies = [r for r, _ in results if r is not None]
            infra = any(i for _, i in results)
            return (_dump(replies) if replies else None), infra and len(message) == 1
        reply, infra = await self._handle_one(message, ctx)
        return (_dump(reply) if reply is not None else None), infra

    async def _handle_one(self, message: Any, ctx: CallContext) -> tuple[dict[str, Any] | None, bool]:
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0" or not isinstance(message.get("method"), str):
            request_id = message.get("id") if isinstance(message, dict) else None
            return _error(request_id if _valid_id(request_id) else None, INVALID_REQUEST, "invalid request"), False
        request_id = message.get("id")
        if not _valid_id(request_id):
            # geth echoes the id's raw text (`1e400`); Python has read it as inf, which JSON cannot carry.
            return _error(None, INVALID_REQUEST, "invalid request"), False
        notification = "id" not in message
        name = message["method"]
        start = time.perf_counter()
        outcome = "ok"
        infra = False
        error = ""
        try:
            result = await self._call(name, message.get("params"), ctx)
            reply: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "result": result}
        except InfraError as exc:
            outcome, infra = "infra_error", True
            log.warning("%s failed: %s%s", name, exc.message, f" ({exc.remedy})" if exc.remedy else "")
            reply = _error(request_id, exc.code, exc.message)
            error = exc.message
        except ClaveError as exc:
            outcome = "refused" if exc.code == SERVER_ERROR else "bad_request"
            error = exc.message  # what the caller is told: no secrets (RequestError's messages are returned verbatim)
            reply = _error(request_id, exc.code, exc.message, getattr(exc, "data", None))
        except Exception:
            outcome, infra = "crashed", True
            log.exception("method handler %s crashed", name)
            reply = _error(request_id, INTERNAL_ERROR, "method handler crashed")
            error = "method handler crashed"
        if self.observer is not None:
            params = message.get("params")
            self.observer(name, outcome, time.perf_counter() - start, ctx, params if isinstance(params, list) else [],
                          error)
        return (None if notification else reply), infra

    async def _call(self, name: str, params: Any, ctx: CallContext) -> Any:
        method = self.methods.get(name)
        if method is None:
            if self.fallback is not None:
                return await self.fallback(name, params, ctx)
            raise MethodNotFound(name)
        if params is None:
            params = []
        if not isinstance(params, list):
            raise InvalidParams("non-array args")
        if len(params) > method.total:
            raise InvalidParams(f"too many arguments, want at most {method.total}")
        # Go treats a trailing JSON null like an omitted optional argument.
        while params and len(params) > method.required and params[-1] is None:
            params = params[:-1]
        if len(params) < method.required:
            raise InvalidParams(f"missing value for required argument {len(params)}")
        return await method.handler(params, ctx)


def _valid_id(request_id: Any) -> bool:
    """Every id can be echoed except a number beyond float64 (`1e400` reads as inf): refused, -32600."""
    return not (isinstance(request_id, float) and not math.isfinite(request_id))


def _error(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data  # a node's error data (revert reasons), passed through in proxy mode
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"
