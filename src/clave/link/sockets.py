"""Listener and connector addresses: `vsock://CID:PORT` on Nitro, `unix:PATH` locally, and `tcp://HOST:PORT`
for the one connection the enclave makes outward (its TLS session to KMS, through the parent's proxy).

Everything above these functions is identical for both. The vsock part is deliberately tiny because it
cannot be exercised on a machine without a vsock loopback.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from pathlib import Path

VMADDR_CID_ANY = 0xFFFFFFFF
PARENT_CID = 3


@dataclass(frozen=True)
class Address:
    scheme: str  # "vsock" | "unix" | "tcp"
    path: str = ""  # unix: the socket's path; tcp: the host
    cid: int = 0
    port: int = 0

    def __str__(self) -> str:
        if self.scheme == "tcp":
            return f"tcp://{self.path}:{self.port}"
        return f"unix:{self.path}" if self.scheme == "unix" else f"vsock://{self.cid}:{self.port}"


def parse_address(text: str) -> Address:
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path:
            raise ValueError("unix: address needs a path")
        return Address("unix", path=path)
    if text.startswith("vsock://"):
        cid_s, sep, port_s = text[len("vsock://"):].partition(":")
        if not sep:
            raise ValueError(f"vsock address {text!r} needs CID:PORT")
        cid = VMADDR_CID_ANY if cid_s in ("-1", "any") else int(cid_s)
        return Address("vsock", cid=cid, port=int(port_s))
    if text.startswith("tcp://"):
        host, sep, port_s = text[len("tcp://"):].rpartition(":")
        if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise ValueError(f"tcp address {text!r} needs HOST:PORT")
        return Address("tcp", path=host, port=int(port_s))
    raise ValueError(f"unsupported address {text!r}: use vsock://CID:PORT, unix:PATH or tcp://HOST:PORT")


def connect_blocking(address: Address, timeout: float) -> socket.socket:
    """A connected stream socket, for code that runs in a worker thread (the enclave's KMS exchange)."""
    if address.scheme == "tcp":
        return socket.create_connection((address.path, address.port), timeout=timeout)
    sock = socket.socket(socket.AF_UNIX) if address.scheme == "unix" else _vsock_socket()
    try:
        sock.settimeout(timeout)
        sock.connect(address.path if address.scheme == "unix" else (address.cid, address.port))
    except BaseException:
        sock.close()
        raise
    return sock


def _link_only(address: Address) -> None:
    if address.scheme == "tcp":
        raise ValueError(f"{address}: the enclave link is vsock or unix; tcp is only for the enclave's KMS proxy")


def _vsock_socket() -> socket.socket:
    return socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)  # type: ignore[attr-defined]


async def start_server(address: Address, handler) -> asyncio.AbstractServer:  # type: ignore[no-untyped-def]
    _link_only(address)
    if address.scheme == "unix":
        path = Path(address.path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.is_socket():
            path.unlink()
        old = os.umask(0o177)
        try:
            return await asyncio.start_unix_server(handler, path=str(path), limit=2**16)
        finally:
            os.umask(old)
    sock = _vsock_socket()
    sock.bind((address.cid, address.port))
    sock.listen(128)
    return await asyncio.start_server(handler, sock=sock, limit=2**16)


async def open_connection(address: Address) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    _link_only(address)
    if address.scheme == "unix":
        return await asyncio.open_unix_connection(address.path, limit=2**16)
    sock = _vsock_socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (address.cid, address.port))
    return await asyncio.open_connection(sock=sock, limit=2**16)
