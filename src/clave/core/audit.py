"""The audit log's format and its verification. Pure: lines in, a verdict out.

The enclave writes one entry per event (every signing decision, custody change, freeze, import, export,
the boot that loaded the master key). An entry is one line of canonical JSON (sorted keys, no spaces):

    {"i": <index>, "t": <unix seconds>, "prev": "<hex sha256 of the previous line>", "kind": "...", ...}

so each line commits to everything before it. Every N entries or T seconds the enclave appends a
`checkpoint` entry carrying an Ed25519 signature over (`CHECKPOINT_LABEL`, its index, its `prev`) by a
key made for that boot. Each boot starts with a `boot` entry that names the boot's checkpoint key and
carries an attestation document whose `user_data` commits to that key ("audit"), so whoever holds the
log can tell the checkpoints were signed inside an attested enclave. A new boot continues the chain from
the head the parent hands it (`prev`), so rotation (a new key per boot) does not break the chain.

`verify_lines` names the first bad line: a changed byte breaks the next line's `prev` (or the line's own
JSON), a removed or reordered line breaks `i` and `prev`, and an edit after the last checkpoint is caught
because nothing after the last checkpoint is vouched for (`unsigned_tail`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

CHECKPOINT_LABEL = b"clave/audit-checkpoint/v1"
GENESIS = "00" * 32


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def encode_entry(entry: dict[str, Any]) -> bytes:
    return _ENCODER.encode(entry).encode()


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def checkpoint_message(index: int, prev: str) -> bytes:
    return CHECKPOINT_LABEL + index.to_bytes(8, "big") + bytes.fromhex(prev)


@dataclass
class Verdict:
    ok: bool
    entries: int = 0
    checkpoints: int = 0
    boots: int = 0
    head: str = GENESIS
    first_bad: int | None = None  # 1-based line number
    reason: str = ""
    unsigned_tail: int = 0  # entries after the last checkpoint (not yet vouched for by a signature)
    boot_keys: list[str] = field(default_factory=list)


AttestationCheck = Callable[[dict[str, Any]], str | None]  # a boot entry -> None, or why its document fails


def verify_lines(lines: Iterable[bytes], *, attestation: AttestationCheck | None = None,
                 start_prev: str | None = None, start_index: int | None = None) -> Verdict:
    """Check the chain, the checkpoint signatures and (with `attestation`) each boot's binding. A log that
    was rotated (older lines archived) starts at any index: pass `start_prev`/`start_index` to pin it."""
    verdict = Verdict(ok=True)
    prev: str | None = start_prev
    expected_index = start_index
    key: Ed25519PublicKey | None = None
    line_no = 0
    for line_no, raw in enumerate(lines, 1):
        line = raw.rstrip(b"\n")
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict) or encode_entry(entry) != line:
                raise ValueError
            index, entry_prev, kind = entry["i"], entry["prev"], entry["kind"]
        except (ValueError, KeyError, TypeError):
            return _bad(verdict, line_no, "not a canonical audit entry (changed?)")
        if expected_index is not None and index != expected_index:
            return _bad(verdict, line_no, f"index {index}, expected {expected_index} (an entry removed or reordered)")
        if prev is not None and entry_prev != prev:
            # The index is right, so no line is missing here: the previous line is not what this one records.
            return _bad(verdict, line_no - 1, f"changed: its hash is not the one line {line_no} records as prev")
        if kind == "boot":
            try:
                key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(entry["checkpoint_key"]))
            except (ValueError, KeyError, TypeError):
                return _bad(verdict, line_no, "boot entry without a usable checkpoint key")
            if attestation is not None:
                problem = attestation(entry)
                if problem is not None:
                    return _bad(verdict, line_no, f"boot attestation: {problem}")
            verdict.boots += 1
            verdict.boot_keys.append(entry["checkpoint_key"])
        if kind == "checkpoint":
            if key is None:
                return _bad(verdict, line_no, "checkpoint before any boot entry names a key")
            try:
                key.verify(bytes.fromhex(entry["sig"]), checkpoint_message(index, entry_prev))
            except (InvalidSignature, ValueError, KeyError, TypeError):
                return _bad(verdict, line_no, "checkpoint signature does not verify")
            verdict.checkpoints += 1
            verdict.unsigned_tail = 0
        else:
            verdict.unsigned_tail += 1
        prev = line_hash(line)
        expected_index = index + 1
        verdict.entries += 1
    verdict.head = prev or GENESIS
    return verdict


def _bad(verdict: Verdict, line_no: int, reason: str) -> Verdict:
    verdict.ok = False
    verdict.first_bad = line_no
    verdict.reason = reason
    return verdict
