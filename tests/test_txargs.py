"""clef SendTxArgs and geth TransactionArgs: decoding, validation, type selection, normalized tx."""

from __future__ import annotations

import json
from typing import Any

import pytest
import rlp
from eth_account import Account
from eth_utils import keccak, to_checksum_address

from clave.core.errors import RequestError
from clave.core.gojson import GoJSONError, invalid_argument, loads
from clave.sidecar.requests.txargs import (
    CRIT,
    INFO,
    SIDECAR_REFUSED,
    WARN,
    check_tx_fee,
    clef_reject_message,
    clef_to_tx,
    clef_tx_type,
    clef_validate,
    ethapi_to_tx,
    ethapi_tx_type,
    parse_send_tx_args,
    parse_transaction_args,
)
from tests.vectors import available, names, vector

SIGN_REQUESTS = names("clef/sign_requests")  # [ABSENT] without the vectors: the test then skips (CI: fails)
EXTAPI = "clef/extapi_vectors.json"

FROM = "0x71562b71999873DB5b286dF957af199Ec94617F7"
TO = "0x703c4b2bD70c169f5717101CaeE543299Fc946C7"
HASH = "0x010657f37554c781402a22917dee2f75def7ab966d7b770905398eba3c444014"
SAFE_SEND = "0x4401a6e40000000000000000000000000000000000000000000000000000000000000012"

# What clef answers for each published request (default reject mode, no 4byte database).
EXPECTED_REJECTION = {
    "sign_1559_missing_field_exp_fail.json": "validation failed: Neither 'gasPrice' nor 'maxPriorityFeePerGas' specified.",
    "sign_1559_missing_maxfeepergas_exp_fail.json": "validation failed: Neither 'gasPrice' nor 'maxFeePerGas' specified.",
    "sign_bad_checksum_exp_fail.json": "validation failed: Invalid checksum on recipient address",
}
EXPECTED_TYPE = {"sign_1559_tx.json": 2, "sign_normal_exp_ok.json": 0}


def _clef(
    obj: dict[str, Any], selector: str | None = None, chains: list[int] | None = None
) -> dict[str, Any]:
    """The whole clef path: decode, validate, reject mode, build."""
    args = parse_send_tx_args(obj)
    reject = clef_reject_message(clef_validate(args, selector))
    if reject:
        raise RequestError(reject)
    return clef_to_tx(args, chains or [1])


def _rejection(obj: dict[str, Any], selector: str | None = None, chains: list[int] | None = None) -> str:
    with pytest.raises(RequestError) as info:
        _clef(obj, selector, chains)
    return info.value.message


def _decode_error(obj: Any, parser=parse_send_tx_args) -> str:
    with pytest.raises(GoJSONError) as info:
        parser(obj)
    return invalid_argument(0, info.value).message


def _sign_with_eth_account(tx: dict[str, Any], key: str) -> str:
    """Independent oracle: eth-account encodes and signs the normalized tx."""
    d: dict[str, Any] = {
        "nonce": tx["nonce"],
        "gas": tx["gas"],
        "value": tx["value"],
        "data": tx["data"],
        "chainId": tx["chainId"],
        "to": to_checksum_address(tx["to"]) if tx["to"] else b"",
    }
    if tx["type"] in (0, 1):
        d["gasPrice"] = tx["gasPrice"]
    else:
        d["maxFeePerGas"] = tx["maxFeePerGas"]
        d["maxPriorityFeePerGas"] = tx["maxPriorityFeePerGas"]
    if tx["type"] >= 1:
        d["type"] = tx["type"]
        d["accessList"] = [
            {"address": to_checksum_address(a), "storageKeys": ["0x" + k.hex() for k in keys]}
            for a, keys in tx["accessList"]
        ]
    return "0x" + bytes(Account.sign_transaction(d, key).raw_transaction).hex()


# --- published vectors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SIGN_REQUESTS)
def test_clef_sign_requests(name: str):
    path = vector(f"clef/sign_requests/{name}")
    request = json.loads(path.read_text())
    params = request["params"]
    selector = params[1] if len(params) > 1 else None
    if path.name.endswith("_exp_fail.json"):
        message = _rejection(params[0], selector)
        if path.name in EXPECTED_REJECTION:
            assert message == EXPECTED_REJECTION[path.name]
    else:
        tx = _clef(params[0], selector)
        if path.name in EXPECTED_TYPE:
            assert tx["type"] == EXPECTED_TYPE[path.name]


def test_sign_requests_present():
    vector("clef/sign_requests")
    assert set(SIGN_REQUESTS) >= set(EXPECTED_REJECTION) | set(EXPECTED_TYPE)


def _extapi_tx_cases() -> list[dict[str, Any]]:
    if not available(EXTAPI):
        return []
    cases = json.loads(vector(EXTAPI).read_text())["cases"]
    return [c for c in cases if (c.get("request") or {}).get("method") == "account_signTransaction"]


@pytest.mark.parametrize("case", _extapi_tx_cases() or [None], ids=lambda c: c["name"][:40] if c else "absent")
def test_extapi_transactions_convert_exactly(case):
    if case is None:
        vector(EXTAPI)  # skips, or fails in CI
    params = case["request"]["params"][0]
    tx = _clef(params)
    expected_type = int(case.get("expect_tx", {}).get("type", "0x1" if "accessList" in params else "0x0"), 16)
    assert tx["type"] == expected_type
    assert tx["to"] == bytes.fromhex(params["to"][2:])
    assert tx["chainId"] == 1
    # the normalized dict carries every field: eth-account re-encodes it to the published raw tx
    assert _sign_with_eth_account(tx, case["key"]) == case["expect_raw"]


def test_geth_sign_transaction_vector_through_ethapi():
    vector(EXTAPI)
    case = next(c for c in _extapi_tx_cases() if c["name"].startswith("geth TestSignTransaction"))
    args = parse_transaction_args(case["request"]["params"][0])
    tx = ethapi_to_tx(args, [1])
    assert tx["type"] == 2 and tx["accessList"] == []
    assert _sign_with_eth_account(tx, case["key"]) == case["expect_raw"]


# --- decoding -----------------------------------------------------------------------------------------------


def test_case_insensitive_keys_unknown_keys_and_null():
    tx = _clef(
        {
            "FROM": FROM,
            "To": TO,
            "GAS": "0x5208",
            "maxfeepergas": "0x2",
            "MAXPRIORITYFEEPERGAS": "0x1",
            "gasPrice": None,
            "Value": "0x1",
            "type": "0x12",
            "v": "0x0",
            "hash": "0x00",
            "something": [1, 2],
        }
    )
    assert (tx["type"], tx["gas"], tx["maxFeePerGas"], tx["maxPriorityFeePerGas"], tx["value"]) == (
        2,
        21000,
        2,
        1,
        1,
    )


def test_clef_decode_errors_match_geth():
    assert _decode_error({"value": None}) == (
        "invalid argument 0: json: cannot unmarshal non-string into Go struct field SendTxArgs.value of type *hexutil.Big"
    )
    assert _decode_error({"gas": None}) == (
        "invalid argument 0: json: cannot unmarshal non-string into Go struct field SendTxArgs.gas of type hexutil.Uint64"
    )
    assert _decode_error({"from": None}) == (
        "invalid argument 0: json: cannot unmarshal non-string into Go struct field SendTxArgs.from of type common.Address"
    )
    assert (
        _decode_error({"to": "0x"})
        == "invalid argument 0: hex string has length 0, want 40 for common.Address"
    )
    assert _decode_error({"gas": "5208"}) == (
        "invalid argument 0: json: cannot unmarshal hex string without 0x prefix into Go struct field "
        "SendTxArgs.gas of type hexutil.Uint64"
    )
    # the exact text a clef user reported for a numeric chainId
    assert _decode_error({"chainId": 202599}) == (
        "invalid argument 0: json: cannot unmarshal non-string into Go struct field SendTxArgs.chainId of type *hexutil.Big"
    )
    assert _decode_error({"accessList": [{"storageKeys": []}]}) == (
        "invalid argument 0: missing required field 'address' for AccessTuple"
    )
    assert _decode_error({"accessList": [{"address": TO}]}) == (
        "invalid argument 0: missing required field 'storageKeys' for AccessTuple"
    )
    assert _decode_error({"accessList": [{"address": TO, "storageKeys": ["0x1"]}]}) == (
        "invalid argument 0: json: cannot unmarshal hex string of odd length into Go struct field "
        "SendTxArgs.accessList.storageKeys of type common.Hash"
    )
    assert _decode_error({"accessList": {}}) == (
        "invalid argument 0: json: cannot unmarshal object into Go struct field SendTxArgs.accessList of type types.AccessList"
    )
    assert _decode_error({"blobVersionedHashes": ["0x01"]}) == (
        "invalid argument 0: hex string has length 2, want 64 for common.Hash"
    )
    assert (
        _decode_error([])
        == "invalid argument 0: json: cannot unmarshal array into Go value of type apitypes.SendTxArgs"
    )


def test_clef_absent_fields_take_go_zero_values():
    args = parse_send_tx_args({"to": TO})
    assert (args.gas, args.value, args.nonce, args.from_.address) == (0, 0, 0, bytes(20))
    assert args.gas_price is None and args.access_list is None and args.data is None
    assert parse_send_tx_args(None).to is None  # a null parameter is a zero struct
    assert parse_send_tx_args({"accessList": []}).access_list == []
    assert parse_send_tx_args({"accessList": None}).access_list is None
    assert parse_send_tx_args({"data": ""}).data == b""


# --- clef validation ----------------------------------------------------------------------------------------


def _messages(obj: dict[str, Any], selector: str | None = None) -> list[tuple[str, str]]:
    return [(m.type, m.message) for m in clef_validate(parse_send_tx_args(obj), selector)]


LEGACY = {"from": FROM, "to": TO, "gas": "0x5208", "gasPrice": "0x1", "value": "0x0", "nonce": "0x0"}


def test_clean_transfer_has_no_messages():
    assert _messages(LEGACY) == []


def test_contract_creation_rules():
    create = {"from": FROM, "gas": "0x5208", "gasPrice": "0x1"}
    with pytest.raises(RequestError, match="^transaction will create a contract with value but empty code$"):
        clef_validate(parse_send_tx_args({**create, "value": "0x1"}))
    assert _messages(create) == [(CRIT, "Transaction will create a contract with empty code")]
    assert _messages({**create, "data": "0x6000"}) == [
        (WARN, "Transaction will create a contract, but the payload is suspiciously small (2 bytes)")
    ]
    assert _messages({**create, "input": "0x" + "60" * 40}, "f()") == [
        (
            WARN,
            "Transaction will create a contract, but method selector supplied, indicating an intent to call a method",
        )
    ]
    # fee fields are not checked for a creation
    assert _messages({"from": FROM, "data": "0x" + "60" * 40}) == []


def test_recipient_checks():
    assert _messages({**LEGACY, "to": TO.lower()}) == [(WARN, "Invalid checksum on recipient address")]
    assert _messages({**LEGACY, "to": "0x" + "00" * 20}) == [
        (CRIT, "Transaction recipient is the zero address")
    ]


@pytest.mark.parametrize(
    ("fees", "message"),
    [
        ({}, "Neither 'gasPrice' nor 'maxFeePerGas' specified."),
        ({"maxFeePerGas": "0x1"}, "Neither 'gasPrice' nor 'maxPriorityFeePerGas' specified."),
        ({"maxPriorityFeePerGas": "0x1"}, "Neither 'gasPrice' nor 'maxFeePerGas' specified."),
        ({"gasPrice": "0x1", "maxFeePerGas": "0x1"}, "Both 'gasPrice' and 'maxFeePerGas' specified."),
        (
            {"gasPrice": "0x1", "maxPriorityFeePerGas": "0x1"},
            "Both 'gasPrice' and 'maxPriorityFeePerGas' specified.",
        ),
        (
            {"gasPrice": "0x1", "maxFeePerGas": "0x1", "maxPriorityFeePerGas": "0x1"},
            "Both 'gasPrice' and 'maxFeePerGas' specified.",
        ),
        ({"gasPrice": "0x1"}, None),
        ({"maxFeePerGas": "0x2", "maxPriorityFeePerGas": "0x1"}, None),
    ],
)
def test_fee_field_rules(fees, message):
    base = {"from": FROM, "to": TO}
    assert _messages({**base, **fees}) == ([(CRIT, message)] if message else [])


def test_data_and_input():
    with pytest.raises(
        RequestError, match='^ambiguous request: both "data" and "input" are set and are not identical$'
    ):
        clef_validate(parse_send_tx_args({**LEGACY, "data": "0x01", "input": "0x02"}))
    args = parse_send_tx_args({**LEGACY, "data": "0x0102", "input": "0x0102"})
    assert clef_to_tx(args, [1])["data"] == b"\x01\x02"
    args = parse_send_tx_args({**LEGACY, "input": "0x0102"})
    assert clef_to_tx(args, [1])["data"] == b"\x01\x02"


def test_calldata_without_selector_only_checks_lengths():
    # clef would also look the selector up in its 4byte database; clave has none and stays silent
    assert _messages({**LEGACY, "data": SAFE_SEND}) == []
    assert _messages({**LEGACY, "data": "0x010203"}) == [
        (WARN, "Transaction data is not valid ABI (missing the 4 byte call prefix)")
    ]
    assert _messages({**LEGACY, "data": "0x0102030405"}) == [
        (WARN, "Transaction data is not valid ABI (length should be a multiple of 32 (was 1))")
    ]


def test_calldata_with_selector():
    assert _messages({**LEGACY, "data": SAFE_SEND}, "safeSend(address)") == [
        (
            INFO,
            'Transaction invokes the following method: "safeSend(address: 0x0000000000000000000000000000000000000012)"',
        )
    ]
    assert _messages({**LEGACY, "data": SAFE_SEND}, "transfer(address,uint256)") == [
        (
            WARN,
            "Transaction contains data, but provided ABI signature could not be matched: no method with id: 0x4401a6e4",
        )
    ]
    stuffed = SAFE_SEND + "00" * 32
    [(kind, text)] = _messages({**LEGACY, "data": stuffed}, "safeSend(address)")
    assert kind == WARN
    assert text == (
        "Transaction contains data, but provided ABI signature could not be matched: "
        "WARNING: Supplied data is stuffed with extra data. \nWant "
        + stuffed[10:]
        + "\nHave "
        + SAFE_SEND[10:]
        + "\nfor method safeSend(address)"
    )
    [(kind, text)] = _messages({**LEGACY, "data": SAFE_SEND}, "safeSend")
    assert kind == WARN and "failed to parse selector: failed to parse selector 'safeSend'" in text
    [(kind, text)] = _messages({**LEGACY, "data": SAFE_SEND}, "f(uint)")
    assert text.endswith(": unsupported arg type: uint")
    assert text.startswith(
        "Transaction contains data, but provided ABI signature could not be matched: invalid method signature "
        '("[{\\"name\\":\\"f\\",\\"type\\":\\"function\\",\\"inputs\\":[{\\"Name\\":\\"name0\\",\\"Type\\":\\"uint\\"'
    )
    [_, (kind, text)] = _messages({**LEGACY, "data": SAFE_SEND + "00"}, "safeSend(address)")
    assert text.endswith("invalid call data; length should be a multiple of 32 bytes (was 33)")


def test_reject_message_joins_without_space():
    messages = clef_validate(parse_send_tx_args({"from": FROM, "to": TO.lower()}))
    assert clef_reject_message(messages) == (
        "validation failed: Invalid checksum on recipient address,Neither 'gasPrice' nor 'maxFeePerGas' specified."
    )
    info_only = clef_validate(parse_send_tx_args({**LEGACY, "data": SAFE_SEND}), "safeSend(address)")
    assert clef_reject_message(info_only) is None


# --- clef type inference and chain id -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "tx_type"),
    [
        ({"gasPrice": "0x1"}, 0),
        ({"gasPrice": "0x1", "accessList": None}, 0),
        ({"gasPrice": "0x1", "accessList": []}, 1),
        ({"maxFeePerGas": "0x1", "maxPriorityFeePerGas": "0x1"}, 2),
        ({"maxFeePerGas": "0x1", "maxPriorityFeePerGas": "0x1", "accessList": []}, 2),
        ({"maxPriorityFeePerGas": "0x1"}, 0),
        (
            {
                "maxFeePerGas": "0x1",
                "maxPriorityFeePerGas": "0x1",
                "maxFeePerBlobGas": "0x1",
                "blobVersionedHashes": [HASH],
            },
            3,
        ),
        (
            {
                "gasPrice": "0x1",
                "maxFeePerGas": "0x1",
                "maxPriorityFeePerGas": "0x1",
                "blobVersionedHashes": [HASH],
                "maxFeePerBlobGas": "0x1",
            },
            3,
        ),
    ],
)
def test_clef_type_inference(fields, tx_type):
    args = parse_send_tx_args({"to": TO, **fields})
    assert clef_tx_type(args) == tx_type
    assert clef_to_tx(args, [1])["type"] == tx_type


def _unsigned_hash(tx: dict[str, Any]) -> str:
    access = [[a, list(keys)] for a, keys in tx["accessList"]]
    head = [
        tx["chainId"],
        tx["nonce"],
        tx["maxPriorityFeePerGas"],
        tx["maxFeePerGas"],
        tx["gas"],
        tx["to"],
        tx["value"],
        tx["data"],
        access,
    ]
    if tx["type"] == 3:
        head += [tx["maxFeePerBlobGas"], tx["blobVersionedHashes"]]
    return "0x" + keccak(bytes([tx["type"]]) + rlp.encode([*head, 0, 0, 0])).hex()


def test_geth_txargs_vectors():
    # signer/core/apitypes/types_test.go TestTxArgs: the type is inferred, "type" and v/r/s are ignored
    base = (
        '{"from":"0x1b442286e32ddcaa6e2570ce9ed85f4b4fc87425","accessList":[],%s"chainId":"0x7","gas":"0x124f8",'
        '"gasPrice":"0x693d4ca8","input":"0x","maxFeePerBlobGas":"0x3b9aca00","maxFeePerGas":"0x6fc23ac00",'
        '"maxPriorityFeePerGas":"0x3b9aca00","nonce":"0x0","r":"0x2a922afc784d07e98012da29f2f37cae1f73eda78aa8805d3df6ee5dbb41ec1",'
        '"s":"0x4f1f75ae6bcdf4970b4f305da1a15d8c5ddb21f555444beab77c9af2baab14","to":"0x1b442286e32ddcaa6e2570ce9ed85f4b4fc87425",'
        '"type":"%s","v":"0x0","value":"0x0","yParity":"0x0"}'
    )
    blob = loads(base % (f'"blobVersionedHashes":["{HASH}"],', "0x1"))
    tx = clef_to_tx(parse_send_tx_args(blob), [7])
    assert tx["type"] == 3
    assert _unsigned_hash(tx) == "0x7d53234acc11ac5b5948632c901a944694e228795782f511887d36fd76ff15c4"
    dynamic = loads(base % ("", "0x12"))
    tx = clef_to_tx(parse_send_tx_args(dynamic), [7])
    assert tx["type"] == 2
    assert _unsigned_hash(tx) == "0x7919e2b0b9b543cb87a137b6ff66491ec7ae937cb88d3c29db4d9b28073dce53"


def test_clef_chain_id():
    args = parse_send_tx_args({**LEGACY, "chainId": "0x5"})
    with pytest.raises(
        RequestError, match="^requested chainid 5 does not match the configuration of the signer$"
    ):
        clef_to_tx(args, [1])
    assert clef_to_tx(args, [1, 5])["chainId"] == 5  # legacy too: signed EIP-155 with that chain id
    assert clef_to_tx(parse_send_tx_args(LEGACY), [250, 1])["chainId"] == 250


def test_blob_rules():
    blob = {
        "from": FROM,
        "maxFeePerGas": "0x2",
        "maxPriorityFeePerGas": "0x1",
        "maxFeePerBlobGas": "0x1",
        "blobVersionedHashes": [HASH],
    }
    with pytest.raises(RequestError, match="^transaction recipient must be set for blob transactions$"):
        clef_validate(parse_send_tx_args(blob))
    with pytest.raises(RequestError, match=f"^{SIDECAR_REFUSED}$"):
        clef_validate(parse_send_tx_args({**blob, "to": TO, "blobs": ["0x" + "00" * 131072]}))
    with pytest.raises(RequestError, match=f"^{SIDECAR_REFUSED}$"):
        clef_to_tx(parse_send_tx_args({**blob, "to": TO, "commitments": ["0x" + "00" * 48]}), [1])
    with pytest.raises(RequestError, match="^maxFeePerBlobGas not specified$"):
        clef_validate(parse_send_tx_args({**blob, "to": TO, "maxFeePerBlobGas": None}))
    with pytest.raises(RequestError, match="^need at least 1 blob for a blob transaction$"):
        clef_validate(parse_send_tx_args({**blob, "to": TO, "blobVersionedHashes": []}))
    tx = _clef({**blob, "to": TO})
    assert (
        tx["type"] == 3
        and tx["maxFeePerBlobGas"] == 1
        and tx["blobVersionedHashes"] == [bytes.fromhex(HASH[2:])]
    )
    assert tx["accessList"] == []


# --- geth eth_signTransaction ------------------------------------------------------------------------------

DYNAMIC = {
    "from": FROM,
    "to": TO,
    "gas": "0x5208",
    "maxFeePerGas": "0x2",
    "maxPriorityFeePerGas": "0x1",
    "nonce": "0x0",
}
AUTH = {"chainId": "0x1", "address": TO, "nonce": "0x0", "yParity": "0x1", "r": "0x1", "s": "0x2"}


def _ethapi(obj: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return ethapi_to_tx(parse_transaction_args(obj), kwargs.pop("chains", [1]), **kwargs)


def _ethapi_error(obj: dict[str, Any], **kwargs: Any) -> str:
    with pytest.raises(RequestError) as info:
        _ethapi(obj, **kwargs)
    return info.value.message


@pytest.mark.parametrize(
    ("fields", "tx_type"),
    [
        ({}, 2),
        ({"accessList": []}, 2),  # geth never builds type 1
        ({"maxFeePerGas": None, "maxPriorityFeePerGas": None, "gasPrice": "0x1"}, 0),
        ({"maxFeePerGas": None, "maxPriorityFeePerGas": None, "gasPrice": "0x1", "accessList": []}, 0),
        ({"blobVersionedHashes": [HASH], "maxFeePerBlobGas": "0x1"}, 3),
        ({"authorizationList": [AUTH]}, 4),
        ({"authorizationList": [AUTH], "blobVersionedHashes": [HASH], "maxFeePerBlobGas": "0x1"}, 4),
    ],
)
def test_ethapi_type_selection(fields, tx_type):
    args = parse_transaction_args({**DYNAMIC, **fields})
    assert ethapi_tx_type(args) == tx_type
    tx = ethapi_to_tx(args, [1])
    assert tx["type"] == tx_type
    if tx_type == 0:
        assert "accessList" not in tx  # the access list is silently dropped, as in geth


def test_ethapi_authorization_list():
    tx = _ethapi({**DYNAMIC, "authorizationList": [AUTH]})
    assert tx["authorizationList"] == [
        {"chainId": 1, "address": bytes.fromhex(TO[2:]), "nonce": 0, "yParity": 1, "r": 1, "s": 2}
    ]
    broken = {k: v for k, v in AUTH.items() if k != "yParity"}
    assert _decode_error({"authorizationList": [broken]}, parse_transaction_args) == (
        "invalid argument 0: missing required field 'yParity' for SetCodeAuthorization"
    )
    assert _decode_error({"authorizationList": [{**AUTH, "r": "0x01"}]}, parse_transaction_args) == (
        "invalid argument 0: json: cannot unmarshal hex number with leading zero digits into Go struct field "
        "TransactionArgs.authorizationList.r of type *uint256.Int"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gas": None}, "gas not specified"),
        ({"maxPriorityFeePerGas": None}, "missing gasPrice or maxFeePerGas/maxPriorityFeePerGas"),
        ({"nonce": None}, "nonce not specified"),
        ({"gasPrice": "0x1"}, "both gasPrice and (maxFeePerGas or maxPriorityFeePerGas) specified"),
        (
            {
                "gasPrice": "0x1",
                "maxFeePerGas": None,
                "maxPriorityFeePerGas": None,
                "authorizationList": [AUTH],
            },
            "both gasPrice and authorizationList specified",
        ),
        ({"maxFeePerGas": "0x0", "maxPriorityFeePerGas": "0x0"}, "maxFeePerGas must be non-zero"),
        (
            {"maxFeePerGas": "0x1", "maxPriorityFeePerGas": "0x2"},
            "maxFeePerGas (0x1) < maxPriorityFeePerGas (0x2)",
        ),
        (
            {"gasPrice": "0x0", "maxFeePerGas": None, "maxPriorityFeePerGas": None},
            "gasPrice must be non-zero after london fork",
        ),
        (
            {"blobVersionedHashes": [HASH], "maxFeePerBlobGas": "0x0"},
            "maxFeePerBlobGas, if specified, must be non-zero",
        ),
        (
            {"data": "0x01", "input": "0x02"},
            'both "data" and "input" are set and not equal. Please use "input" to pass transaction call data',
        ),
        (
            {"blobVersionedHashes": [], "maxFeePerBlobGas": "0x1"},
            "need at least 1 blob for a blob transaction",
        ),
        (
            {"blobVersionedHashes": [HASH] * 7, "maxFeePerBlobGas": "0x1"},
            "too many blobs in transaction (have=7, max=6)",
        ),
        (
            {"to": None, "blobVersionedHashes": [HASH], "maxFeePerBlobGas": "0x1"},
            'missing "to" in blob transaction',
        ),
        ({"to": None}, "contract creation without any data provided"),
        (
            {"to": None, "input": "0x6000", "authorizationList": [AUTH]},
            'authorizationList provided for contract creation, but "to" field is missing',
        ),
        ({"chainId": "0x5"}, "chainId does not match node's (have=5, want=1)"),
        ({"blobVersionedHashes": [HASH]}, "maxFeePerBlobGas not specified"),
        ({"blobs": ["0x" + "00" * 131072]}, SIDECAR_REFUSED),
        (
            {"maxFeePerGas": hex(10**12), "gas": hex(2_000_000)},
            "tx fee (2.00 ether) exceeds the configured cap (1.00 ether)",
        ),
    ],
)
def test_ethapi_refusals(change, message):
    assert _ethapi_error({**DYNAMIC, **change}) == message


def test_ethapi_defaults_and_fee_cap():
    tx = _ethapi({k: v for k, v in DYNAMIC.items() if k != "from"})
    assert (tx["chainId"], tx["value"], tx["data"]) == (1, 0, b"")
    assert _ethapi({**DYNAMIC, "chainId": "0xfa"}, chains=[1, 250])["chainId"] == 250
    assert (
        _ethapi({**DYNAMIC, "maxFeePerGas": hex(10**12), "gas": hex(2_000_000)}, fee_cap_ether=0)["gas"]
        == 2_000_000
    )
    assert _ethapi({**DYNAMIC, "to": None, "input": "0x6000"})["to"] is None
    check_tx_fee(10**9, 10**9, 1.0)  # exactly 1 ether is allowed
    with pytest.raises(
        RequestError, match=r"^tx fee \(1.00 ether\) exceeds the configured cap \(1.00 ether\)$"
    ):
        check_tx_fee(10**9 + 1, 10**9, 1.0)
    assert (
        _ethapi(
            {**DYNAMIC, "gasPrice": "0x0", "maxFeePerGas": None, "maxPriorityFeePerGas": None}, london=False
        )["gasPrice"]
        == 0
    )


def test_ethapi_decode_errors():
    assert _decode_error({"to": "0x"}, parse_transaction_args) == (
        "invalid argument 0: hex string has length 0, want 40 for common.Address"
    )
    assert _decode_error({"gas": 21000}, parse_transaction_args) == (
        "invalid argument 0: json: cannot unmarshal non-string into Go struct field TransactionArgs.gas of type hexutil.Uint64"
    )
    args = parse_transaction_args({"value": None, "TO": TO.lower()})
    assert args.value is None and args.to == bytes.fromhex(TO[2:])
