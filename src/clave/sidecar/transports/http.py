"""The HTTP endpoint, served the way clef served it (`node/rpcstack.go`, `rpc/http.go`).

Any path and method except PUT/DELETE reaches JSON-RPC; content type must be JSON; bodies over 5 MiB get
413; a GET with an empty body answers 200 (a health probe); the Host header must be in the vhost list;
no CORS unless configured. `/upcheck`, `/healthz` and `/metrics` are served beside it.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from clave.sidecar.rpc.dispatch import CallContext, Dispatcher

MAX_BODY = 5 * 1024 * 1024
JSON_TYPES = frozenset({"application/json", "application/json-rpc", "application/jsonrequest"})


@dataclass
class HttpConfig:
    vhosts: tuple[str, ...] = ("localhost",)
    cors_domains: tuple[str, ...] = ()
    auth_token: str | None = None


HealthFn = Callable[[], Awaitable[tuple[int, dict[str, object]]]]
MetricsFn = Callable[[], tuple[bytes, str]]

dispatcher_key = web.AppKey("dispatcher", Dispatcher)
config_key = web.AppKey("config", HttpConfig)
health_key = web.AppKey("health", object)
metrics_key = web.AppKey("metrics", object)


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
    if not host_allowed(request.headers.get("Host"), config.vhosts):
        return web.Response(status=403, text="invalid host specified\n")
    if config.auth_token is not None and request.path not in ("/upcheck", "/healthz"):
        supplied = request.headers.get("Authorization", "")
        if not hmac.compare_digest(supplied.encode(), f"Bearer {config.auth_token}".encode()):
            return web.Response(status=401, text="missing or invalid bearer token\n")
    origin = request.headers.get("Origin")
    cors = origin is not None and ("*" in config.cors_domains or origin in config.cors_domains)
    if cors and request.method == "OPTIONS":
        response: web.StreamResponse = web.Response(status=204)
    else:
        response = await handler(request)
    if cors:
        response.headers["Access-Control-Allow-Origin"] = origin or "*"
        response.headers["Access-Control-Allow-Methods"] = "POST, GET"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
    return response


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
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return web.Response(status=413, text="content length too large\n")
    peer = request.transport.get_extra_info("peername") if request.transport else None
    ctx = CallContext(
        transport="http",
        remote=f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "NA",
        user_agent=request.headers.get("User-Agent", "NA"),
        origin=request.headers.get("Origin", "NA"),
    )
    reply, infra = await request.app[dispatcher_key].handle_body(body, ctx)
    if reply is None:
        return web.Response(status=200)
    return web.Response(status=503 if infra else 200, body=reply, content_type="application/json")


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
) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    app[dispatcher_key] = dispatcher
    app[config_key] = config
    app[health_key] = health
    app[metrics_key] = render_metrics
    app.router.add_get("/upcheck", upcheck)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/{tail:.*}", rpc_handler)
    app.cleanup_ctx.extend(cleanup)
    return app
