"""Key-policy evaluation for the KMS emulator: the part of IAM that Nitro key policies use.

Supported: Effect Allow/Deny, Action (string or list, `*`/`?` wildcards, case-insensitive), and
Condition with StringEquals, StringEqualsIgnoreCase, StringNotEquals, StringNotEqualsIgnoreCase,
StringLike (and `…IfExists` forms), values a string or a list (any may match). Anything else is
refused at PutKeyPolicy time (MalformedPolicyDocumentException), so a policy never silently means
less than it says. An explicit Deny wins; otherwise some Allow must match; otherwise denied.

Principals are not evaluated: the emulator has no identities (SigV4 is not checked), so every caller
is every principal. What the emulator exists to check is the attestation conditions:
`kms:RecipientAttestation:ImageSha384` (= PCR0) and `kms:RecipientAttestation:PCR<n>`, present in the
request context only when the request carried a verified Recipient attestation document. As in IAM,
a missing key fails every positive operator and satisfies every negated one.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clave.core.errors import RequestError

ATTESTATION_PREFIX = "kms:RecipientAttestation:"
_OPERATORS = {
    "StringEquals": (False, False, False),  # (negated, ignore_case, like)
    "StringEqualsIgnoreCase": (False, True, False),
    "StringNotEquals": (True, False, False),
    "StringNotEqualsIgnoreCase": (True, True, False),
    "StringLike": (False, False, True),
}


class PolicyError(RequestError, ValueError):
    """A key policy this evaluator would misread; a ValueError too, as callers have caught it."""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # why not, in terms of the policy; empty when allowed


def _as_list(value: Any, what: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise PolicyError(f"{what} must be a string or a non-empty list of strings")
    return items


def _operator(name: str) -> tuple[bool, bool, bool, bool]:
    if_exists = name.endswith("IfExists")
    base = name.removesuffix("IfExists")
    if base not in _OPERATORS:
        raise PolicyError(f"unsupported condition operator {name}")
    return (*_OPERATORS[base], if_exists)


def parse(text: str) -> dict[str, Any]:
    """Parse and validate a key policy; raise PolicyError on anything this evaluator would misread."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise PolicyError(f"policy is not JSON: {exc}") from None
    if not isinstance(doc, dict) or "Statement" not in doc:
        raise PolicyError("policy must be an object with a Statement")
    statements = doc["Statement"]
    statements = [statements] if isinstance(statements, dict) else statements
    if not isinstance(statements, list) or not statements:
        raise PolicyError("Statement must be an object or a non-empty list")
    for st in statements:
        if not isinstance(st, dict):
            raise PolicyError("each Statement must be an object")
        unsupported = {"NotAction", "NotPrincipal", "NotResource"} & st.keys()
        if unsupported:
            raise PolicyError(f"unsupported statement element(s): {sorted(unsupported)}")
        if st.get("Effect") not in ("Allow", "Deny"):
            raise PolicyError("Effect must be Allow or Deny")
        _as_list(st.get("Action"), "Action")
        cond = st.get("Condition", {})
        if not isinstance(cond, dict):
            raise PolicyError("Condition must be an object")
        for op, tests in cond.items():
            _operator(op)
            if not isinstance(tests, dict) or not tests:
                raise PolicyError(f"Condition {op} must map keys to values")
            for key, values in tests.items():
                _as_list(values, f"Condition {op} {key}")
    doc["Statement"] = statements
    return doc


def _action_matches(patterns: list[str], action: str) -> bool:
    return any(fnmatch.fnmatchcase(action.lower(), p.lower()) for p in patterns)


def _test(op: str, key: str, wanted: list[str], context: Mapping[str, str]) -> str:
    """Return "" if the condition holds, else a sentence saying why not."""
    negated, ignore_case, like, if_exists = _operator(op)
    have = context.get(key.lower())
    if have is None:
        if if_exists or negated:
            return ""
        if key.startswith(ATTESTATION_PREFIX):
            return f"{key} is required, but the request carried no Recipient attestation document"
        return f"{key} is required, but the request has no value for it"

    def eq(w: str) -> bool:
        if like:
            return fnmatch.fnmatchcase(have, w)
        return have.lower() == w.lower() if ignore_case else have == w

    hit = any(eq(w) for w in wanted)
    if hit != negated:
        return ""
    if negated:
        return f"{op} {key}: the value {have} is excluded"
    return f"{op} {key}: policy expects {' or '.join(wanted)}, the attestation document has {have}"


def _conditions_fail(st: Mapping[str, Any], context: Mapping[str, str]) -> list[str]:
    fails = []
    for op, tests in st.get("Condition", {}).items():
        for key, values in tests.items():
            why = _test(op, key, _as_list(values, key), context)
            if why:
                fails.append(why)
    return fails


def evaluate(doc: Mapping[str, Any], action: str, context: Mapping[str, str]) -> Decision:
    """Decide `action` (e.g. "kms:Decrypt") given the request context (keys compared case-insensitively)."""
    ctx = {k.lower(): v for k, v in context.items()}
    misses: list[str] = []
    allowed = False
    for i, st in enumerate(doc["Statement"]):
        if not _action_matches(_as_list(st["Action"], "Action"), action):
            continue
        fails = _conditions_fail(st, ctx)
        name = st.get("Sid") or f"#{i}"
        if st["Effect"] == "Deny" and not fails:
            return Decision(False, f"statement {name} explicitly denies {action}")
        if st["Effect"] == "Allow":
            if not fails:
                allowed = True
            else:
                misses.append(f"statement {name}: " + "; ".join(fails))
    if allowed:
        return Decision(True, "")
    if not misses:
        return Decision(False, f"no statement of the key policy allows {action}")
    return Decision(False, f"no statement of the key policy allows {action} ({' | '.join(misses)})")


def unconditionally_allows(doc: Mapping[str, Any], action: str) -> bool:
    """True if an Allow grants `action` with no condition (the KMS lockout safety check)."""
    return evaluate(doc, action, {}).allowed


def attestation_context(pcrs: Mapping[int, bytes]) -> dict[str, str]:
    """Condition keys KMS derives from a verified attestation document (hex, lowercase)."""
    ctx = {f"{ATTESTATION_PREFIX}PCR{i}": v.hex() for i, v in pcrs.items()}
    if 0 in pcrs:
        ctx[f"{ATTESTATION_PREFIX}ImageSha384"] = pcrs[0].hex()
    return ctx
