"""Carries the enclave's audit log to `<datadir>/audit.log` (the enclave writes it: core/audit.py,
enclave/audit.py). At every enclave boot the writer hands the enclave the head of the file (its last
line's index and hash) so that the new boot continues the chain; then it drains new lines every
`interval` seconds, appends them, fsyncs, and acknowledges them with the next drain."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

import cbor2  # noqa: I001

from clave.core.audit import GENESIS, line_hash
from clave.core.errors import InfraError, RequestError
from clave.sidecar.signing.signer import Signer

log = logging.getLogger("clave.audit")
TAIL_BYTES = 1 << 16
META_AUDIT_HEAD = "audit_head"  # the enclave's last checkpoint, sealed under the master key (CBOR)
REPLAY_BATCH = 5000
ROTATE_BYTES = 256 << 20  # a segment closes at this size


def segments(path: Path) -> list[Path]:
    """The log's files, oldest first: rotated segments `<stem>-<index of their first line>.log`, then `path`.
    Together they are one chain (rotation does not break it)."""
    rotated = sorted(path.parent.glob(f"{path.stem}-[0-9]*{path.suffix}"))
    return rotated + ([path] if path.exists() else [])


def _read_lines(path: Path) -> list[bytes]:
    try:
        with path.open("rb") as f:
            return [line.rstrip(b"\n") for line in f if line.strip()]
    except FileNotFoundError:
        return []


def recent_lines(path: Path, cutoff: float, sealed_index: int) -> list[bytes]:
    """The log's last lines (across rotated segments) from the first one that is at most `cutoff` old or
    at the sealed head."""
    lines: list[bytes] = []
    for segment in reversed(segments(path)):
        lines = _read_lines(segment) + lines
        if lines:
            first = json.loads(lines[0])
            if first["t"] < cutoff and first["i"] < sealed_index:
                break
    for position, line in enumerate(lines):
        entry = json.loads(line)
        if entry["t"] >= cutoff or entry["i"] >= sealed_index:
            return lines[position:]
    return []


def read_head(path: Path) -> tuple[int, str, int]:
    """(next index, hash of the last line, index of the last line or -1) of an audit log (its newest
    non-empty segment)."""
    for segment in reversed(segments(path)):
        with segment.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            tail = f.read()
        lines = [line for line in tail.split(b"\n") if line]
        if lines:
            last = lines[-1]
            index = int(json.loads(last)["i"])
            return index + 1, line_hash(last), index
    return 0, GENESIS, -1


class AuditWriter:
    def __init__(self, signer: Signer, path: Path, interval: float = 0.5, rotate_bytes: int = ROTATE_BYTES) -> None:
        self.signer = signer
        self.path = path
        self.rotate_bytes = rotate_bytes
        self.interval = interval
        self.written = -1  # index of the last line written durably
        self.head = GENESIS  # and its hash: what the next drain acknowledges
        self.lines = 0  # lines written by this process
        self.checkpoint_at = 0.0  # when the last checkpoint line was written

    async def resume(self) -> None:
        """At bring-up: hand a new boot the recent lines of the file (it rebuilds rolling windows and the
        nonce guard from them, and checks them against the last head it sealed), then start its chain
        after the file's head. Both are refused, harmlessly, when this boot's chain has started already
        (the sidecar restarted, the enclave did not)."""
        try:
            index, head, last = await asyncio.to_thread(read_head, self.path)
        except (ValueError, KeyError, TypeError):
            await asyncio.to_thread(self._set_aside)
            index, head, last = 0, GENESIS, -1
        self.written, self.head = last, head
        raw = await asyncio.to_thread(self.signer.store.get_meta, META_AUDIT_HEAD)
        sealed = cbor2.loads(raw) if raw else None
        try:
            status = await self.signer.client.call("custody_status", timeout=30)
            cutoff = self.signer.clock() - float(status.get("lookback") or 0)
            sealed_index = int(sealed["index"]) if isinstance(sealed, dict) else index
            try:
                lines = await asyncio.to_thread(recent_lines, self.path, cutoff, sealed_index)
            except (ValueError, KeyError, TypeError):  # a damaged line: replay nothing; the enclave sees a gap
                log.error("AUDIT LOG UNREADABLE: a recent line of %s is damaged; nothing replayed", self.path)
                lines = []
            for start in range(0, len(lines), REPLAY_BATCH):
                await self.signer.client.call("audit_replay", {"lines": lines[start:start + REPLAY_BATCH]}, timeout=30)
            result = await self.signer.client.call(
                "audit_resume", {"head": head, "index": index, "sealed_head": sealed}, timeout=30)
        except RequestError as exc:
            if "started already" not in exc.message:
                raise
        else:
            if result.get("gap"):
                log.error("AUDIT LOG GAP: %s; signing is denied until an admin acknowledges it (clave audit ack)",
                          result["gap"])
            log.info("audit log continues at entry %d (head %s…; %d recent lines replayed)", index, head[:16],
                     len(lines))
        await self.drain_once()

    def _set_aside(self) -> None:
        """The newest file's last line does not parse: keep it for inspection under another name and start
        a new file (the enclave, finding no sealed head in it, denies signing under a policy until an admin
        acknowledges the gap)."""
        damaged = segments(self.path)[-1]
        target = damaged.with_name(f"{damaged.name}.unreadable-{int(time.time())}")
        os.rename(damaged, target)
        log.error("AUDIT LOG UNREADABLE: %s set aside as %s; a new file starts", damaged.name, target.name)

    async def drain_once(self) -> int:
        total = 0
        while True:
            result = await self.signer.client.call("audit_drain", {"after_hash": self.head}, timeout=30)
            lines: list[bytes] = result["lines"]
            if not lines:
                return total
            expected = self.head
            for line in lines:
                entry = json.loads(line)
                if entry["prev"] != expected:
                    # Written all the same (the log shows the break, and a later boot treats it as a gap).
                    log.error("AUDIT CHAIN BREAK at entry %d: the enclave's chain does not continue this log "
                              "(another process started it?)", entry["i"])
                expected = line_hash(line)
            await asyncio.to_thread(self._append, lines)
            self.written, self.head = int(json.loads(lines[-1])["i"]), expected
            total += len(lines)
            if any(b'"kind":"checkpoint"' in line for line in lines):
                self.checkpoint_at = time.time()
            sealed = result.get("sealed_head")
            if sealed is not None:  # it names the last line just written: a later boot trusts the file up to it
                await asyncio.to_thread(self.signer.store.set_meta, META_AUDIT_HEAD, cbor2.dumps(sealed))
            if not result["more"]:
                return total

    def _append(self, lines: list[bytes]) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, b"".join(line + b"\n" for line in lines))
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        self.lines += len(lines)
        if size >= self.rotate_bytes:
            self._rotate()

    def _rotate(self) -> None:
        """Close the current file as a segment named by its first line's index; the next line starts a new
        `audit.log` that continues the same chain."""
        with self.path.open("rb") as f:
            first = int(json.loads(f.readline())["i"])
        target = self.path.with_name(f"{self.path.stem}-{first:012d}{self.path.suffix}")
        os.rename(self.path, target)
        log.info("audit log rotated: %s", target.name)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self.signer.ready:
                continue
            try:
                await self.drain_once()
            except (InfraError, RequestError) as exc:
                log.warning("draining the audit log: %s", exc.message)
