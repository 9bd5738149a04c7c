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


_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NON_SPACE = re.compile(r"\S")
_SCALAR_END = re.compile(r"[\s\[\]{}]")
_IDLE, _SCALAR, _STRUCT = 0, 1, 2


class JsonStreamSplitter:
    """Splits a character stream into top-level JSON texts without parsing them twice.

    Linear in the stream: every character is scanned once, in the read it arrived in, and the scan state
    (depth, inside a string, a pending backslash) carries over to the next read. An incomplete text is
    kept as a list of pieces, joined once when it completes.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._parts: list[str] = []  # the incomplete text's pieces from earlier reads
        self._size = 0
        self._state = _IDLE
        self._depth = 0
        self._in_string = False
        self._escape = False  # the previous read ended on a backslash inside a string

    def feed(self, data: bytes) -> list[str]:
        chunk = self._decoder.decode(data)
        out: list[str] = []
        n = len(chunk)
        pos = start = 0  # start: where the current text begins in this chunk (0 when it began earlier)
        if self._escape and n:
            self._escape, pos = False, 1
        while pos < n:
            if self._state == _IDLE:
                m = _NON_SPACE.search(chunk, pos)
                if m is None:
                    break
                pos = start = m.start()
                if chunk[pos] in "[{":
                    self._state, self._depth = _STRUCT, 1
                    pos += 1
                else:
                    # A bare scalar is never a valid request; hand it to the dispatcher to be refused.
                    self._state = _SCALAR
            elif self._state == _SCALAR:
                m = _SCALAR_END.search(chunk, pos)
                if m is None:
                    break
                pos = m.start()
                out.append(self._take(chunk, start, pos))
            elif self._in_string:
                m = _STRING_REST.match(chunk, pos)  # the whole rest of the string, escapes included, in C
                if m is not None:
                    self._in_string, pos = False, m.end()
                    continue
                m = _IN_STRING.search(chunk, pos)  # the string goes on in the next read: step to its end
                if m is None:
                    break
                pos = m.end()
                if m.group(0) == '"':
                    self._in_string = False
                elif pos < n:
                    pos += 1  # skip the escaped character
                else:
                    self._escape = True
            else:
                quote = chunk.find('"', pos)
                end = n if quote < 0 else quote
                closes = chunk.count("]", pos, end) + chunk.count("}", pos, end)
                if closes < self._depth:  # the text cannot end before the next string: count in bulk
                    self._depth += chunk.count("[", pos, end) + chunk.count("{", pos, end) - closes
                    if quote < 0:
                        break
                    self._in_string, pos = True, quote + 1
                    continue
                m = _STRUCTURE.search(chunk, pos)
                if m is None:
                    break
                ch = m.group(0)
                pos = m.end()
                if ch == '"':
                    self._in_string = True
                elif ch in "[{":
                    self._depth += 1
                else:
                    self._depth -= 1
                    if self._depth == 0:
                        out.append(self._take(chunk, start, pos))
        if self._state != _IDLE:
            piece = chunk[start:]
            self._parts.append(piece)
            self._size += len(piece)
            if self._size > MAX_MESSAGE:
                raise ValueError("message too large")
        return out

    def _take(self, chunk: str, start: int, end: int) -> str:
        text = "".join(self._parts) + chunk[start:end] if self._parts else chunk[start:end]
        self._parts, self._size, self._state = [], 0, _IDLE
        return text


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
            except (ValueError, RecursionError):  # too deep is a parse error too (gojson.JSONDepthError)
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
