"""Run the enclave service: `python -m enclave --listen vsock://-1:5000` (Nitro) or `--listen unix:PATH`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from . import aio, kdf_pool
from .server import FrameServer
from .service import EnclaveService
from .transport import parse_address, start_server


def make_nsm(kind: str, state_dir: str | None):  # type: ignore[no-untyped-def]
    if kind == "device":
        from .nitro.nsm import DeviceNsm

        return DeviceNsm()
    from .nitro.soft_nsm import SoftwareNsm

    if not state_dir:
        raise SystemExit("--nsm software needs --nsm-state DIR")
    return SoftwareNsm(Path(state_dir))


async def serve(listen: str, nsm_kind: str, nsm_state: str | None) -> None:
    service = EnclaveService(make_nsm(nsm_kind, nsm_state))
    server = await start_server(parse_address(listen), FrameServer(service).handle_connection)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"enclave listening {listen}", flush=True)
    async with server:
        await stop.wait()
    kdf_pool.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="clave-enclave")
    parser.add_argument("--listen", required=True, help="vsock://CID:PORT or unix:PATH")
    parser.add_argument("--nsm", choices=("device", "software"), default="device")
    parser.add_argument("--nsm-state", help="state directory of the software NSM (local mode only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s enclave %(levelname)s %(message)s")
    aio.run(serve(args.listen, args.nsm, args.nsm_state))


if __name__ == "__main__":
    main()
