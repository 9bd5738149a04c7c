"""A small blocking JSON-RPC client for the IPC socket (used by the `clave account` commands)."""

from __future__ import annotations

import itertools
import json
import socket
from pathlib import Path
from typing import Any

from clave.core.errors import InfraError, RequestError
from clave.sidecar.transports.ipc import JsonStreamSplitter


class RpcCallError(RequestError):
    """clave answered the call with a JSON-RPC error; `code` and `message` are its."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message, code=code)


class ClaveUnreachable(InfraError, ConnectionError):
    """No clave on the IPC socket, or it went away (a ConnectionError too, as callers have caught it)."""

    remedy = "start it (`clave up`, or the clave service) or point --ipcpath at its socket"


class IpcClient:
    def __init__(self, path: Path, timeout: float = 600.0) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
        except OSError as exc:
            self._sock.close()
            raise ClaveUnreachable(f"cannot reach clave at {path}: {exc.strerror or exc}; is `clave up` running?") from None
        self._ids = itertools.count(1)
        self._splitter = JsonStreamSplitter()
        self._queue: list[str] = []

    def call(self, method: str, *params: Any) -> Any:
        request_id = next(self._ids)
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}
        self._sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            while self._queue:
                reply = json.loads(self._queue.pop(0))
                if reply.get("id") != request_id:
                    continue
                if "error" in reply:
                    raise RpcCallError(reply["error"].get("code", 0), reply["error"].get("message", ""))
                return reply.get("result")
            data = self._sock.recv(65536)
            if not data:
                raise ClaveUnreachable("clave closed the connection")
            self._queue.extend(self._splitter.feed(data))

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> IpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
