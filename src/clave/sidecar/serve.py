"""`clave serve`: the sidecar alone, as the systemd unit runs it beside a Nitro Enclave (or, in local
mode, beside `clave enclave --nsm software` and `clave kms-emulator`)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from clave.core.errors import ConfigError
from clave.link import aio
from clave.sidecar.config import SidecarConfig
from clave.sidecar.signing.signer import AttestationConfig
from clave.sidecar.transports.worker_pool import WorkerPool
from clave.sidecar.trust.attestation import AttestationDocument, PcrPolicy, load_root
from clave.sidecar.trust.kms import call_kms, key_policy, make_kms_client, signing_credentials
from clave.sidecar.trust.kms_relay import EnclaveKms, enclave_endpoint
from clave.sidecar.wiring import Sidecar, build_sidecar

log = logging.getLogger("clave.serve")

LOCAL_ROLE = "arn:aws:iam::000000000000:role/clave-local"
READY_TIMEOUT = 30.0
WORKERS_TIMEOUT = 15.0


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about readiness; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(address)
        s.sendall(message.encode())


def attestation_config(config: SidecarConfig) -> AttestationConfig:
    if config.attestation_root is None:
        raise ConfigError(
            "--attestation-root PEM is required (the AWS Nitro Enclaves Root-G1 certificate)",
            remedy="pass the Root-G1 PEM AWS publishes, pinned with --attestation-root-fingerprint",
        )
    try:
        data = config.attestation_root.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{config.attestation_root}: {exc.strerror}", remedy="check --attestation-root and the file's permissions"
        ) from None
    root = load_root(data, fingerprint=config.attestation_root_fingerprint)
    return AttestationConfig(root=root, pcr_policy=PcrPolicy(expected=config.pcrs, allow_debug=config.allow_debug_enclave))


def local_key_provisioner(kms_client: object) -> Callable[[AttestationDocument], Awaitable[str]]:
    async def provision_key(doc: AttestationDocument) -> str:
        # First local start: a key whose policy admits only this enclave image (PCR0), as an operator
        # creates it in AWS with `clave kms-policy`.
        policy = key_policy(LOCAL_ROLE, {0: doc.pcrs[0].hex()}, None)
        created = await call_kms(kms_client, "CreateKey", Policy=json.dumps(policy), Description="clave local master key")
        return str(created["KeyMetadata"]["KeyId"])

    return provision_key


def local_key_repinner(kms_client: object) -> Callable[[str, AttestationDocument], Awaitable[None]]:
    async def repin(key_id: str, doc: AttestationDocument) -> None:
        # What an operator does in AWS after building a new EIF: add the new PCR0 to the key policy.
        current = await call_kms(kms_client, "GetKeyPolicy", KeyId=key_id, PolicyName="default")
        policy = json.loads(current["Policy"])
        new = doc.pcrs[0].hex()
        for statement in policy.get("Statement", []):
            conditions = statement.get("Condition", {}).get("StringEqualsIgnoreCase", {})
            pinned = conditions.get("kms:RecipientAttestation:PCR0")
            if pinned is not None:
                values = pinned if isinstance(pinned, list) else [pinned]
                conditions["kms:RecipientAttestation:PCR0"] = [*values, new] if new not in values else values
        await call_kms(kms_client, "PutKeyPolicy", KeyId=key_id, PolicyName="default", Policy=json.dumps(policy))

    return repin


def ready_line(config: SidecarConfig, sidecar: Sidecar) -> str:
    endpoints = []
    if config.http_enabled:
        endpoints.append(f"http={sidecar.http_url}")
    endpoints.append(f"ipc={config.ipc_socket}")
    workers = f" http_workers={config.http_workers}" if config.http_enabled and config.http_workers > 1 else ""
    return (
        f"clave ready {' '.join(endpoints)} accounts={sidecar.signer.status.keys_loaded}{workers} "
        f"geth: --signer={config.ipc_socket}"
    )


def enclave_kms(config: SidecarConfig, kms_endpoint: str | None, kms_credentials: Path | None = None) -> EnclaveKms:
    """The enclave's KMS path: AWS (instance role, vsock-proxy) or, with an endpoint, the local emulator."""
    endpoint, proxy = enclave_endpoint(config.kms_region, kms_endpoint)
    return EnclaveKms(
        signing_credentials(kms_endpoint, kms_credentials), config.kms_region, endpoint, config.kms_proxy or proxy
    )


async def run_sidecar(
    config: SidecarConfig,
    attestation: AttestationConfig,
    *,
    kms_endpoint: str | None,
    provision_locally: bool,
    kms_credentials: Path | None = None,
    stop: asyncio.Event,
    repin_locally: bool = False,
    on_built: Callable[[Sidecar], None] | None = None,
    refused_hint: str = "",
) -> int:
    kms_client = make_kms_client(config.kms_region, kms_endpoint, kms_credentials, config.kms_ca)
    provision = local_key_provisioner(kms_client) if provision_locally else None
    repin = local_key_repinner(kms_client) if repin_locally else None
    sealing = enclave_kms(config, kms_endpoint, kms_credentials)
    sidecar, app = build_sidecar(config, sealing, attestation, provision_key=provision, repin_key=repin)
    if on_built is not None:
        on_built(sidecar)  # `clave up`: lets its child supervision report into /healthz
    pool: WorkerPool | None = None
    try:
        await sidecar.start()
        if config.http_enabled:
            await sidecar.serve_http(app)
            if config.http_workers > 1:
                pool = WorkerPool(replace(config, http_port=sidecar.http_port), sidecar.signer, config.http_workers - 1)
                pool.start()
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await sidecar.signer.attempted.wait()
        except TimeoutError:
            pass
        if not sidecar.signer.ready:
            # Keep serving (health says why) and keep retrying; the ready line follows once keys are unsealed.
            waiting = sidecar.signer.status.last_error or "enclave not ready"
            if refused_hint and ("policy expects" in waiting or "AccessDenied" in waiting):
                waiting += f"; {refused_hint}"  # the remedy for a refusal `clave up` can fix itself
            print(f"clave waiting: {waiting}", flush=True)
        announcer = asyncio.create_task(_announce_when_ready(config, sidecar, pool))
        await stop.wait()
        announcer.cancel()
        return 0
    finally:
        sd_notify("STOPPING=1")
        if pool is not None:
            await pool.stop()
        await sidecar.stop()


async def _announce_when_ready(config: SidecarConfig, sidecar: Sidecar, pool: WorkerPool | None) -> None:
    await sidecar.signer.wait_ready(None)
    if pool is not None and not await pool.wait_listening(WORKERS_TIMEOUT):
        # The primary serves every connection until they join; the ready line must not wait forever.
        log.warning("HTTP workers not listening after %.0f s; serving without them for now", WORKERS_TIMEOUT)
    print(ready_line(config, sidecar), flush=True)
    sd_notify(f"READY=1\nSTATUS=serving {sidecar.signer.status.keys_loaded} accounts")


def stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def serve(config: SidecarConfig) -> int:
    """Run the sidecar; the caller holds the datadir lock (`datadir.datadir_lock`)."""
    attestation = attestation_config(config)
    provision_locally = config.kms_key_id is None and config.kms_endpoint is not None

    async def main() -> int:
        return await run_sidecar(
            config, attestation, kms_endpoint=config.kms_endpoint, provision_locally=provision_locally, stop=stop_event()
        )

    return aio.run(main())

