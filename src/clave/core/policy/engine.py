"""Evaluate a custody policy on what the enclave is about to sign. Pure: state and time come in.

Order: the nonce guard, then deny rules and `to_deny` lists (deny wins), then the allow rules of the
request's kind that apply to the account: the first that permits the request allows it. With none, the
request is denied (default deny), naming the first applicable rule and why it did not permit it, or
`default-deny` when no rule applies at all. A decision names the rule and the reason, never key material.

Windows and the nonce guard change only when a signature is actually made: `Decision.commit(now)`.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from clave.core.errors import SERVER_ERROR, RequestError
from clave.core.policy.schema import Approval, Policy, Rule, Window

DENIED_MESSAGE = "request denied"  # clef's ErrRequestDenied text
BUMP_PERCENT = 10  # geth txpool's default price bump for a replacement


class Denied(RequestError):
    """clef's `request denied` (-32000); `data` names the rule and the reason, for the caller and metrics."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(DENIED_MESSAGE, code=SERVER_ERROR)
        self.rule = rule
        self.reason = reason
        self.data = {"rule": rule, "reason": reason}


NONCE_HORIZON = 3600  # seconds the nonce guard remembers a signed transaction (and a new boot replays)


class NonceEntry(NamedTuple):
    """What the nonce guard remembers of a signed transaction. Stored as a plain tuple (`PolicyState`)."""

    digest: bytes
    fee: int  # gasPrice or maxFeePerGas
    tip: int  # maxPriorityFeePerGas (gasPrice for legacy)
    at: float = 0.0  # when it was signed


@dataclass
class Spends:
    """One rolling window's spends, oldest first, and their running total (O(1) per check, amortized)."""

    entries: deque[tuple[float, int]] = field(default_factory=deque)
    total: int = 0


@dataclass
class PolicyState:
    """What evaluation remembers: rolling-window spends and the last transaction per account+chain+nonce."""

    windows: dict[tuple[str, bytes], Spends] = field(default_factory=dict)
    # (account, chain, nonce) -> plain tuple(NonceEntry), oldest first. Plain tuples of atomic values are
    # untracked by the cyclic GC (a NamedTuple or dataclass is not): 60,000 of them made 25-50 ms pauses.
    nonces: OrderedDict[tuple[bytes, int, int], tuple[bytes, int, int, float]] = field(default_factory=OrderedDict)

    def nonce_entry(self, account: bytes, chain_id: int, nonce: int) -> NonceEntry | None:
        found = self.nonces.get((account, chain_id, nonce))
        return NonceEntry._make(found) if found is not None else None

    def spent(self, key: tuple[str, bytes], seconds: int, now: float) -> int:
        spends = self.windows.get(key)
        if spends is None:
            return 0
        entries = spends.entries
        while entries and entries[0][0] <= now - seconds:
            spends.total -= entries.popleft()[1]
        return spends.total

    def record_spend(self, key: tuple[str, bytes], now: float, value: int) -> None:
        spends = self.windows.setdefault(key, Spends())
        spends.entries.append((now, value))
        spends.total += value

    def record_nonce(self, account: bytes, chain_id: int, nonce: int, entry: NonceEntry) -> None:
        """Remember the transaction signed for this account, chain and nonce, for `NONCE_HORIZON` seconds
        (by then it is mined or dropped; memory stays bounded by the signing rate)."""
        key = (account, chain_id, nonce)
        self.nonces[key] = tuple(entry)  # type: ignore[assignment]
        self.nonces.move_to_end(key)
        while self.nonces:
            oldest = next(iter(self.nonces.values()))
            if oldest[3] >= entry.at - NONCE_HORIZON:
                break
            self.nonces.popitem(last=False)


class ApprovalRequired(RequestError):
    """The rule that allows the request wants admins to approve it first. The sidecar holds the request
    (`clave approvals list`, `clave approve`) and asks again with the approvals; `data` names the request."""

    def __init__(self, rule: str, request: bytes, approvers: int, timeout: int) -> None:
        super().__init__("approval required", code=SERVER_ERROR)
        self.rule = rule
        self.request = request
        self.approvers = approvers
        self.timeout = timeout
        self.data = {"rule": rule, "approval": request.hex(), "approvers": approvers, "timeout": timeout}


@dataclass
class Decision:
    rule: str  # the rule that allowed it ("no-policy" without a policy)
    commit: Callable[[float], None]
    approval: Approval | None = None  # the allowing rule wants this many approvals first


def _noop(now: float) -> None:
    return None


def fees(tx: Mapping[str, Any]) -> tuple[int, int]:
    """(fee cap, tip cap) per gas: maxFeePerGas and maxPriorityFeePerGas, or gasPrice twice (legacy)."""
    if tx.get("maxFeePerGas") is not None:
        return int(tx["maxFeePerGas"]), int(tx.get("maxPriorityFeePerGas") or 0)
    price = int(tx.get("gasPrice") or 0)
    return price, price


def _bumped(new: int, old: int) -> bool:
    return new * 100 >= old * (100 + BUMP_PERCENT)


def _tx_in_scope(rule: Rule, tx: Mapping[str, Any]) -> bool:
    """For deny rules: whether the transaction falls in what the rule names."""
    to = tx.get("to")
    data = tx.get("data") or b""
    if rule.chain_ids is not None and tx["chainId"] not in rule.chain_ids:
        return False
    if rule.to is not None and to not in rule.to:
        return False
    if rule.contract_creation and to is not None:
        return False
    if rule.blob_txs and tx.get("type") != 3:
        return False
    if rule.selectors is not None:
        chosen = rule.selectors.get(to, rule.selectors.get(None, frozenset()))
        if bytes(data[:4]) not in chosen:
            return False
    return True


def _tx_refusal(rule: Rule, tx: Mapping[str, Any]) -> str | None:
    """Why an allow rule does not permit `tx` (window aside), or None."""
    to = tx.get("to")
    data = bytes(tx.get("data") or b"")
    t = tx.get("type")
    if rule.chain_ids is not None and tx["chainId"] not in rule.chain_ids:
        return "chain_ids"
    if to is None:
        if not rule.contract_creation:
            return "contract_creation"
    elif rule.to is not None and to not in rule.to:
        return "to"
    if rule.selectors is not None and data:
        chosen = rule.selectors.get(to, rule.selectors.get(None, frozenset()))
        if data[:4] not in chosen:
            return "selectors"
    if rule.value_max is not None and tx["value"] > rule.value_max:
        return "value_max"
    if rule.gas_max is not None and tx["gas"] > rule.gas_max:
        return "gas_max"
    fee, tip = fees(tx)
    if rule.max_fee_per_gas is not None and fee > rule.max_fee_per_gas:
        return "max_fee_per_gas"
    if rule.max_priority_fee_per_gas is not None and tip > rule.max_priority_fee_per_gas:
        return "max_priority_fee_per_gas"
    if t == 3 and not rule.blob_txs:
        return "blob_txs"
    if t == 4:
        if rule.authorization_targets is None:
            return "authorization_targets"
        for auth in tx.get("authorizationList") or []:
            if auth.get("address") not in rule.authorization_targets:
                return "authorization_targets"
    return None


def _window_key(rule: Rule, index: int, window: Window, account: bytes) -> tuple[str, bytes]:
    return (f"{rule.name}#{index}", account if window.per == "account" else b"")


def evaluate_tx(policy: Policy, state: PolicyState, account: bytes, tx: Mapping[str, Any], digest: bytes,
                now: float) -> Decision:
    """Allow (a Decision to commit once signed) or raise Denied."""
    chain_id, nonce = int(tx["chainId"]), int(tx["nonce"])
    fee, tip = fees(tx)
    if policy.nonce_guard:
        previous = state.nonce_entry(account, chain_id, nonce)
        if previous is not None and previous.digest != digest:
            if not (_bumped(fee, previous.fee) and _bumped(tip, previous.tip)):
                raise Denied("nonce_guard", f"nonce {nonce} already signed; a replacement needs a fee bump of "
                                            f"at least {BUMP_PERCENT}%")
    rules = policy.rules_for(account, "transaction")
    to = tx.get("to")
    for rule in rules:
        if rule.action == "deny" and _tx_in_scope(rule, tx):
            raise Denied(rule.name, "deny rule")
        if to is not None and to in rule.to_deny:
            raise Denied(rule.name, "to_deny")
    first_refusal: tuple[str, str] | None = None
    value = int(tx["value"])
    for rule in rules:
        if rule.action != "allow":
            continue
        reason = _tx_refusal(rule, tx)
        if reason is None:
            for i, window in enumerate(rule.windows):
                if state.spent(_window_key(rule, i, window, account), window.seconds, now) + value > window.value_max:
                    reason = "window"
                    break
        if reason is not None:
            first_refusal = first_refusal or (rule.name, reason)
            continue
        approval = rule.approval if rule.approval is not None and value > rule.approval.above else None
        return Decision(rule.name, _tx_commit(state, rule, account, chain_id, nonce, NonceEntry(digest, fee, tip), value),
                        approval)
    if first_refusal is not None:
        raise Denied(*first_refusal)
    raise Denied("default-deny", "no rule allows transactions for this account")


def _tx_commit(state: PolicyState, rule: Rule, account: bytes, chain_id: int, nonce: int, entry: NonceEntry,
               value: int) -> Callable[[float], None]:
    def commit(now: float) -> None:
        if value:
            for i, window in enumerate(rule.windows):
                state.record_spend(_window_key(rule, i, window, account), now, value)
        state.record_nonce(account, chain_id, nonce, entry._replace(at=now))

    return commit


def _domain_chain_id(domain: Mapping[str, Any]) -> int | None:
    value = domain.get("chainId")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value, 16) if value.lower().startswith("0x") else int(value)
        except ValueError:
            return None
    return None


def _domain_contract(domain: Mapping[str, Any]) -> bytes | None:
    value = domain.get("verifyingContract")
    if isinstance(value, str) and value.lower().startswith("0x") and len(value) == 42:
        try:
            return bytes.fromhex(value[2:])
        except ValueError:
            return None
    return None


def _message_refusal(rule: Rule, kind: str, typed: Mapping[str, Any] | None) -> str | None:
    if kind not in rule.messages:
        return "messages"
    domain = typed.get("domain") if typed is not None else None
    domain = domain if isinstance(domain, Mapping) else {}
    chain_id = _domain_chain_id(domain)
    if rule.chain_ids is not None and chain_id not in rule.chain_ids:
        return "chain_ids"
    if rule.typed_data_domains is not None:
        if kind != "typed_data":
            return "typed_data_domains"
        contract, name = _domain_contract(domain), domain.get("name")
        for d in rule.typed_data_domains:
            if ((d.chain_id is None or d.chain_id == chain_id)
                    and (d.verifying_contract is None or d.verifying_contract == contract)
                    and (d.name is None or d.name == name)):
                break
        else:
            return "typed_data_domains"
    return None


def evaluate_message(policy: Policy, account: bytes, kind: str, typed: Mapping[str, Any] | None = None) -> Decision:
    """Allow a message signature of `kind` (personal, typed_data, clique, validator) or raise Denied."""
    rules = policy.rules_for(account, "message")
    for rule in rules:
        if rule.action == "deny" and (not rule.messages or kind in rule.messages):
            raise Denied(rule.name, "deny rule")
    first_refusal: tuple[str, str] | None = None
    for rule in rules:
        if rule.action != "allow":
            continue
        reason = _message_refusal(rule, kind, typed)
        if reason is None:
            return Decision(rule.name, _noop)
        first_refusal = first_refusal or (rule.name, reason)
    if first_refusal is not None:
        raise Denied(*first_refusal)
    raise Denied("default-deny", f"no rule allows {kind} messages for this account")
