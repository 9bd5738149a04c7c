"""Frames between the sidecar and the enclave.

A frame is a 4-byte big-endian length followed by that many bytes of CBOR. Requests are
`{id, method, params}`, replies `{id, result}` or `{id, error: {code, message}}`. Ids are chosen by the
client; replies may arrive in any order. The same code runs over AF_VSOCK on Nitro and AF_UNIX locally.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import cbor2

from clave.core.errors import InfraError

MAX_FRAME = 4 * 1024 * 1024
_LEN = struct.Struct(">I")

# Error codes carried in error frames. Negative codes are JSON-RPC codes to pass through to the caller;
# these positive ones describe a protocol problem the client should treat as an infrastructure fault.
E_MALFORMED = 1
E_TOO_LARGE = 2
E_INTERNAL = 3
E_NOT_READY = 4


class FrameError(InfraError):
    """The byte stream is not a valid frame sequence; the connection must be dropped."""

    remedy = "run the sidecar and the enclave image from the same clave release; a new connection is made"


def encode_frame(message: dict[str, Any]) -> bytes:
    body = cbor2.dumps(message)
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return _LEN.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """Return the next frame body, or None at a clean end of stream.

    Raises FrameError for an oversized length prefix (so a hostile peer cannot make us allocate it) and
    for a stream that ends inside a frame.
    """
    try:
        header = await reader.readexactly(_LEN.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise FrameError("stream ended inside a frame header") from None
        return None
    (length,) = _LEN.unpack(header)
    if length > MAX_FRAME:
        raise FrameError(f"frame of {length} bytes exceeds {MAX_FRAME}")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise FrameError("stream ended inside a frame") from None


class FrameSplitter:
    """Cuts a byte stream into frame bodies: every complete frame of a read at once, one await per read
    instead of two per frame (the stream-reader way), which is most of the framing cost under load."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        bodies = []
        start = 0
        while len(buffer) - start >= _LEN.size:
            (length,) = _LEN.unpack_from(buffer, start)
            if length > MAX_FRAME:
                raise FrameError(f"frame of {length} bytes exceeds {MAX_FRAME}")
            end = start + _LEN.size + length
            if len(buffer) < end:
                break
            bodies.append(bytes(buffer[start + _LEN.size : end]))
            start = end
        del buffer[:start]
        return bodies

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still waiting for the rest."""
        return len(self._buffer)


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        message = cbor2.loads(body)
    except Exception as exc:  # cbor2 raises several types for garbage; all mean the same here
        raise FrameError(f"malformed CBOR: {type(exc).__name__}") from None
    if not isinstance(message, dict):
        raise FrameError("frame is not a CBOR map")
    return message


def peek_id(body: bytes) -> Any:
    """The `id` of a frame that does not decode (too deep, bad tail…), read from its header, or None.

    Reads the top-level map's leading entries while they are simple (text keys, integer or text values), as
    clients write `id` first: an error reply then carries the id and the client can match it at once.
    """
    pos = 0

    def head() -> tuple[int, int] | None:
        nonlocal pos
        if pos >= len(body):
            return None
        first = body[pos]
        major, info = first >> 5, first & 0x1F
        pos += 1
        if info < 24:
            return major, info
        size = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
        if size is None or pos + size > len(body):
            return None
        value = int.from_bytes(body[pos : pos + size], "big")
        pos += size
        return major, value

    def simple() -> tuple[bool, Any]:
        nonlocal pos
        item = head()
        if item is None:
            return False, None
        major, arg = item
        if major == 0:
            return True, arg
        if major == 1:
            return True, -1 - arg
        if major == 3 and pos + arg <= len(body):
            raw = body[pos : pos + arg]
            pos += arg
            try:
                return True, raw.decode()
            except UnicodeDecodeError:
                return False, None
        return False, None

    top = head()
    if top is None or top[0] != 5:
        return None
    for _ in range(min(top[1], 8)):
        ok, key = simple()
        if not ok:
            return None
        ok, value = simple()
        if not ok:
            return None
        if key == "id":
            return value
    return None


def error_reply(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"id": request_id, "error": error}
