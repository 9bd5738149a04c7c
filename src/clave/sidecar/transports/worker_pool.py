"""HTTP workers (`--http.workers N`): the primary `clave serve` process starts N-1 more processes that
listen on the same port (SO_REUSEPORT), so JSON-RPC over HTTP can use more than one core.

One process does not get past about 5,000 requests/s, nearly all of it aiohttp and asyncio (see
docs/performance.md), and the GIL keeps threads from helping. The primary alone attests, talks to KMS,
unseals, watches the enclave and serves IPC; each worker has its own enclave connection, shares the key
store file and mirrors the primary's status, so /healthz and JSON-RPC errors read the same whichever
process the kernel picked. Workers count into prometheus_client's multiprocess files (metrics.py).

The pipes between them: the first line on a worker's stdin is its configuration; every later line is the
primary's status as JSON, sent whenever it changes. The worker writes `listening` to stdout once it serves.
End of file on stdin, which also happens when the primary is SIGKILLed, stops the worker.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import pickle
import sys
from typing import Any

from clave.link.process import child_env
from clave.sidecar.config import SidecarConfig
from clave.sidecar.observe.tasks import start_supervised
from clave.sidecar.signing.signer import LOGGED_REFUSALS, Signer

log = logging.getLogger("clave.workers")

STATUS_INTERVAL = 0.2
RESTART_DELAY = 1.0
STOP_TIMEOUT = 5.0
LISTENING = b"listening"


def encode_config(config: SidecarConfig) -> bytes:
    # Pickle is fine here: the only reader is a child process this one started, from the same installation.
    return base64.b64encode(pickle.dumps(config)) + b"\n"


def decode_config(line: bytes) -> SidecarConfig:
    config = pickle.loads(base64.b64decode(line))
    if not isinstance(config, SidecarConfig):
        raise TypeError("expected a SidecarConfig")
    return config


def status_update(signer: Signer) -> dict[str, Any]:
    status = signer.status
    return {
        "ready": signer.ready,
        "enclave_reachable": status.enclave_reachable,
        "attested": status.attested,
        "attested_at": status.attested_at,
        "keys_unsealed": status.keys_unsealed,
        "unseal_failures": status.unseal_failures,
        "last_error": status.last_error,
        "failed": sorted(a.hex() for a in signer.failed_addresses),
        "refused": [r.describe() for r in status.refused[:LOGGED_REFUSALS]],  # for /healthz; the count is above
        "master_verified": status.master_verified,
        "master_mismatch": status.master_mismatch,
        "admins": [a.hex() for a in status.admins],
        "admins_pending": status.admins_pending,
        "boot_public": signer.boot_public.hex() if signer.boot_public is not None else None,
    }


class WorkerPool:
    def __init__(self, config: SidecarConfig, signer: Signer, count: int) -> None:
        self.config = config  # with the port the primary actually bound (port 0 picks one)
        self.signer = signer
        self.count = count
        self._processes: list[asyncio.subprocess.Process | None] = [None] * count
        self._listening = [asyncio.Event() for _ in range(count)]
        self._tasks: list[asyncio.Task[None]] = []
        self._last: bytes = b""
        self._stopping = False

    def _status_line(self) -> bytes:
        return json.dumps(status_update(self.signer)).encode() + b"\n"

    def start(self) -> None:
        self._last = self._status_line()
        restarted = self.signer.task_restarted
        self._tasks = [
            start_supervised(f"http-worker-{i + 1}", lambda i=i: self._supervise(i), restarted=restarted)  # type: ignore[misc]
            for i in range(self.count)
        ]
        self._tasks.append(start_supervised("http-worker-status", self._broadcast, restarted=restarted))

    async def wait_listening(self, timeout: float) -> bool:
        waits = [asyncio.create_task(event.wait()) for event in self._listening]
        _, pending = await asyncio.wait(waits, timeout=timeout)
        for task in pending:
            task.cancel()
        return not pending

    async def _supervise(self, index: int) -> None:
        while not self._stopping:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "clave.sidecar.transports.http_worker",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=child_env(),
            )
            self._processes[index] = process
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(encode_config(self.config) + self._last)
            async for line in process.stdout:
                if line.strip() == LISTENING:
                    self._listening[index].set()
            code = await process.wait()
            self._listening[index].clear()
            if self._stopping:
                return
            log.warning("HTTP worker %d (pid %d) exited with status %s; starting it again", index + 1, process.pid, code)
            await asyncio.sleep(RESTART_DELAY)

    async def _broadcast(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            line = self._status_line()
            if line == self._last:
                continue
            self._last = line
            for process in self._processes:
                if process is not None and process.returncode is None and process.stdin is not None:
                    with contextlib.suppress(ConnectionError):
                        process.stdin.write(line)

    async def stop(self) -> None:
        self._stopping = True
        for process in self._processes:
            if process is not None and process.stdin is not None:
                process.stdin.close()  # end of file: the worker drains its requests and exits
        running = [p for p in self._processes if p is not None and p.returncode is None]
        if running:
            _, late = await asyncio.wait([asyncio.create_task(p.wait()) for p in running], timeout=STOP_TIMEOUT)
            if late:
                for process in running:
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
