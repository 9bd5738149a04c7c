"""The HTTP endpoint, served the way clef served it (`node/rpcstack.go`, `rpc/http.go`).

Any path and method except PUT/DELETE reaches JSON-RPC; content type must be JSON; bodies over 5 MiB get
413; a GET with an empty body answers 200 (a health probe); the Host header must be in the vhost list;
no CORS unless configured. `/upcheck`, `/healthz` and `/metrics` are served beside it.

Slow clients, with geth's HTTP server timeouts (`rpc.DefaultHTTPTimeouts`): a connection whose first
request line and headers have not all arrived within `read_timeout` (30 s) is closed; a body that has not
all arrived `read_timeout` after its headers is answered 408 and the connection closed; a keep-alive
connection idle for `idle_timeout` (120 s) is closed, also when it sent half of its next request.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from clave.sidecar.rpc.dispatch import CallContext, Dispatcher

MAX_BODY = 5 * 1024 * 1024
JSON_TYPES = frozenset({"application/json", "application/json-rpc", "application/jsonrequest"})
READ_TIMEOUT = 30.0  # geth's ReadTimeout and ReadHeaderTimeout
IDLE_TIMEOUT = 120.0  # geth's IdleTimeout; Go's HTTP client drops idle connections after 90 s itself


@dataclass
class HttpConfig:
    vhosts: tuple[str, ...] = ("localhost",)
    cors_domains: tuple[str, ...] = ()
    auth_token: str | None = None
    read_timeout: float = READ_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT


class SlowClientGuard:
    """Closes a connection whose first request has not arrived, headers complete, `timeout` seconds after
    it was accepted. aiohttp's keep-alive timer covers the time between requests, but before the first
    one only its newest releases time anything, so a client that connects and sends half a request line
    would otherwise hold its socket for good."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.closed = 0  # connections closed for it (tests read this)
        self._waiting: dict[object, asyncio.TimerHandle] = {}

    def install(self, server: web.Server) -> None:
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: web.RequestHandler, transport: asyncio.Transport) -> None:  # type: ignore[type-arg]
            made(handler, transport)
            timer = asyncio.get_running_loop().call_later(self.timeout, self._expire, handler, transport)
            self._waiting[handler] = timer

        def connection_lost(handler: web.RequestHandler, exc: BaseException | None = None) -> None:  # type: ignore[type-arg]
            self.request_arrived(handler)
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    def request_arrived(self, handler: object) -> None:
        timer = self._waiting.pop(handler, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, handler: object, transport: asyncio.Transport) -> None:
        if self._waiting.pop(handler, None) is not None:
            self.closed += 1
            transport.close()


HealthFn = Callable[[], Awaitable[tuple[int, dict[str, object]]]]
MetricsFn = Callable[[], tuple[bytes, str]]

dispatcher_key = web.AppKey("dispatcher", Dispatcher)
config_key = web.AppKey("config", HttpConfig)
health_key = web.AppKey("health", object)
metrics_key = web.AppKey("metrics", object)
slow_clients_key = web.AppKey("slow_clients", SlowClientGuard)
# (body, ctx, request) -> a response already streamed to the client, or None to dispatch as usual.
Streamer = Callable[[bytes, CallContext, web.Request], Awaitable[web.StreamResponse | None]]
streamer_key = web.AppKey("streamer", object)


def host_allowed(host_header: str | None, vhosts: tuple[str, ...]) -> bool:
    if not host_header:
        return True
    host = host_header
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.lower()
    try:
        ipaddress.ip_address(host)
        return True  # geth always allows IP literals: DNS rebinding needs a name
    except ValueError:
        pass
    return "*" in vhosts or host in {v.lower() for v in vhosts}


@web.middleware
async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    config = request.app[config_key]
    request.app[slow_clients_key].request_arrived(request.protocol)
    if not host_allowed(request.headers.get("Host"), config.vhosts):
        return web.Response(status=403, text="invalid host specified\n")
    if config.auth_token is not None and request.path not in ("/upcheck", "/healthz"):
        supplied = request.headers.get("Authorization", "")
        if not hmac.compare_digest(supplied.encode(), f"Bearer {config.auth_token}".encode()):
            return web.Response(status=401, text="missing or invalid bearer token\n")
    if request.method == "OPTIONS" and _cors_origin(request) is not None:
        return web.Response(status=204)
    return await handler(request)


def _cors_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    domains = request.app[config_key].cors_domains
    return origin if origin is not None and ("*" in domains or origin in domains) else None


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: CORS headers on every answer to an allowed origin (streamed ones too), set
    before any byte is sent."""
    origin = _cors_origin(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = "POST, GET"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization"


async def rpc_handler(request: web.Request) -> web.StreamResponse:
    if request.method in ("PUT", "DELETE"):
        return web.Response(status=405, text="method not allowed\n")
    if request.content_length is not None and request.content_length > MAX_BODY:
        return web.Response(status=413, text="content length too large\n")
    if request.method == "GET" and not request.can_read_body:
        return web.Response(status=200)
    mime = request.content_type.lower()
    if mime not in JSON_TYPES:
        return web.Response(status=415, text="invalid content type, only application/json is supported\n")
    try:
        async with asyncio.timeout(request.app[config_key].read_timeout):
            body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return web.Response(status=413, text="content length too large\n")
    except TimeoutError:
        return await _close_slow(request)
    peer = request.transport.get_extra_info("peername") if request.transport else None
    ctx = CallContext(
        transport="http",
        remote=f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "NA",
        user_agent=request.headers.get("User-Agent", "NA"),
        origin=request.headers.get("Origin", "NA"),
    )
    streamer = request.app.get(streamer_key)
    if streamer is not None:
        # Proxy mode: a single call the node answers is streamed from the node as it arrives.
        streamed = await streamer(body, ctx, request)  # type: ignore[operator]
        if streamed is not None:
            return streamed
    reply, infra = await request.app[dispatcher_key].handle_body(body, ctx)
    if reply is None:
        return web.Response(status=200)
    return web.Response(status=503 if infra else 200, body=reply, content_type="application/json")


async def _close_slow(request: web.Request) -> web.StreamResponse:
    """408 for a body that did not arrive in time, then close: reading on (lingering) would wait for it."""
    response = web.Response(status=408, text="request body not received in time\n")
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    if request.transport is not None:
        request.transport.close()
    return response


async def upcheck(request: web.Request) -> web.Response:
    return web.Response(text="OK")


async def healthz(request: web.Request) -> web.Response:
    health: HealthFn = request.app[health_key]  # type: ignore[assignment]
    status, body = await health()
    return web.json_response(body, status=status)


async def metrics(request: web.Request) -> web.Response:
    render: MetricsFn = request.app[metrics_key]  # type: ignore[assignment]
    payload, content_type = render()
    response = web.Response(body=payload)
    response.headers["Content-Type"] = content_type
    return response


def make_http_app(
    dispatcher: Dispatcher,
    config: HttpConfig,
    health: HealthFn,
    render_metrics: MetricsFn,
    cleanup: Sequence[Callable[[web.Application], AsyncIterator[None]]] = (),
    streamer: Streamer | None = None,
) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    app.on_response_prepare.append(add_cors_headers)
    if streamer is not None:
        app[streamer_key] = streamer
    app[dispatcher_key] = dispatcher
    app[config_key] = config
    app[slow_clients_key] = SlowClientGuard(config.read_timeout)
    app[health_key] = health
    app[metrics_key] = render_metrics
    app.router.add_get("/upcheck", upcheck)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/{tail:.*}", rpc_handler)
    app.cleanup_ctx.extend(cleanup)
    return app


async def start_runner(app: web.Application) -> web.AppRunner:
    """The runner for `make_http_app`'s app, with its timeouts for slow and idle clients in place."""
    config = app[config_key]
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0, keepalive_timeout=config.idle_timeout)
    await runner.setup()
    assert runner.server is not None
    app[slow_clients_key].install(runner.server)
    return runner
