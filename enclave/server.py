"""The frame server: reads requests from each connection, answers each as soon as it is done.

Cheap handlers (signing: tens of microseconds) run inline on the event loop; slow ones (scrypt, bulk
generation, bulk unsealing) run on worker threads so a keyfile import never stalls signatures.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from . import protocol
from .errors import ClaveError
from .service import EnclaveService, NotReady

log = logging.getLogger("clave.enclave")

SLOW_METHODS = frozenset({"import_keyfile", "export_keyfile", "generate", "unseal", "load_master_key", "attest"})
MAX_IN_FLIGHT = 4096  # per connection; beyond this the reader stops reading (TCP-style backpressure)


class FrameServer:
    def __init__(self, service: EnclaveService) -> None:
        self.service = service

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        write_lock = asyncio.Lock()
        in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    body = await protocol.read_frame(reader)
                except protocol.FrameError as exc:
                    # The stream is out of sync; tell the peer why, then drop the connection.
                    await self._send(writer, write_lock, protocol.error_reply(None, protocol.E_TOO_LARGE, str(exc)))
                    break
                if body is None:
                    break
                try:
                    request = protocol.decode_body(body)
                except protocol.FrameError as exc:
                    await self._send(writer, write_lock, protocol.error_reply(None, protocol.E_MALFORMED, str(exc)))
                    continue
                await in_flight.acquire()
                task = asyncio.create_task(self._serve(request, writer, write_lock, in_flight))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            writer.close()

    async def _serve(
        self,
        request: dict[str, Any],
        writer: asyncio.StreamWriter,
        write_lock: asyncio.Lock,
        in_flight: asyncio.Semaphore,
    ) -> None:
        try:
            reply = await self._dispatch(request)
            await self._send(writer, write_lock, reply)
        except ConnectionError:
            pass
        finally:
            in_flight.release()

    async def _dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        request_id = request.get("id")
        method = request.get("method")
        if not isinstance(method, str):
            return protocol.error_reply(request_id, protocol.E_MALFORMED, "method must be a string")
        params = request.get("params")
        try:
            if method in SLOW_METHODS:
                result = await asyncio.get_running_loop().run_in_executor(None, self.service.call, method, params)
            else:
                result = self.service.call(method, params)
        except NotReady as exc:
            return protocol.error_reply(request_id, protocol.E_NOT_READY, exc.message)
        except ClaveError as exc:
            return protocol.error_reply(request_id, exc.code, exc.message)
        except Exception:
            # Never echo an unexpected exception: its text could quote a secret it was handling.
            log.exception("handler %s crashed", method)
            return protocol.error_reply(request_id, protocol.E_INTERNAL, "enclave handler crashed")
        return {"id": request_id, "result": result}

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, lock: asyncio.Lock, message: dict[str, Any]) -> None:
        frame = protocol.encode_frame(message)
        async with lock:
            writer.write(frame)
            await writer.drain()
