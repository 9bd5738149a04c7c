"""EIP-712 with go-ethereum's rules: geth's 123 vectors, clef's pass/fail files, geth's error texts."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from coincurve import PrivateKey
from eth_account.messages import encode_typed_data

from clave.core.errors import RequestError
from clave.core.eth.hashing import keccak256
from clave.core.eth.typed_data import (
    TypedDataDecodeError,
    domain_separator,
    encode_data,
    encode_type,
    hash_struct,
    typed_data_preimage,
)
from tests.vectors import ABSENT, available, names, vector

GETH_CASES = "geth/eip712/typed-data.json"
CLEF_DIR = "clef/eip712"


def _geth_cases() -> list[dict[str, Any] | None]:
    return json.loads(vector(GETH_CASES).read_text()) if available(GETH_CASES) else []


def _clef_files(expfail: bool) -> list[str]:
    return [n for n in names(CLEF_DIR) if n != ABSENT and n.startswith("expfail_") == expfail]


@pytest.mark.parametrize("case", _geth_cases() or [None], ids=lambda c: c["name"] if c else "absent")
def test_geth_typed_data_vectors(case: dict[str, Any] | None) -> None:
    vector(GETH_CASES)
    assert case is not None
    typed = {
        "types": case["types"],
        "primaryType": case["primaryType"],
        "domain": case["domain"],
        "message": case["data"],
    }
    assert "0x" + encode_data(typed, case["primaryType"], case["data"]).hex() == case["encoded"]
    assert "0x" + keccak256(typed_data_preimage(typed)).hex() == case["digest"]


def test_geth_vectors_count() -> None:
    assert len(json.loads(vector(GETH_CASES).read_text())) == 123


def _integral_floats_to_int(obj: Any) -> Any:
    """eth-account refuses 5.0 where geth (float64 everywhere) accepts it."""
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)
    if isinstance(obj, list):
        return [_integral_floats_to_int(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _integral_floats_to_int(v) for k, v in obj.items()}
    return obj


@pytest.mark.parametrize("name", _clef_files(expfail=False) or ["absent"])
def test_clef_files_encode_like_eth_account(name: str) -> None:
    typed = json.loads(vector(f"{CLEF_DIR}/{name}").read_text())
    preimage = typed_data_preimage(typed)
    m = encode_typed_data(full_message=_integral_floats_to_int(typed))
    assert preimage == b"\x19" + m.version + m.header + m.body


EXPECTED_FAILURES = {
    "expfail_arraytype_overload.json": "provided data 'map[baz:foo]' doesn't match type 'Person[]'",
    "expfail_datamismatch_1.json": "provided data 'Hello, Bob!' doesn't match type 'Person'",
    "expfail_extradata.json": "there is extra data provided in the message (3 < 4)",
    "expfail_malformeddomainkeys.json": "provided data '<nil>' doesn't match type 'address'",
    "expfail_nonexistant_type.json": 'reference type "Blahonga" is undefined',
    "expfail_nonexistant_type2.json": 'reference type "uint256 ... and now for something completely different" is undefined',
    "expfail_toolargeuint.json": "integer larger than 'uint8'",
    "expfail_toolargeuint2.json": "integer larger than 'uint8'",
    "expfail_unconvertiblefloat.json": 'invalid hex or decimal integer "255.3"',
    "expfail_unconvertiblefloat2.json": "invalid float value 255.3 for type uint8",
}


@pytest.mark.parametrize("name", _clef_files(expfail=True) or ["absent"])
def test_clef_expfail_files_are_refused(name: str) -> None:
    typed = json.loads(vector(f"{CLEF_DIR}/{name}").read_text())
    with pytest.raises(RequestError) as e:
        typed_data_preimage(typed)
    assert e.value.message == EXPECTED_FAILURES[name]


def test_clef_readme_signature() -> None:
    path = vector("clef/extapi_vectors.json")
    case = next(
        c for c in json.loads(path.read_text())["cases"] if c["request"]["method"] == "account_signTypedData"
    )
    preimage = typed_data_preimage(case["request"]["params"][1])
    assert "0x" + keccak256(preimage).hex() == case["expect_digest"]
    sig = PrivateKey(bytes.fromhex(case["key"])).sign_recoverable(preimage, hasher=keccak256)
    assert "0x" + (sig[:64] + bytes((sig[64] + 27,))).hex() == case["expect_result"]


# --- component functions (values from go-ethereum's signed_data_test.go, recomputed by eth-account) ----

MAIL: dict[str, Any] = {
    "types": {
        "EIP712Domain": [
            {"name": "name", "type": "string"},
            {"name": "version", "type": "string"},
            {"name": "chainId", "type": "uint256"},
            {"name": "verifyingContract", "type": "address"},
        ],
        "Person": [{"name": "name", "type": "string"}, {"name": "wallet", "type": "address"}],
        "Mail": [
            {"name": "from", "type": "Person"},
            {"name": "to", "type": "Person"},
            {"name": "contents", "type": "string"},
        ],
    },
    "primaryType": "Mail",
    "domain": {
        "name": "Ether Mail",
        "version": "1",
        "chainId": 1,
        "verifyingContract": "0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC",
    },
    "message": {
        "from": {"name": "Cow", "wallet": "0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826"},
        "to": {"name": "Bob", "wallet": "0xbBbBBBBbbBBBbbbBbbBbbbbBBbBbbbbBbBbbBBbB"},
        "contents": "Hello, Bob!",
    },
}


_DELETE = object()


def mail(**changes: Any) -> dict[str, Any]:
    """MAIL with changes, keyed by path: mail(message__from__name="x")."""
    typed = copy.deepcopy(MAIL)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = typed
        for p in parents:
            node = node[p]
        if value is _DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return typed


def test_components() -> None:
    assert (
        encode_type(MAIL, "Mail")
        == b"Mail(Person from,Person to,string contents)Person(string name,address wallet)"
    )
    m = encode_typed_data(full_message=MAIL)
    assert domain_separator(MAIL) == m.header
    assert hash_struct(MAIL, "Mail", MAIL["message"]) == m.body
    assert (
        keccak256(encode_type(MAIL, "Mail")).hex()
        == "a0cedeb2dc280ba39b857546d74f5549c3a1d7bdc2dd96bf881f76108e23dac2"
    )


@pytest.mark.parametrize("chain_id", [1, "1", "0x1", "0X1", "0x01", "+1"])
def test_domain_chain_id_forms(chain_id: object) -> None:
    assert domain_separator(mail(domain__chainId=chain_id)) == domain_separator(MAIL)


@pytest.mark.parametrize("value", [3, 3.0, "3", "0x3", "+3"])
def test_integer_forms(value: object) -> None:
    assert typed_data_preimage(_single("uint8", value)) == typed_data_preimage(_single("uint8", 3))


def _single(field_type: str, value: object, extra_types: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}],
            "T": [{"name": "x", "type": field_type}],
        }
        | (extra_types or {}),
        "primaryType": "T",
        "domain": {"name": "d"},
        "message": {"x": value},
    }


def test_geth_quirks_kept() -> None:
    # int8 is checked on bit length only: 255 passes, -255 too (two's complement over 256 bits).
    enc = encode_data(_single("int8", -255), "T", {"x": -255})
    assert enc[32:] == ((1 << 256) - 255).to_bytes(32, "big")
    assert encode_data(_single("int8", 255), "T", {"x": 255})[32:] == (255).to_bytes(32, "big")
    # A type without fields encodes as "Name)"; fixed array sizes are not enforced.
    assert encode_type(_single("E", {}, {"E": []}), "E") == b"E)"
    assert typed_data_preimage(_single("uint8[2]", [1, 2, 3]))
    # primaryType EIP712Domain still appends hashStruct(message).
    typed = _single("uint8", 1) | {"primaryType": "EIP712Domain", "message": {"name": "d"}}
    assert len(typed_data_preimage(typed)) == 66
    # Unknown domain keys are dropped (and bytes32 salt is accepted as a 0x string).
    assert domain_separator(mail(domain__extra="x")) == domain_separator(MAIL)


@pytest.mark.parametrize(
    "typed, message",
    [
        (mail(domain={}), "domain is undefined"),
        (mail(domain__salt="0x" + "00" * 32), "there is extra data provided in the message (4 < 5)"),
        (mail(message__from__name=_DELETE), "provided data '<nil>' doesn't match type 'string'"),
        (mail(message__contents=5), "provided data '5' doesn't match type 'string'"),
        (mail(message__from=None), "provided data '<nil>' doesn't match type 'Person'"),
        (mail(message__from__wallet="0x1234"), "provided data '0x1234' doesn't match type 'address'"),
        (
            mail(message__from__wallet=[1, "a", True]),
            "provided data '[1 a true]' doesn't match type 'address'",
        ),
        (mail(message__from__extra=1), "there is extra data provided in the message (2 < 3)"),
        (mail(types__Mail=[{"name": "", "type": "string"}]), 'type "Mail":0: empty Name'),
        (mail(types__Mail=[{"name": "x", "type": ""}]), 'type "Mail":0: empty Type'),
        (mail(types__Mail=[{"name": "x", "type": "Mail"}]), 'type "Mail" cannot reference itself'),
        (mail(types__Mail=[{"name": "x", "type": "Nope[]"}]), 'reference type "Nope[]" is undefined'),
        (mail(types__Mail=[{"name": "x", "type": "Person[x]"}]), 'unknown reference type "Person[x]"'),
        (mail(types__Mail=[{"name": "x", "type": "uint7"}]), 'reference type "uint7" is undefined'),
        (mail(domain__chainId="1.0"), 'invalid hex or decimal integer "1.0"'),
        (mail(domain__chainId="0x" + "f" * 65), 'invalid hex or decimal integer "0x' + "f" * 65 + '"'),
        (mail(domain__chainId=-1), "invalid negative value for unsigned type uint256"),
        (
            mail(domain__name=5),
            "json: cannot unmarshal number into Go struct field TypedDataDomain.domain.name of type string",
        ),
        (_single("uint8", 256), "integer larger than 'uint8'"),
        (_single("uint8", -1), "invalid negative value for unsigned type uint8"),
        (_single("uint256", 2.5), "invalid float value 2.5 for type uint256"),
        (_single("uint256", 1e20), "invalid float value 1e+20 for type uint256"),
        (_single("uint256", 10**20), "invalid float value 1e+20 for type uint256"),
        (_single("uint256", 2**53 + 1), "invalid float value 9.007199254740992e+15 for type uint256"),
        (_single("uint256", float("inf")), "json: cannot unmarshal number into Go value of type float64"),
        (_single("uint256", 10**400), "json: cannot unmarshal number into Go value of type float64"),
        (_single("uint256", True), "invalid integer value true/bool for type uint256"),
        (_single("uint256", None), "invalid integer value <nil>/<nil> for type uint256"),
        (
            _single("uint256", {"a": 1.5}),
            "invalid integer value map[a:1.5]/map[string]interface {} for type uint256",
        ),
        (_single("uint256", "0x"), 'invalid hex or decimal integer "0x"'),
        (_single("uint256", "1_000"), 'invalid hex or decimal integer "1_000"'),
        (_single("bool", "true"), "provided data 'true' doesn't match type 'bool'"),
        (_single("bytes", "abcd"), "provided data 'abcd' doesn't match type 'bytes'"),
        (_single("bytes", "0xabc"), "provided data '0xabc' doesn't match type 'bytes'"),
        (_single("bytes", ""), "provided data '' doesn't match type 'bytes'"),
        (_single("bytes4", "0x001122"), "provided data '0x001122' doesn't match type 'bytes4'"),
        (_single("bytes4", "0x0011223344"), "provided data '0x0011223344' doesn't match type 'bytes4'"),
        (_single("bytes4", "0x 0112233"), "provided data '0x 0112233' doesn't match type 'bytes4'"),
        (_single("uint8[]", 5), "provided data '5' doesn't match type 'uint8[]'"),
        (_single("uint8[]", [None]), "provided data '<nil>' doesn't match type 'uint8'"),
        (
            _single("S[]", [5], {"S": [{"name": "a", "type": "bool"}]}),
            "provided data '5' doesn't match type 'S'",
        ),
        (_single("S", True, {"S": None}), "unrecognized type 'S'"),
        (
            {"types": {}, "primaryType": "T", "domain": []},
            "json: cannot unmarshal array into Go struct field TypedData.domain of type apitypes.TypedDataDomain",
        ),
        ([], "json: cannot unmarshal array into Go value of type apitypes.TypedData"),
    ],
)
def test_errors_are_geths(typed: Any, message: str) -> None:
    with pytest.raises(RequestError) as e:
        typed_data_preimage(typed)
    assert e.value.message == message


def test_nested_arrays_and_structs_match_eth_account() -> None:
    typed = {
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "salt", "type": "bytes32"}],
            "Item": [{"name": "id", "type": "uint256"}, {"name": "tags", "type": "bytes4[]"}],
            "Batch": [
                {"name": "items", "type": "Item[]"},
                {"name": "grid", "type": "int16[][]"},
                {"name": "flags", "type": "bool[2]"},
                {"name": "who", "type": "address[]"},
                {"name": "note", "type": "bytes"},
            ],
        },
        "primaryType": "Batch",
        "domain": {"name": "batch", "salt": "0x" + "ab" * 32},
        "message": {
            "items": [{"id": "0x10", "tags": ["0x01020304"]}, {"id": 7, "tags": []}],
            "grid": [[1, -2], [], [300]],
            "flags": [True, False],
            "who": ["0x" + "11" * 20],
            "note": "0xdeadbeef",
        },
    }
    m = encode_typed_data(full_message=typed)
    assert typed_data_preimage(typed) == b"\x19" + m.version + m.header + m.body


def test_message_key_matching_is_exact_but_top_level_keys_fold_case() -> None:
    folded = {
        "Types": MAIL["types"],
        "PRIMARYTYPE": "Mail",
        "Domain": MAIL["domain"],
        "message": MAIL["message"],
    }
    assert typed_data_preimage(folded) == typed_data_preimage(MAIL)
    with pytest.raises(RequestError, match="doesn't match type 'string'"):
        typed_data_preimage(mail(message__Contents="x", message__contents=_DELETE))


def test_decoding_follows_go_encoding_json() -> None:
    # Keys fold as Go folds them (U+017F long s matches "s"), and the last one wins.
    folded = {("typeſ" if k == "types" else k): v for k, v in MAIL.items()}
    assert typed_data_preimage(folded) == typed_data_preimage(MAIL)
    # null leaves Go's zero value: no decode error, then clef's "domain is undefined".
    with pytest.raises(RequestError) as e:
        typed_data_preimage(None)  # type: ignore[arg-type]
    assert not isinstance(e.value, TypedDataDecodeError) and e.value.message == "domain is undefined"
    # Type mismatches are remembered and the first in document order is reported...
    with pytest.raises(TypedDataDecodeError) as d:
        typed_data_preimage({"primaryType": 7, "types": {"A": [{"name": 5}]}})  # type: ignore[dict-item]
    assert d.value.message == "json: cannot unmarshal number into Go struct field TypedData.primaryType of type string"
    # ...unless an unmarshaler fails later, which stops decoding at once.
    with pytest.raises(TypedDataDecodeError) as d:
        typed_data_preimage({"primaryType": 7, "domain": {"chainId": "zz"}})  # type: ignore[dict-item]
    assert d.value.message == 'invalid hex or decimal integer "zz"'
