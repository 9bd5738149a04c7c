"""account_signData / account_ecRecover request handling."""

from __future__ import annotations

import json
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from clave.core.errors import RequestError
from clave.core.eth.messages import text_hash
from clave.sidecar.requests.signdata import (
    ec_recover,
    ec_recover_check,
    parse_media_type,
    parse_sign_data,
)
from tests.vectors import vector

VALIDATOR = "0x" + "ab" * 20


def _cases() -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in json.loads(vector("clef/extapi_vectors.json").read_text())["cases"]}


def _error(content_type: str, data: Any) -> str:
    with pytest.raises(RequestError) as info:
        parse_sign_data(content_type, data)
    return info.value.message


@pytest.mark.parametrize(
    ("content_type", "media"),
    [
        ("text/plain", "text/plain"),
        ("TEXT/Plain; charset=UTF-8", "text/plain"),
        ("  data/typed  ", "data/typed"),
        ("text/plain;", "text/plain"),  # a trailing semicolon is ignored
        ('text/plain; a="x;y"; b=c', "text/plain"),
        ("text/plain; a=1; a=1", "text/plain"),  # equal duplicates are tolerated
        ("text", "text"),
    ],
)
def test_media_types(content_type, media):
    assert parse_media_type(content_type) == media


@pytest.mark.parametrize(
    ("content_type", "error"),
    [
        ("", "mime: no media type"),
        ("   ", "mime: no media type"),
        ("/plain", "mime: no media type"),
        ("text plain", "mime: expected slash after first token"),
        ("text/", "mime: expected token after slash"),
        ("text/plain/x", "mime: unexpected content after media subtype"),
        ("text/plain; charset", "mime: invalid media parameter"),
        ("text/plain; a=1; a=2", "mime: duplicate parameter name"),
    ],
)
def test_media_type_errors(content_type, error):
    with pytest.raises(RequestError, match=f"^{error}$"):
        parse_media_type(content_type)


def test_text_plain_and_unknown_types_are_personal_messages():
    for content_type in ("text/plain", "data/plain", "application/json", "x/y; q=1"):
        req = parse_sign_data(content_type, "0xaabbccdd")
        assert (req.op, req.data, req.legacy_v) == ("personal", b"\xaa\xbb\xcc\xdd", True)
        assert req.as_tuple() == ("personal", b"\xaa\xbb\xcc\xdd")
    assert parse_sign_data("text/plain", "0x").data == b""


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (1, "wrong type float64"),
        (None, "wrong type <nil>"),
        (True, "wrong type bool"),
        ({"a": 1}, "wrong type map[string]interface {}"),
        (["0x00"], "wrong type []interface {}"),
        ("", "empty hex string"),
        ("aabb", "hex string without 0x prefix"),
        ("0xabc", "hex string of odd length"),
        ("0xzz", "invalid hex string"),
    ],
)
def test_hex_data_errors(data, error):
    for content_type in ("text/plain", "data/typed", "application/x-clique-header"):
        assert _error(content_type, data) == error


def test_validator():
    req = parse_sign_data("data/validator", {"address": VALIDATOR, "message": "0x0102"})
    assert req.as_tuple() == ("validator", bytes.fromhex("ab" * 20), b"\x01\x02")
    long = parse_sign_data("data/validator", {"address": "0x" + "11" * 12 + "ab" * 20, "message": "0x01"})
    assert long.validator == bytes.fromhex("ab" * 20)  # BytesToAddress keeps the last 20 bytes
    short = parse_sign_data("data/validator", {"address": "0x01", "message": "0x01"})
    assert short.validator == bytes(19) + b"\x01"


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ("0x00", "validator input is not a map[string]interface{}"),
        ([], "validator input is not a map[string]interface{}"),
        ({"message": "0x01"}, "validator address error: wrong type <nil>"),
        (
            {"Address": VALIDATOR, "message": "0x01"},
            "validator address error: wrong type <nil>",
        ),  # map keys are exact
        ({"address": 5, "message": "0x01"}, "validator address error: wrong type float64"),
        ({"address": "ab", "message": "0x01"}, "validator address error: hex string without 0x prefix"),
        ({"address": "0x", "message": "0x01"}, "validator address is undefined"),
        ({"address": VALIDATOR}, "message error: wrong type <nil>"),
        ({"address": VALIDATOR, "message": "0x1"}, "message error: hex string of odd length"),
        ({"address": VALIDATOR, "message": "0x"}, "message is undefined"),
    ],
)
def test_validator_errors(data, error):
    assert _error("data/validator", data) == error


def test_typed_data_is_the_json_text_in_hex():
    typed = {"types": {"EIP712Domain": []}, "primaryType": "EIP712Domain", "domain": {}, "message": {}}
    req = parse_sign_data("data/typed", "0x" + json.dumps(typed).encode().hex())
    assert req.as_tuple() == ("typed", typed)
    assert req.legacy_v
    # an object is not accepted: clef wants the hex of the JSON text
    assert _error("data/typed", typed) == "wrong type map[string]interface {}"
    assert _error("data/typed", "0x") == "unexpected end of JSON input"
    assert _error("data/typed", "0x" + b'{"types":'.hex()) == "unexpected end of JSON input"
    assert (
        _error("data/typed", "0x" + b"nope".hex()) == "invalid character 'n' looking for beginning of value"
    )
    assert _error("data/typed", "0x" + b"{} x".hex()) == "invalid character 'x' after top-level value"


def test_typed_data_digest_matches_readme_vector():
    from eth_utils import keccak

    from clave.core.eth.typed_data import typed_data_preimage

    case = _cases()["clef README account_signTypedData (EIP-712 Mail), key = keccak256('cow')"]
    text = json.dumps(case["request"]["params"][1])
    req = parse_sign_data("data/typed", "0x" + text.encode().hex())
    assert "0x" + keccak(typed_data_preimage(req.typed_data)).hex() == case["expect_digest"]


def test_clique_header_is_passed_through():
    req = parse_sign_data("application/x-clique-header", "0xc0")
    assert req.as_tuple() == ("clique", b"\xc0")
    assert not req.legacy_v  # clique signatures keep V as 0/1


def test_personal_vectors_sign_as_published():
    cases = _cases()
    for name in (
        "eth_sign 'hello world' (EIP-191 personal message, V 27/28)",
        "same message through account_signData text/plain (what geth sends for eth_sign)",
    ):
        case = cases[name]
        params = case["request"]["params"]
        data = params[-1]
        req = parse_sign_data("text/plain", data) if len(params) == 2 else parse_sign_data(params[0], data)
        assert req.op == "personal"
        signed = Account.sign_message(encode_defunct(primitive=req.data), case["key"])
        assert "0x" + bytes(signed.signature).hex() == case["expect_result"]


def test_ec_recover_readme_vector():
    case = _cases()[
        "clef README account_signData data/plain (unknown content types fall back to text/plain); recover-only"
    ]
    data = bytes.fromhex(case["request"]["params"][2][2:])
    sig = bytes.fromhex(case["expect_result"][2:])
    assert "0x" + ec_recover(data, sig).hex() == case["expect_signer"].lower()
    assert ec_recover(data, sig) == bytes.fromhex("1923f626bb8dc025849e00f99c25fe2b2f7fb0db")


def test_ec_recover_checks():
    with pytest.raises(RequestError, match="^signature must be 65 bytes long$"):
        ec_recover_check(bytes(64))
    with pytest.raises(RequestError, match=r"^invalid Ethereum signature \(V is not 27 or 28\)$"):
        ec_recover_check(bytes(64) + b"\x01")
    assert ec_recover_check(bytes(64) + b"\x1c")[64] == 1
    with pytest.raises(RequestError, match="^recovery failed$"):
        ec_recover(b"x", bytes(64) + b"\x1b")  # r = s = 0


def test_text_hash_matches_datatypes_md():
    assert (
        text_hash(b"hello world").hex() == "d9eba16ed0ecae432b71fe008c98cc872bb4cc214d3220a36f365326cf807d68"
    )
