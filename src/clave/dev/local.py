"""`clave up`: the whole stack on one machine, with the production sidecar code.

Children: the enclave service (a local process with the software NSM, reached over a unix socket) and the
KMS emulator. The enclave reaches the emulator over its own TLS session (trusting only the emulator's dev
CA, DATADIR/kms/ca.pem, made here before either starts); the sidecar signs those requests and makes its
own management calls with boto3 through endpoint_url. The enclave is supervised like the Nitro watchdog
does it: when it dies it is started again, and the sidecar attests and unseals again. The emulator is
supervised too: it keeps its port across restarts (recorded in DATADIR/kms/endpoint.json), so the
sidecar's endpoint stays valid, and it serves only requests SigV4-signed with the credentials in
DATADIR/kms/credentials.json (0600), which the sidecar's client is given.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

from clave.dev.kmsemu.auth import credentials_path
from clave.dev.kmsemu.tls import ensure_tls
from clave.link import aio
from clave.link.process import child_env
from clave.sidecar.config import SidecarConfig
from clave.sidecar.observe.tasks import start_supervised
from clave.sidecar.serve import run_sidecar, stop_event
from clave.sidecar.signing.signer import AttestationConfig
from clave.sidecar.trust.attestation import PcrPolicy, load_root
from clave.sidecar.wiring import Sidecar

log = logging.getLogger("clave.up")

READY_TIMEOUT = 30.0


class Child:
    """A supervised child process whose readiness is one line on its stdout."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        ready: re.Pattern[str],
        log_path: Path,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.on_failure = on_failure  # called with why a restart failed, then with "" once it is back
        self.argv = argv
        self.ready = ready
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.match: re.Match[str] | None = None
        self.restarts = 0
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._log: IO[bytes] | None = None

    async def start(self) -> re.Match[str]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._log = open(os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")
        os.chmod(self.log_path, 0o600)  # one made by an older version
        # Its own session (a Ctrl-C to `clave up` is not also a Ctrl-C to it), and CLAVE_PARENT_PID: the
        # child asks the kernel to end it when this process exits, even by SIGKILL (link.process).
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.PIPE, stderr=self._log, start_new_session=True, env=child_env()
        )
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                while True:
                    line = await self.process.stdout.readline()
                    if not line:
                        why = _last_line(self.log_path)
                        raise RuntimeError(
                            f"{self.name} exited before it was ready{': ' + why if why else ''} (see {self.log_path})"
                        )
                    self._log.write(line)
                    self._log.flush()
                    match = self.ready.search(line.decode(errors="replace"))
                    if match:
                        self.match = match
                        break
        except TimeoutError:
            raise RuntimeError(f"{self.name} was not ready within {READY_TIMEOUT:g}s (see {self.log_path})") from None
        process, log_file = self.process, self._log
        self._drain_task = start_supervised(f"{self.name}-output", lambda: self._drain(process, log_file))
        return match

    async def _drain(self, process: asyncio.subprocess.Process, log_file: IO[bytes]) -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            log_file.write(line)
            log_file.flush()
        if log_file is not self._log:
            log_file.close()  # a restarted child writes to a file object of its own

    def supervise(self) -> None:
        self._supervisor = start_supervised(f"{self.name}-supervisor", self._watch)

    async def _watch(self) -> None:
        delay = 0.2
        while not self._stopping:
            assert self.process is not None
            code = await self.process.wait()
            _kill_group(self.process.pid)  # helpers it left behind (the enclave's keyfile workers)
            if self._stopping:
                return
            log.warning("%s exited with %s; restarting", self.name, code)
            await asyncio.sleep(delay)
            try:
                await self.start()
                self.restarts += 1
                delay = 0.2
                if self.on_failure is not None:
                    self.on_failure("")
            except RuntimeError as exc:
                log.error("%s", exc)
                if self.on_failure is not None:
                    self.on_failure(str(exc))
                delay = min(delay * 2, 5.0)

    async def stop(self) -> None:
        self._stopping = True
        for task in (self._supervisor, self._drain_task):
            if task is not None:
                task.cancel()
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(5):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self.process is not None:
            _kill_group(self.process.pid)
        if self._log is not None:
            self._log.close()


def _last_line(path: Path) -> str:
    """The last line a failed child wrote (its error), for the log line saying why it is not running."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 2048))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _kill_group(pgid: int) -> None:
    """Children run in their own session (pgid = pid): end whatever of it is still running."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def check_port_free(host: str, port: int) -> None:
    """OSError (EADDRINUSE) if another process listens on the HTTP port: said before anything is started,
    not after the enclave and the emulator are up and the keys unsealed."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds: TIME_WAIT is no conflict
        probe.bind((host.strip("[]"), port))


async def run_up(config: SidecarConfig, *, accept_new_enclave: bool = False) -> int:
    if config.http_enabled:
        check_port_free(config.http_addr, config.http_port)
    datadir = config.datadir
    logs = datadir / "logs"
    nsm_state = datadir / "nsm"
    config.enclave = f"unix:{datadir / 'enclave.sock'}"
    kms_dir = datadir / "kms"
    config.kms_ca = ensure_tls(kms_dir)  # before the enclave starts: it reads the dev CA once, at start
    enclave = Child(
        "enclave",
        [sys.executable, "-m", "clave.dev.enclave", "--listen", config.enclave, "--nsm-state", str(nsm_state),
         "--kms-ca", str(config.kms_ca)],
        re.compile(r"enclave listening"),
        logs / "enclave.log",
    )
    kms = Child(
        "kms-emulator",
        [sys.executable, "-m", "clave.dev.kmsemu", "--datadir", str(kms_dir), "--host", "127.0.0.1", "--port", "0",
         "--root", str(nsm_state / "root.pem")],
        re.compile(r"kms-emulator listening (\S+)"),
        logs / "kms.log",
    )
    sidecars: list[Sidecar] = []
    reported = [""]

    def kms_failed(why: str) -> None:
        # The keys stay unsealed while the emulator is down, so the sidecar stays ready; but /healthz
        # says why the next unseal would fail (e.g. another process took the emulator's port).
        for sidecar in sidecars:
            status = sidecar.signer.status
            if why:
                status.last_error = why
            elif status.last_error == reported[0]:
                status.last_error = ""
        reported[0] = why

    kms.on_failure = kms_failed
    stop = stop_event()
    try:
        await enclave.start()
        enclave.supervise()
        match = await kms.start()
        kms.supervise()
        config.kms_endpoint = match.group(1)  # its port is recorded: a restarted emulator comes back here
        root = load_root((nsm_state / "root.pem").read_bytes())
        # The software NSM measures the installed code, so local PCR0 is real; the KMS key policy pins it.
        attestation = AttestationConfig(root=root, pcr_policy=PcrPolicy(expected=config.pcrs, allow_debug=True))
        return await run_sidecar(
            config,
            attestation,
            kms_endpoint=config.kms_endpoint,
            kms_credentials=credentials_path(kms_dir),
            on_built=sidecars.append,
            provision_locally=config.kms_key_id is None,
            stop=stop,
            repin_locally=accept_new_enclave,
            refused_hint="" if accept_new_enclave else (
                "after a change to the enclave code, restart with `clave up --accept-new-enclave` to add its PCR0 "
                "to the local key policy"
            ),
        )
    finally:
        await kms.stop()
        await enclave.stop()


def up(config: SidecarConfig, *, accept_new_enclave: bool = False) -> int:
    """Run the stack; the caller holds the datadir lock (`datadir.datadir_lock`)."""
    return aio.run(run_up(config, accept_new_enclave=accept_new_enclave))
