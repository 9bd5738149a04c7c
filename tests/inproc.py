"""The whole stack in one process and one event loop, for the fast tier.

What `clave up` starts as three processes runs here as objects on the test's event loop, wired by the
production code:

- the enclave: `EnclaveService(SoftwareNsm(state))` behind `FrameServer` on a unix socket (`EnclaveHost`,
  which can also restart it: a new service, a new boot key, nothing unsealed, as after a crash);
- the KMS emulator: `clave.dev.kmsemu.app.make_app` served by aiohttp over TLS (its dev CA) on 127.0.0.1, a
  random port; the enclave reaches it over its own TLS session (`kms_send` runs on a worker thread), the
  sidecar signs those requests and provisions the key with boto3;
- the sidecar: `clave.sidecar.wiring.build_sidecar`, with the key provisioning `clave up` uses
  (`serve.local_key_provisioner`), its IPC server on a unix socket and its HTTP app behind aiohttp's
  `TestServer`/`TestClient`.

The enclave's scrypt work runs inline instead of in `kdf_pool`'s processes (see `inline_kdf` in
conftest.py), so nothing here starts a process. Log records of the `clave` loggers go to
`<root>/clave/logs/sidecar.log`, as `clave up` writes its logs under the datadir, so that the secret
search can read them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509

from clave.dev.kmsemu.app import make_app
from clave.dev.kmsemu.auth import credentials_path
from clave.dev.kmsemu.tls import ensure_tls, server_context
from clave.dev.soft_nsm import SoftwareNsm
from clave.enclave import kdf_pool
from clave.enclave.kms_tls import dev_transport
from clave.enclave.server import FrameServer
from clave.enclave.service import EnclaveService
from clave.link.sockets import Address, parse_address, start_server
from clave.sidecar.config import SidecarConfig
from clave.sidecar.rpc.dispatch import CallContext, Dispatcher
from clave.sidecar.serve import enclave_kms, local_key_provisioner
from clave.sidecar.signing.signer import AttestationConfig, Signer
from clave.sidecar.store.records import SqliteStore
from clave.sidecar.trust.attestation import PcrPolicy, load_root
from clave.sidecar.trust.kms import make_kms_client
from clave.sidecar.wiring import Sidecar, build_sidecar
from tests.stack import RpcFailure

READY_TIMEOUT = 30.0


@contextlib.contextmanager
def kdf_inline() -> Iterator[None]:
    """`kdf_pool.run(fn, *args)` as `fn(*args)`, and no pool warm-up: scrypt in the calling thread."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kdf_pool, "run", lambda fn, *args: fn(*args))
        patch.setattr(kdf_pool, "warm", lambda: None)
        yield


class EnclaveHost:
    """The enclave service on a unix socket, restartable like a crashed enclave process."""

    def __init__(self, address: Address, nsm_state: Path, kms_ca: Path) -> None:
        self.address = address
        self.nsm_state = nsm_state
        self.kms_ca = kms_ca  # the emulator's dev CA: the only CA this enclave trusts for KMS
        self.service: EnclaveService | None = None
        self.nsm: SoftwareNsm | None = None
        self.starts = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.nsm = SoftwareNsm(self.nsm_state)
        self.service = EnclaveService(self.nsm, kms_transport=dev_transport(self.kms_ca.read_bytes()))
        self._server = await start_server(self.address, self._connection)
        self.starts += 1

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.service is not None
        self._writers.add(writer)
        try:
            await FrameServer(self.service).handle_connection(reader, writer)
        finally:
            self._writers.discard(writer)

    async def stop(self) -> None:
        """End the service and every connection to it, as the death of the enclave process does."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None
        self.service = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@dataclass
class Stack:
    root: Path
    config: SidecarConfig
    enclave: EnclaveHost
    sidecar: Sidecar
    app: web.Application
    http: TestClient
    kms_endpoint: str
    kms_client: Any
    log_file: Path
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def signer(self) -> Signer:
        return self.sidecar.signer

    @property
    def dispatcher(self) -> Dispatcher:
        return self.sidecar.dispatcher

    @property
    def store(self) -> SqliteStore:
        return self.sidecar.store

    @property
    def root_pem(self) -> bytes:
        assert self.enclave.nsm is not None
        return self.enclave.nsm.root_pem

    async def reply(self, message: Any, *, transport: str = "ipc") -> tuple[Any, bool]:
        """Hand one JSON-RPC body to the dispatcher, as a transport does; the decoded reply and the
        infrastructure flag (HTTP's 503)."""
        body = message if isinstance(message, bytes) else json.dumps(message).encode()
        raw, infra = await self.dispatcher.handle_body(body, CallContext(transport=transport))
        return (json.loads(raw) if raw is not None else None), infra

    async def rpc(self, method: str, *params: Any, transport: str = "ipc") -> Any:
        """Call a method through the dispatcher; its result, or RpcFailure with the JSON-RPC error."""
        request_id = next(self._ids)
        reply, infra = await self.reply(
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}, transport=transport
        )
        assert reply["id"] == request_id and reply["jsonrpc"] == "2.0", reply
        if "error" in reply:
            raise RpcFailure(reply["error"]["code"], reply["error"]["message"], 503 if infra else 200)
        return reply["result"]

    async def export(self, address: str, envelope: str, admin: Any) -> Any:
        """clave_exportKeyfile as `clave account export` calls it: an enclave-issued challenge for the
        address, signed (EIP-191) by `admin`, an eth-account LocalAccount of the datadir's admin set."""
        from eth_account.messages import encode_defunct

        from clave.core.provenance import export_message

        challenge = bytes.fromhex((await self.rpc("clave_exportChallenge", address))[2:])
        signed = admin.sign_message(encode_defunct(export_message(bytes.fromhex(address[2:]), challenge)))
        return await self.rpc("clave_exportKeyfile", address, envelope, "0x" + challenge.hex(),
                              "0x" + bytes(signed.signature).hex())

    async def http_rpc(self, method: str, *params: Any, headers: dict[str, str] | None = None) -> Any:
        """The same over the HTTP app."""
        request_id = next(self._ids)
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}
        response = await self.http.post("/", json=message, headers=headers)
        reply = await response.json()
        assert reply["id"] == request_id, reply
        if "error" in reply:
            raise RpcFailure(reply["error"]["code"], reply["error"]["message"], response.status)
        assert response.status == 200
        return reply["result"]

    async def sign_while(
        self, during: Callable[[], Awaitable[Any]], account: str, *, over_http: bool = False
    ) -> tuple[list[float], list[str]]:
        """Sign with `account` in a loop (every 2 ms) while `during()` runs: each call's latency in seconds,
        and the errors of the calls that failed, to show what a slow request does to other callers."""
        call = self.http_rpc if over_http else self.rpc
        latencies: list[float] = []
        failures: list[str] = []
        stop = asyncio.Event()

        async def sign_loop() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    await call("eth_sign", account, "0x" + b"bench".hex())
                except RpcFailure as exc:
                    failures.append(f"{exc.code} {exc.message}")
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.002)

        task = asyncio.create_task(sign_loop())
        try:
            await during()
        finally:
            stop.set()
            await task
        return latencies, failures

    async def ipc_raw(self, payload: bytes, *, replies: int = 1, timeout: float = 30) -> list[Any]:
        """Write bytes on a new connection to the IPC socket; read `replies` JSON values back."""
        return await ipc_exchange(self.config.ipc_socket, payload, replies, timeout=timeout)


@contextlib.asynccontextmanager
async def running_stack(
    root: Path, *, chain_ids: tuple[int, ...] = (31337, 1), wait_ready: bool = True, **overrides: Any
) -> AsyncIterator[Stack]:
    """Start the enclave, the KMS emulator and the sidecar; yield once the sidecar is ready (or, without
    wait_ready, once its first bring-up attempt has finished, either way). `overrides` are SidecarConfig
    fields (kms_key_id, pcrs, auth_token_file, vhosts, ...)."""
    root.mkdir(parents=True, exist_ok=True)
    datadir = root / "clave"
    logs = datadir / "logs"
    logs.mkdir(parents=True, mode=0o700)
    handler = logging.FileHandler(logs / "sidecar.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    clave_log = logging.getLogger("clave")
    previous_level = clave_log.level
    clave_log.addHandler(handler)
    clave_log.setLevel(logging.DEBUG)

    with kdf_inline(), contextlib.ExitStack() as closing:
        closing.callback(lambda: (clave_log.removeHandler(handler), handler.close(), clave_log.setLevel(previous_level)))
        kms_ca = ensure_tls(root / "kms")
        enclave = EnclaveHost(parse_address(f"unix:{root / 'enclave.sock'}"), root / "nsm", kms_ca)
        await enclave.start()
        assert enclave.nsm is not None
        root_pem = enclave.nsm.root_pem
        kms_runner = web.AppRunner(make_app(root / "kms", x509.load_pem_x509_certificate(root_pem)))
        await kms_runner.setup()
        sidecar: Sidecar | None = None
        http: TestClient | None = None
        kms_client: Any = None
        try:
            await web.TCPSite(kms_runner, "127.0.0.1", 0, ssl_context=server_context(root / "kms")).start()
            kms_endpoint = f"https://127.0.0.1:{kms_runner.addresses[0][1]}"
            config = SidecarConfig(
                datadir=datadir,
                http_port=0,
                ipcpath=root / "clave.ipc",
                chain_ids=list(chain_ids),
                enclave=str(enclave.address),
                kms_endpoint=kms_endpoint,
                kms_ca=kms_ca,
                **overrides,
            )
            kms_client = await asyncio.to_thread(
                make_kms_client, config.kms_region, kms_endpoint, credentials_path(root / "kms"), kms_ca
            )
            attestation = AttestationConfig(
                root=load_root(root_pem), pcr_policy=PcrPolicy(expected=config.pcrs, allow_debug=True)
            )
            sidecar, app = build_sidecar(
                config, enclave_kms(config, kms_endpoint, credentials_path(root / "kms")), attestation,
                provision_key=local_key_provisioner(kms_client),
            )
            await sidecar.start()
            http = TestClient(TestServer(app))
            await http.start_server()
            if not wait_ready:
                await asyncio.wait_for(sidecar.signer.attempted.wait(), READY_TIMEOUT)
            elif not await sidecar.signer.wait_ready(READY_TIMEOUT):
                raise RuntimeError(f"in-process sidecar not ready: {sidecar.signer.status.last_error}")
            yield Stack(root, config, enclave, sidecar, app, http, kms_endpoint, kms_client, logs / "sidecar.log")
        finally:
            if http is not None:
                await http.close()
            if sidecar is not None:
                await sidecar.stop()
            await enclave.stop()
            await kms_runner.cleanup()
            if kms_client is not None:
                kms_client.close()


async def ipc_exchange(path: Path, payload: bytes, replies: int, *, timeout: float = 30) -> list[Any]:
    """Write bytes on a new connection to an IPC socket; read up to `replies` JSON values back (fewer when
    the server closes the connection first)."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(payload)
        await writer.drain()
        decoder, buffer, found = json.JSONDecoder(), "", []
        async with asyncio.timeout(timeout):
            while len(found) < replies:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                buffer += chunk.decode()
                while buffer.strip():
                    try:
                        value, end = decoder.raw_decode(buffer.lstrip())
                    except ValueError:
                        break
                    found.append(value)
                    buffer = buffer.lstrip()[end:]
        return found
    finally:
        writer.close()
