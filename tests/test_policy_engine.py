"""The custody policy engine (core/policy), pure: schema errors name the field, deny wins, default deny,
each transaction and message condition, rolling windows under an injected clock, the nonce guard, and the
admin-signature check against eth-account's EIP-712 signatures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_utils import keccak

from clave.cli.policy import load_document
from clave.core.policy import authority
from clave.core.policy.engine import Denied, PolicyState, evaluate_message, evaluate_tx
from clave.core.policy.schema import PolicyError, amount, canonical_json, parse_policy, parse_policy_bytes

A = bytes.fromhex("aa" * 20)
B = bytes.fromhex("bb" * 20)
DEST = bytes.fromhex("d0" * 20)
OTHER = bytes.fromhex("0e" * 20)
ETHER = 10**18


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def _tx(value: int = 0, to: bytes | None = DEST, nonce: int = 0, **extra: Any) -> dict[str, Any]:
    tx = {"type": 2, "chainId": 1, "nonce": nonce, "gas": 21000, "value": value, "to": to, "data": b"",
          "maxFeePerGas": 30 * 10**9, "maxPriorityFeePerGas": 10**9, "accessList": []}
    tx.update(extra)
    return tx


def _check(policy: Any, tx: dict[str, Any], state: PolicyState | None = None, *, account: bytes = A,
           now: float = 1000.0, digest: bytes | None = None) -> str:
    state = state if state is not None else PolicyState()
    decision = evaluate_tx(policy, state, account, tx, digest or keccak(repr(sorted(tx.items())).encode()), now)
    decision.commit(now)
    return decision.rule


def _denied(policy: Any, tx: dict[str, Any], state: PolicyState | None = None, **kw: Any) -> tuple[str, str]:
    with pytest.raises(Denied) as info:
        _check(policy, tx, state, **kw)
    assert info.value.message == "request denied" and info.value.code == -32000
    return info.value.rule, info.value.reason


def _policy(*rules: dict[str, Any], **top: Any) -> Any:
    return parse_policy({"version": 1, "rules": list(rules), **top})


@pytest.mark.parametrize(("document", "error"), [
    ({"rules": []}, "policy.version: required"),
    ({"version": 2, "rules": []}, "version: expected 1"),
    ({"version": 1, "rules": [{"name": "r", "accounts": "*", "value_max": "1 banana"}]},
     "rules[0].value_max: cannot read '1 banana'"),
    ({"version": 1, "rules": [{"name": "r", "accounts": "*"}, {"name": "r", "accounts": "*"}]},
     "rules[1].name: 'r' is used by another rule"),
    ({"version": 1, "rules": [{"name": "r", "accounts": ["0x12"]}]}, "rules[0].accounts[0]: expected a 0x"),
    ({"version": 1, "rules": [{"name": "r", "accounts": ["group:hot"]}]}, "rules[0].accounts[0]: no group 'hot'"),
    ({"version": 1, "rules": [{"name": "r", "accounts": "*", "tos": []}]}, "rules[0].tos: unknown field"),
    ({"version": 1, "rules": [{"name": "r", "accounts": "*", "kind": "message", "to": []}]},
     "rules[0].to: does not apply to a message rule"),
    ({"version": 1, "rules": [{"name": "r", "accounts": "*", "window": {"value_max": 1}}]},
     "rules[0].window.seconds: required"),
    ({"version": 1, "rules": [{"name": "r", "accounts": "*", "selectors": {_hex(DEST): ["0x1234"]}}]},
     "rules[0].selectors['0x" + DEST.hex() + "'][0]: expected a 4-byte selector"),
    ({"version": 1, "rules": [{"name": "r", "accounts": "*", "action": "deny", "value_max": 1}]},
     "rules[0].value_max: a deny rule names what it denies"),
    ({"version": 1, "rules": [{"name": "r", "accounts": "*", "kind": "message"}]},
     "rules[0].messages: an allow rule for messages lists the kinds"),
])
def test_schema_errors_name_the_field(document: Any, error: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(document)
    assert info.value.message.startswith(error), info.value.message


def test_json_syntax_errors_name_the_line_and_amounts_read_units() -> None:
    with pytest.raises(PolicyError, match="line 3 column 1"):
        parse_policy_bytes(b'{"version": 1,\n "rules": [\n}')
    assert amount("1.5 ether", "x") == 15 * 10**17
    assert amount("30 gwei", "x") == 30 * 10**9
    assert amount("12", "x") == amount(12, "x") == 12
    with pytest.raises(PolicyError, match="not a whole"):
        amount("0.5 wei", "x")


def test_policy_files_name_the_line_of_a_bad_field(tmp_path: Path) -> None:
    yaml_file = tmp_path / "p.yaml"
    yaml_file.write_text("version: 1\nrules:\n  - name: hot\n    accounts: '*'\n    value_max: lots\n")
    with pytest.raises(SystemExit, match=r"p.yaml:5: rules\[0\].value_max: cannot read 'lots'"):
        load_document(str(yaml_file))
    json_file = tmp_path / "p.json"
    json_file.write_text('{"version": 1,\n "rules": [\n  {"name": "hot",\n   "accounts": "*",\n   "gas_max": -1}]}')
    with pytest.raises(SystemExit, match=r"p.json:5: rules\[0\].gas_max: must not be negative"):
        load_document(str(json_file))
    # YAML and JSON of the same policy are the same document (same canonical bytes, same hash).
    yaml_file.write_text("version: 1\nrules:\n  - name: hot\n    accounts: '*'\n    value_max: 1 ether\n")
    json_file.write_text('{"rules": [{"value_max": "1 ether", "accounts": "*", "name": "hot"}], "version": 1}')
    assert load_document(str(yaml_file))[0] == load_document(str(json_file))[0]


def test_default_deny_and_deny_wins() -> None:
    policy = _policy({"name": "pay", "accounts": [_hex(A)], "to": [_hex(DEST)]},
                     {"name": "no-other", "accounts": "*", "action": "deny", "to": [_hex(OTHER)]},
                     {"name": "wide", "accounts": "*"})
    assert _check(policy, _tx(to=DEST)) == "pay"
    assert _check(policy, _tx(to=bytes(20)), account=B) == "wide"
    assert _denied(policy, _tx(to=OTHER)) == ("no-other", "deny rule")  # "wide" would allow it: deny wins
    empty = _policy()
    assert _denied(empty, _tx()) == ("default-deny", "no rule allows transactions for this account")
    only_a = _policy({"name": "pay", "accounts": [_hex(A)]})
    assert _denied(only_a, _tx(), account=B)[0] == "default-deny"
    in_rule = _policy({"name": "pay", "accounts": "*", "to_deny": [_hex(OTHER)]})
    assert _denied(in_rule, _tx(to=OTHER)) == ("pay", "to_deny")


def test_transaction_conditions() -> None:
    policy = _policy({"name": "r", "accounts": "*", "chain_ids": [1], "gas_max": 100000,
                      "max_fee_per_gas": "50 gwei", "max_priority_fee_per_gas": "2 gwei",
                      "selectors": {_hex(DEST): ["0xa9059cbb"]}})
    assert _check(policy, _tx(data=bytes.fromhex("a9059cbb") + bytes(64))) == "r"
    assert _check(policy, _tx()) == "r"  # a plain transfer carries no selector
    assert _denied(policy, _tx(data=bytes.fromhex("095ea7b3") + bytes(64))) == ("r", "selectors")
    assert _denied(policy, _tx(to=OTHER, data=b"\x01\x02\x03\x04")) == ("r", "selectors")
    assert _denied(policy, _tx(chainId=5)) == ("r", "chain_ids")
    assert _denied(policy, _tx(gas=200000)) == ("r", "gas_max")
    assert _denied(policy, _tx(maxFeePerGas=51 * 10**9)) == ("r", "max_fee_per_gas")
    assert _denied(policy, _tx(maxPriorityFeePerGas=3 * 10**9)) == ("r", "max_priority_fee_per_gas")
    legacy = {"type": 0, "chainId": 1, "nonce": 0, "gas": 21000, "value": 0, "to": DEST, "data": b"",
              "gasPrice": 60 * 10**9}
    assert _denied(policy, legacy) == ("r", "max_fee_per_gas")
    assert _denied(policy, _tx(to=None)) == ("r", "contract_creation")
    creation = _policy({"name": "deploy", "accounts": "*", "contract_creation": True, "to": []})
    assert _check(creation, _tx(to=None)) == "deploy"
    assert _denied(creation, _tx(to=DEST)) == ("deploy", "to")  # an empty allow-list allows nothing
    blob = _tx(type=3, maxFeePerBlobGas=1, blobVersionedHashes=[b"\x01" + bytes(31)])
    assert _denied(_policy({"name": "r", "accounts": "*"}), blob) == ("r", "blob_txs")
    assert _check(_policy({"name": "r", "accounts": "*", "blob_txs": True}), blob) == "r"
    auth = {"chainId": 1, "address": DEST, "nonce": 0, "yParity": 0, "r": 1, "s": 1}
    setcode = _tx(type=4, authorizationList=[auth])
    assert _denied(_policy({"name": "r", "accounts": "*"}), setcode) == ("r", "authorization_targets")
    targets = _policy({"name": "r", "accounts": "*", "authorization_targets": [_hex(DEST)]})
    assert _check(targets, setcode) == "r"
    assert _denied(targets, _tx(type=4, authorizationList=[{**auth, "address": OTHER}])) == ("r", "authorization_targets")


def test_value_caps_and_rolling_windows_per_account_and_group() -> None:
    policy = _policy({"name": "hot", "accounts": [_hex(A), _hex(B)], "value_max": "1 ether",
                      "window": [{"value_max": "2 ether", "seconds": 3600},
                                 {"value_max": "3 ether", "seconds": 60, "per": "group"}]})
    state = PolicyState()
    assert _check(policy, _tx(ETHER, nonce=0), state, now=1000) == "hot"
    assert _denied(policy, _tx(ETHER * 3 // 2, nonce=1), state, now=1001) == ("hot", "value_max")
    assert _check(policy, _tx(ETHER, nonce=1), state, now=1002) == "hot"
    assert _denied(policy, _tx(1, nonce=2), state, now=1003) == ("hot", "window")  # A's own 2 ether an hour
    assert _check(policy, _tx(ETHER, nonce=0), state, account=B, now=1004) == "hot"
    assert _denied(policy, _tx(ETHER, nonce=1), state, account=B, now=1005) == ("hot", "window")  # the group's 3
    # The windows roll: the group's after 60 s (B has 1 ether of its own left), A's after an hour.
    assert _check(policy, _tx(ETHER, nonce=1), state, account=B, now=1065) == "hot"
    assert _denied(policy, _tx(1, nonce=2), state, now=1070) == ("hot", "window")
    assert _check(policy, _tx(ETHER, nonce=2), state, now=1000 + 3600 + 1) == "hot"
    # Several allow rules: the first that permits the request allows it, and only its windows are charged.
    two = _policy({"name": "small", "accounts": "*", "value_max": 10, "window": {"value_max": 20, "seconds": 60}},
                  {"name": "big", "accounts": "*", "value_max": 100})
    state = PolicyState()
    assert [_check(two, _tx(10, nonce=n), state) for n in range(3)] == ["small", "small", "big"]
    assert _denied(two, _tx(101, nonce=4), state) == ("small", "value_max")


def test_nonce_guard_needs_a_ten_percent_bump_of_both_fees() -> None:
    policy = _policy({"name": "r", "accounts": "*"})
    state = PolicyState()
    first = _tx(1, nonce=9, maxFeePerGas=100, maxPriorityFeePerGas=10)
    _check(policy, first, state, digest=b"1" * 32)
    _check(policy, first, state, digest=b"1" * 32)  # the same transaction again
    assert _denied(policy, _tx(2, nonce=9, maxFeePerGas=100, maxPriorityFeePerGas=10), state, digest=b"2" * 32)[0] == "nonce_guard"
    assert _denied(policy, _tx(2, nonce=9, maxFeePerGas=110, maxPriorityFeePerGas=10), state, digest=b"2" * 32)[0] == "nonce_guard"
    _check(policy, _tx(2, nonce=9, maxFeePerGas=110, maxPriorityFeePerGas=11), state, digest=b"3" * 32)
    assert _denied(policy, _tx(2, nonce=9, maxFeePerGas=115, maxPriorityFeePerGas=12), state, digest=b"4" * 32)[0] == "nonce_guard"
    _check(policy, _tx(1, nonce=9, chainId=5, maxFeePerGas=1, maxPriorityFeePerGas=1), state, digest=b"5" * 32)  # another chain
    unguarded = _policy({"name": "r", "accounts": "*"}, nonce_guard=False)
    _check(unguarded, _tx(2, nonce=9), state, digest=b"6" * 32)
    # An hour later (NONCE_HORIZON) the guard has forgotten nonce 9: memory stays bounded.
    _check(policy, _tx(1, nonce=10), state, digest=b"7" * 32, now=1000 + 3601)
    assert (A, 1, 9) not in state.nonces and (A, 1, 10) in state.nonces


def test_messages_and_typed_data_domains() -> None:
    policy = _policy({"name": "m", "accounts": "*", "kind": "message", "messages": ["personal", "typed_data"],
                      "typed_data_domains": [{"chainId": 1, "verifyingContract": _hex(DEST)}, {"name": "Permit2"}]},
                     {"name": "p", "accounts": [_hex(B)], "kind": "message", "messages": ["personal"]},
                     {"name": "no-clique", "accounts": "*", "kind": "message", "action": "deny", "messages": ["clique"]})
    typed = {"domain": {"chainId": "0x1", "verifyingContract": _hex(DEST).upper().replace("0X", "0x")}}
    assert evaluate_message(policy, A, "typed_data", typed).rule == "m"
    assert evaluate_message(policy, A, "typed_data", {"domain": {"name": "Permit2"}}).rule == "m"
    with pytest.raises(Denied, match="request denied") as info:
        evaluate_message(policy, A, "typed_data", {"domain": {"chainId": 1, "verifyingContract": _hex(OTHER)}})
    assert (info.value.rule, info.value.reason) == ("m", "typed_data_domains")
    with pytest.raises(Denied) as info:
        evaluate_message(policy, A, "personal")  # "m" constrains domains: a personal message has none
    assert info.value.rule == "m"
    assert evaluate_message(policy, B, "personal").rule == "p"
    with pytest.raises(Denied) as info:
        evaluate_message(policy, B, "clique")
    assert info.value.rule == "no-clique"
    with pytest.raises(Denied) as info:
        evaluate_message(_policy(), A, "validator")
    assert info.value.rule == "default-deny"


def test_admin_signatures_k_of_n_from_eth_account() -> None:
    admins = [Account.from_key(keccak(f"engine admin {i}".encode())) for i in range(3)]
    addresses = [bytes.fromhex(a.address[2:]) for a in admins]
    stranger = Account.from_key(keccak(b"engine stranger"))
    set_id = authority.admin_set_id(addresses, 2)
    doc_hash = authority.policy_hash(canonical_json({"version": 1, "rules": []}))
    typed = authority.typed_message("PolicyUpdate", set_id, 7, doc_hash)
    digest = authority.digest("PolicyUpdate", set_id, 7, doc_hash)

    def sig(account: Any) -> bytes:
        return bytes(account.sign_typed_data(full_message=typed).signature)

    assert authority.require_admins(digest, [sig(admins[0]), sig(admins[2])], addresses, 2, "policy") == sorted(
        [addresses[0], addresses[2]])
    with pytest.raises(authority.AuthorizationError, match=r"1 admin signature\(s\), 2 needed"):
        authority.require_admins(digest, [sig(admins[0]), sig(admins[0])], addresses, 2, "policy")  # same admin twice
    with pytest.raises(authority.AuthorizationError, match="not admins"):
        authority.require_admins(digest, [sig(admins[0]), sig(stranger)], addresses, 2, "policy")
    other = authority.digest("PolicyUpdate", authority.admin_set_id(addresses, 1), 7, doc_hash)
    with pytest.raises(authority.AuthorizationError, match="0 admin"):  # signed for another admin set id
        authority.require_admins(other, [sig(admins[0]), sig(admins[1])], addresses, 2, "policy")


def test_the_readme_example_policy_parses_and_means_what_it_says() -> None:
    import yaml

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("### Example: hot, warm and cold", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    policy = parse_policy(yaml.safe_load(block))
    hot, warm, cold = (bytes.fromhex(c * 40) for c in "134")
    payout = bytes.fromhex("703c4b2bD70c169f5717101CaeE543299Fc946C7")
    transfer = bytes.fromhex("a9059cbb") + bytes(64)
    assert _check(policy, _tx(ETHER, to=payout, data=transfer), account=hot) == "hot-payouts"
    assert _denied(policy, _tx(ETHER, to=bytes.fromhex("99" * 20)), account=hot) == ("no-mixer", "deny rule")
    assert _denied(policy, _tx(ETHER, to=payout, data=transfer), account=cold)[0] == "default-deny"
    assert _check(policy, _tx(40 * ETHER, to=bytes.fromhex("55" * 20)), account=warm) == "warm-to-exchange"
    assert evaluate_message(policy, hot, "typed_data", {"domain": {"chainId": 1, "name": "Permit2"}}).rule == "hot-login"
