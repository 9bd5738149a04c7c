"""The custody policy document: parse and validate, with errors that name the field path.

A policy is JSON (the CLI also reads YAML and hands the enclave canonical JSON, see `canonical_json`):

    {"version": 1,
     "groups": {"hot": ["0xAddr", ...]},
     "nonce_guard": true,
     "rules": [ {"name": "...", "accounts": ["0xAddr" | "group:NAME" | "*"], "action": "allow" | "deny",
                 "kind": "transaction" | "message", ...conditions...}, ... ]}

Transaction conditions (absent = unconstrained unless said otherwise): `chain_ids`, `to` (allow-list),
`to_deny`, `contract_creation` (default false), `selectors` ({"0xdest" | "*": ["0x12345678", ...]}),
`value_max`, `window` ({"value_max", "seconds", "per": "account" | "group"}, or a list of them, all of which
must hold; "group": one budget for every account the rule names), `gas_max`,
`max_fee_per_gas`, `max_priority_fee_per_gas`, `authorization_targets` (EIP-7702; absent = type 4 refused),
`blob_txs` (default false), `approval` ({"above": amount, "approvers": N, "timeout": seconds}: a request
this rule allows, above that value, waits for N admins to approve the exact transaction). Message conditions: `messages` (["personal", "typed_data", "clique",
"validator"]), `typed_data_domains` ([{"chainId", "verifyingContract", "name"}], each key optional).
Amounts are integers (wei), decimal strings, or strings with a unit: "1.5 ether", "30 gwei".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from clave.core.errors import RequestError

POLICY_VERSION = 1
MAX_RULES = 1000
MAX_DOCUMENT = 1 << 20  # bytes
MESSAGE_KINDS = frozenset({"personal", "typed_data", "clique", "validator"})
_UNITS = {"wei": 0, "gwei": 9, "ether": 18}
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_SELECTOR = re.compile(r"0x[0-9a-fA-F]{8}")
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class PolicyError(RequestError):
    """The policy document is invalid; the message names the field (`rules[2].value_max: ...`)."""


@dataclass(frozen=True)
class Window:
    value_max: int
    seconds: int
    per: str  # "account" | "group"


@dataclass(frozen=True)
class Approval:
    """A rule's "needs approval": above `above` wei, `approvers` admins sign the exact transaction
    (EIP-712 `Approval`) within `timeout` seconds, or the request is denied."""

    above: int
    approvers: int
    timeout: int


@dataclass(frozen=True)
class Domain:
    chain_id: int | None
    verifying_contract: bytes | None
    name: str | None


@dataclass(frozen=True)
class Rule:
    name: str
    index: int
    action: str  # "allow" | "deny"
    kind: str  # "transaction" | "message"
    accounts: frozenset[bytes] | None  # None: every account
    chain_ids: frozenset[int] | None = None
    to: frozenset[bytes] | None = None
    to_deny: frozenset[bytes] = frozenset()
    contract_creation: bool = False
    selectors: dict[bytes | None, frozenset[bytes]] | None = None  # None key: "*"
    value_max: int | None = None
    windows: tuple[Window, ...] = ()
    gas_max: int | None = None
    max_fee_per_gas: int | None = None
    max_priority_fee_per_gas: int | None = None
    authorization_targets: frozenset[bytes] | None = None
    blob_txs: bool = False
    approval: Approval | None = None
    messages: frozenset[str] = frozenset()
    typed_data_domains: tuple[Domain, ...] | None = None


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    nonce_guard: bool
    groups: dict[str, frozenset[bytes]] = field(default_factory=dict)
    _cache: dict[tuple[bytes, str], tuple[Rule, ...]] = field(default_factory=dict, compare=False, repr=False)

    def rules_for(self, account: bytes, kind: str) -> tuple[Rule, ...]:
        """The rules of `kind` that apply to `account`, in document order (memoized per account)."""
        key = (account, kind)
        found = self._cache.get(key)
        if found is None:
            found = tuple(r for r in self.rules if r.kind == kind and (r.accounts is None or account in r.accounts))
            if len(self._cache) < 100_000:
                self._cache[key] = found
        return found


def canonical_json(document: Any) -> bytes:
    """The bytes admins sign (by their keccak256) and the enclave parses: sorted keys, no spaces, UTF-8."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_policy_bytes(data: bytes) -> Policy:
    """A policy from JSON bytes; PolicyError naming the line (syntax) or the field (schema)."""
    if len(data) > MAX_DOCUMENT:
        raise PolicyError(f"policy: larger than {MAX_DOCUMENT} bytes")
    try:
        document = json.loads(data)
    except UnicodeDecodeError:
        raise PolicyError("policy: not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise PolicyError(f"policy: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    return parse_policy(document)


def _fail(path: str, message: str) -> PolicyError:
    return PolicyError(f"{path}: {message}")


def _keys(value: Any, path: str, allowed: set[str], required: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    if not isinstance(value, dict):
        raise _fail(path, "expected an object")
    for key in value:
        if key not in allowed:
            raise _fail(f"{path}.{key}", "unknown field")
    for key in required:
        if key not in value:
            raise _fail(f"{path}.{key}", "required")
    return value


def _int(value: Any, path: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(path, f"expected an integer >= {minimum}")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, "expected true or false")
    return value


def amount(value: Any, path: str) -> int:
    """Wei from an integer, a decimal string, or "<number> wei|gwei|ether"."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise _fail(path, "must not be negative")
        return value
    if not isinstance(value, str):
        raise _fail(path, 'expected wei as an integer or a string like "1.5 ether"')
    parts = value.strip().split()
    if len(parts) not in (1, 2) or (len(parts) == 2 and parts[1].lower() not in _UNITS):
        raise _fail(path, f"cannot read {value!r} (units: wei, gwei, ether)")
    exponent = _UNITS[parts[1].lower()] if len(parts) == 2 else 0
    try:
        number = Decimal(parts[0]) * (Decimal(10) ** exponent)
    except InvalidOperation:
        raise _fail(path, f"cannot read {value!r}") from None
    if not number.is_finite() or number < 0 or number != number.to_integral_value():
        raise _fail(path, f"{value!r} is not a whole, non-negative number of wei")
    return int(number)


def _address(value: Any, path: str) -> bytes:
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise _fail(path, "expected a 0x-prefixed 20-byte hex address")
    return bytes.fromhex(value[2:])


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(path, "expected a list")
    return value


def _addresses(value: Any, path: str) -> frozenset[bytes]:
    return frozenset(_address(v, f"{path}[{i}]") for i, v in enumerate(_list(value, path)))


MAX_APPROVAL_TIMEOUT = 3600
DEFAULT_APPROVAL_TIMEOUT = 300
_TX_FIELDS = {"approval", "chain_ids", "to", "to_deny", "contract_creation", "selectors", "value_max", "window", "gas_max",
              "max_fee_per_gas", "max_priority_fee_per_gas", "authorization_targets", "blob_txs"}
_MESSAGE_FIELDS = {"chain_ids", "messages", "typed_data_domains"}
_COMMON = {"name", "accounts", "action", "kind", "comment"}


def _accounts(value: Any, path: str, groups: dict[str, frozenset[bytes]]) -> frozenset[bytes] | None:
    if value == "*":
        return None
    found: set[bytes] = set()
    for i, item in enumerate(_list(value, path)):
        if item == "*":
            return None
        if isinstance(item, str) and item.startswith("group:"):
            name = item[6:]
            if name not in groups:
                raise _fail(f"{path}[{i}]", f"no group {name!r} in groups")
            found |= groups[name]
        else:
            found.add(_address(item, f"{path}[{i}]"))
    if not found:
        raise _fail(path, "names no account (use \"*\" for every account)")
    return frozenset(found)


def _rule(value: Any, index: int, groups: dict[str, frozenset[bytes]], names: set[str]) -> Rule:
    path = f"rules[{index}]"
    raw = _keys(value, path, _COMMON | _TX_FIELDS | _MESSAGE_FIELDS, {"name", "accounts"})
    name = raw["name"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _fail(f"{path}.name", "expected 1..64 characters of A-Z a-z 0-9 _ . : -")
    if name in names:
        raise _fail(f"{path}.name", f"{name!r} is used by another rule")
    names.add(name)
    action = raw.get("action", "allow")
    if action not in ("allow", "deny"):
        raise _fail(f"{path}.action", 'expected "allow" or "deny"')
    kind = raw.get("kind", "transaction")
    if kind not in ("transaction", "message"):
        raise _fail(f"{path}.kind", 'expected "transaction" or "message"')
    allowed = _COMMON | (_TX_FIELDS if kind == "transaction" else _MESSAGE_FIELDS)
    for key in raw:
        if key not in allowed:
            raise _fail(f"{path}.{key}", f"does not apply to a {kind} rule")
    fields: dict[str, Any] = {}
    if "chain_ids" in raw:
        fields["chain_ids"] = frozenset(_int(v, f"{path}.chain_ids[{i}]", minimum=1)
                                        for i, v in enumerate(_list(raw["chain_ids"], f"{path}.chain_ids")))
    for key in ("to", "authorization_targets"):
        if key in raw:
            fields[key] = _addresses(raw[key], f"{path}.{key}")
    if "to_deny" in raw:
        fields["to_deny"] = _addresses(raw["to_deny"], f"{path}.to_deny")
    for key in ("contract_creation", "blob_txs"):
        if key in raw:
            fields[key] = _bool(raw[key], f"{path}.{key}")
    if "selectors" in raw:
        selectors: dict[bytes | None, frozenset[bytes]] = {}
        table = _keys(raw["selectors"], f"{path}.selectors", set(raw["selectors"]) if isinstance(raw["selectors"], dict) else set())
        for dest, items in table.items():
            where = f"{path}.selectors[{dest!r}]"
            key_: bytes | None = None if dest == "*" else _address(dest, where)
            chosen = set()
            for i, s in enumerate(_list(items, where)):
                if not isinstance(s, str) or not _SELECTOR.fullmatch(s):
                    raise _fail(f"{where}[{i}]", "expected a 4-byte selector like 0xa9059cbb")
                chosen.add(bytes.fromhex(s[2:]))
            selectors[key_] = frozenset(chosen)
        fields["selectors"] = selectors
    for key in ("value_max", "gas_max", "max_fee_per_gas", "max_priority_fee_per_gas"):
        if key in raw:
            fields[key] = amount(raw[key], f"{path}.{key}")
    if "window" in raw:
        listed = isinstance(raw["window"], list)
        windows = []
        for i, w in enumerate(raw["window"] if listed else [raw["window"]]):
            where = f"{path}.window[{i}]" if listed else f"{path}.window"
            w = _keys(w, where, {"value_max", "seconds", "per"}, {"value_max", "seconds"})
            per = w.get("per", "account")
            if per not in ("account", "group"):
                raise _fail(f"{where}.per", 'expected "account" or "group"')
            seconds = _int(w["seconds"], f"{where}.seconds", minimum=1)
            if seconds > 366 * 86400:
                raise _fail(f"{where}.seconds", "at most a year")
            windows.append(Window(amount(w["value_max"], f"{where}.value_max"), seconds, per))
        fields["windows"] = tuple(windows)
    if "approval" in raw:
        a = _keys(raw["approval"], f"{path}.approval", {"above", "approvers", "timeout"})
        approvers = _int(a.get("approvers", 1), f"{path}.approval.approvers", minimum=1)
        if approvers > 16:
            raise _fail(f"{path}.approval.approvers", "at most 16")
        timeout = _int(a.get("timeout", DEFAULT_APPROVAL_TIMEOUT), f"{path}.approval.timeout", minimum=1)
        if timeout > MAX_APPROVAL_TIMEOUT:
            raise _fail(f"{path}.approval.timeout", f"at most {MAX_APPROVAL_TIMEOUT} seconds")
        fields["approval"] = Approval(amount(a.get("above", 0), f"{path}.approval.above"), approvers, timeout)
    if "messages" in raw:
        kinds = set()
        for i, m in enumerate(_list(raw["messages"], f"{path}.messages")):
            if m not in MESSAGE_KINDS:
                raise _fail(f"{path}.messages[{i}]", f"expected one of {sorted(MESSAGE_KINDS)}")
            kinds.add(m)
        fields["messages"] = frozenset(kinds)
    if "typed_data_domains" in raw:
        domains = []
        for i, d in enumerate(_list(raw["typed_data_domains"], f"{path}.typed_data_domains")):
            where = f"{path}.typed_data_domains[{i}]"
            d = _keys(d, where, {"chainId", "verifyingContract", "name"})
            if not d:
                raise _fail(where, "names nothing: give chainId, verifyingContract and/or name")
            name_ = d.get("name")
            if name_ is not None and not isinstance(name_, str):
                raise _fail(f"{where}.name", "expected a string")
            domains.append(Domain(
                _int(d["chainId"], f"{where}.chainId", minimum=1) if "chainId" in d else None,
                _address(d["verifyingContract"], f"{where}.verifyingContract") if "verifyingContract" in d else None,
                name_,
            ))
        fields["typed_data_domains"] = tuple(domains)
    if action == "deny":
        for key in ("approval", "value_max", "window", "gas_max", "max_fee_per_gas", "max_priority_fee_per_gas", "to_deny",
                    "authorization_targets", "typed_data_domains"):
            if key in raw:
                raise _fail(f"{path}.{key}", "a deny rule names what it denies (chain_ids, to, selectors, "
                                             "contract_creation, blob_txs, messages); limits belong in allow rules")
    if kind == "message" and action == "allow" and not fields.get("messages"):
        raise _fail(f"{path}.messages", "an allow rule for messages lists the kinds it allows")
    return Rule(name=name, index=index, action=action, kind=kind,
                accounts=_accounts(raw["accounts"], f"{path}.accounts", groups), **fields)


def parse_policy(document: Any) -> Policy:
    raw = _keys(document, "policy", {"version", "groups", "rules", "nonce_guard", "comment"}, {"version", "rules"})
    if raw["version"] != POLICY_VERSION:
        raise _fail("version", f"expected {POLICY_VERSION}")
    groups: dict[str, frozenset[bytes]] = {}
    if "groups" in raw:
        table = raw["groups"]
        if not isinstance(table, dict):
            raise _fail("groups", "expected an object")
        for name, members in table.items():
            if not _NAME.fullmatch(name):
                raise _fail(f"groups.{name}", "bad group name")
            groups[name] = _addresses(members, f"groups.{name}")
    rules = _list(raw["rules"], "rules")
    if len(rules) > MAX_RULES:
        raise _fail("rules", f"at most {MAX_RULES} rules")
    names: set[str] = set()
    parsed = tuple(_rule(r, i, groups, names) for i, r in enumerate(rules))
    guard = _bool(raw.get("nonce_guard", True), "nonce_guard")
    return Policy(parsed, guard, groups)
