"""Transaction encoders: published vectors, eth-account as oracle, geth JSON both ways, bad input."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest
import rlp as pyrlp
from coincurve import PrivateKey, PublicKey
from eth_account import Account
from eth_utils import to_checksum_address
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clave.core.errors import RequestError
from clave.core.eth import rlp as our_rlp
from clave.core.eth.hashing import keccak256
from clave.core.eth.transactions import check_tx, encode_signed, signing_preimage, tx_hash
from clave.core.eth.txjson import geth_tx_json, parse_geth_tx_json
from tests.vectors import available, vector

KEY = bytes.fromhex("b71c71a67e1177ad4e901695e1b4b9ee17ae16c6668d313eac2f96dbcda3f291")


def _extapi_tx_cases() -> list[dict[str, Any] | None]:
    if not available("clef/extapi_vectors.json"):
        return []
    path = vector("clef/extapi_vectors.json")
    cases = json.loads(path.read_text())["cases"]
    return [c for c in cases if c.get("request", {}).get("method") == "account_signTransaction"]


def _hex_int(value: str | None) -> int | None:
    return None if value is None else int(value, 16)


def tx_from_request(args: dict[str, Any], default_chain_id: int = 1) -> dict[str, Any]:
    """Test-only stand-in for the request parser: clef's SendTxArgs.ToTransaction type inference."""
    data = args.get("input") if args.get("input") is not None else args.get("data")
    access_list = args.get("accessList")
    if access_list is not None:
        access_list = [
            (bytes.fromhex(e["address"][2:]), [bytes.fromhex(k[2:]) for k in e["storageKeys"]])
            for e in access_list
        ]
    if args.get("blobVersionedHashes") is not None:
        t = 3
    elif args.get("maxFeePerGas") is not None:
        t = 2
    elif access_list is not None:
        t = 1
    else:
        t = 0
    tx: dict[str, Any] = {
        "type": t,
        "chainId": _hex_int(args.get("chainId")) or default_chain_id,
        "nonce": _hex_int(args.get("nonce")) or 0,
        "gas": _hex_int(args.get("gas")) or 0,
        "value": _hex_int(args.get("value")) or 0,
        "to": bytes.fromhex(args["to"][2:]) if args.get("to") else None,
        "data": bytes.fromhex(data[2:]) if data else b"",
    }
    if t in (0, 1):
        tx["gasPrice"] = _hex_int(args.get("gasPrice"))
    else:
        tx["maxPriorityFeePerGas"] = _hex_int(args.get("maxPriorityFeePerGas"))
        tx["maxFeePerGas"] = _hex_int(args.get("maxFeePerGas"))
    if t:
        tx["accessList"] = access_list or []
    return tx


def sign(preimage: bytes, key: bytes = KEY) -> tuple[int, int, int]:
    sig = PrivateKey(key).sign_recoverable(preimage, hasher=keccak256)
    return sig[64], int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big")


def compact(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


# --- published vectors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", _extapi_tx_cases() or [None], ids=lambda c: c["name"][:60] if c else "absent"
)
def test_extapi_vectors(case: dict[str, Any] | None) -> None:
    vector("clef/extapi_vectors.json")
    assert case is not None
    tx = tx_from_request(case["request"]["params"][0])
    y, r, s = sign(signing_preimage(tx), bytes.fromhex(case["key"]))
    raw = encode_signed(tx, y, r, s)
    assert "0x" + raw.hex() == case["expect_raw"]
    h = tx_hash(raw)
    if "expect_hash" in case:
        assert "0x" + h.hex() == case["expect_hash"]
    if "expect_tx" in case:
        # Byte-exact, key order included: geth rebuilds the transaction from this JSON.
        assert compact(geth_tx_json(tx, y, r, s, h)) == compact(case["expect_tx"])
        assert parse_geth_tx_json(case["expect_tx"]) == (tx, y, r, s)


@pytest.mark.parametrize("name", ["sign_normal_exp_ok.json", "sign_1559_tx.json"])
def test_clef_sign_requests_match_eth_account(name: str) -> None:
    args = json.loads(vector(f"clef/sign_requests/{name}").read_text())["params"][0]
    tx = tx_from_request(args)
    y, r, s = sign(signing_preimage(tx))
    expected = Account.sign_transaction(to_eth_account(tx), KEY)
    assert encode_signed(tx, y, r, s) == bytes(expected.raw_transaction)


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "sign_1559_missing_field_exp_fail.json",
            "missing required field 'maxPriorityFeePerGas' in transaction",
        ),
        ("sign_1559_missing_maxfeepergas_exp_fail.json", "missing required field 'gasPrice' in transaction"),
    ],
)
def test_clef_sign_requests_missing_fee_refused(name: str, message: str) -> None:
    args = json.loads(vector(f"clef/sign_requests/{name}").read_text())["params"][0]
    with pytest.raises(RequestError) as e:
        signing_preimage(tx_from_request(args))
    assert e.value.message == message


# --- eth-account as oracle ---------------------------------------------------------------------------

U64 = st.integers(0, 2**64 - 1)
U256 = st.integers(0, 2**256 - 1)
ADDRESS = st.binary(min_size=20, max_size=20)
HASH = st.binary(min_size=32, max_size=32)
ACCESS_LIST = st.lists(st.tuples(ADDRESS, st.lists(HASH, max_size=3)), max_size=3)
BLOB_HASHES = st.lists(st.binary(min_size=31, max_size=31).map(lambda b: b"\x01" + b), min_size=1, max_size=6)
AUTHS = st.lists(
    st.fixed_dictionaries(
        {
            "chainId": U256,
            "address": ADDRESS,
            "nonce": U64,
            "yParity": st.integers(0, 1),
            "r": U256,
            "s": U256,
        }
    ),
    min_size=1,
    max_size=3,
)


@st.composite
def transactions(draw: st.DrawFn, types: tuple[int, ...] = (0, 1, 2, 3, 4)) -> dict[str, Any]:
    t = draw(st.sampled_from(types))
    tx: dict[str, Any] = {
        "type": t,
        "chainId": draw(st.integers(1, 2**64 - 1) | st.integers(1, 2**256 - 1))
        if t
        else draw(st.integers(1, 2**64)),
        "nonce": draw(U64),
        "gas": draw(U64),
        "value": draw(U256),
        "to": draw(ADDRESS) if t in (3, 4) else draw(st.none() | ADDRESS),
        "data": draw(st.binary(max_size=300)),
    }
    if t in (0, 1):
        tx["gasPrice"] = draw(U256)
    else:
        tx["maxPriorityFeePerGas"] = draw(U256)
        tx["maxFeePerGas"] = draw(U256)
    if t:
        tx["accessList"] = draw(ACCESS_LIST)
    if t == 3:
        tx["maxFeePerBlobGas"] = draw(U256)
        tx["blobVersionedHashes"] = draw(BLOB_HASHES)
    if t == 4:
        tx["authorizationList"] = draw(AUTHS)
    return tx


def to_eth_account(tx: dict[str, Any]) -> dict[str, Any]:
    skip = ("to", "accessList", "authorizationList", "blobVersionedHashes")
    d = {k: v for k, v in tx.items() if k not in skip and not (k == "type" and v == 0)}  # legacy: no type
    if tx["to"] is not None:
        d["to"] = to_checksum_address(tx["to"])
    if "accessList" in tx:
        d["accessList"] = [
            {"address": to_checksum_address(a), "storageKeys": ["0x" + k.hex() for k in keys]}
            for a, keys in tx["accessList"]
        ]
    if "blobVersionedHashes" in tx:
        d["blobVersionedHashes"] = ["0x" + h.hex() for h in tx["blobVersionedHashes"]]
    if "authorizationList" in tx:
        d["authorizationList"] = [
            {**a, "address": to_checksum_address(a["address"])} for a in tx["authorizationList"]
        ]
    return d


def _recover(digest_preimage: bytes, y: int, r: int, s: int) -> bytes:
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes((y,))
    pub = PublicKey.from_signature_and_message(sig, digest_preimage, hasher=keccak256)
    return keccak256(pub.format(compressed=False)[1:])[12:]


SENDER = keccak256(PrivateKey(KEY).public_key.format(compressed=False)[1:])[12:]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tx=transactions())
def test_matches_eth_account(tx: dict[str, Any]) -> None:
    signed = Account.sign_transaction(to_eth_account(tx), KEY)
    y = signed.v if tx["type"] else signed.v - 35 - 2 * tx["chainId"]
    # eth-account's signature must verify against our preimage: same bytes signed.
    assert _recover(signing_preimage(tx), y, signed.r, signed.s) == SENDER
    raw = encode_signed(tx, y, signed.r, signed.s)
    assert raw == bytes(signed.raw_transaction)
    assert tx_hash(raw) == bytes(signed.hash)


@settings(max_examples=50, deadline=None)
@given(tx=transactions())
def test_our_signature_is_eth_accounts(tx: dict[str, Any]) -> None:
    """libsecp256k1 (RFC 6979, low-S) through our preimage gives eth-account's exact signature."""
    y, r, s = sign(signing_preimage(tx))
    assert encode_signed(tx, y, r, s) == bytes(
        Account.sign_transaction(to_eth_account(tx), KEY).raw_transaction
    )


# --- geth transaction JSON ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(tx=transactions())
def test_geth_json_round_trip(tx: dict[str, Any]) -> None:
    y, r, s = sign(signing_preimage(tx))
    raw = encode_signed(tx, y, r, s)
    obj = json.loads(compact(geth_tx_json(tx, y, r, s, tx_hash(raw))))
    parsed, y2, r2, s2 = parse_geth_tx_json(obj)
    assert (parsed, y2, r2, s2) == (tx, y, r, s)
    assert encode_signed(parsed, y2, r2, s2) == raw


def _signed_json(t: int) -> dict[str, Any]:
    tx: dict[str, Any] = {
        "type": t,
        "chainId": 1,
        "nonce": 0,
        "gas": 21000,
        "value": 1,
        "to": bytes(range(20)),
        "data": b"",
    }
    if t in (0, 1):
        tx["gasPrice"] = 10
    else:
        tx |= {"maxPriorityFeePerGas": 1, "maxFeePerGas": 10}
    if t:
        tx["accessList"] = []
    if t == 3:
        tx |= {"maxFeePerBlobGas": 3, "blobVersionedHashes": [b"\x01" * 32]}
    if t == 4:
        tx["authorizationList"] = [
            {"chainId": 1, "address": bytes(20), "nonce": 0, "yParity": 0, "r": 1, "s": 1}
        ]
    y, r, s = sign(signing_preimage(tx))
    return geth_tx_json(tx, y, r, s, tx_hash(encode_signed(tx, y, r, s)))


def test_json_shape_per_type() -> None:
    keys = {t: list(_signed_json(t)) for t in range(5)}
    common_head = [
        "type",
        "chainId",
        "nonce",
        "to",
        "gas",
        "gasPrice",
        "maxPriorityFeePerGas",
        "maxFeePerGas",
    ]
    tail = ["v", "r", "s"]
    assert keys[0] == common_head + ["value", "input"] + tail + ["hash"]
    assert keys[1] == keys[2] == common_head + ["value", "input", "accessList"] + tail + ["yParity", "hash"]
    assert keys[3] == common_head + [
        "maxFeePerBlobGas",
        "value",
        "input",
        "accessList",
        "blobVersionedHashes",
    ] + tail + [
        "yParity",
        "hash",
    ]
    assert keys[4] == common_head + ["value", "input", "accessList", "authorizationList"] + tail + [
        "yParity",
        "hash",
    ]
    legacy, dynamic = _signed_json(0), _signed_json(2)
    assert legacy["maxFeePerGas"] is None and legacy["maxPriorityFeePerGas"] is None
    assert dynamic["gasPrice"] is None and dynamic["accessList"] == []
    assert int(legacy["v"], 16) in (37, 38)
    assert list(_signed_json(4)["authorizationList"][0]) == [
        "chainId",
        "address",
        "nonce",
        "yParity",
        "r",
        "s",
    ]
    assert _signed_json(4)["authorizationList"][0]["r"] == "0x1"


# Required fields per type and geth's exact message when each is missing (transaction_marshalling.go).
_IN, _TXDATA = "in transaction", "for txdata"
REQUIRED = {
    0: [
        ("nonce", _IN),
        ("gas", _IN),
        ("gasPrice", _IN),
        ("value", _IN),
        ("input", _IN),
        ("r", _IN),
        ("s", _IN),
        ("v", _IN),
    ],
    1: [
        ("chainId", _IN),
        ("nonce", _IN),
        ("gas", _IN),
        ("gasPrice", _IN),
        ("value", _IN),
        ("input", _IN),
        ("r", _IN),
        ("s", _IN),
    ],
    2: [
        ("chainId", _IN),
        ("nonce", _IN),
        ("gas", _TXDATA),
        ("maxPriorityFeePerGas", _TXDATA),
        ("maxFeePerGas", _TXDATA),
        ("value", _IN),
        ("input", _IN),
        ("r", _IN),
        ("s", _IN),
    ],
    3: [
        ("chainId", _IN),
        ("nonce", _IN),
        ("to", _IN),
        ("gas", _TXDATA),
        ("maxPriorityFeePerGas", _TXDATA),
        ("maxFeePerGas", _TXDATA),
        ("maxFeePerBlobGas", _TXDATA),
        ("value", _IN),
        ("input", _IN),
        ("blobVersionedHashes", _IN),
        ("r", _IN),
        ("s", _IN),
    ],
    4: [
        ("chainId", _IN),
        ("nonce", _IN),
        ("to", _IN),
        ("gas", _TXDATA),
        ("maxPriorityFeePerGas", _TXDATA),
        ("maxFeePerGas", _TXDATA),
        ("value", _IN),
        ("input", _IN),
        ("authorizationList", _IN),
        ("r", _IN),
        ("s", _IN),
    ],
}


@pytest.mark.parametrize("t, field, suffix", [(t, f, s) for t, fs in REQUIRED.items() for f, s in fs])
@pytest.mark.parametrize("how", ["absent", "null"])
def test_parse_missing_required_field(t: int, field: str, suffix: str, how: str) -> None:
    obj = _signed_json(t)
    if how == "absent":
        del obj[field]
    else:
        obj[field] = None
    with pytest.raises(RequestError) as e:
        parse_geth_tx_json(obj)
    assert e.value.message == f"missing required field '{field}' {suffix}"


def test_parse_optional_fields() -> None:
    obj = _signed_json(2)
    del obj["accessList"], obj["hash"], obj["gasPrice"]  # all optional for geth
    tx, *_ = parse_geth_tx_json(obj)
    assert tx["accessList"] == []
    legacy = _signed_json(0)
    legacy["chainId"] = "0x5"  # geth ignores it and derives the chain from v
    assert parse_geth_tx_json(legacy)[0]["chainId"] == 1
    for key in ("Nonce", "NONCE"):  # encoding/json matches keys case-insensitively
        obj = _signed_json(2)
        obj[key] = obj.pop("nonce")
        assert parse_geth_tx_json(obj)[0]["nonce"] == 0


@pytest.mark.parametrize(
    "mutate, message",
    [
        ({"type": "0x5"}, "transaction type not supported"),
        (
            {"type": None},
            "json: cannot unmarshal non-string into Go struct field txJSON.type of type hexutil.Uint64",
        ),
        ({"yParity": "0x2"}, "'yParity' field must be 0 or 1"),
        ({"yParity": "0x1", "v": "0x0"}, "'v' and 'yParity' fields do not match"),
        ({"yParity": None, "v": None}, "missing 'yParity' or 'v' field in transaction"),
        ({"yParity": None, "v": "0x25"}, "transaction type does not supported EIP-155 protected signatures"),
        ({"r": "0x0"}, "invalid transaction v, r, s values"),
        (
            {"nonce": "0x01"},
            "json: cannot unmarshal hex number with leading zero digits into Go struct field txJSON.nonce of type hexutil.Uint64",
        ),
        (
            {"nonce": 5},
            "json: cannot unmarshal non-string into Go struct field txJSON.nonce of type hexutil.Uint64",
        ),
        (
            {"gas": "0x"},
            'json: cannot unmarshal hex string "0x" into Go struct field txJSON.gas of type hexutil.Uint64',
        ),
        (
            {"gas": "0x10000000000000000"},
            "json: cannot unmarshal hex number > 64 bits into Go struct field txJSON.gas of type hexutil.Uint64",
        ),
        (
            {"value": "0x1" + "0" * 64},
            "json: cannot unmarshal hex number > 256 bits into Go struct field txJSON.value of type *hexutil.Big",
        ),
        (
            {"value": "12"},
            "json: cannot unmarshal hex string without 0x prefix into Go struct field txJSON.value of type *hexutil.Big",
        ),
        (
            {"value": "0xzz"},
            "json: cannot unmarshal invalid hex string into Go struct field txJSON.value of type *hexutil.Big",
        ),
        (
            {"input": "0xabc"},
            "json: cannot unmarshal hex string of odd length into Go struct field txJSON.input of type hexutil.Bytes",
        ),
        ({"to": "0x" + "00" * 19}, "hex string has length 38, want 40 for common.Address"),
        (
            {"accessList": [{"address": "0x" + "00" * 20}]},
            "missing required field 'storageKeys' for AccessTuple",
        ),
        ({"accessList": [None]}, "missing required field 'address' for AccessTuple"),
    ],
)
def test_parse_errors(mutate: dict[str, Any], message: str) -> None:
    obj = _signed_json(2) | mutate
    with pytest.raises(RequestError) as e:
        parse_geth_tx_json(obj)
    assert e.value.message == message


def test_parse_authorization_errors() -> None:
    obj = _signed_json(4)
    del obj["authorizationList"][0]["yParity"]
    with pytest.raises(RequestError, match="missing required field 'yParity' for SetCodeAuthorization"):
        parse_geth_tx_json(obj)


# --- check_tx: every bad input is a RequestError with a clear message --------------------------------

GOOD = {
    "type": 2,
    "chainId": 1,
    "nonce": 0,
    "gas": 21000,
    "value": 0,
    "to": b"\x11" * 20,
    "data": b"",
    "maxPriorityFeePerGas": 1,
    "maxFeePerGas": 2,
    "accessList": [],
}


@pytest.mark.parametrize(
    "mutate, message",
    [
        ({"type": 5}, "transaction type not supported"),
        ({"type": True}, "transaction type not supported"),
        ({"from": b"\x00" * 20}, "unknown transaction field 'from'"),
        ({"gasPrice": 1}, "field 'gasPrice' does not apply to type 2 transactions"),
        ({"maxFeePerGas": None}, "missing required field 'maxFeePerGas' in transaction"),
        ({"data": None}, "missing required field 'data' in transaction"),
        ({"chainId": 0}, "'chainId' must not be zero"),
        ({"chainId": 2**256}, "'chainId' value overflows uint256"),
        ({"nonce": 2**64}, "'nonce' value overflows uint64"),
        ({"gas": -1}, "invalid negative value for 'gas'"),
        ({"gas": 1.0}, "'gas' must be an integer"),
        ({"value": True}, "'value' must be an integer"),
        ({"maxFeePerGas": 2**256}, "'maxFeePerGas' value overflows uint256"),
        ({"to": b"\x11" * 19}, "'to' must be 20 bytes"),
        ({"to": "0x" + "11" * 20}, "'to' must be 20 bytes"),
        ({"data": "0x"}, "'data' must be bytes"),
        ({"accessList": [(b"\x11" * 20, [b"\x22" * 31])]}, "'accessList[0].storageKeys[0]' must be 32 bytes"),
        ({"accessList": [b"\x11" * 20]}, "'accessList[0]' must be an (address, storageKeys) pair"),
        (
            {"type": 3, "maxFeePerBlobGas": 1, "blobVersionedHashes": []},
            "blob transaction missing blob hashes",
        ),
        (
            {"type": 3, "maxFeePerBlobGas": 1, "blobVersionedHashes": [b"\x01" * 32, b"\x02" * 32]},
            "blob 1 has invalid hash version",
        ),
        (
            {"type": 3, "maxFeePerBlobGas": 1, "blobVersionedHashes": [b"\x01" * 32], "to": None},
            "blob transaction of type create",
        ),
        ({"type": 4, "authorizationList": []}, "EIP-7702 transaction with empty auth list"),
        (
            {
                "type": 4,
                "to": None,
                "authorizationList": [
                    dict.fromkeys(("chainId", "nonce", "yParity", "r", "s"), 0) | {"address": bytes(20)}
                ],
            },
            "EIP-7702 transaction cannot be used to create contract",
        ),
        (
            {
                "type": 4,
                "authorizationList": [
                    {"chainId": 1, "address": bytes(20), "nonce": 0, "yParity": 256, "r": 1, "s": 1}
                ],
            },
            "'authorizationList[0].yParity' value overflows uint8",
        ),
        (
            {
                "type": 4,
                "authorizationList": [{"chainId": 1, "address": bytes(20), "nonce": 0, "r": 1, "s": 1}],
            },
            "missing required field 'yParity' for SetCodeAuthorization",
        ),
    ],
)
def test_check_tx_rejects(mutate: dict[str, Any], message: str) -> None:
    tx = copy.deepcopy(GOOD) | mutate
    with pytest.raises(RequestError) as e:
        check_tx(tx)
    assert e.value.message == message
    with pytest.raises(RequestError):
        signing_preimage(tx)


def test_check_tx_requires_explicit_to() -> None:
    tx = dict(GOOD)
    del tx["to"]
    with pytest.raises(RequestError, match="'to'"):
        signing_preimage(tx)
    assert signing_preimage(GOOD | {"to": None})  # an explicit None is a contract creation
    assert signing_preimage({k: v for k, v in GOOD.items() if k != "accessList"}) == signing_preimage(GOOD)


def test_encode_signed_rejects_bad_signature_values() -> None:
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    for y, r, s in [(2, 1, 1), (0, 0, 1), (0, 1, 0), (0, n, 1), (0, 1, n // 2 + 1)]:
        with pytest.raises(ValueError):
            encode_signed(GOOD, y, r, s)


# --- RLP -----------------------------------------------------------------------------------------------

RLP_ITEMS = st.recursive(
    st.binary(max_size=80) | st.integers(0, 2**300),
    lambda children: st.lists(children, max_size=6),
    max_leaves=30,
)


@given(RLP_ITEMS)
def test_rlp_encode_matches_pyrlp(item: Any) -> None:
    encoded = our_rlp.encode(item)
    assert encoded == pyrlp.encode(item)
    assert our_rlp.decode(encoded) == pyrlp.decode(encoded)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "EOF"),
        (b"\x81\x05", "rlp: non-canonical size information"),
        (b"\xb8\x01\xaa", "rlp: non-canonical size information"),
        (b"\xb9\x00\x38" + b"a" * 56, "rlp: non-canonical size information"),
        (b"\x83ab", "rlp: value size exceeds available input length"),
        (b"\xc2\x83ab", "rlp: element is larger than containing list"),
        (b"\x01\x02", "rlp: input contains more than one value"),
    ],
)
def test_rlp_decode_is_strict(data: bytes, message: str) -> None:
    with pytest.raises(our_rlp.RLPError) as e:
        our_rlp.decode(data)
    assert str(e.value) == message


# --- a real node: anvil (Prague) must accept and execute what we encode -------------------------------


def _authorization(chain_id: int, address: bytes, nonce: int, key: PrivateKey) -> dict[str, Any]:
    """EIP-7702 authorization tuple signed over keccak(0x05 || rlp([chain_id, address, nonce]))."""
    sig = key.sign_recoverable(b"\x05" + pyrlp.encode([chain_id, address, nonce]), hasher=keccak256)
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big")
    return {"chainId": chain_id, "address": address, "nonce": nonce, "yParity": sig[64], "r": r, "s": s}


@pytest.mark.parametrize("t", [0, 1, 2, 4])
def test_anvil_accepts_raw_transactions(anvil: Any, t: int) -> None:
    sender = to_checksum_address(SENDER)
    anvil.fund(sender)
    authority = PrivateKey(bytes([0x70 + t]) * 32)
    authority_address = keccak256(authority.public_key.format(compressed=False)[1:])[12:]
    delegate = bytes([0xD0 + t]) * 20
    base_fee = int(anvil.rpc("eth_getBlockByNumber", "latest", False)["baseFeePerGas"], 16)
    tx: dict[str, Any] = {
        "type": t,
        "chainId": anvil.chain_id,
        "nonce": int(anvil.rpc("eth_getTransactionCount", sender, "pending"), 16),
        "gas": 200_000,
        "value": 12345,
        "to": bytes([0xA0 + t]) * 20,
        "data": b"\x01\x02",
    }
    if t in (0, 1):
        tx["gasPrice"] = 2 * base_fee + 1
    else:
        tx |= {"maxPriorityFeePerGas": 1, "maxFeePerGas": 2 * base_fee + 1}
    if t:
        tx["accessList"] = [(bytes(20), [bytes(32)])]
    if t == 4:
        tx["authorizationList"] = [_authorization(anvil.chain_id, delegate, 0, authority)]
    y, r, s = sign(signing_preimage(tx))
    raw = encode_signed(tx, y, r, s)
    h = "0x" + tx_hash(raw).hex()
    assert anvil.rpc("eth_sendRawTransaction", "0x" + raw.hex()) == h
    receipt = None
    for _ in range(100):  # automine is asynchronous
        receipt = anvil.rpc("eth_getTransactionReceipt", h)
        if receipt is not None:
            break
        time.sleep(0.05)
    assert receipt is not None and receipt["status"] == "0x1"
    mined = anvil.rpc("eth_getTransactionByHash", h)
    assert int(mined["type"], 16) == t and mined["from"].lower() == sender.lower()
    if t == 4:
        code = anvil.rpc("eth_getCode", to_checksum_address(authority_address), "latest")
        assert code == "0xef0100" + delegate.hex()


@settings(max_examples=200, deadline=None)
@given(tx=transactions())
def test_prepare_equals_preimage_and_encode_signed(tx: dict[str, Any]) -> None:
    from clave.core.eth.transactions import prepare

    preimage, finish = prepare(tx)
    assert preimage == signing_preimage(tx)
    y, r, s = sign(preimage)
    assert finish(y, r, s) == encode_signed(tx, y, r, s)


@given(st.binary(max_size=300))
def test_keccak_backends_agree(data: bytes) -> None:
    from Crypto.Hash import keccak

    from clave.core.eth.hashing import keccak256

    assert keccak256(data) == keccak.new(digest_bits=256, data=data).digest()


def test_parse_follows_geths_tx_json_types() -> None:
    # `hash` is a common.Hash value, not a pointer: geth decodes it, and null reaches its UnmarshalJSON.
    obj = _signed_json(2) | {"hash": None}
    with pytest.raises(RequestError) as e:
        parse_geth_tx_json(obj)
    assert e.value.message == "json: cannot unmarshal non-string into Go struct field txJSON.hash of type common.Hash"
    # hexutil.U256 takes "" as zero, like hexutil.Big.
    obj = _signed_json(4)
    obj["authorizationList"][0]["chainId"] = ""
    assert parse_geth_tx_json(obj)[0]["authorizationList"][0]["chainId"] == 0
    # Errors inside a gencodec type (AccessTuple) name the outer struct and the whole field path.
    obj = _signed_json(2) | {"accessList": [{"address": 5, "storageKeys": []}]}
    with pytest.raises(RequestError) as e:
        parse_geth_tx_json(obj)
    assert e.value.message == (
        "json: cannot unmarshal non-string into Go struct field txJSON.accessList.address of type common.Address"
    )
