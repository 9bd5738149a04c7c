"""One HTTP worker process (see worker_pool.py): `python -m clave.sidecar.transports.http_worker`, started by the primary
`clave serve` with its configuration and status on stdin."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys

from clave.link import aio
from clave.link.process import die_with_parent
from clave.sidecar.observe.logs import setup_logging
from clave.sidecar.signing.signer import FollowerSigner
from clave.sidecar.transports.worker_pool import LISTENING, decode_config
from clave.sidecar.wiring import build_sidecar

log = logging.getLogger("clave.worker")


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)  # a status line lists the records that failed to unseal
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    return reader


async def run() -> int:
    reader = await _stdin_reader()
    config = decode_config(await reader.readline())
    setup_logging(config.log_json)
    sidecar, app = build_sidecar(config, None, None)
    signer = sidecar.signer
    assert isinstance(signer, FollowerSigner)
    loop = asyncio.get_running_loop()
    # Ctrl-C reaches the whole process group; the primary ends its workers itself, by closing stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    closing = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, closing.set)
    closed = asyncio.create_task(closing.wait())
    try:
        await sidecar.start()
        while True:
            line_task = asyncio.create_task(reader.readline())
            await asyncio.wait([line_task, closed], return_when=asyncio.FIRST_COMPLETED)
            if not line_task.done():
                line_task.cancel()
                return 0
            line = line_task.result()
            if not line:
                return 0  # the primary is gone
            await signer.follow(json.loads(line))
            if signer.ready and sidecar.runner is None:
                await sidecar.serve_http(app)
                sys.stdout.buffer.write(LISTENING + b"\n")
                sys.stdout.flush()
                log.info("HTTP worker serving %s with %d accounts", sidecar.http_url, signer.status.keys_loaded)
    finally:
        await sidecar.stop()


def main() -> None:
    # Also when the primary is SIGKILLed (stdin's end of file says so too, unless stdin is held elsewhere).
    die_with_parent(signal.SIGTERM)
    sys.exit(aio.run(run()))


if __name__ == "__main__":
    main()
