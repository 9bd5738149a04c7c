"""`python -m clave.dev.kmsemu --datadir D --host 127.0.0.1 --port P --root PEMFILE`

Prints one line `kms-emulator listening http://HOST:PORT` once it accepts connections (with `--port 0`
the port the OS chose), then serves until SIGTERM or SIGINT and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from aiohttp import web
from cryptography import x509

from clave.dev.kmsemu.app import DEFAULT_MAX_AGE_MS, make_app
from clave.link.process import die_with_parent, forbid_core_dumps


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m clave.dev.kmsemu", description="local AWS KMS emulator for clave"
    )
    p.add_argument("--datadir", type=Path, required=True, help="where keys are kept (created 0700)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument(
        "--root", type=Path, required=True, help="PEM root that attestation documents must chain to"
    )
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--max-age-ms", type=int, default=DEFAULT_MAX_AGE_MS, help="oldest attestation accepted")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    root = x509.load_pem_x509_certificate(args.root.read_bytes())
    app = make_app(args.datadir, root, region=args.region, max_age_ms=args.max_age_ms)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        port = runner.addresses[0][1]  # the bound port: the real one when --port 0
        print(f"kms-emulator listening http://{args.host}:{port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    # Started by `clave up`: end with it (SIGTERM: the emulator shuts down cleanly). It holds key material.
    die_with_parent(signal.SIGTERM)
    forbid_core_dumps()
    args = _parse(argv)
    try:
        asyncio.run(_serve(args))
    except (OSError, ValueError) as exc:
        print(f"kms-emulator: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
