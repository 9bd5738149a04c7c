"""The enclave's audit log: it writes the entries (core/audit.py), the parent only carries them.

Entries wait in a bounded buffer until the sidecar drains them into `<datadir>/audit.log`. If the buffer
fills (nobody drains), signing is refused (`audit-backlog`): no signature without a record of it. A
checkpoint, signed with this boot's Ed25519 key, is appended every `every` entries or `seconds` seconds
(checked at each entry and each drain). The public half is attested in `user_data` ("audit").

The chain starts when the sidecar hands over the head of its log (`audit_resume`, once per boot); events
before that are kept and written right after the boot entry, which carries a fresh attestation document.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from clave.core.audit import GENESIS, checkpoint_message, encode_entry, line_hash
from clave.core.errors import InvalidParams, RequestError
from clave.core.policy.engine import Denied
from clave.enclave.nitro import nsm as nsm_api
from clave.enclave.state import EnclaveState

CHECKPOINT_EVERY = 1000  # entries
CHECKPOINT_SECONDS = 10.0
MAX_BUFFER = 200_000  # entries waiting to be drained; beyond that, signing is refused
MAX_DRAIN = 20_000  # entries per drain call (a frame stays well under 4 MiB)


class AuditLog:
    def __init__(self, state: EnclaveState, *, every: int = CHECKPOINT_EVERY, seconds: float = CHECKPOINT_SECONDS) -> None:
        self.state = state
        self.every = every
        self.seconds = seconds
        self._key = Ed25519PrivateKey.generate()
        self.public_key = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self._lock = threading.Lock()
        self._buffer: deque[tuple[int, bytes]] = deque()  # (index, line), kept until the sidecar acknowledges
        self._pending: list[dict[str, Any]] = []  # events before the chain started (no head yet)
        self._started = False
        self._index = 0
        self._prev = GENESIS
        self._since_checkpoint = 0
        self._last_checkpoint = state.clock()

    # -- writing --------------------------------------------------------------------------------

    def _append(self, entry: dict[str, Any]) -> None:
        entry = {**entry, "i": self._index, "prev": self._prev, "t": round(self.state.clock(), 3)}
        line = encode_entry(entry)
        self._buffer.append((self._index, line))
        self._prev = line_hash(line)
        self._index += 1
        self._since_checkpoint += 1

    def _checkpoint(self) -> None:
        index, prev = self._index, self._prev
        signature = self._key.sign(checkpoint_message(index, prev))
        self._append({"kind": "checkpoint", "sig": signature.hex(), "entries": self._since_checkpoint})
        self._since_checkpoint = 0
        self._last_checkpoint = self.state.clock()

    def _maybe_checkpoint(self) -> None:
        if self._since_checkpoint and (self._since_checkpoint >= self.every
                                       or self.state.clock() - self._last_checkpoint >= self.seconds):
            self._checkpoint()

    def record(self, kind: str, **fields: Any) -> None:
        """Append one event (never key material: addresses, hashes, amounts, rule names)."""
        with self._lock:
            if not self._started:
                self._pending.append({"kind": kind, **fields})
                return
            self._append({"kind": kind, **fields})
            self._maybe_checkpoint()

    def require_room(self) -> None:
        """Denied (`audit-backlog`) when the log cannot take another entry: nothing unrecorded is signed."""
        if len(self._buffer) >= MAX_BUFFER or len(self._pending) >= MAX_BUFFER:
            raise Denied("audit-backlog", "the audit log is not being drained")

    # -- the sidecar's side -----------------------------------------------------------------------

    def resume(self, params: dict[str, Any]) -> dict[str, Any]:
        """Start this boot's chain after the head of the parent's log (index, hash of its last line)."""
        head, index = params.get("head", GENESIS), params.get("index", 0)
        if not isinstance(head, str) or len(head) != 64 or not isinstance(index, int) or index < 0:
            raise InvalidParams("head: expected 64 hex characters; index: a non-negative integer")
        try:
            bytes.fromhex(head)
        except ValueError:
            raise InvalidParams("head: expected 64 hex characters") from None
        with self._lock:
            if self._started:
                raise RequestError("the audit chain of this enclave boot has started already")
            self._index, self._prev, self._started = index, head, True
            document = nsm_api.attestation(self.state.nsm, user_data=self.state.user_data(),
                                           public_key=self.state.boot_public)
            self._append({"kind": "boot", "checkpoint_key": self.public_key.hex(), "attestation": document.hex(),
                          "master": self.state.commitment.hex() if self.state.commitment else None})
            for entry in self._pending:
                self._append(entry)
            self._pending = []
            self._checkpoint()  # the boot entry is vouched for at once
        return {"index": self._index, "head": self._prev}

    def drain(self, params: dict[str, Any]) -> dict[str, Any]:
        """The entries after `after` (the last index the sidecar has written durably; -1: none yet).
        Entries up to `after` are dropped here; the rest stay until acknowledged, so a sidecar that dies
        between a drain and its write loses nothing."""
        after = params.get("after", -1)
        if isinstance(after, bool) or not isinstance(after, int):
            raise InvalidParams("after: expected an integer")
        with self._lock:
            if self._started:
                self._maybe_checkpoint()
            while self._buffer and self._buffer[0][0] <= after:
                self._buffer.popleft()
            lines = [line for _, line in itertools.islice(self._buffer, MAX_DRAIN)]
            more = len(self._buffer) > len(lines)
        return {"lines": lines, "more": more, "started": self._started}

    def handlers(self) -> dict[str, Any]:
        return {"audit_resume": self.resume, "audit_drain": self.drain}
