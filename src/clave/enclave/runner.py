"""Run the enclave service on a listening address with a given NSM; the image runs it with /dev/nsm."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from clave.enclave import kdf_pool
from clave.enclave.kms_tls import KmsTransport, aws_transport
from clave.enclave.nitro.nsm import Nsm
from clave.enclave.server import FrameServer
from clave.enclave.service import EnclaveService
from clave.link import aio
from clave.link.process import die_with_parent, forbid_core_dumps
from clave.link.sockets import parse_address, start_server


def harden() -> None:
    """Before any key exists in this process: no core dumps and no ptrace by the same user (PR_SET_DUMPABLE
    0, RLIMIT_CORE 0), and, when `clave up` started it, an end together with its parent (a SIGKILLed
    `clave up` must not leave a process holding plaintext keys behind)."""
    forbid_core_dumps()
    die_with_parent()


async def serve(listen: str, nsm: Nsm, kms_transport: KmsTransport) -> None:
    harden()  # again, for callers that did not start at main(): it is idempotent
    service = EnclaveService(nsm, kms_transport=kms_transport)
    server = await start_server(parse_address(listen), FrameServer(service).handle_connection)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"enclave listening {listen}", flush=True)
    async with server:
        await stop.wait()
    kdf_pool.shutdown()


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s enclave %(levelname)s %(message)s")


def main(argv: list[str] | None = None) -> None:
    """`python -m clave.enclave --listen vsock://-1:5000`: the service with the hardware NSM (/dev/nsm)."""
    parser = argparse.ArgumentParser(prog="clave-enclave")
    parser.add_argument("--listen", required=True, help="vsock://CID:PORT or unix:PATH")
    args = parser.parse_args(argv)
    harden()
    from clave.enclave.nitro.nsm import DeviceNsm

    setup_logging()
    aio.run(serve(args.listen, DeviceNsm(), aws_transport()))
