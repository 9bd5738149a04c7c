"""Helpers shared by the real-client tests: keyfile import/export through the CLI and anvil plumbing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import rlp
from eth_account import Account
from eth_keyfile import create_keyfile_json

from tests.secrets_search import KNOWN_SECRETS
from tests.stack import Anvil, ClaveProcess

# KNOWN_SECRETS: every private key and password a test hands to clave; when the shared `clave up` stops,
# its logs and datadir are searched for them (tests/conftest.py, tests/secrets_search.py).
__all__ = ["KNOWN_SECRETS", "blob_network_form", "import_key", "light_keyfile", "run", "send_and_mine"]


def light_keyfile(private_key: bytes, password: str, directory: Path, name: str | None = None) -> Path:
    """A V3 keyfile with cheap scrypt parameters so imports stay fast in tests."""
    keyfile = create_keyfile_json(private_key, password.encode(), kdf="scrypt", iterations=1 << 12)
    path = directory / (name or f"UTC--test--{keyfile['address'].lower()}")
    path.write_text(json.dumps(keyfile))
    KNOWN_SECRETS.update({private_key.hex(), password})
    return path


def import_key(clave: ClaveProcess, private_key: bytes, tmp: Path, *, exportable: bool = False, password: str = "correct horse battery") -> str:
    directory = tmp / f"import-{private_key.hex()[:8]}"
    directory.mkdir(exist_ok=True)
    keyfile = light_keyfile(private_key, password, directory)
    password_file = directory.parent / f"pw-{private_key.hex()[:8]}"
    password_file.write_text(password + "\n")
    args = ["account", "import", str(keyfile), "--password-file", str(password_file)]
    if exportable:
        args.append("--exportable")
    result = clave.cli(*args)
    address = Account.from_key(private_key).address.lower()
    assert result.returncode == 0 or "already exists" in result.stderr, result.stderr
    return address


def run(*argv: str, input_text: str | None = None) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, input=input_text)
    assert result.returncode == 0, f"{argv[0]} failed: {result.stderr}"
    return result.stdout.strip()


def send_and_mine(anvil: Anvil, raw: str) -> dict[str, Any]:
    return wait_mined(anvil, anvil.rpc("eth_sendRawTransaction", raw))


def wait_mined(anvil: Anvil, tx_hash: str, timeout: float = 15) -> dict[str, Any]:
    """The receipt of `tx_hash` once anvil has mined it (AssertionError after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        receipt = anvil.rpc("eth_getTransactionReceipt", tx_hash)
        if receipt is not None:
            return receipt  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"anvil did not mine {tx_hash}")


def blob_network_form(raw_hex: str, blobs: list[bytes], commitments: list[bytes], proofs: list[bytes]) -> str:
    """Wrap a signed type-3 transaction with its sidecar, as nodes accept it over the network (EIP-4844)."""
    raw = bytes.fromhex(raw_hex[2:])
    assert raw[0] == 3
    body = rlp.decode(raw[1:])
    wrapped = b"\x03" + rlp.encode([body, blobs, commitments, proofs])
    return "0x" + wrapped.hex()


async def concurrent_posts(url: str, requests: list[dict[str, Any]], method: str) -> tuple[list[Any], list[float], float]:
    """`method` once per request, all at once over HTTP: (replies, each call's seconds, the whole burst's)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def one(i: int, request: dict[str, Any]) -> tuple[Any, float]:
            started = time.perf_counter()
            async with session.post(url, json={"jsonrpc": "2.0", "id": i, "method": method, "params": [request]}) as r:
                reply = await r.json()
            return reply, time.perf_counter() - started

        began = time.perf_counter()
        results = await asyncio.gather(*(one(i, q) for i, q in enumerate(requests)))
        return [r for r, _ in results], [t for _, t in results], time.perf_counter() - began
