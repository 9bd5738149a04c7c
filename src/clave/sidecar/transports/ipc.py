"""The IPC endpoint: a unix socket (mode 0600) carrying a stream of JSON values, as geth's `rpc` package.

Peers may send several requests without waiting (geth multiplexes concurrent calls on one connection),
so each request runs as its own task and replies are written as they complete, matched by id.
The stream is parsed by bracket matching because Go peers do not promise a newline between values.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
import re
from pathlib import Path

from clave.core import gojson
from clave.sidecar.rpc.dispatch import CallContext, Dispatcher

log = logging.getLogger("clave.ipc")

MAX_MESSAGE = 5 * 1024 * 1024
_STRUCTURE = re.compile(r'["\[\]{}]')
_IN_STRING = re.compile(r'["\\]')


class JsonStreamSplitter:
    """Splits a character stream into top-level JSON texts without parsing them twice."""

    def __init__(self) -> None:
        self._buffer = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")

    def feed(self, data: bytes) -> list[str]:
        self._buffer += self._decoder.decode(data)
        out: list[str] = []
        while True:
            text = self._next()
            if text is None:
                break
            out.append(text)
        if len(self._buffer) > MAX_MESSAGE:
            raise ValueError("message too large")
        return out

    def _next(self) -> str | None:
        buf = self._buffer.lstrip()
        self._buffer = buf
        if not buf:
            return None
        if buf[0] not in "[{":
            # A bare scalar is never a valid request; hand it to the dispatcher to be refused.
            match = re.match(r"[^\s\[\]{}]+", buf)
            if match is None or match.end() == len(buf):
                return None
            self._buffer = buf[match.end():]
            return match.group(0)
        depth, pos = 0, 0
        while True:
            m = _STRUCTURE.search(buf, pos)
            if m is None:
                return None
            ch = m.group(0)
            pos = m.end()
            if ch == '"':
                pos = _string_end(buf, pos)
                if pos < 0:
                    return None
            elif ch in "[{":
                depth += 1
            else:
                depth -= 1
                if depth == 0:
                    self._buffer = buf[pos:]
                    return buf[:pos]


def _string_end(buf: str, pos: int) -> int:
    """Index just past the closing quote of a string starting at pos, or -1 if not yet complete."""
    while True:
        m = _IN_STRING.search(buf, pos)
        if m is None:
            return -1
        if m.group(0) == '"':
            return m.end()
        pos = m.end() + 1  # skip the escaped character
        if pos > len(buf):
            return -1


class IpcServer:
    def __init__(self, path: Path, dispatcher: Dispatcher) -> None:
        self.path = path
        self.dispatcher = dispatcher
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o751)
        if self.path.is_socket():
            self.path.unlink()
        old = os.umask(0o177)  # created 0600 from the start, no window where others can connect
        try:
            self._server = await asyncio.start_unix_server(self._on_connection, path=str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        splitter = JsonStreamSplitter()
        write_lock = asyncio.Lock()
        calls: set[asyncio.Task[None]] = set()
        ctx = CallContext(transport="ipc")

        async def answer(text: str) -> None:
            try:
                message = gojson.loads(text)
            except ValueError:
                reply, _ = await self.dispatcher.handle_body(b"\xff", ctx)  # parse-error reply
            else:
                reply, _ = await self.dispatcher.handle_message(message, ctx)
            if reply is not None:
                async with write_lock:
                    writer.write(reply)
                    await writer.drain()

        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                try:
                    texts = splitter.feed(data)
                except ValueError:
                    reply, _ = await self.dispatcher.handle_body(b"\xff", ctx)
                    if reply:
                        writer.write(reply)
                    break
                for text in texts:
                    call = asyncio.create_task(answer(text))
                    calls.add(call)
                    call.add_done_callback(calls.discard)
            if calls:
                await asyncio.gather(*calls, return_exceptions=True)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for call in calls:
                call.cancel()
            writer.close()
            self._connections.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await self._server.wait_closed()
        if self.path.is_socket():
            self.path.unlink()
