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
import json
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clave.core.audit import GENESIS, checkpoint_message, encode_entry, line_hash
from clave.core.errors import InvalidParams, RequestError
from clave.core.policy.engine import Denied
from clave.enclave.nitro import nsm as nsm_api
from clave.enclave.state import EnclaveState

CHECKPOINT_EVERY = 1000  # entries
CHECKPOINT_SECONDS = 10.0
MAX_BUFFER = 200_000  # entries waiting to be drained; beyond that, signing is refused
MAX_DRAIN = 20_000  # entries per drain call (a frame stays well under 4 MiB)


HEAD_RECORD_VERSION = 1
REPLAY_BATCH = 5000  # lines per audit_replay call


class AuditGap(Exception):
    """The parent's log does not reach back to the last head this enclave's master key sealed."""


class AuditLog:
    def __init__(self, state: EnclaveState, *, every: int = CHECKPOINT_EVERY, seconds: float = CHECKPOINT_SECONDS) -> None:
        self.state = state
        self.every = every
        self.seconds = seconds
        self._key = Ed25519PrivateKey.generate()
        self.public_key = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self._lock = threading.Lock()
        # (index, line, its hash), kept until the sidecar acknowledges it by hash
        self._buffer: deque[tuple[int, bytes, str]] = deque()
        self._pending: list[dict[str, Any]] = []  # events before the chain started (no head yet)
        self._started = False
        self._index = 0
        self._prev = GENESIS
        self._since_checkpoint = 0
        self._last_checkpoint = state.clock()
        self._sealed_head: dict[str, Any] | None = None  # the last line drained, sealed, for the sidecar
        # Replay (a new boot rebuilding windows and the nonce guard): lines checked to link, in order.
        self._replay_prev: str | None = None
        self._replay_next = 0
        self._replay_hashes: dict[int, str] = {}  # index -> hash of the replayed lines (for the sealed head)
        self.replayed: list[dict[str, Any]] = []
        self.replay_problem = ""
        # Set by the custody policy: it rebuilds its state from the replayed entries, or denies on a gap.
        self.on_resume: Callable[[list[dict[str, Any]], str, bool], None] | None = None

    # -- writing --------------------------------------------------------------------------------

    def _append(self, entry: dict[str, Any]) -> None:
        entry["i"], entry["prev"], entry["t"] = self._index, self._prev, round(self.state.clock(), 3)
        line = encode_entry(entry)
        self._prev = line_hash(line)
        self._buffer.append((self._index, line, self._prev))
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

    @property
    def started(self) -> bool:
        return self._started

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

    # -- the sealed head: what a later boot trusts of the parent's log ----------------------------

    def _head_ad(self, index: int, digest: str) -> bytes:
        return cbor2.dumps(["clave-audit-head", HEAD_RECORD_VERSION, index, digest])

    def _seal_head(self, index: int, digest: str) -> dict[str, Any]:
        nonce = os.urandom(12)
        tag = AESGCM(self.state.master()).encrypt(nonce, b"", self._head_ad(index, digest))
        return {"v": HEAD_RECORD_VERSION, "index": index, "hash": digest, "nonce": nonce, "tag": tag}

    def _open_head(self, record: Any) -> tuple[int, str]:
        if not isinstance(record, dict) or record.get("v") != HEAD_RECORD_VERSION:
            raise AuditGap("the sealed audit head is missing or malformed")
        index, digest, nonce, tag = record.get("index"), record.get("hash"), record.get("nonce"), record.get("tag")
        if (not isinstance(index, int) or not isinstance(digest, str) or not isinstance(nonce, bytes)
                or not isinstance(tag, bytes)):
            raise AuditGap("the sealed audit head is malformed")
        try:
            AESGCM(self.state.master()).decrypt(nonce, tag, self._head_ad(index, digest))
        except InvalidTag:
            raise AuditGap("the sealed audit head does not open (altered?)") from None
        return index, digest

    # -- the sidecar's side -----------------------------------------------------------------------

    def replay(self, params: dict[str, Any]) -> dict[str, Any]:
        """Before `audit_resume` in a new boot: the parent's recent log lines, in order, in batches. They
        must link (each line's prev is the hash of the line before); which of them are the truth is settled
        at resume, by the sealed head."""
        lines = params.get("lines")
        if not isinstance(lines, list) or len(lines) > REPLAY_BATCH:
            raise InvalidParams(f"lines: expected a list of at most {REPLAY_BATCH}")
        with self._lock:
            if self._started:
                raise RequestError("the audit chain of this enclave boot has started already")
            for line in lines:
                if self.replay_problem:
                    break
                try:
                    if not isinstance(line, bytes):
                        raise ValueError
                    entry = json.loads(line)
                    if not isinstance(entry, dict) or encode_entry(entry) != line:
                        raise ValueError
                    index, prev = entry["i"], entry["prev"]
                except (ValueError, KeyError, TypeError):
                    self.replay_problem = "a replayed line is not a canonical audit entry"
                    break
                if self._replay_prev is not None and (prev != self._replay_prev or index != self._replay_next):
                    self.replay_problem = f"the replayed log does not link at entry {index}"
                    break
                digest = line_hash(line)
                self._replay_prev, self._replay_next = digest, index + 1
                self._replay_hashes[index] = digest
                if entry.get("kind") == "sign" and entry.get("outcome") == "allowed" and entry.get("what") == "tx":
                    self.replayed.append(entry)
        return {"problem": self.replay_problem or None}

    def _check_replay(self, head: str, index: int, sealed: Any) -> str:
        """Why the replayed lines cannot be trusted to hold every recent decision ("" when they can): they
        must link, end at the parent's head, and contain the last head this master key sealed."""
        if self.replay_problem:
            return self.replay_problem
        if sealed is None:
            return "" if index == 0 else "the store has no sealed audit head for a non-empty log"
        try:
            sealed_index, sealed_hash = self._open_head(sealed)
        except AuditGap as exc:
            return str(exc)
        if self._replay_prev is not None and (self._replay_prev != head or self._replay_next != index):
            return "the replayed lines do not end at the log's head"
        if self._replay_hashes.get(sealed_index) != sealed_hash:
            return (f"the log does not contain the last sealed head (entry {sealed_index}): entries are missing "
                    "or were changed")
        return ""

    def resume(self, params: dict[str, Any]) -> dict[str, Any]:
        """Start this boot's chain after the head of the parent's log (index, hash of its last line),
        after checking the replayed lines against the sealed head (`sealed_head`)."""
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
            gap = self._check_replay(head, index, params.get("sealed_head"))
            self._index, self._prev, self._started = index, head, True
            document = nsm_api.attestation(self.state.nsm, user_data=self.state.user_data(),
                                           public_key=self.state.boot_public)
            self._append({"kind": "boot", "checkpoint_key": self.public_key.hex(), "attestation": document.hex(),
                          "master": self.state.commitment.hex() if self.state.commitment else None})
            for entry in self._pending:
                self._append(entry)
            self._pending = []
            if gap:
                self._append({"kind": "gap", "reason": gap})
            self._checkpoint()  # the boot entry is vouched for at once
        if self.on_resume is not None:
            self.on_resume(self.replayed, gap, params.get("sealed_head") is not None)
        self.replayed, self._replay_hashes = [], {}
        return {"index": self._index, "head": self._prev, "gap": gap or None}

    def drain(self, params: dict[str, Any]) -> dict[str, Any]:
        """The entries after `after_hash` (the hash of the last line the sidecar has written durably; None
        for none yet). Entries up to that line are dropped here; the rest stay until acknowledged, so a
        sidecar that dies between a drain and its write loses nothing. A hash this buffer does not hold
        (the parent's log is another chain than this boot's) drops nothing."""
        after = params.get("after_hash")
        if after is not None and not isinstance(after, str):
            raise InvalidParams("after_hash: expected a hex string")
        with self._lock:
            if self._started:
                self._maybe_checkpoint()
            if after is not None:
                position = next((n for n, (_, _, digest) in enumerate(self._buffer) if digest == after), None)
                for _ in range(position + 1 if position is not None else 0):
                    self._buffer.popleft()
            batch = list(itertools.islice(self._buffer, MAX_DRAIN))
            lines = [line for _, line, _ in batch]
            more = len(self._buffer) > len(lines)
            if batch and self.state.master_key is not None:
                # What a later boot will trust the parent's log to reach: the last line handed over now.
                self._sealed_head = self._seal_head(batch[-1][0], batch[-1][2])
            sealed_head = self._sealed_head if batch else None
        return {"lines": lines, "more": more, "started": self._started, "sealed_head": sealed_head}

    def handlers(self) -> dict[str, Any]:
        return {"audit_replay": self.replay, "audit_resume": self.resume, "audit_drain": self.drain}
