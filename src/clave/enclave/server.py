"""The frame server: reads requests from each connection, answers each as soon as it is done.

Cheap handlers (signing: tens of microseconds) run inline on the event loop; slow ones (scrypt, bulk
generation, bulk unsealing) run on worker threads so a keyfile import never stalls signatures.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from clave.core.errors import ClaveError
from clave.enclave.service import EnclaveService
from clave.enclave.state import NotReady
from clave.link import frames as protocol

log = logging.getLogger("clave.enclave")

# Run off the frame loop (scrypt, bulk sealing, RSA, NSM), so signatures keep flowing meanwhile.
SLOW_METHODS = frozenset({"import_keyfile", "export_keyfile", "generate", "unseal", "kms_prepare", "kms_send", "attest",
                          "validator_new", "validator_keyfile"})
MAX_IN_FLIGHT = 4096  # per connection; beyond this the reader stops reading (TCP-style backpressure)


class FrameServer:
    def __init__(self, service: EnclaveService) -> None:
        self.service = service

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        out = FrameBatcher(writer)
        in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()
        splitter = protocol.FrameSplitter()
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    break
                try:
                    bodies = splitter.feed(data)
                except protocol.FrameError as exc:
                    # The stream is out of sync; tell the peer why, then drop the connection.
                    out.send(protocol.error_reply(None, protocol.E_TOO_LARGE, str(exc)))
                    await out.flush_now()
                    break
                for body in bodies:
                    try:
                        request = protocol.decode_body(body)
                    except protocol.FrameError as exc:
                        # The id, when the header is readable, lets the client fail that call at once.
                        out.send(protocol.error_reply(protocol.peek_id(body), protocol.E_MALFORMED, str(exc)))
                        continue
                    method = request.get("method")
                    if method not in SLOW_METHODS and isinstance(method, str):
                        # Signing takes tens of microseconds: answer inline, no task, no scheduling round.
                        out.send(self._dispatch_inline(request))
                        continue
                    await in_flight.acquire()
                    task = asyncio.create_task(self._serve(request, out, in_flight))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if out.backlogged():
                    await writer.drain()  # the peer reads slower than we answer: stop reading for a while
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            writer.close()

    async def _serve(self, request: dict[str, Any], out: FrameBatcher, in_flight: asyncio.Semaphore) -> None:
        try:
            loop = asyncio.get_running_loop()
            out.send(await loop.run_in_executor(None, self._dispatch_inline, request))
        except ConnectionError:
            pass
        finally:
            in_flight.release()

    def _dispatch_inline(self, request: dict[str, Any]) -> dict[str, Any]:
        request_id = request.get("id")
        method = request.get("method")
        if not isinstance(method, str):
            return protocol.error_reply(request_id, protocol.E_MALFORMED, "method must be a string")
        try:
            result = self.service.call(method, request.get("params"))
        except NotReady as exc:
            return protocol.error_reply(request_id, protocol.E_NOT_READY, exc.message)
        except ClaveError as exc:
            return protocol.error_reply(request_id, exc.code, exc.message, exc.data)
        except Exception:
            # Never echo an unexpected exception: its text could quote a secret it was handling.
            log.exception("handler %s crashed", method)
            return protocol.error_reply(request_id, protocol.E_INTERNAL, "enclave handler crashed")
        return {"id": request_id, "result": result}



class FrameBatcher:
    """Coalesces the frames produced in one event-loop iteration into one write (one syscall).

    Under load many replies become ready in the same iteration; writing each separately costs a send()
    per frame, which profiling showed to be the largest single cost of the reply path.
    """

    HIGH_WATER = 1 << 20

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._pending: list[bytes] = []
        self._scheduled = False

    def send(self, message: dict[str, Any]) -> None:
        self._pending.append(protocol.encode_frame(message))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._pending and not self._writer.is_closing():
            self._writer.write(b"".join(self._pending))
        self._pending.clear()

    async def flush_now(self) -> None:
        self._flush()
        try:
            await self._writer.drain()
        except ConnectionError:
            pass

    def backlogged(self) -> bool:
        transport = self._writer.transport
        return transport is not None and transport.get_write_buffer_size() > self.HIGH_WATER
