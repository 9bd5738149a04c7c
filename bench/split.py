"""Stream splitting cost for one large message: the IPC JSON splitter and the enclave frame splitter.

  python bench/split.py [--mb 4.8]

Both are fed in 64 KiB reads, as the servers read their sockets. The JSON message is a JSON-RPC call
dense in brackets and strings (`[[0,"a"],[1,"b"],…]`), the worst case for a bracket-matching splitter; the
frame is a CBOR frame just under MAX_FRAME. Before the fix, the IPC splitter rescanned the whole buffered
message on every read (quadratic): a 4.8 MB message took 29 s and stalled everything else on the loop.

Set PYTHONPATH to `src` of the tree to measure.
"""

from __future__ import annotations

import argparse
import json
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=4.8)
    args = parser.parse_args()
    size = int(args.mb * 1_000_000)
    elapsed, length = split_json(json_message(size))
    print(f"ipc JSON splitter: {length / 1e6:.2f} MB in {READ // 1024} KiB reads: {elapsed * 1000:.1f} ms")
    elapsed, length = split_frame(min(size, frames.MAX_FRAME))
    print(f"frame splitter:    {length / 1e6:.2f} MB in {READ // 1024} KiB reads: {elapsed * 1000:.1f} ms")


if __name__ == "__main__":
    main()
