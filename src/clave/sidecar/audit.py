"""Carries the enclave's audit log to `<datadir>/audit.log` (the enclave writes it: core/audit.py,
enclave/audit.py). At every enclave boot the writer hands the enclave the head of the file (its last
line's index and hash) so that the new boot continues the chain; then it drains new lines every
`interval` seconds, appends them, fsyncs, and acknowledges them with the next drain."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

from clave.core.audit import GENESIS, line_hash
from clave.core.errors import InfraError, RequestError
from clave.sidecar.signing.signer import Signer

log = logging.getLogger("clave.audit")
TAIL_BYTES = 1 << 16


def read_head(path: Path) -> tuple[int, str, int]:
    """(next index, hash of the last line, index of the last line or -1) of an audit log file."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            tail = f.read()
    except FileNotFoundError:
        return 0, GENESIS, -1
    lines = [line for line in tail.split(b"\n") if line]
    if not lines:
        return 0, GENESIS, -1
    last = lines[-1]
    index = int(json.loads(last)["i"])
    return index + 1, line_hash(last), index


class AuditWriter:
    def __init__(self, signer: Signer, path: Path, interval: float = 0.5) -> None:
        self.signer = signer
        self.path = path
        self.interval = interval
        self.written = -1  # index of the last line written durably
        self.lines = 0  # lines written by this process

    async def resume(self) -> None:
        """At bring-up: start the new boot's chain after this file's head (refused, harmlessly, when this
        boot's chain has started already: the sidecar restarted, the enclave did not)."""
        index, head, last = await asyncio.to_thread(read_head, self.path)
        self.written = last
        try:
            await self.signer.client.call("audit_resume", {"head": head, "index": index}, timeout=30)
            log.info("audit log continues at entry %d (head %s…)", index, head[:16])
        except RequestError as exc:
            if "started already" not in exc.message:
                raise
        await self.drain_once()

    async def drain_once(self) -> int:
        total = 0
        while True:
            result = await self.signer.client.call("audit_drain", {"after": self.written}, timeout=30)
            lines: list[bytes] = result["lines"]
            if lines:
                await asyncio.to_thread(self._append, lines)
                self.written = int(json.loads(lines[-1])["i"])
                total += len(lines)
            if not result["more"]:
                return total

    def _append(self, lines: list[bytes]) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, b"".join(line + b"\n" for line in lines))
            os.fsync(fd)
        finally:
            os.close(fd)
        self.lines += len(lines)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self.signer.ready:
                continue
            try:
                await self.drain_once()
            except (InfraError, RequestError) as exc:
                log.warning("draining the audit log: %s", exc.message)
