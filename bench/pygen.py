"""The multi-process Python load generator (aiohttp keep-alive HTTP, or one multiplexed IPC connection).

N worker processes start at the same wall-clock instant and each runs `concurrency / N` request loops for
the run's duration. Two modes:
  closed loop  each loop sends its next request as soon as the previous reply arrived (max throughput);
  open loop    (`rate` set) request i of a worker is due at start + i / rate_per_worker; a free loop takes
               the next due slot, waits for it and sends. Latency is measured from the *due* time, so a
               server (or generator) that falls behind is charged for the wait (no coordinated omission).
Replies are kept and checked after the measured window (so checking costs no generator CPU inside it):
every reply must be a JSON-RPC result whose signature recovers to the account asked (common.Verifier).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from typing import Any

from common import Verifier, latency_summary, request_body

START_DELAY = 1.5  # seconds between spawning the workers and their common start instant


@dataclass
class GenConfig:
    kind: str
    addresses: list[str]  # EIP-55
    chain_id: int
    duration: float
    concurrency: int = 64
    processes: int = 2
    url: str | None = None  # HTTP target
    ipc: str | None = None  # IPC socket path (one multiplexed connection per worker process)
    rate: float | None = None  # total requests/s (open loop); None = closed loop
    verify: bool = True
    timeout: float = 30.0


@dataclass
class WorkerResult:
    sent: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    transport_errors: dict[str, int] = field(default_factory=dict)
    http_status: dict[int, int] = field(default_factory=dict)
    verified: int = 0
    failures: int = 0
    failure_samples: list[str] = field(default_factory=list)
    first_send: float = 0.0
    last_done: float = 0.0
    cpu_seconds: float = 0.0


def _install_loop() -> str:
    try:
        import uvloop

        uvloop.install()
        return "uvloop"
    except ImportError:
        return "asyncio"


class _Ipc:
    """One IPC connection shared by all loops of a worker; requests are matched to replies by id."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pending: dict[int, asyncio.Future[Any]] = {}

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_unix_connection(self.path, limit=16 * 1024 * 1024)
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        decoder = json.JSONDecoder()
        buffer = ""
        try:
            while True:
                data = await self.reader.read(1 << 20)
                if not data:
                    break
                buffer += data.decode()
                while True:
                    buffer = buffer.lstrip()
                    if not buffer:
                        break
                    try:
                        reply, end = decoder.raw_decode(buffer)
                    except ValueError:
                        break  # incomplete value: wait for more bytes
                    buffer = buffer[end:]
                    future = self.pending.pop(reply.get("id"), None)
                    if future is not None and not future.done():
                        future.set_result(reply)
        finally:
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("IPC connection closed"))

    async def call(self, request_id: int, body: bytes) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        self.writer.write(body + b"\n")
        return await future

    async def close(self) -> None:
        self.writer.close()
        self.task.cancel()


async def _run_worker(cfg: GenConfig, index: int, start_at: float) -> tuple[WorkerResult, list[tuple[str, int, Any]]]:
    result = WorkerResult()
    replies: list[tuple[str, int, Any]] = []  # (sender, seq, parsed reply or error text)
    loops = max(1, cfg.concurrency // cfg.processes + (1 if index < cfg.concurrency % cfg.processes else 0))
    seq_base = (index + 1) << 40  # nonces differ across workers and runs
    counter = 0
    addresses = cfg.addresses
    n_addr = len(addresses)
    deadline = start_at + cfg.duration
    per_worker_rate = cfg.rate / cfg.processes if cfg.rate else None
    slot = 0

    session = ipc = None
    if cfg.ipc:
        ipc = _Ipc(cfg.ipc)
        await ipc.open()
    else:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=loops, force_close=False, enable_cleanup_closed=False)
        session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=cfg.timeout), auto_decompress=False,
            headers={"Content-Type": "application/json"}, skip_auto_headers=("User-Agent",),
        )
        # Open the keep-alive connections before the clock starts.
        await asyncio.gather(*(session.get(cfg.url.rstrip("/") + "/upcheck") for _ in range(loops)), return_exceptions=True)

    now = time.time()
    if start_at > now:
        await asyncio.sleep(start_at - now)

    async def one_loop() -> None:
        nonlocal counter, slot
        while True:
            if per_worker_rate:
                due = start_at + slot / per_worker_rate
                slot += 1
                if due >= deadline:
                    return
                wait = due - time.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                t0 = due
            else:
                t0 = time.time()
                if t0 >= deadline:
                    return
            counter += 1
            seq = seq_base + counter
            sender = addresses[seq % n_addr]
            body = request_body(cfg.kind, counter, sender, seq, cfg.chain_id)
            if result.first_send == 0.0:
                result.first_send = time.time()
            result.sent += 1
            try:
                if ipc is not None:
                    reply: Any = await ipc.call(counter, body)
                else:
                    assert session is not None and cfg.url is not None
                    async with session.post(cfg.url, data=body) as response:
                        raw = await response.read()
                        result.http_status[response.status] = result.http_status.get(response.status, 0) + 1
                    reply = raw
            except Exception as exc:  # timeouts, resets: counted, the loop goes on
                name = type(exc).__name__
                result.transport_errors[name] = result.transport_errors.get(name, 0) + 1
                replies.append((sender, seq, f"transport error {name}: {exc}"))
                continue
            done = time.time()
            result.latencies_ms.append((done - t0) * 1000.0)
            result.last_done = done
            replies.append((sender, seq, reply))

    await asyncio.gather(*(one_loop() for _ in range(loops)))
    if session is not None:
        await session.close()
    if ipc is not None:
        await ipc.close()
    return result, replies


def _verify(cfg: GenConfig, result: WorkerResult, replies: list[tuple[str, int, Any]]) -> None:
    verifier = Verifier(cfg.kind, cfg.chain_id)
    for sender, seq, reply in replies:
        if isinstance(reply, str):
            problem: str | None = reply
        else:
            if isinstance(reply, (bytes, bytearray)):
                try:
                    reply = json.loads(reply)
                except ValueError:
                    reply = None
            problem = verifier.check(reply, sender, seq) if cfg.verify else None
            if not cfg.verify and (not isinstance(reply, dict) or "result" not in reply):
                problem = f"no result: {str(reply)[:200]}"
        if problem is None:
            result.verified += 1
        else:
            result.failures += 1
            if len(result.failure_samples) < 5:
                result.failure_samples.append(problem[:300])


def _worker_entry(cfg: GenConfig, index: int, start_at: float, queue: Any) -> None:
    try:
        _install_loop()
        cpu0 = time.process_time()
        result, replies = asyncio.run(_run_worker(cfg, index, start_at))
        result.cpu_seconds = time.process_time() - cpu0
        _verify(cfg, result, replies)
        queue.put(("ok", index, result))
    except BaseException as exc:  # report, never hang the parent
        queue.put(("error", index, f"{type(exc).__name__}: {exc}"))


def run(cfg: GenConfig) -> dict[str, Any]:
    """Run the generator and return one result row (throughput, latency percentiles, checks)."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    start_at = time.time() + START_DELAY
    workers = [ctx.Process(target=_worker_entry, args=(cfg, i, start_at, queue), daemon=True) for i in range(cfg.processes)]
    for w in workers:
        w.start()
    results: list[WorkerResult] = []
    errors: list[str] = []
    for _ in workers:
        status, index, payload = queue.get(timeout=cfg.duration + START_DELAY + 600)
        if status == "ok":
            results.append(payload)
        else:
            errors.append(f"worker {index}: {payload}")
    for w in workers:
        w.join(10)
    latencies = [x for r in results for x in r.latencies_ms]
    completed = len(latencies)
    last_done = max((r.last_done for r in results), default=start_at)
    elapsed = max(last_done - start_at, 1e-9)
    transport: dict[str, int] = {}
    status_counts: dict[str, int] = {}
    for r in results:
        for k, v in r.transport_errors.items():
            transport[k] = transport.get(k, 0) + v
        for code, v in r.http_status.items():
            status_counts[str(code)] = status_counts.get(str(code), 0) + v
    row: dict[str, Any] = {
        "generator": f"python ({cfg.processes} proc, {'IPC' if cfg.ipc else 'aiohttp'}, {_loop_name()})",
        "transport": "ipc" if cfg.ipc else "http",
        "kind": cfg.kind,
        "concurrency": cfg.concurrency,
        "duration_s": round(elapsed, 3),
        "target_rate": cfg.rate,
        "requests": sum(r.sent for r in results),
        "completed": completed,
        "rps": completed / elapsed,
        **latency_summary(latencies),
        "latency_from": "due time (open loop)" if cfg.rate else "send time",
        "verified": sum(r.verified for r in results),
        "failures": sum(r.failures for r in results) + (len(errors) and 1),
        "failure_samples": [s for r in results for s in r.failure_samples][:5] + errors,
        "transport_errors": transport,
        "http_status": status_counts,
        "generator_cpu_s": round(sum(r.cpu_seconds for r in results), 2),
        "checked": "every reply: signer recovered with eth-account" if cfg.verify else "result present",
    }
    return row


def _loop_name() -> str:
    try:
        import uvloop  # noqa: F401

        return "uvloop"
    except ImportError:
        return "asyncio"


if __name__ == "__main__":  # pragma: no cover - manual use: python bench/pygen.py URL KIND ADDRESS
    import sys

    print(json.dumps(run(GenConfig(kind=sys.argv[2], addresses=[sys.argv[3]], chain_id=1, duration=3,
                                   url=sys.argv[1], processes=os.cpu_count() or 2)), indent=2))
