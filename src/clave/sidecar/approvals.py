"""Requests a custody rule holds for approval (warm wallet): they wait here, in the sidecar, while admins
approve the exact transaction (`clave approvals list`, `clave approve ID`, `clave reject ID`).

The enclave decides: it answered `approval required` naming the request (account and transaction
preimage hashed), and signs only when the same request comes back with enough admin signatures over it
(EIP-712 `Approval`). The sidecar only holds the caller and collects signatures; a timeout or a rejection
answers clef's `request denied` and is recorded in the enclave's audit log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from clave.core.errors import RequestError
from clave.core.policy.engine import ApprovalRequired, Denied

log = logging.getLogger("clave.approvals")
MAX_PENDING = 1000

Retry = Callable[[list[bytes]], Awaitable[Any]]
Note = Callable[[bytes, str, str], Awaitable[None]]


@dataclass
class Pending:
    id: str
    request: bytes
    rule: str
    approvers: int
    summary: dict[str, Any]
    created: float
    deadline: float
    retry: Retry
    future: asyncio.Future[Any]
    signatures: dict[bytes, bytes] = field(default_factory=dict)  # admin address -> its signature

    def describe(self, now: float) -> dict[str, Any]:
        return {"id": self.id, "request": "0x" + self.request.hex(), "rule": self.rule, "approvers": self.approvers,
                "approvals": len(self.signatures), "expires_in": max(0, round(self.deadline - now)), **self.summary}


class Approvals:
    def __init__(self, note: Note, approver: Callable[[bytes, bytes], bytes],
                 clock: Callable[[], float] = time.time) -> None:
        self._pending: dict[str, Pending] = {}
        self._note = note  # tells the enclave's audit log about a rejection or a timeout
        self._approver = approver  # (request, signature) -> the admin who signed, or RequestError
        self.clock = clock

    def __len__(self) -> int:
        return len(self._pending)

    async def hold(self, needed: ApprovalRequired, summary: dict[str, Any], retry: Retry) -> Any:
        """Wait until the request is approved (then the signed result), rejected or timed out (Denied)."""
        request_id = needed.request.hex()[:16]
        pending = self._pending.get(request_id)
        if pending is None:
            if len(self._pending) >= MAX_PENDING:
                raise Denied(needed.rule, "too many requests wait for approval")
            now = self.clock()
            pending = Pending(request_id, needed.request, needed.rule, needed.approvers, summary, now,
                              now + needed.timeout, retry, asyncio.get_running_loop().create_future())
            self._pending[request_id] = pending
            log.warning("request %s held for approval by rule %s (%d approver(s), %d s): %s", request_id, needed.rule,
                        needed.approvers, needed.timeout, summary)
        try:
            async with asyncio.timeout(max(0.0, pending.deadline - self.clock())):  # not wait_for (3.11 loses cancels)
                return await asyncio.shield(pending.future)
        except TimeoutError:
            if self._pending.pop(request_id, None) is not None:
                await self._closed(pending, "timed_out")
                pending.future.set_exception(Denied(pending.rule, "approval timed out"))
                pending.future.exception()  # retrieved: callers who share the request see it through shield
            raise Denied(pending.rule, "approval timed out") from None

    def list(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [p.describe(now) for p in self._pending.values()]

    def get(self, request_id: str) -> Pending:
        pending = self._pending.get(request_id.removeprefix("0x")[:16])
        if pending is None:
            raise RequestError(f"no request {request_id} waits for approval")
        return pending

    async def approve(self, request_id: str, signature: bytes) -> dict[str, Any]:
        """Add an admin's signature; with enough, ask the enclave again. Its refusal (a signature that is
        not an admin's) goes back to the approver and the request keeps waiting."""
        pending = self.get(request_id)
        admin = self._approver(pending.request, signature)  # a stranger's signature is refused here already
        pending.signatures[admin] = signature
        if len(pending.signatures) < pending.approvers:
            return {"id": pending.id, "approvals": len(pending.signatures), "signed": False}
        try:
            result = await pending.retry(list(pending.signatures.values()))
        except ApprovalRequired:
            raise RequestError("the enclave still wants approvals for this request") from None
        if self._pending.pop(pending.id, None) is not None and not pending.future.done():
            pending.future.set_result(result)
        log.warning("request %s approved and signed", pending.id)
        return {"id": pending.id, "approvals": len(pending.signatures), "signed": True}

    async def reject(self, request_id: str) -> dict[str, Any]:
        pending = self.get(request_id)
        self._pending.pop(pending.id, None)
        await self._closed(pending, "rejected")
        if not pending.future.done():
            pending.future.set_exception(Denied(pending.rule, "approval rejected"))
        log.warning("request %s rejected", pending.id)
        return {"id": pending.id, "rejected": True}

    async def _closed(self, pending: Pending, outcome: str) -> None:
        try:
            await self._note(pending.request, outcome, pending.rule)
        except Exception:
            log.exception("recording approval outcome %s of %s", outcome, pending.id)
