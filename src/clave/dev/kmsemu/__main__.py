"""`python -m clave.dev.kmsemu --datadir D --host 127.0.0.1 --port P --root PEMFILE`

Prints one line `kms-emulator listening https://HOST:PORT` once it accepts connections, then serves until
SIGTERM or SIGINT and exits 0. It speaks TLS only, with a certificate under the dev CA in DATADIR/ca.pem
(tls.py), which the local enclave and the sidecar trust.

`--port 0` (the default) means: the port recorded in DATADIR/endpoint.json, or at the first start a free
one, which is then recorded. So a restarted emulator comes back where its clients expect it. If that port
is taken (another process bound it while the emulator was down) it exits 1 with a message saying so; it
never moves silently. Clients authenticate with SigV4 using DATADIR/credentials.json (auth.py), which
is written before the listening line.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import secrets
import signal
import sys
from pathlib import Path

from aiohttp import web
from cryptography import x509

from clave.dev.kmsemu.app import DEFAULT_MAX_AGE_MS, make_app
from clave.dev.kmsemu.tls import ensure_tls, server_context
from clave.link.process import die_with_parent, forbid_core_dumps
from clave.sidecar.secretfiles import write_private


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m clave.dev.kmsemu", description="local AWS KMS emulator for clave"
    )
    p.add_argument("--datadir", type=Path, required=True, help="where keys are kept (created 0700)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--port", type=int, default=0, help="0: the port recorded in DATADIR/endpoint.json (a free one the first time)"
    )
    p.add_argument(
        "--root", type=Path, required=True, help="PEM root that attestation documents must chain to"
    )
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--max-age-ms", type=int, default=DEFAULT_MAX_AGE_MS, help="oldest attestation accepted")
    return p.parse_args(argv)


ENDPOINT_FILE = "endpoint.json"


class PortTaken(OSError):
    pass


def recorded_port(datadir: Path) -> int | None:
    try:
        data = json.loads((Path(datadir) / ENDPOINT_FILE).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise ValueError(f"{Path(datadir) / ENDPOINT_FILE}: not JSON; remove it to pick a new port") from None
    port = data.get("port") if isinstance(data, dict) else None
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"{Path(datadir) / ENDPOINT_FILE}: no valid port; remove it to pick a new port")
    return port


def _candidate_ports(n: int = 40) -> list[int]:
    """First-start ports below the kernel's ephemeral range, so no outgoing connection takes it meanwhile."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    if low <= 10000:
        return [0]
    return [secrets.choice(range(10000, low)) for _ in range(n)] + [0]


async def _serve(args: argparse.Namespace) -> None:
    root = x509.load_pem_x509_certificate(args.root.read_bytes())
    app = make_app(args.datadir, root, region=args.region, max_age_ms=args.max_age_ms)
    ensure_tls(args.datadir)
    tls = server_context(args.datadir)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    port, record = args.port, False
    if port == 0:
        recorded = recorded_port(args.datadir)
        port, record = (recorded, False) if recorded is not None else (0, True)
    try:
        if record:
            for candidate in _candidate_ports():
                try:
                    await web.TCPSite(runner, args.host, candidate, ssl_context=tls).start()
                    break
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE or candidate == 0:
                        raise
        else:
            await web.TCPSite(runner, args.host, port, ssl_context=tls).start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            where = f"recorded in {args.datadir / ENDPOINT_FILE}" if args.port == 0 else "from --port"
            raise PortTaken(
                f"port {args.host}:{port} ({where}) is in use by another process; not moving to another port, "
                f"clients expect the emulator there. Stop that process (or remove {ENDPOINT_FILE} and restart "
                f"every client)"
            ) from None
        raise
    if record:
        bound = runner.addresses[0][1]
        write_private(Path(args.datadir) / ENDPOINT_FILE, json.dumps({"host": args.host, "port": bound}) + "\n",
                      replace=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        port = runner.addresses[0][1]  # the bound port: the real one when --port 0
        print(f"kms-emulator listening https://{args.host}:{port}", flush=True)
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
