"""Stream splitting cost for one large message: the IPC JSON splitter and the enclave frame splitter.

  python bench/split.py [--mb 4.8] [--stack]

Both are fed in 64 KiB reads, as the servers read their sockets. The JSON message is a JSON-RPC call
dense in brackets and strings (`[[0,"a"],[1,"b"],…]`), the worst case for a bracket-matching splitter; the
frame is a CBOR frame just under MAX_FRAME. Before the fix, the IPC splitter rescanned the whole buffered
message on every read (quadratic): a 4.8 MB message took 29 s and stalled everything else on the loop.

With --stack, also end to end on the in-process stack (tests/inproc.py): the message written to the IPC
socket (its answer: a refusal, the params are not eth_sign's) while `eth_sign` calls run over HTTP; the
time to the answer and the HTTP latencies meanwhile.

Set PYTHONPATH to `src` of the tree to measure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cbor2

from clave.link import frames
from clave.sidecar.transports.ipc import JsonStreamSplitter

READ = 1 << 16


def json_message(size: int) -> bytes:
    items, body = [], 0
    while body < size:
        item = [len(items), "a\\\"[{"]
        items.append(item)
        body += 14 + len(str(len(items)))
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_sign", "params": items}).encode()


def split_json(message: bytes) -> tuple[float, int]:
    splitter = JsonStreamSplitter()
    texts = []
    started = time.perf_counter()
    for offset in range(0, len(message), READ):
        texts += splitter.feed(message[offset : offset + READ])
    texts += splitter.feed(b"\n")
    elapsed = time.perf_counter() - started
    assert len(texts) == 1 and len(texts[0]) == len(message), (len(texts), len(message))
    return elapsed, len(message)


def split_frame(size: int) -> tuple[float, int]:
    frame = frames.encode_frame({"id": 1, "method": "sign_typed", "params": {"blob": b"\0" * (size - 64)}})
    splitter = frames.FrameSplitter()
    bodies = []
    started = time.perf_counter()
    for offset in range(0, len(frame), READ):
        bodies += splitter.feed(frame[offset : offset + READ])
    elapsed = time.perf_counter() - started
    assert len(bodies) == 1 and cbor2.loads(bodies[0])["id"] == 1
    return elapsed, len(frame)


async def stack(message: bytes) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.inproc import running_stack

    with tempfile.TemporaryDirectory() as tmp:
        async with running_stack(Path(tmp) / "stack") as s:
            account = await s.rpc("account_new")
            timing: dict[str, Any] = {}

            async def big_message() -> None:
                await asyncio.sleep(0.2)
                started = time.perf_counter()
                # before the fix, HTTP eth_sign failed meanwhile: "enclave not ready" (its health check starved)
                timing["replies"] = await s.ipc_raw(message + b"\n", timeout=120)
                timing["elapsed"] = time.perf_counter() - started
                await asyncio.sleep(0.2)

            latencies, failures = await s.sign_while(big_message, account, over_http=True)
    replies, elapsed = timing["replies"], timing["elapsed"]
    ms = sorted(v * 1000 for v in latencies)
    error = replies[0].get("error") if replies else None
    print(f"stack: {len(message) / 1e6:.2f} MB over IPC answered in {elapsed * 1000:.0f} ms ({error}); "
          f"eth_sign over HTTP meanwhile: n={len(ms)} median {statistics.median(ms):.2f} ms, max {ms[-1]:.1f} ms, "
          f"{len(failures)} failed" + (f" (first: {failures[0]!r})" if failures else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=4.8)
    parser.add_argument("--stack", action="store_true")
    args = parser.parse_args()
    size = int(args.mb * 1_000_000)
    message = json_message(size)
    elapsed, length = split_json(message)
    print(f"ipc JSON splitter: {length / 1e6:.2f} MB in {READ // 1024} KiB reads: {elapsed * 1000:.1f} ms")
    elapsed, length = split_frame(min(size, frames.MAX_FRAME))
    print(f"frame splitter:    {length / 1e6:.2f} MB in {READ // 1024} KiB reads: {elapsed * 1000:.1f} ms")
    if args.stack:
        asyncio.run(stack(message))


if __name__ == "__main__":
    main()
