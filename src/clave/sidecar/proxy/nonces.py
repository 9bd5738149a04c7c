"""Per-account nonces for concurrent `eth_sendTransaction`s from one process.

The first send for an account reads the node's pending transaction count; later sends take the next
number without asking, so two concurrent sends never get the same nonce. A reserved nonce that was not
used (the request was refused before the node accepted it) is given back when nothing after it was
handed out, and otherwise the account is resynced from the node on its next send, as it is when the node
answers "nonce too low" (another wallet sent from the same account).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class NonceTracker:
    def __init__(self, pending_count: Callable[[bytes], Awaitable[int]]) -> None:
        self._pending_count = pending_count
        self._next: dict[bytes, int] = {}
        self._locks: dict[bytes, asyncio.Lock] = {}

    async def reserve(self, address: bytes) -> int:
        lock = self._locks.setdefault(address, asyncio.Lock())
        async with lock:
            nonce = self._next.get(address)
            if nonce is None:
                nonce = await self._pending_count(address)
            self._next[address] = nonce + 1
            return nonce

    def peek(self, address: bytes) -> int | None:
        """The nonce the next reservation would give, if counted already; nothing is reserved."""
        return self._next.get(address)

    def release(self, address: bytes, nonce: int) -> None:
        """`nonce` was reserved but never reached the node."""
        if self._next.get(address) == nonce + 1:
            self._next[address] = nonce
        else:
            self.resync(address)

    def resync(self, address: bytes) -> None:
        """Forget what was counted: the next reservation asks the node again."""
        self._next.pop(address, None)
