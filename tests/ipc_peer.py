"""A JSON-RPC peer on one persistent IPC connection, written the way go-ethereum's `rpc.Client` talks.

geth (as the `--signer` client) dials the socket once and keeps it: request ids are integers counting
from 1, each message is compact JSON followed by a newline (Go's `json.Encoder`), `params` is left out
when a call has no arguments, several calls may be in flight at once, and replies are matched to calls
by id, whatever order they arrive in. This peer does the same and records the order replies arrived in.

Replies are split from the stream with `json.JSONDecoder.raw_decode`, not with clave's own splitter, so
the test does not grade clave's framing with clave's code.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from tests.stack import RpcFailure

_NO_PARAMS = object()


def go_json(value: Any) -> bytes:
    """Compact JSON as Go's encoder writes it (HTML characters escaped), plus the newline."""
    text = json.dumps(value, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text.encode() + b"\n"


class IpcPeer:
    def __init__(self, path: Path, *, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[Any, Future[dict[str, Any]]] = {}
        self.arrivals: list[Any] = []  # reply ids, in the order they arrived
        self.unmatched: list[Any] = []  # replies whose id matched no pending call
        self.sent: list[bytes] = []
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    # -- sending ----------------------------------------------------------------------------------

    def next_id(self) -> int:
        return next(self._ids)

    def send(self, method: str, params: Any = _NO_PARAMS, *, request_id: Any = None) -> Future[dict[str, Any]]:
        """Send one call; the future resolves to the whole reply object."""
        if request_id is None:
            request_id = self.next_id()
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not _NO_PARAMS:
            message["params"] = params
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            self._pending[request_id] = future
        self.send_raw(go_json(message))
        return future

    def send_raw(self, data: bytes) -> None:
        self.sent.append(data)
        self.sock.sendall(data)

    def expect(self, request_id: Any) -> Future[dict[str, Any]]:
        """Register interest in a reply to something sent with send_raw."""
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            self._pending[request_id] = future
        return future

    def call(self, method: str, *params: Any, omit_params: bool = False) -> Any:
        """Blocking call; returns `result` or raises RpcFailure(code, message)."""
        reply = self.send(method, _NO_PARAMS if omit_params else list(params)).result(self.timeout)
        return result_of(reply)

    # -- receiving --------------------------------------------------------------------------------

    def _read(self) -> None:
        decoder = json.JSONDecoder()
        buffer = ""
        raw = b""
        try:
            while True:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    break
                raw += chunk
                try:
                    buffer += raw.decode()
                    raw = b""
                except UnicodeDecodeError:
                    continue  # a multi-byte character split across reads
                while True:
                    stripped = buffer.lstrip()
                    if not stripped:
                        buffer = ""
                        break
                    try:
                        value, end = decoder.raw_decode(stripped)
                    except ValueError:
                        buffer = stripped
                        break
                    buffer = stripped[end:]
                    self._deliver(value)
        except OSError:
            pass
        finally:
            with self._lock:
                pending, self._pending = self._pending, {}
            for future in pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("clave closed the IPC connection"))

    def _deliver(self, value: Any) -> None:
        replies = value if isinstance(value, list) else [value]
        for reply in replies:
            request_id = reply.get("id") if isinstance(reply, dict) else None
            with self._lock:
                self.arrivals.append(request_id)
                future = self._pending.pop(request_id, None)
            if future is None:
                self.unmatched.append(value)
            else:
                future.set_result(value if isinstance(value, list) else reply)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            self._reader.join(5)

    def __enter__(self) -> IpcPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def result_of(reply: dict[str, Any]) -> Any:
    if "error" in reply:
        raise RpcFailure(reply["error"]["code"], reply["error"]["message"], 200)
    return reply["result"]
