"""The custody policy inside the enclave: what it takes to change it, and the check before every signature.

State (one per boot): the policy document in force (or none), its sequence number, and whether signing is
frozen. The parent keeps it only sealed under the master key (AES-256-GCM, everything bound as associated
data, with the admin set id), so it can store, lose or replay a record but not alter one: an altered
record does not open, and then this boot refuses to sign at all (`custody-record-invalid`) until a valid
one is loaded or K admins apply a policy.

Changes need admin signatures over EIP-712 messages (`core/policy/authority.py`) with a sequence number
above the current one: a policy and an unfreeze need K of the N admins, a freeze any one of them.
Without an admin set none of this exists and signing is open, as before (the sidecar says so at start).
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clave.core.errors import InvalidParams, RequestError
from clave.core.eth.hashing import keccak256
from clave.core.policy import authority
from clave.core.policy.engine import (
    NONCE_HORIZON,
    ApprovalRequired,
    Decision,
    Denied,
    NonceEntry,
    PolicyState,
    evaluate_message,
    evaluate_tx,
    fees,
)
from clave.core.policy.schema import Policy, canonical_json, parse_policy_bytes
from clave.enclave.admins import parse_admins, parse_threshold, seal_admins
from clave.enclave.audit import AuditLog
from clave.enclave.state import EnclaveState

CUSTODY_RECORD_VERSION = 1
NONCE_LOOKBACK = NONCE_HORIZON  # seconds of decisions a new boot replays for the nonce guard (at least)
Handler = Callable[[dict[str, Any]], Any]


def _allowed(rule: str) -> Decision:
    return Decision(rule, lambda now: None)


class Custody:
    def __init__(self, state: EnclaveState, audit: AuditLog) -> None:
        self.state = state
        self.audit = audit
        audit.on_resume = self.rebuild
        self.gap = ""  # the audit log could not vouch for every recent decision: deny until an admin acks
        self.policy: Policy | None = None
        self.document: bytes | None = None  # canonical JSON of the policy in force
        self.sequence = 0
        self.frozen = False
        self.invalid = ""  # why the stored custody record was refused: deny everything while set
        self.engine_state = PolicyState()
        self.denials: Counter[str] = Counter()
        self.allowed = 0
        self._lock = threading.Lock()

    # -- what the attestation commits to -------------------------------------------------------

    @property
    def policy_hash(self) -> bytes | None:
        return authority.policy_hash(self.document) if self.document is not None else None

    def summary(self) -> dict[str, Any] | None:
        """The map attested in user_data under "policy" (None without an admin set)."""
        admins = self.state.admin_set.admins
        if admins is None:
            return None
        summary: dict[str, Any] = {"k": self.state.admin_set.threshold, "seq": self.sequence, "frozen": self.frozen}
        if self.policy_hash is not None:
            summary["hash"] = self.policy_hash
        if self.invalid:
            summary["invalid"] = True
        if self.gap:
            summary["gap"] = True
        return summary

    def _set_id(self) -> tuple[tuple[bytes, ...], int, bytes]:
        admins = self.state.admin_set.require()
        threshold = self.state.admin_set.threshold
        return admins, threshold, authority.admin_set_id(admins, threshold)

    # -- sealing -------------------------------------------------------------------------------

    def _associated_data(self, set_id: bytes, document: bytes | None, sequence: int, frozen: bool) -> bytes:
        return cbor2.dumps(["clave-custody", CUSTODY_RECORD_VERSION, set_id, document, sequence, frozen])

    def _seal(self) -> dict[str, Any]:
        _, _, set_id = self._set_id()
        nonce = os.urandom(12)
        ad = self._associated_data(set_id, self.document, self.sequence, self.frozen)
        tag = AESGCM(self.state.master()).encrypt(nonce, b"", ad)
        return {"v": CUSTODY_RECORD_VERSION, "document": self.document, "sequence": self.sequence,
                "frozen": self.frozen, "nonce": nonce, "tag": tag}

    def load(self, params: dict[str, Any]) -> dict[str, Any]:
        """The stored custody record (the parent's copy). One that does not open stops all signing."""
        record = params.get("record")
        _, _, set_id = self._set_id()
        try:
            if not isinstance(record, dict) or record.get("v") != CUSTODY_RECORD_VERSION:
                raise RequestError("unsupported custody record")
            document, sequence, frozen = record.get("document"), record.get("sequence"), record.get("frozen")
            nonce, tag = record.get("nonce"), record.get("tag")
            if (not (document is None or isinstance(document, bytes)) or not isinstance(sequence, int)
                    or isinstance(sequence, bool) or sequence < 0 or not isinstance(frozen, bool)
                    or not isinstance(nonce, bytes) or len(nonce) != 12 or not isinstance(tag, bytes)):
                raise RequestError("malformed custody record")
            try:
                AESGCM(self.state.master()).decrypt(nonce, tag, self._associated_data(set_id, document, sequence, frozen))
            except InvalidTag:
                raise RequestError("the custody record does not open under this master key and admin set "
                                   "(altered?)") from None
            policy = parse_policy_bytes(document) if document is not None else None
        except RequestError as exc:
            self.invalid = exc.message
            self.audit.record("custody_load", refused=exc.message)
            raise RequestError(f"custody record refused, all signing denied until an admin applies a policy: "
                               f"{exc.message}") from None
        if sequence < self.sequence:
            raise RequestError(f"custody record refused: sequence {sequence} is older than this boot's {self.sequence}")
        if sequence == self.sequence and document == self.document and frozen == self.frozen:
            return self.status({})  # the sidecar restarted, the enclave did not: nothing changes
        if self.audit.started and policy is not None:
            # The windows and the nonce guard are rebuilt when the audit chain starts; a policy that
            # arrives after that (someone resumed the chain before the sidecar loaded the state) has none.
            self.gap = "the custody state was loaded after the audit log was resumed (windows not rebuilt)"
        self.policy, self.document, self.sequence, self.frozen, self.invalid = policy, document, sequence, frozen, ""
        self.audit.record("custody_load", sequence=sequence, frozen=frozen, policy=self._hash_hex())
        return self.status({})

    # -- changes -------------------------------------------------------------------------------

    def _sequence(self, params: dict[str, Any]) -> int:
        sequence = params.get("sequence")
        if isinstance(sequence, bool) or not isinstance(sequence, int) or not 0 < sequence < 1 << 64:
            raise InvalidParams("sequence: expected a positive 64-bit integer")
        if sequence <= self.sequence:
            raise authority.AuthorizationError(
                f"refused: sequence {sequence} is not above the current {self.sequence} (replayed or older)")
        return sequence

    def apply(self, params: dict[str, Any]) -> dict[str, Any]:
        document = params.get("document")
        if not isinstance(document, bytes):
            raise InvalidParams("document: expected bytes (canonical JSON)")
        policy = parse_policy_bytes(document)
        # Canonical form: what the admins hashed is exactly what is parsed.
        if canonical_json(json.loads(document)) != document:
            raise InvalidParams("document: not in canonical JSON form (the CLI sends canonical_json)")
        admins, threshold, set_id = self._set_id()
        sequence = self._sequence(params)
        digest = authority.digest("PolicyUpdate", set_id, sequence, keccak256(document))
        signers = authority.require_admins(digest, params.get("signatures"), admins, threshold, "policy")
        self.policy, self.document, self.sequence, self.invalid = policy, document, sequence, ""
        self._changed("policy", signers)
        return {"record": self._seal(), "signers": signers, **self.status({})}

    def freeze(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._set_frozen(params, True)  # any one admin

    def unfreeze(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._set_frozen(params, False)  # K admins

    def _set_frozen(self, params: dict[str, Any], frozen: bool) -> dict[str, Any]:
        admins, threshold, set_id = self._set_id()
        kind = "freeze" if frozen else "unfreeze"
        sequence = self._sequence(params)
        digest = authority.digest(kind.capitalize(), set_id, sequence)
        signers = authority.require_admins(digest, params.get("signatures"), admins, 1 if frozen else threshold, kind)
        self.frozen, self.sequence = frozen, sequence
        self._changed(kind, signers)
        return {"record": self._seal(), "signers": signers, **self.status({})}

    def _hash_hex(self) -> str | None:
        return self.policy_hash.hex() if self.policy_hash is not None else None

    def _changed(self, kind: str, signers: list[bytes]) -> None:
        self.audit.record(kind, sequence=self.sequence, policy=self._hash_hex(), frozen=self.frozen,
                          signers=["0x" + s.hex() for s in signers])

    def change_admins(self, params: dict[str, Any]) -> dict[str, Any]:
        """A new admin set and K, signed by K admins of the current set (EIP-712 `AdminChange`). Returns the
        new admin-set record and the custody state re-sealed for the new set, both for the store."""
        admins, threshold, set_id = self._set_id()
        new_admins = parse_admins(params.get("admins"))
        new_threshold = parse_threshold(params.get("threshold"), new_admins)
        new_set_id = authority.admin_set_id(new_admins, new_threshold)
        sequence = self._sequence(params)
        digest = authority.admin_change_digest(set_id, new_set_id, sequence)
        signers = authority.require_admins(digest, params.get("signatures"), admins, threshold, "admin-set change")
        self.state.admin_set.replace(new_admins, new_threshold)
        self.sequence = sequence
        self.audit.record("admins_change", sequence=sequence, admins=["0x" + a.hex() for a in new_admins],
                          threshold=new_threshold, signers=["0x" + s.hex() for s in signers])
        return {"admin_record": seal_admins(self.state.master(), new_admins, new_threshold), "record": self._seal(),
                "signers": signers, **self.status({})}

    def status(self, params: dict[str, Any]) -> dict[str, Any]:
        admins = self.state.admin_set.admins
        threshold = self.state.admin_set.threshold
        return {
            "admins": list(admins) if admins is not None else [],
            "threshold": threshold if admins is not None else 0,
            "admin_set_id": authority.admin_set_id(admins, threshold) if admins is not None else None,
            "sequence": self.sequence,
            "frozen": self.frozen,
            "policy_hash": self.policy_hash,
            "document": self.document,
            "invalid": self.invalid,
            "denials": dict(self.denials),
            "gap": self.gap or None,
            "lookback": self.lookback(),
            "allowed": self.allowed,
        }

    # -- the check before signing ---------------------------------------------------------------

    def _gate(self) -> bool:
        """Raise Denied when nothing may be signed; False when no policy applies (open signing)."""
        if self.state.admin_set.admins is None:
            return False
        if self.invalid:
            raise Denied("custody-record-invalid", "the stored custody record was refused")
        if self.frozen:
            raise Denied("frozen", "signing is frozen by an admin")
        if self.gap and self.policy is not None:
            raise Denied("audit-gap", "the audit log has a gap; an admin must acknowledge it (clave audit ack)")
        return self.policy is not None

    def check_tx(self, account: bytes, tx: dict[str, Any], preimage: bytes, approvals: Any = None) -> Decision:
        """Allow (and count against windows and the nonce guard at once, under a lock: handlers run in
        several threads, and two requests must not both fit the last of a window) or raise Denied. Either
        way the decision goes into the audit log."""
        digest = keccak256(preimage)
        fee, tip = fees(tx)
        to = tx.get("to")
        facts = {"account": "0x" + account.hex(), "what": "tx", "chain": tx.get("chainId"), "nonce": tx.get("nonce"),
                 "to": "0x" + to.hex() if isinstance(to, bytes) else None, "value": tx.get("value"), "fee": fee,
                 "tip": tip, "digest": digest.hex(), "type": tx.get("type")}
        with self._lock:
            try:
                self.audit.require_room()
                if not self._gate():
                    decision = _allowed("no-policy")
                else:
                    assert self.policy is not None
                    now = self.state.clock()
                    decision = evaluate_tx(self.policy, self.engine_state, account, tx, digest, now)
            except Denied as denied:
                self._denied(denied, facts)
                raise
            extra: dict[str, Any] = {}
            if decision.approval is not None:
                request = authority.approval_request(account, preimage)
                if approvals is None:
                    self.audit.record("sign", outcome="pending", rule=decision.rule, request=request.hex(), **facts)
                    raise ApprovalRequired(decision.rule, request, decision.approval.approvers, decision.approval.timeout)
                admins, _, set_id = self._set_id()
                approvers = authority.require_admins(authority.approval_digest(set_id, request), approvals, admins,
                                                     decision.approval.approvers, "approval")
                extra = {"request": request.hex(), "approvers": ["0x" + a.hex() for a in approvers]}
            decision.commit(self.state.clock())
            self.allowed += 1
            self.audit.record("sign", outcome="approved" if extra else "allowed", rule=decision.rule, **extra, **facts)
        return decision

    def approval_outcome(self, params: dict[str, Any]) -> dict[str, Any]:
        """The sidecar's word that a held request was rejected or timed out: recorded, nothing else."""
        request, outcome, rule = params.get("request"), params.get("outcome"), params.get("rule")
        if not isinstance(request, bytes) or len(request) != 32 or outcome not in ("rejected", "timed_out") \
                or not isinstance(rule, str) or len(rule) > 64:
            raise InvalidParams("request: 32 bytes; outcome: rejected or timed_out; rule: a rule name")
        self.denials[rule] += 1
        self.audit.record("sign", outcome=outcome, rule=rule, request=request.hex())
        return {}

    def check_message(self, account: bytes, kind: str, typed: dict[str, Any] | None = None) -> Decision:
        facts = {"account": "0x" + account.hex(), "what": kind}
        try:
            self.audit.require_room()
            if not self._gate():
                decision = _allowed("no-policy")
            else:
                assert self.policy is not None
                decision = evaluate_message(self.policy, account, kind, typed)
        except Denied as denied:
            self._denied(denied, facts)
            raise
        self.allowed += 1
        self.audit.record("sign", outcome="allowed", rule=decision.rule, **facts)
        return decision

    def _denied(self, denied: Denied, facts: dict[str, Any]) -> None:
        self.denials[denied.rule] += 1
        if denied.rule != "audit-backlog":
            self.audit.record("sign", outcome="denied", rule=denied.rule, reason=denied.reason, **facts)

    # -- after a restart: windows and the nonce guard from the audit log --------------------------

    def lookback(self) -> int:
        """Seconds of audit log a new boot must replay: the longest window, and an hour for the nonce guard."""
        longest = max((w.seconds for r in self.policy.rules for w in r.windows), default=0) if self.policy else 0
        return max(longest, NONCE_LOOKBACK)

    def rebuild(self, entries: list[dict[str, Any]], gap: str, anchored: bool) -> None:
        """Windows and nonce-guard state from the replayed decisions (allowed transactions); a gap (the log
        cannot vouch that it holds every recent decision) denies everything until an admin acknowledges.
        A policy in force was applied in an earlier boot, whose checkpoint sealed a head: resuming without
        one (whoever reached the enclave first after a restart, with an empty log) is a gap too."""
        with self._lock:
            if not gap and self.policy is not None and not anchored:
                gap = "the log was resumed without the sealed head of the boot that applied the policy"
            self.gap = gap
            if self.policy is None:
                return
            rules = {r.name: r for r in self.policy.rules}
            for entry in entries:
                try:
                    account = bytes.fromhex(entry["account"][2:])
                    when, value, rule = float(entry["t"]), int(entry["value"] or 0), rules.get(entry["rule"])
                    if rule is not None and value:
                        for i, window in enumerate(rule.windows):
                            key = (f"{rule.name}#{i}", account if window.per == "account" else b"")
                            self.engine_state.record_spend(key, when, value)
                    self.engine_state.record_nonce(account, int(entry["chain"]), int(entry["nonce"]), NonceEntry(
                        bytes.fromhex(entry["digest"]), int(entry["fee"] or 0), int(entry["tip"] or 0), when))
                except (KeyError, ValueError, TypeError):
                    continue  # a line from an older format: it only ever makes the state stricter to keep it

    def ack(self, params: dict[str, Any]) -> dict[str, Any]:
        admins, _, set_id = self._set_id()
        sequence = self._sequence(params)
        digest = authority.digest("AuditAck", set_id, sequence)
        signers = authority.require_admins(digest, params.get("signatures"), admins, 1, "audit acknowledgement")
        gap, self.gap, self.sequence = self.gap, "", sequence
        self.audit.record("gap_ack", gap=gap or None, sequence=sequence, signers=["0x" + s.hex() for s in signers])
        return {"record": self._seal(), "signers": signers, **self.status({})}

    def _locked(self, change: Handler) -> Handler:
        """Changes run under the same lock as the checks (handlers run in several threads): a sequence
        number is taken once, and no signature is checked against a half-changed state."""
        def locked(params: dict[str, Any]) -> Any:
            with self._lock:
                return change(params)

        return locked

    def handlers(self) -> dict[str, Handler]:
        return {
            "audit_ack": self._locked(self.ack),
            "admins_change": self._locked(self.change_admins),
            "approval_outcome": self.approval_outcome,
            "custody_status": self.status,
            "custody_load": self._locked(self.load),
            "policy_apply": self._locked(self.apply),
            "freeze": self._locked(self.freeze),
            "unfreeze": self._locked(self.unfreeze),
        }
