"""The one place where the sidecar is assembled: store, enclave client, signer, RPC methods, HTTP, IPC."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from clave.core.errors import ClaveError, ConfigError
from clave.link.sockets import parse_address
from clave.sidecar.audit import AuditWriter
from clave.sidecar.config import SidecarConfig
from clave.sidecar.observe.logs import account_of, log_text, method_for_log, result_account
from clave.sidecar.observe.metrics import Metrics
from clave.sidecar.observe.tasks import start_supervised
from clave.sidecar.proxy.methods import proxy_methods
from clave.sidecar.rpc.dispatch import CallContext, Dispatcher
from clave.sidecar.rpc.methods import build_methods
from clave.sidecar.rpc.signing import SigningCalls
from clave.sidecar.signing.enclave_client import EnclaveClient
from clave.sidecar.signing.signer import AttestationConfig, FollowerSigner, SealingProvider, Signer
from clave.sidecar.store.records import SqliteStore
from clave.sidecar.transports.http import HttpConfig, make_http_app, start_runner
from clave.sidecar.transports.ipc import IpcServer
from clave.sidecar.trust.kms_relay import KmsLoad

log = logging.getLogger("clave.sidecar")
AUDIT_FILE = "audit.log"
REFUSED_SHOWN = 100  # refused records listed by /healthz; `unseal_failures` counts them all
request_log = logging.getLogger("clave.request")


class MeteredSealing:
    """Counts KMS calls and failures for /metrics."""

    def __init__(self, inner: SealingProvider, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def generate_data_key(self, enclave: EnclaveClient, key_id: str) -> KmsLoad:
        return await self._count("GenerateDataKey", self.inner.generate_data_key(enclave, key_id))

    async def decrypt(self, enclave: EnclaveClient, key_id: str, ciphertext_blob: bytes) -> KmsLoad:
        return await self._count("Decrypt", self.inner.decrypt(enclave, key_id, ciphertext_blob))

    async def _count(self, operation: str, call: Awaitable[Any]) -> Any:
        try:
            result = await call
        except Exception:
            self.metrics.kms_calls.labels(operation, "error").inc()
            raise
        self.metrics.kms_calls.labels(operation, "ok").inc()
        return result


class MeteredStore:
    """Times the key store's operations for /metrics; everything else passes through."""

    def __init__(self, inner: SqliteStore, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if not callable(target):
            return target
        histogram = self._metrics.store_seconds.labels(name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            with histogram.time():
                return target(*args, **kwargs)

        return timed


@dataclass
class Sidecar:
    config: SidecarConfig
    signer: Signer
    dispatcher: Dispatcher
    metrics: Metrics
    store: SqliteStore
    ipc: IpcServer | None  # None in an HTTP worker: IPC belongs to the primary process
    runner: web.AppRunner | None = None
    audit: AuditWriter | None = None  # None in an HTTP worker: the primary carries the audit log
    _audit_task: asyncio.Task[None] | None = None
    http_url: str = ""
    http_port: int = 0
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)  # e.g. the downstream client

    async def start(self) -> None:
        self.signer.start_watch()
        if self.audit is not None:
            self._audit_task = start_supervised("audit-drain", self.audit.run, restarted=self.signer.task_restarted)
        if self.ipc is not None:
            await self.ipc.start()

    async def serve_http(self, app: web.Application) -> None:
        self.runner = await start_runner(app)
        # With workers, every process listens on the same port and the kernel spreads connections over them.
        shared = self.config.http_workers > 1
        site = web.TCPSite(
            self.runner, self.config.http_addr, self.config.http_port, reuse_address=True, reuse_port=shared or None
        )
        await site.start()
        # runner.addresses: the bound (host, port, ...) of every listening socket; port 0 picks a free one.
        addresses = self.runner.addresses
        port = addresses[0][1] if addresses else self.config.http_port
        self.http_port = port
        host = self.config.http_addr if ":" not in self.config.http_addr else f"[{self.config.http_addr}]"
        self.http_url = f"http://{host}:{port}"
        if self.config.auth_token_file is None and not is_loopback(self.config.http_addr):
            log.warning("HTTP listens on %s without a token: anything that reaches the port can ask for signatures "
                        "and read /metrics; pass --http.auth-token-file FILE, or --http.addr 127.0.0.1",
                        self.http_url)

    async def stop(self) -> None:
        if self._audit_task is not None:
            self._audit_task.cancel()
            await asyncio.gather(self._audit_task, return_exceptions=True)
        if self.audit is not None and self.signer.ready:
            try:  # the last decisions, before the enclave goes too
                async with asyncio.timeout(5):
                    await self.audit.drain_once()
            except (ClaveError, TimeoutError) as exc:
                log.warning("audit log: last drain failed: %s", getattr(exc, "message", "timed out"))
        await self.signer.stop()
        if self.ipc is not None:
            await self.ipc.close()
        if self.runner is not None:
            await self.runner.cleanup()
        await self.signer.client.close()
        for close in self.closers:
            await close()
        self.store.close()


def _custody_health(custody: dict[str, Any], error: str) -> dict[str, object] | None:
    if not custody and not error:
        return None
    policy_hash = custody.get("policy_hash")
    return {
        "threshold": custody.get("threshold"),
        "sequence": custody.get("sequence"),
        "frozen": custody.get("frozen"),
        "policy_hash": "0x" + bytes(policy_hash).hex() if policy_hash else None,
        "record_refused": error or None,
    }


def is_loopback(addr: str) -> bool:
    """Whether a --http.addr listens on the loopback only ("localhost" included; a name is not resolved)."""
    import ipaddress

    if addr == "localhost":
        return True
    try:
        return ipaddress.ip_address(addr.strip("[]")).is_loopback
    except ValueError:
        return False


def build_sidecar(
    config: SidecarConfig,
    sealing: SealingProvider | None,
    attestation: AttestationConfig | None,
    *,
    provision_key: Callable[[Any], Awaitable[str]] | None = None,
    repin_key: Callable[[str, Any], Awaitable[None]] | None = None,
) -> tuple[Sidecar, web.Application]:
    """The primary process, or with neither sealing nor attestation, an HTTP worker that follows it."""
    metrics = Metrics()
    store = SqliteStore(config.store_path)
    roundtrips: dict[str, Any] = {}

    def observe_enclave(call: str, seconds: float) -> None:
        child = roundtrips.get(call)
        if child is None:
            child = roundtrips[call] = metrics.enclave_seconds.labels(call)
        child.observe(seconds)

    client = EnclaveClient(parse_address(config.enclave), observe=observe_enclave)
    metered_store = MeteredStore(store, metrics)
    signer: Signer
    if sealing is None or attestation is None:
        signer = FollowerSigner(client, metered_store, None, None, kms_key_id=None)  # type: ignore[arg-type]
    else:
        signer = Signer(
            client,
            metered_store,  # type: ignore[arg-type]
            MeteredSealing(sealing, metrics),
            attestation,
            kms_key_id=config.kms_key_id,
            provision_key=provision_key,
            repin_key=repin_key,
            admins=list(config.admins),
            admin_threshold=config.admin_threshold,
        )
    signer.on_task_restart = lambda task: metrics.task_restarts.labels(task).inc()
    signer.on_denied = lambda rule: metrics.policy_denials.labels(rule).inc()
    methods = build_methods(signer, config, metrics)
    proxy = proxy_methods(SigningCalls(signer, metrics), config)
    methods.update(proxy.methods)

    series: dict[tuple[str, str], tuple[Any, Any]] = {}  # labels() costs more than the update itself

    def observe(method: str, outcome: str, seconds: float, ctx: CallContext, params: list[Any], error: str = "") -> None:
        # Methods forwarded to the --downstream node share one label, as unknown ones do without it.
        known = method if method in methods else ("forwarded" if config.downstream else "unknown")
        children = series.get((known, outcome))
        if children is None:
            children = series[(known, outcome)] = (
                metrics.requests.labels(known, outcome),
                metrics.request_seconds.labels(known),
            )
        children[0].inc()
        children[1].observe(seconds)
        made = result_account.get()
        if made:
            result_account.set("")
        if request_log.isEnabledFor(logging.INFO):
            account = made or account_of(method, params)
            # The name as sent, bounded and sanitized, also for unknown methods (the metric label stays "unknown").
            name = known if known == method else method_for_log(method)
            reason = log_text(error) if error else ""
            fields = (
                {"method": name, "account": account, "outcome": outcome,
                 "latency_ms": round(seconds * 1000, 3), "transport": ctx.transport,
                 **({"error": reason} if reason else {})}
                if config.log_json
                else None
            )
            request_log.info(
                "%s account=%s outcome=%s latency_ms=%.2f transport=%s%s",
                name, account, outcome, seconds * 1000, ctx.transport, f" error={json.dumps(reason)}" if reason else "",
                extra={"fields": fields} if fields else None,
            )

    dispatcher = Dispatcher(methods, observer=observe, fallback=proxy.fallback)
    ipc = None if isinstance(signer, FollowerSigner) else IpcServer(config.ipc_socket, dispatcher)
    sidecar = Sidecar(config, signer, dispatcher, metrics, store, ipc)
    if proxy.close is not None:
        sidecar.closers.append(proxy.close)
    if not isinstance(signer, FollowerSigner):
        sidecar.audit = AuditWriter(signer, config.datadir / AUDIT_FILE)
        signer.on_bring_up = sidecar.audit.resume

    async def health() -> tuple[int, dict[str, object]]:
        status = signer.status
        try:
            store_seconds = await asyncio.to_thread(store.ping)
            metrics.store_seconds.labels("ping").observe(store_seconds)
            store_ok = True
        except Exception:
            store_ok = False
        age = time.time() - status.attested_at if status.attested else None
        ready = signer.ready and store_ok
        body: dict[str, object] = {
            "ready": ready,
            # Ready, but some stored records were refused (they are listed): the other accounts sign.
            "degraded": ready and status.unseal_failures > 0,
            "enclave_reachable": status.enclave_reachable,
            "attested": status.attested,
            "attestation_age_seconds": round(age, 1) if age is not None else None,
            "keys_unsealed": status.keys_unsealed,
            "keys_loaded": status.keys_loaded,
            "unseal_failures": status.unseal_failures,
            "refused_records": [r.describe() for r in status.refused[:REFUSED_SHOWN]],
            "store_reachable": store_ok,
            "task_restarts": dict(status.task_restarts),
            # The enclave attested to the store's pinned master-key commitment (THREAT_MODEL.md).
            "master_key_verified": status.master_verified,
            "master_mismatch": status.master_mismatch or None,
            # Who may authorize keyfile exports (sealed by the enclave under the master key).
            "admins": ["0x" + a.hex() for a in status.admins],
            "admins_pending": status.admins_pending,
            # The custody policy in force (enclave/policy.py): its hash, sequence, freeze, denials by rule.
            "custody": _custody_health(status.custody, status.custody_error),
            "last_error": status.last_error or None,
        }
        return (200 if ready else 503), body

    def render_metrics() -> tuple[bytes, str]:
        status = signer.status
        metrics.keys_loaded.set(status.keys_loaded)
        metrics.records_refused.set(status.unseal_failures)
        metrics.attested.set(1 if status.attested else 0)
        metrics.master_mismatch.set(1 if status.master_mismatch else 0)
        metrics.approvals_pending.set(len(signer.approvals))
        metrics.custody_frozen.set(1 if status.custody.get("frozen") else 0)
        metrics.audit_gap.set(1 if status.custody.get("gap") else 0)
        if sidecar.audit is not None and sidecar.audit.checkpoint_at:
            metrics.audit_checkpoint_age.set(time.time() - sidecar.audit.checkpoint_at)
        if status.attested:
            metrics.attestation_age.set(time.time() - status.attested_at)
        return metrics.render()

    token = None
    if config.auth_token_file is not None:
        try:
            token = config.auth_token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"{config.auth_token_file}: {exc.strerror}", remedy="check --http.auth-token-file and its permissions"
            ) from None
        if not token:
            raise ConfigError(
                f"{config.auth_token_file}: auth token file is empty", remedy="write the bearer token into it"
            )
    http_config = HttpConfig(config.vhosts, config.cors_domains, token, read_timeout=config.http_read_timeout)
    app = make_http_app(dispatcher, http_config, health, render_metrics, streamer=proxy.streamer(methods, observe))
    return sidecar, app
